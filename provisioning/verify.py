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

import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import ContextManager, Iterable

from .manifest import MANIFEST_SUFFIX
from .sidecar import (SIDECAR_SUFFIX, Sha256Sidecar, Verification, atomic_write_bytes, create_temp, hash_fd, open_nofollow,
                      stat_signature, write_all)

VERIFIED_DIR = ".verified"


def _signature(path: Path | str) -> list[int] | None:
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


# --- one index per cache: what a warm run needs to know, read once ---------------------------

INDEX_NAME = "index.json"
_INDEX_MAX_BYTES = 64 << 20
_INDEX_MAX_SOURCES = 20_000
_RACY_NS = 2_000_000_000  # a file changed this recently may change again within one timestamp tick


def entry_signatures(engine_path: Path) -> list[list[int] | None]:
    """lstat signatures of the engine, its sidecar and its manifest (None for a missing file)."""
    engine = os.fspath(engine_path)  # string paths: pathlib costs more than the three lstat calls
    return [_signature(engine), _signature(engine + SIDECAR_SUFFIX), _signature(engine + MANIFEST_SUFFIX)]


def _settled(signatures: Iterable[list[int] | None], now_ns: int) -> bool:
    """Every file present and not changed in the last 2 s (git's racy-clean rule)."""
    return all(s is not None and max(s[1], s[2]) < now_ns - _RACY_NS for s in signatures)


def _hash_files(files: Iterable[Path], guard: ContextManager[object] | None = None) -> list[tuple[Path, list[int] | None, str]]:
    """Each file's SHA-256 with its signature, None when the file changed while it was read."""
    hashed = []
    for path in files:
        fd = open_nofollow(path)
        try:
            before = stat_signature(os.fstat(fd))
            digest, _ = hash_fd(fd, guard)
            hashed.append((Path(path), before if stat_signature(os.fstat(fd)) == before else None, digest))
        finally:
            os.close(fd)
    return hashed


def combine_onnx_digest(model: Path, hashed: list[tuple[Path, list[int] | None, str]]) -> str:
    """The reuse key's ONNX digest from per-file digests (model first): :func:`provisioning.onnxinfo.onnx_digest`."""
    if len(hashed) == 1:
        return hashed[0][2]
    combined = hashlib.sha256(hashed[0][2].encode())
    for path, _, digest in hashed[1:]:
        combined.update(b"\0" + os.path.relpath(path, model.parent).encode() + b"\0")
        combined.update(digest.encode())
    return combined.hexdigest()


