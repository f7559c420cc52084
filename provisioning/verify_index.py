"""One index per cache, ``.verified/index.json``: what a warm run needs to know, read once.

See :class:`CacheIndex`. Like every record in the cache folder, the index is a shortcut for
this host's own reuse: a digest that goes into a signature or a remote key comes from bytes
the process hashed (see :mod:`provisioning.compiler`), never from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from .manifest import MANIFEST_SUFFIX
from .sidecar import SIDECAR_SUFFIX, create_temp, open_nofollow, write_all
from .verify_stat import VERIFIED_DIR, _records_folder_is_planted, _settled, _signature

INDEX_NAME = "index.json"
_INDEX_MAX_BYTES = 64 << 20
_INDEX_MAX_SOURCES = 20_000


def entry_signatures(engine_path: Path) -> list[list[int] | None]:
    """lstat signatures of the engine, its sidecar and its manifest (None for a missing file)."""
    engine = os.fspath(engine_path)  # string paths: pathlib costs more than the three lstat calls
    return [_signature(engine), _signature(engine + SIDECAR_SUFFIX), _signature(engine + MANIFEST_SUFFIX)]


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


def reuse_key(*inputs: object) -> str:
    """A short digest of what today's build inputs derive from (ONNX digest, backbone settings, host).

    An index entry is valid for the inputs it was checked against: any change of settings,
    validation criteria, host, builder version or ONNX digest gives another key.
    """
    return hashlib.sha256(repr(inputs).encode()).hexdigest()[:32]
