"""The ML service's own errors (its jobs also raise ``visrec.platform.errors``)."""


class ExportError(Exception):
    """A caller-facing job failure: missing weights or tools, failed parity (exit 1)."""


class UsageError(ExportError):
    """The command line asks for something that cannot be done: an invalid flag value, a
    missing input file (exit 2, found before any work starts)."""
