"""Trusting unchanged stat signatures: the ``.verified/<engine>.json`` records of ``verify: stat``.

``full`` (the default) recomputes every engine's SHA-256 and compares it with the sidecar.

``stat`` trusts an engine whose size, mtime_ns, ctime_ns and inode match what was recorded
when it was last fully verified (the way git and ccache trust unchanged files). Any
mismatch falls back to full verification. ctime cannot be set from user space, so a write
that restores the old mtime is still caught. Records live in ``cache_dir/.verified/``.

A record is a shortcut for this host's own reuse, never a source of truth for what gets
signed or published: whoever can write the cache folder can write a record.

This module also holds the racy-clean rule (:func:`_settled`) that every stat shortcut of
the package follows: a file changed in the last 2 s may change again within one tick.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import ContextManager, Iterable

from .sidecar import Sha256Sidecar, Verification, atomic_write_bytes, open_nofollow, stat_signature

VERIFIED_DIR = ".verified"
_RACY_NS = 2_000_000_000  # a file changed this recently may change again within one timestamp tick


def _signature(path: Path | str) -> list[int] | None:
    try:
        return stat_signature(os.lstat(path))
    except OSError:
        return None


def _settled(signatures: Iterable[list[int] | None], now_ns: int) -> bool:
    """Every file present and not changed in the last 2 s (git's racy-clean rule)."""
    return all(s is not None and max(s[1], s[2]) < now_ns - _RACY_NS for s in signatures)


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
