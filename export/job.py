"""One start-up for every job CLI (export, ingest, rollout, train, evaluate).

A job declares its flags and its work; ``Job.main`` does the rest the same way for all of them:

- configuration from ``VISREC_*`` (``JobsConfig``), read once, the setting flags' values on
  top (``with_arguments``); a bad value stops start-up;
- exit codes: 0 done, 1 failed, 2 bad usage (invalid flags or settings, or an input file named by
  a flag missing before any work starts), 130 interrupted;
- logs in one format (``visrec.platform.logs``): JSON lines where a machine reads them, readable
  text on a terminal; ``--quiet`` keeps warnings and errors only;
- progress (``progress_bar()``): a bar on a terminal, a log line every half minute elsewhere.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visrec.export.config import JobsConfig, with_arguments
from visrec.export.errors import ExportError, UsageError
from visrec.export.indexing.catalog_file import CatalogFormatError
from visrec.platform import logs
from visrec.platform.errors import VisrecError
from visrec.platform.settings import ConfigError, epilog

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("visrec.job")


# What a job's work may raise to say it failed in a way the operator can act on (exit 1, the
# message logged without a traceback). Anything else is a bug: logged with its traceback.
FAILURES: tuple[type[Exception], ...] = (VisrecError, ExportError, CatalogFormatError, OSError)


@dataclass(frozen=True)
class Job:
    prog: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser, JobsConfig], None]
    run: Callable[[argparse.Namespace, JobsConfig], int | None]
    # dest names of flags that name input files: each must exist before any work starts
    input_files: tuple[str, ...] = ()
    # further checks of the parsed flags (raise UsageError), before any work starts
    check: Callable[[argparse.Namespace], None] | None = None
    quiet_help: str = "only warnings and errors (no progress)"
    next_steps: str = ""  # the first lines of the epilog: what to run after this job
    failures: tuple[type[Exception], ...] = field(default=FAILURES)

    def parser(self, config: JobsConfig | None = None) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog=self.prog, description=self.description,
            epilog=(self.next_steps + "\n\n" if self.next_steps else "")
            + "environment (flags win):\n" + epilog(JobsConfig),
            formatter_class=_HelpFormatter)
        self.add_arguments(p, config or JobsConfig())
        p.add_argument("-q", "--quiet", action="store_true", help=self.quiet_help)
        return p

    def parse(self, argv: list[str]) -> argparse.Namespace:
        """The job's flags parsed and checked as ``main`` would, without running it (wrappers
        that pass flags through validate them here; input files are not looked for: they may
        be paths inside a container). Raises UsageError, or SystemExit on argparse's errors."""
        args = self.parser().parse_args(argv)
        if self.check is not None:
            self.check(args)
        return args

    def main(self, argv: list[str] | None = None) -> int:
        try:
            config = JobsConfig.from_env()
        except ConfigError as e:
            print(f"{self.prog}: configuration error: {e}", file=sys.stderr)
            return EXIT_USAGE
        parser = self.parser(config)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help (0) or argparse's usage error (2), already printed
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
        try:
            for dest in self.input_files:
                path = getattr(args, dest, None)
                if path is not None and not Path(path).is_file():
                    flag = "--" + dest.replace("_", "-")
                    raise UsageError(f"{flag} {path}: no such file")
            if self.check is not None:
                self.check(args)
        except UsageError as e:
            parser.print_usage(sys.stderr)
            print(f"{self.prog}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        logs.configure("WARNING" if getattr(args, "quiet", False) else config.log_level,
                       config.log_format)
        logging.getLogger("pymilvus").setLevel(logging.ERROR)  # its own retries are noise here
        try:
            code = self.run(args, with_arguments(config, args))
        except UsageError as e:
            log.error("%s: error: %s", self.prog, e)
            return EXIT_USAGE
        except ConfigError as e:
            log.error("%s: configuration error: %s", self.prog, e)
            return EXIT_USAGE
        except KeyboardInterrupt:
            log.error("%s: interrupted", self.prog)
            return EXIT_INTERRUPTED
        except self.failures as e:
            log.error("%s: error: %s", self.prog, e)
            return EXIT_FAILED
        except Exception:
            log.exception("%s: failed unexpectedly", self.prog)
            return EXIT_FAILED
        return EXIT_OK if code is None else code


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag; the environment epilog kept as written."""


class _LogLines:
    """A file for tqdm that turns its updates into log lines (no carriage returns in JSON)."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            log.info("%s", text)

    def flush(self) -> None:
        pass


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, initial: int = 0,
             leave: bool = True) -> Any:
    """A tqdm bar on a terminal; elsewhere a log line at most every 30 s; nothing when
    ``enabled`` is False."""
    from tqdm import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
                disable=not enabled, leave=leave if terminal else False,
                file=sys.stderr if terminal else _LogLines(),
                mininterval=0.1 if terminal else 30.0, ascii=not terminal)
