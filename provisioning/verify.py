"""Verifying many engines fast: all cores, started early, and an opt-in trusted-stat mode.

``full`` (the default) recomputes every engine's SHA-256 and compares it with the sidecar.
Hashing runs on one thread per usable core: ``os.readv`` and hashlib release the GIL on
large buffers, so threads hash on every core without the cost of extra processes.

This module is the engine verifier (:class:`EngineVerifier`) and the package's one import
point for verification; its parts live beside it, one idea each, and are re-exported here:

- :mod:`provisioning.verify_stat`: ``verify: stat``, the ``.verified/<engine>.json`` records
  that trust an engine whose stat signature is unchanged since it was last hashed;
- :mod:`provisioning.verify_index`: the cache index, ``.verified/index.json``, read once per run;
- :mod:`provisioning.verify_sources`: ONNX digests taken ahead of the actions.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from pathlib import Path
from typing import Iterable

from .sidecar import Verification
from .verify_index import INDEX_NAME, CacheIndex, entry_signatures, reuse_key
from .verify_sources import _hash_files, combine_onnx_digest, note_known_digests
from .verify_stat import VERIFIED_DIR, record_path, verify_engine

__all__ = [
    "INDEX_NAME", "VERIFIED_DIR", "CacheIndex", "EngineVerifier", "VerifierClosed", "combine_onnx_digest",
    "entry_signatures", "note_known_digests", "record_path", "reuse_key", "usable_cores", "verify_engine",
]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class VerifierClosed(RuntimeError):
    """Raised inside a hashing thread when its verifier was closed (the work is abandoned)."""


class _Slot:
    """One engine's verification: pending, running (in a worker or the caller) or done."""

    __slots__ = ("done", "result", "error", "started")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Verification | None = None
        self.error: BaseException | None = None
        self.started = False


class _ChunkGate:
    """Entered around each 4 MiB read-and-hash step of a worker thread.

    Before the process forks, :meth:`hold` waits until no worker is inside a step and keeps
    them out until :meth:`release`: the child then inherits no lock or buffer that a
    hashing thread was using (``doit -n N`` forks its workers while checkers still run).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._held = False
        self.closed = False

    def __enter__(self) -> "_ChunkGate":
        with self._cond:
            while self._held and not self.closed:
                self._cond.wait()
            if self.closed:
                raise VerifierClosed("verifier closed")
            self._inside += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._inside -= 1
            if not self._inside:
                self._cond.notify_all()

    def hold(self) -> None:
        self._cond.acquire()
        self._held = True
        while self._inside:
            self._cond.wait()
        # keep the lock across the fork: no thread can be half-way through changing the state

    def release(self) -> None:
        self._held = False
        self._cond.notify_all()
        self._cond.release()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


_LIVE: "weakref.WeakSet[EngineVerifier]" = weakref.WeakSet()


def _before_fork() -> None:
    for verifier in list(_LIVE):
        verifier._hold_for_fork()


def _after_fork_in_parent() -> None:
    for verifier in list(_LIVE):
        verifier._release_after_fork()


def _after_fork_in_child() -> None:
    for verifier in list(_LIVE):
        verifier._reset_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


class EngineVerifier:
    """Verifies engines on all cores; ``prefetch`` starts work before results are asked for.

    Engines are hashed in the order they were prefetched (doit asks in task order), and
    :meth:`check` hashes an engine no worker has started yet in the caller's thread, so
    nobody waits in a queue. Workers are daemon threads that stop within one chunk when
    the verifier is closed, so an abandoned prefetch never delays the process's exit.
    """

    def __init__(self, mode: str = "full", workers: int | None = None) -> None:
        self.mode = mode
        self._workers = workers or usable_cores()
        self._lock = threading.Lock()
        self._gate = _ChunkGate()
        self._pending: deque = deque()  # keys: an engine's Path, or ("onnx", abspath)
        self._slots: dict = {}
        self._jobs: dict = {}
        self._threads: list[threading.Thread] = []
        _LIVE.add(self)

    def prefetch(self, engine_paths: Iterable[Path]) -> None:
        """Start verifying these engines in the background, in this order."""
        self._submit((path, self._engine_job(path)) for path in map(Path, engine_paths))

    def prefetch_sources(self, sources: Iterable[tuple[Path, tuple[Path, ...]]]) -> None:
        """Start hashing ONNX files (model, then external data) in the background, in this order."""
        self._submit((("onnx", os.path.abspath(model)), self._files_job(files)) for model, files in sources)

    def check(self, engine_path: Path) -> Verification:
        """The verification of one engine (waits for a running prefetch, or hashes it now)."""
        path = Path(engine_path)
        return self._result(path, self._engine_job(path))

    def source_hashes(self, model: Path, files: tuple[Path, ...]) -> list[tuple[Path, list[int] | None, str]]:
        """Per-file ``(path, signature or None, sha256)`` of an ONNX's files (prefetched or hashed now)."""
        return self._result(("onnx", os.path.abspath(model)), self._files_job(files))

    def _engine_job(self, path: Path):
        return lambda guard: verify_engine(path, self.mode, guard)

    @staticmethod
    def _files_job(files: tuple[Path, ...]):
        return lambda guard: _hash_files(files, guard)

    def _submit(self, jobs) -> None:
        with self._lock:
            if self._gate.closed:
                return
            for key, job in jobs:
                if key not in self._slots:
                    self._slots[key] = _Slot()
                    self._jobs[key] = job
                    self._pending.append(key)
            wanted = min(self._workers - len(self._threads), len(self._pending))  # busy threads take no more
            for _ in range(max(0, wanted)):
                thread = threading.Thread(target=self._work, name="verify", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _result(self, key, job):
        with self._lock:
            slot = self._slots.pop(key, None)
            if slot is not None and not slot.started:
                self._pending.remove(key)
                self._jobs.pop(key, None)
                slot = None
        if slot is None:
            return job(None)
        slot.done.wait()
        if slot.error is not None:
            if isinstance(slot.error, VerifierClosed):
                return job(None)
            raise slot.error
        assert slot.result is not None
        return slot.result

    def close(self) -> None:
        """Stop the worker threads within one chunk; pending prefetches are abandoned."""
        self._gate.close()
        with self._lock:
            self._pending.clear()
            self._jobs.clear()
            for slot in self._slots.values():
                if not slot.started:
                    slot.error = VerifierClosed("verifier closed")
                    slot.done.set()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._pending or self._gate.closed:
                    self._threads.remove(threading.current_thread())
                    return
                key = self._pending.popleft()
                slot = self._slots[key]
                job = self._jobs.pop(key)
                slot.started = True
            try:
                slot.result = job(self._gate)
            except BaseException as exc:  # handed to whoever asks for this result
                slot.error = exc
            slot.done.set()

    def _hold_for_fork(self) -> None:
        self._lock.acquire()
        self._gate.hold()

    def _release_after_fork(self) -> None:
        self._gate.release()
        self._lock.release()

    def _reset_in_child(self) -> None:
        # The workers do not exist in the child: forget their work, check() hashes inline.
        self._lock = threading.Lock()
        self._gate = _ChunkGate()
        self._gate.closed = True
        self._pending.clear()
        self._slots.clear()
        self._jobs.clear()
        self._threads.clear()
