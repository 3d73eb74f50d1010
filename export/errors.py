class ExportError(Exception):
    """A caller-facing export failure: bad flags, missing weights or tools, failed parity."""
