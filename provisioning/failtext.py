"""A failure's reason as one short line; the whole text goes to the backbone's build log.

A builder can fail with a very long message: TensorRT-RTX lists every unsupported node of
an old model, joined with ``; `` (3,200 characters and more on one line). The ``FAILED``
line and the event keep the first error and say how many more there were, and where the
whole text is::

    FAILED det: backbone det: TensorRT-RTX could not parse det.onnx: node a (NoSuchOp): ... [INVALID_NODE]
    (and 39 more; the whole text is in det.fp32.trtrtx-1.7.1.116.sm86.1ca98a2c.engine.build.log)

(one line in the output). The whole text is appended to ``<engine>.build.log`` beside the
engine it was to become (the log a TensorRT backend keeps there, also for a failed build;
``engines-gc`` collects it once it is an orphan). A reason of at most :data:`MAX_REASON`
characters is kept as it is (its first line, as always).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .schema import BUILD_LOG_SUFFIX
from .sidecar import atomic_write_bytes

# set by the compiler on an exception it logged: the reason it printed (a caller prints the same)
REASON_MARK = "_provisioning_failure_reason"
MAX_REASON = 500  # characters of a reason in a FAILED line and its event
SEPARATOR = "; "  # how the backends join several errors into one message
_MAX_KEPT_LOG = 64 << 20  # an existing log is kept up to this size (a build log at INFO is far smaller)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def is_long(text: str) -> bool:
    """Whether the first line of ``text`` (what a FAILED line shows) is longer than :data:`MAX_REASON`."""
    lines = text.splitlines()
    return bool(lines) and len(lines[0]) > MAX_REASON


def short_reason(text: str, log_name: str | None = None) -> str:
    """The first line of ``text``; if too long, its first error, the count of the others and where the rest is."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if len(first) <= MAX_REASON:
        return first  # as every FAILED line always was: later lines (a traceback's, a hint's) are not shown
    where = f"the whole text is in {log_name}" if log_name else "the rest is not shown"
    parts = first.split(SEPARATOR)
    head = parts[0] if len(parts[0]) <= MAX_REASON else parts[0][: MAX_REASON - 3] + "..."
    more = len(parts) - 1
    if more:
        return f"{head} (and {more} more; {where})"
    return f"{head} ({where})"


def build_log_for(cache_dir: Path, engine_name: str) -> Path:
    """The build log beside the engine ``engine_name`` would be."""
    return Path(cache_dir) / f"{engine_name}{BUILD_LOG_SUFFIX}"


def append_to_build_log(path: Path, heading: str, text: str) -> bool:
    """Add ``heading`` and the whole ``text`` to the build log at ``path``; False when it cannot be written.

    The log is rewritten atomically (a link planted at its name is replaced, never
    followed or appended through); what it held is kept, up to 64 MiB.
    """
    kept = b""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK)
    except OSError:
        fd = None
    if fd is not None:
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                kept = os.read(fd, _MAX_KEPT_LOG)
        except OSError:
            kept = b""
        finally:
            os.close(fd)
    if kept and not kept.endswith(b"\n"):
        kept += b"\n"
    try:
        atomic_write_bytes(path, kept + f"# {heading}\n{text.rstrip()}\n".encode("utf-8", "replace"))
    except OSError:
        return False
    return True
