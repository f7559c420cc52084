"""Verifying many engines fast: all cores, started early, and an opt-in trusted-stat mode.

``full`` (the default) recomputes every engine's SHA-256 and compares it with the sidecar.
Hashing runs in a thread pool: hashlib releases the GIL on large buffers, so threads hash
on every core without the cost of extra processes.

``stat`` trusts an engine whose size, mtime_ns, ctime_ns and inode match what was recorded
when it was last fully verified (the way git and ccache trust unchanged files). Any
mismatch falls back to full verification. ctime cannot be set from user space, so a write
that restores the old mtime is still caught. Records live in ``cache_dir/.verified/``.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from .sidecar import Sha256Sidecar, Verification, atomic_write_bytes

VERIFIED_DIR = ".verified"


def _signature(path: Path) -> list[int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _record_path(engine_path: Path) -> Path:
    return engine_path.parent / VERIFIED_DIR / (engine_path.name + ".json")


def _trusted(engine_path: Path) -> Verification | None:
    """A verification from the stat record, or None when it must be hashed again."""
    record_path = _record_path(engine_path)
    try:
        record = json.loads(record_path.read_bytes())
    except (OSError, ValueError):
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
    try:
        folder.mkdir(exist_ok=True)
        blob = json.dumps({"signature": before, "sha256": verification.sha256}).encode()
        atomic_write_bytes(_record_path(engine_path), blob)
    except OSError:
        pass  # only an optimisation: the next run hashes again


def verify_engine(engine_path: Path, mode: str = "full") -> Verification:
    """Verify one engine against its sidecar, trusting an unchanged stat record in ``stat`` mode."""
    engine_path = Path(engine_path)
    if mode == "stat":
        trusted = _trusted(engine_path)
        if trusted is not None:
            return trusted
        before = _signature(engine_path)
        verification = Sha256Sidecar.check(engine_path)
        _remember(engine_path, before, verification)
        return verification
    return Sha256Sidecar.check(engine_path)


class EngineVerifier:
    """Verifies engines on all cores; ``prefetch`` starts work before results are asked for."""

    def __init__(self, mode: str = "full", workers: int | None = None) -> None:
        self.mode = mode
        self._workers = workers or max(1, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[Path, Future[Verification]] = {}

    def prefetch(self, engine_paths: Iterable[Path]) -> None:
        """Start verifying these engines in the background (largest first, for balance)."""
        todo = [Path(p) for p in engine_paths if Path(p) not in self._futures]
        todo.sort(key=lambda p: (_signature(p) or [0])[0], reverse=True)
        if not todo:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="verify")
        for path in todo:
            self._futures[path] = self._pool.submit(verify_engine, path, self.mode)

    def check(self, engine_path: Path) -> Verification:
        """The verification of one engine (waits for its prefetch, or runs it now)."""
        future = self._futures.pop(Path(engine_path), None)
        if future is not None:
            return future.result()
        return verify_engine(Path(engine_path), self.mode)

    def close(self) -> None:
        """Stop the worker threads (pending prefetches are abandoned)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._futures.clear()
