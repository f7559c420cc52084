"""TensorRT's logger and progress monitor, as the backend needs them.

TensorRT keeps the first logger a process hands it (later builders log to that one and
warn that theirs differs), so there is one capturing logger per process and each build
attaches a :class:`BuildLog` to it for its duration. The ``trt`` module is passed in:
only :mod:`provisioning.backends.trt_import` imports TensorRT.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger("provisioning.tensorrt")

SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
_ERRORS = ("INTERNAL_ERROR", "ERROR")
_LETTERS = {"INTERNAL_ERROR": "F", "ERROR": "E", "WARNING": "W", "INFO": "I", "VERBOSE": "V"}
_LOGGERS: dict[Any, Any] = {}  # trt.ILogger class -> the process-wide logger
_LOGGERS_LOCK = threading.Lock()


class BuildLog:
    """The TensorRT messages of one build, at ``min_severity`` and above."""

    def __init__(self, min_severity: str = "INFO") -> None:
        self._keep = set(SEVERITIES[: SEVERITIES.index(min_severity) + 1])
        self._records: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        # Fragments of messages that are noise here and must not become a user's reason:
        # TensorRT-RTX on a machine without a GPU appends "cudaError 35" after every API error.
        self.noise: tuple[str, ...] = ()

    def clean(self, message: str) -> str:
        """``message`` on one line, with any noise fragment cut off."""
        text = " ".join(message.split())
        for fragment in self.noise:
            index = text.find(fragment)
            if index >= 0:
                text = text[:index].rstrip(" |;:(")
        return text

    def add(self, severity: str, message: str) -> None:
        """Record one message (errors are always kept)."""
        if severity in self._keep or severity in _ERRORS:
            with self._lock:
                self._records.append((severity, message))

    @property
    def errors(self) -> list[str]:
        """The ERROR and INTERNAL_ERROR messages, in order."""
        with self._lock:
            return [message for severity, message in self._records if severity in _ERRORS]

    def messages(self, *severities: str) -> list[str]:
        """The messages of these severities (all when none is named), in order."""
        with self._lock:
            return [m for s, m in self._records if not severities or s in severities]

    def mark(self) -> int:
        """A position in the log, for :meth:`since`."""
        with self._lock:
            return len(self._records)

    def since(self, mark: int, *severities: str) -> list[str]:
        """The messages logged after ``mark`` (optionally only these severities)."""
        with self._lock:
            return [m for s, m in self._records[mark:] if not severities or s in severities]

    def reason(self, fallback: str) -> str:
        """TensorRT's own explanation of a failure on one line: its first error and its last two.

        The first error is usually the cause; later ones ("Network validation failed",
        "build failed") only report that something earlier went wrong.
        """
        errors = [e for e in (self.clean(m) for m in self.errors) if e]
        if len(errors) > 3:
            errors = [errors[0], "...", *errors[-2:]]
        return " | ".join(errors) if errors else fallback

    def text(self) -> str:
        """The whole log, one ``[W] message`` line per record."""
        with self._lock:
            return "".join(f"[{_LETTERS.get(s, '?')}] {m.rstrip()}\n" for s, m in self._records)


def process_logger(trt: Any) -> Any:
    """The one ``trt.ILogger`` of this process, created on first use."""
    with _LOGGERS_LOCK:
        logger = _LOGGERS.get(trt.ILogger)
        if logger is None:
            logger = _make_logger(trt)
            _LOGGERS[trt.ILogger] = logger
        return logger


def _make_logger(trt: Any) -> Any:
    names = {getattr(trt.ILogger, name): name for name in SEVERITIES}

    class CapturingLogger(trt.ILogger):
        """Forwards every TensorRT message to the build logs attached right now."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.sinks: list[BuildLog] = []
            self.lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            name = names.get(severity) or getattr(severity, "name", str(severity))
            with self.lock:
                sinks = list(self.sinks)
            for sink in sinks:
                sink.add(name, msg)
            log.debug("TensorRT [%s] %s", name, msg)

    return CapturingLogger()


@contextlib.contextmanager
def capture(logger: Any, min_severity: str = "INFO") -> Iterator[BuildLog]:
    """Attach a fresh :class:`BuildLog` to the process logger while the block runs."""
    sink = BuildLog(min_severity)
    with logger.lock:
        logger.sinks.append(sink)
    try:
        yield sink
    finally:
        with logger.lock:
            logger.sinks.remove(sink)


def make_progress_monitor(trt: Any, report: Callable[[str, str], None]) -> Any:
    """A ``trt.IProgressMonitor`` that reports ``(phase, 'step i/n')`` to ``report``."""

    class HeartbeatMonitor(trt.IProgressMonitor):
        """Feeds TensorRT's build phases to the compiler's heartbeat; never cancels."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.phases: dict[str, tuple[str | None, int]] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.phases[phase_name] = (parent_phase, int(num_steps))
            self._report(phase_name, f"step 0/{num_steps}")

        def step_complete(self, phase_name: str, step: int) -> bool:
            _, steps = self.phases.get(phase_name, (None, 0))
            self._report(phase_name, f"step {int(step) + 1}/{steps}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            parent, _ = self.phases.pop(phase_name, (None, 0))
            if parent is not None and parent in self.phases:
                self._report(parent, "")

        def _report(self, phase_name: str, detail: str) -> None:
            # An exception must not escape into TensorRT's C++ caller.
            try:
                report(self._label(phase_name), detail)
            except Exception:  # noqa: BLE001
                log.debug("progress report failed", exc_info=True)

        def _label(self, phase_name: str) -> str:
            chain, seen = [phase_name], {phase_name}
            parent = self.phases.get(phase_name, (None, 0))[0]
            while parent and parent not in seen:
                chain.append(parent)
                seen.add(parent)
                parent = self.phases.get(parent, (None, 0))[0]
            return " > ".join(reversed(chain))

    return HeartbeatMonitor()
