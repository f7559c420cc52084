"""The one method a backend owes the compiler, and the handle it writes the engine through."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

from ..sidecar import Payload, open_nofollow

if TYPE_CHECKING:  # pragma: no cover
    from ..specs import BackboneSpec
    from ..host import HostCapabilities


class EngineOutput:
    """Where a backend puts its result.

    ``write(payload, notes)`` publishes the engine bytes (or a file the backend produced)
    through the real :class:`~provisioning.sidecar.Sha256Sidecar` writer, with the manifest
    and sidecar; ``notes`` land in the manifest (for example how a precision was produced).
    ``scratch_dir`` is a private folder in the cache for intermediate files, removed after
    the build. ``progress(phase, detail)`` feeds the heartbeat of long builds.
    """

    def __init__(
        self,
        path: Path,
        scratch_dir: Path,
        publish: Callable[[Payload, Mapping[str, Any]], None],
        on_progress: Callable[[str, str], None] | None = None,
    ) -> None:
        self.path = path
        self.scratch_dir = scratch_dir
        self._publish = publish
        self._on_progress = on_progress
        self.written = False

    def write(self, payload: Payload, notes: Mapping[str, Any] | None = None) -> None:
        """Publish the engine atomically (engine, manifest, then sidecar); once per build."""
        if self.written:
            raise RuntimeError(f"engine {self.path.name} was already written in this build")
        self._publish(payload, dict(notes or {}))
        self.written = True

    def progress(self, phase: str, detail: str = "") -> None:
        """Report the current build phase (shown by the heartbeat)."""
        if self._on_progress is not None:
            self._on_progress(phase, detail)


@runtime_checkable
class CompileEngineCallable(Protocol):
    """What the compiler needs from a backend: compile one backbone for one host."""

    def compile_engine(self, spec: "BackboneSpec", host: "HostCapabilities", output: EngineOutput) -> None:
        """Build ``spec`` for ``host`` and publish it with ``output.write``; raise on failure."""
        ...


_WRITEBACK_POLL_S = 0.01


def _fsync(fd: int) -> None:
    os.fsync(fd)  # through any descriptor: writes back the file's dirty pages so far


def writing_back(path: Path) -> contextlib.AbstractContextManager[None]:
    """While a library writes ``path`` itself (ONNX Runtime's optimised model), write it back as it grows.

    A thread opens the file once it appears and fsyncs it until the block ends, so the disk
    writes while the library is still serialising instead of after it: the publish's own
    fsync (the durability point, unchanged) then waits only for the last pages. The
    library must release the GIL while it writes (ONNX Runtime does). Best effort: any
    error only ends the thread early.
    """
    def open_when_there(done: threading.Event) -> int:
        while not done.is_set():
            try:
                return open_nofollow(path)
            except FileNotFoundError:
                done.wait(_WRITEBACK_POLL_S)
        return -1

    return _fsyncing(open_when_there, _WRITEBACK_POLL_S, "engine-writeback")


def writing_back_fd(fd: int, interval_s: float) -> contextlib.AbstractContextManager[None]:
    """The same for a file this process writes through ``fd`` (a download): fsync it every ``interval_s``.

    The thread works on its own duplicate of ``fd``, so the caller may close ``fd`` as soon as
    the block ends.
    """
    own = os.dup(fd)
    return _fsyncing(lambda done: own, interval_s, "pull-writeback")


@contextlib.contextmanager
def _fsyncing(open_fd: Callable[[threading.Event], int], interval_s: float, name: str) -> Iterator[None]:
    """A thread fsyncs the descriptor ``open_fd`` gives (-1: none) every ``interval_s`` until the block ends."""
    done = threading.Event()

    def run() -> None:
        fd = -1
        try:
            fd = open_fd(done)
            while fd >= 0 and not done.is_set():
                _fsync(fd)
                done.wait(interval_s)
        except OSError:
            pass
        finally:
            if fd >= 0:
                os.close(fd)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