class CacheIndex:
    """``cache_dir/.verified/index.json``: one read per run instead of several per backbone.

    Two kinds of entries, each valid only while the stat signatures it was taken with still
    match (size, mtime_ns, ctime_ns, inode, device; ctime cannot be set from user space):

    - per engine: the signatures of the engine, its sidecar and its manifest, the sidecar's
      SHA-256 and the reuse key (today's build inputs and validation criteria) the entry
      last checked out against. Unchanged sidecar and manifest mean no need to read and
      parse them; ``verify: stat`` with an unchanged engine needs no hashing either.
    - per ONNX: the digest of the model and its external data, so that a run that lost
      doit's database (every action runs) does not hash unchanged ONNX files again, the
      rule doit's own file_dep check applies (by mtime alone) when its database is there.

    Only files unchanged for 2 s are entered (git's racy-clean rule). The file is an
    optimisation: unreadable, malformed or lost, every check falls back to reading and
    hashing. Writes merge with what is on disk and replace it atomically (no fsync: losing
    it costs one slow run).
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / VERIFIED_DIR / INDEX_NAME
        self._lock = threading.Lock()
        self._data: dict | None = None
        self._new_engines: dict[str, dict] = {}
        self._new_sources: dict[str, dict] = {}

    def _read(self) -> dict:
        empty = {"engines": {}, "onnx": {}}
        if _records_folder_is_planted(self.cache_dir / INDEX_NAME):
            return empty
        try:
            with os.fdopen(open_nofollow(self.path), "rb") as handle:
                blob = handle.read(_INDEX_MAX_BYTES + 1)
            data = json.loads(blob) if len(blob) <= _INDEX_MAX_BYTES else None
        except (OSError, ValueError, RecursionError):
            return empty
        if not isinstance(data, dict):
            return empty
        return {kind: data[kind] if isinstance(data.get(kind), dict) else {} for kind in empty}

    def _loaded(self) -> dict:
        if self._data is None:
            self._data = self._read()
        return self._data

    def engine(self, engine_path: Path, key: str) -> tuple[str, bool] | None:
        """``(sidecar sha256, engine unchanged)`` when sidecar and manifest are as indexed under ``key``."""
        with self._lock:
            entry = self._loaded()["engines"].get(os.path.basename(engine_path))
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("files"), list):
            return None
        now = entry_signatures(engine_path)
        if len(entry["files"]) != 3 or now[1:] != entry["files"][1:] or None in now[1:]:
            return None
        sha256 = entry.get("sha256")
        return (sha256, now[0] == entry["files"][0]) if isinstance(sha256, str) else None

    def remember_engine(self, engine_path: Path, key: str, sha256: str, before: list[list[int] | None]) -> None:
        """Enter a checked-out engine, if none of its files changed since ``before`` (and 2 s before that)."""
        if entry_signatures(engine_path) != before or not _settled(before, time.time_ns()):
            return
        with self._lock:
            self._new_engines[Path(engine_path).name] = {"files": before, "sha256": sha256, "key": key}

    def _source_entry(self, model: Path) -> dict | None:
        key = os.path.abspath(model)
        with self._lock:
            entry = self._new_sources.get(key) or self._loaded()["onnx"].get(key)
        return entry if isinstance(entry, dict) and isinstance(entry.get("files"), list) else None

    def onnx_sha256(self, model: Path, files: tuple[Path, ...]) -> str | None:
        """The indexed digest of ``files`` (the model first) when none of them changed."""
        entry = self._source_entry(model)
        rows = entry["files"] if entry is not None else []
        if not rows or len(rows) != len(files) or not all(isinstance(r, list) and len(r) == 3 for r in rows):
            return None
        for (path, sig, _), wanted in zip(rows, files):
            if path != os.path.abspath(wanted) or sig is None or _signature(wanted) != sig:
                return None
        digest = entry.get("sha256")
        return digest if isinstance(digest, str) else None

    def onnx_hashes(self, model: Path) -> list[tuple[Path, list[int] | None, str]]:
        """The per-file digests of an indexed ONNX (check :meth:`onnx_sha256` first)."""
        entry = self._source_entry(model)
        return [(Path(p), sig, sha) for p, sig, sha in entry["files"]] if entry is not None else []

    def remember_onnx(self, model: Path, hashed: list[tuple[Path, list[int] | None, str]], digest: str) -> None:
        """Enter the digest of an ONNX and its external data, if they were settled and unchanged."""
        signatures = [sig for _, sig, _ in hashed]
        if not _settled(signatures, time.time_ns()) or [_signature(p) for p, _, _ in hashed] != signatures:
            return
        with self._lock:
            self._new_sources[os.path.abspath(model)] = {
                "files": [[os.path.abspath(p), sig, sha] for p, sig, sha in hashed], "sha256": digest}

    @property
    def dirty(self) -> bool:
        """Whether :meth:`save` has anything to write."""
        return bool(self._new_engines or self._new_sources)

    def save(self) -> None:
        """Merge this process's new entries into the file (best effort, never raises)."""
        with self._lock:
            if not self.dirty or not self.cache_dir.is_dir() or _records_folder_is_planted(self.cache_dir / INDEX_NAME):
                return
            merged = self._read()
            merged["engines"].update(self._new_engines)
            merged["onnx"].update(self._new_sources)
            try:
                present = set(os.listdir(self.cache_dir))
            except OSError:
                return
            merged["engines"] = {n: e for n, e in merged["engines"].items() if n in present}
            if len(merged["onnx"]) > _INDEX_MAX_SOURCES:
                merged["onnx"] = dict(list(merged["onnx"].items())[-_INDEX_MAX_SOURCES:])
            self._new_engines.clear()
            self._new_sources.clear()
            self._data = merged
            try:
                self.path.parent.mkdir(exist_ok=True)
                fd, tmp = create_temp(self.path)
                try:
                    write_all(fd, memoryview(json.dumps(merged, separators=(",", ":")).encode()))
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            except OSError:
                try:
                    os.unlink(tmp)  # type: ignore[possibly-undefined]
                except (OSError, NameError):
                    pass


def note_known_digests(hashed: Iterable[tuple[Path, list[int] | None, str]]) -> None:
    """Hand digests of settled, unchanged files to doit's file_dep check (it then reads nothing again).

    The same table :func:`provisioning.onnxinfo.onnx_digest` fills for the digests it takes.
    """
    from . import onnxinfo

    now = time.time_ns()
    for path, signature, digest in hashed:
        if signature is not None and _settled([signature], now) and _signature(path) == signature:
            onnxinfo._KNOWN_DIGESTS[os.path.abspath(path)] = (signature, digest)


def reuse_key(*inputs: object) -> str:
    """A short digest of what today's build inputs derive from (ONNX digest, backbone settings, host).

    An index entry is valid for the inputs it was checked against: any change of settings,
    validation criteria, host, builder version or ONNX digest gives another key.
    """
    return hashlib.sha256(repr(inputs).encode()).hexdigest()[:32]
