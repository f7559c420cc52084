"""Console output for doit runs: the compiler's log lines on stdout, plain and unbuffered.

doit captures a python-action's stdout unless the task's verbosity is 2; the engine tasks
ask for 2, so each ``BUILT``/``REUSED``/``FAILED`` line and every heartbeat appears as it
happens, in the order it happens, also when stdout is a pipe or a CI log file.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

_HANDLER_MARK = "_provisioning_doit_console"


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time (doit swaps it while capturing)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignored on purpose
        pass


def configure_console_logging(level: int = logging.INFO) -> None:
    """Route the ``provisioning`` loggers to stdout as bare messages (idempotent per process)."""
    logger = logging.getLogger("provisioning")
    if any(getattr(h, _HANDLER_MARK, False) for h in logger.handlers):
        return
    handler = _CurrentStdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    # the root logger may have its own handlers in an embedding program: print once
    logger.propagate = False


def human_bytes(size: int) -> str:
    """``1.5 MiB`` style sizes for tables."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - unreachable


def fail_fast(message: str, exit_code: int) -> NoReturn:
    """Print one error line to stderr and exit: no traceback for a user's mistake."""
    sys.stderr.write(f"ERROR: {message}\n")
    sys.stderr.flush()
    raise SystemExit(exit_code)
