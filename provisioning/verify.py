"""Verifying many engines fast: all cores, started early, and an opt-in trusted-stat mode.

``full`` (the default) recomputes every engine's SHA-256 and compares it with the sidecar.
Hashing runs on one thread per usable core: ``os.readv`` and hashlib release the GIL on
large buffers, so threads hash on every core without the cost of extra processes.

``stat`` trusts an engine whose size, mtime_ns, ctime_ns and inode match what was recorded
when it was last fully verified (the way git and ccache trust unchanged files). Any
mismatch falls back to full verification. ctime cannot be set from user space, so a write
that restores the old mtime is still caught. Records live in ``cache_dir/.verified/``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections import deque
from pathlib import Path
from typing import ContextManager, Iterable

from .sidecar import Sha256Sidecar, Verification, atomic_write_bytes, open_nofollow, stat_signature

VERIFIED_DIR = ".verified"


def _signature(path: Path) -> list[int] | None:
    try:
        return stat_signature(os.lstat(path))
    except OSError:
        return None


def record_path(engine_path: Path) -> Path:
    """Where the trusted-stat record of ``engine_path`` lives."""
    return engine_path.parent / VERIFIED_DIR / (engine_path.name + ".json")


_WARNED: set[str] = set()


def _records_folder_is_planted(engine_path: Path) -> bool:
    """True (warned once per folder) when ``.verified`` is a symlink: never read or written through.

    A record read through it could vouch for bytes nobody hashed, and writes would land
    outside the cache; nothing in the cache creates such a link.
    """
    folder = engine_path.parent / VERIFIED_DIR
    if not os.path.islink(folder):
        return False
    if str(folder) not in _WARNED:
        _WARNED.add(str(folder))
        logging.getLogger("provisioning.verify").warning(
            "%s is a symlink; not followed (verify: stat hashes every engine in full); remove it", folder
        )
    return True


def _trusted(engine_path: Path) -> Verification | None:
    """A verification from the stat record, or None when it must be hashed again."""
    if _records_folder_is_planted(engine_path):
        return None
    try:
        with os.fdopen(open_nofollow(record_path(engine_path)), "rb") as handle:
            record = json.loads(handle.read())
    except (OSError, ValueError, RecursionError):  # a record nested too deeply to decode is no record
        return None
    sidecar = Sha256Sidecar.read(engine_path)
    signature = _signature(engine_path)
    if (
        not isinstance(record, dict)
        or sidecar is None
        or sidecar.file_name != engine_path.name
        or signature is None
        or record.get("signature") != signature
        or record.get("sha256") != sidecar.sha256
    ):
        return None
    return Verification(True, "verified (trusted stat)", sidecar.sha256, signature[0])


def _remember(engine_path: Path, before: list[int] | None, verification: Verification) -> None:
    """Record a full verification, unless the file changed while it was being hashed."""
    if not verification.ok or before is None or _signature(engine_path) != before:
        return
    folder = engine_path.parent / VERIFIED_DIR
    if _records_folder_is_planted(engine_path):
        return
    try:
        folder.mkdir(exist_ok=True)
        blob = json.dumps({"signature": before, "sha256": verification.sha256}).encode()
        atomic_write_bytes(record_path(engine_path), blob)
    except OSError:
        pass  # only an optimisation: the next run hashes again


def verify_engine(
    engine_path: Path, mode: str = "full", chunk_guard: ContextManager[object] | None = None
) -> Verification:
    """Verify one engine against its sidecar, trusting an unchanged stat record in ``stat`` mode."""
    engine_path = Path(engine_path)
    if mode == "stat":
        trusted = _trusted(engine_path)
        if trusted is not None:
            return trusted
        before = _signature(engine_path)
        verification = Sha256Sidecar.check(engine_path, chunk_guard)
        _remember(engine_path, before, verification)
        return verification
    return Sha256Sidecar.check(engine_path, chunk_guard)


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
        self._pending: deque[Path] = deque()
        self._slots: dict[Path, _Slot] = {}
        self._threads: list[threading.Thread] = []
        _LIVE.add(self)

    def prefetch(self, engine_paths: Iterable[Path]) -> None:
        """Start verifying these engines in the background, in this order."""
        with self._lock:
            if self._gate.closed:
                return
            for path in map(Path, engine_paths):
                if path not in self._slots:
                    self._slots[path] = _Slot()
                    self._pending.append(path)
            wanted = min(self._workers, len(self._pending)) - len(self._threads)
            for _ in range(max(0, wanted)):
                thread = threading.Thread(target=self._work, name="verify", daemon=True)
                self._threads.append(thread)
                thread.start()

    def check(self, engine_path: Path) -> Verification:
        """The verification of one engine (waits for a running prefetch, or hashes it now)."""
        path = Path(engine_path)
        with self._lock:
            slot = self._slots.pop(path, None)
            if slot is not None and not slot.started:
                self._pending.remove(path)
                slot = None
        if slot is None:
            return verify_engine(path, self.mode)
        slot.done.wait()
        if slot.error is not None:
            if isinstance(slot.error, VerifierClosed):
                return verify_engine(path, self.mode)
            raise slot.error
        assert slot.result is not None
        return slot.result

    def close(self) -> None:
        """Stop the worker threads within one chunk; pending prefetches are abandoned."""
        self._gate.close()
        with self._lock:
            self._pending.clear()
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
                path = self._pending.popleft()
                slot = self._slots[path]
                slot.started = True
            try:
                slot.result = verify_engine(path, self.mode, self._gate)
            except BaseException as exc:  # handed to whoever asks for this engine
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
        self._threads.clear()
