"""Scanning the engine cache and collecting its garbage: records, a plan, then execution.

:func:`scan_cache` returns read-only records of what is in the folder; :func:`plan_gc`
turns them into a :class:`GcPlan` (what would go, why, and the bytes it frees) without
touching anything, so a dry run is free; :meth:`GcPlan.execute` deletes. Garbage is:

- engines of other hosts (another host key: another GPU, CPU ISA or backend),
- superseded engines of this host (an old builder version or old settings, a removed backbone),
- leftover temporary files and scratch folders ``.<name>.<pid>.<token>.incomplete`` whose
  owner process is dead,
- orphan sidecars and manifests whose engine is gone, and the lock files in ``.locks/`` of
  engines that are gone (unless a live process holds them: a build in progress),
- with a size budget, the least recently used remaining engines (access or modification
  time, whichever is later: a reuse reads the engine) until the cache fits.

An engine whose build lock a live process holds is never deleted; at deletion time the
lock is taken (without waiting) so no build can start on an engine being removed, and its
lock file goes with it. Lock files are opened only through :func:`provisioning.cache.safe_lock`
and probed through :func:`~provisioning.cache.lock_held`: a symlinked ``.locks`` folder or a
link or FIFO at a lock path is refused with one line (UnsafePathError), never followed.
A plan lists only paths that exist.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from filelock import Timeout

from .cache import COMPANION_SUFFIXES, LOCK_DIR, entry_files, lock_held, lock_is_held, lock_path_for, safe_lock
from .errors import UnsafePathError
from .lockwait import HOLDER_SUFFIX, holder_path
from .schema import ENGINE_SUFFIX, EngineFilenameSchema, ParsedEngineName
from .sidecar import is_temp_name, temp_owner_pid
from .tempnames import process_alive

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclass(frozen=True)
class CachedEngine:
    """One canonical engine in the cache, with the files that belong to it."""

    path: Path
    parsed: ParsedEngineName
    size: int  # engine + sidecar + companions
    last_used: float
    locked: bool

    @property
    def files(self) -> tuple[Path, ...]:
        """Sidecar first (the commit point), the engine, its companions, its verification record."""
        return entry_files(self.path)

    def existing_files(self) -> tuple[Path, ...]:
        """:attr:`files` that exist now, then the lock file if it exists: what deleting the engine removes."""
        return tuple(p for p in (*self.files, holder_path(self.path), lock_path_for(self.path)) if os.path.lexists(p))


@dataclass(frozen=True)
class LeftoverFile:
    """A temporary file or scratch folder, or an orphan sidecar/manifest."""

    path: Path
    size: int
    kind: str  # "temp", "orphan" or "lock" (owner_alive: a live process holds it)
    owner_pid: int | None = None
    owner_alive: bool = False


@dataclass(frozen=True)
class CacheScan:
    """Everything found in one cache folder (read-only)."""

    cache_dir: Path
    engines: tuple[CachedEngine, ...] = ()
    leftovers: tuple[LeftoverFile, ...] = ()

    @property
    def total_bytes(self) -> int:
        """Bytes held by engines and leftovers together."""
        return sum(e.size for e in self.engines) + sum(f.size for f in self.leftovers)


@dataclass(frozen=True)
class GcItem:
    """One thing the plan deletes, and why."""

    paths: tuple[Path, ...]
    size: int
    reason: str
    engine: CachedEngine | None = None
    lock: bool = False  # a lock file of an engine that is gone: removed while holding it
    holder: bool = False  # a lock's holder record: removed unless the lock is held by then


@dataclass(frozen=True)
class GcResult:
    """What :meth:`GcPlan.execute` did."""

    deleted: tuple[Path, ...]
    bytes_freed: int
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class GcPlan:
    """What a GC would delete; nothing is touched until :meth:`execute`."""

    cache_dir: Path
    items: tuple[GcItem, ...]
    kept_locked: tuple[CachedEngine, ...] = ()
    bytes_before: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def bytes_freed(self) -> int:
        """Bytes the plan frees when executed."""
        return sum(item.size for item in self.items)

    @property
    def bytes_after(self) -> int:
        """The cache size the plan leaves."""
        return self.bytes_before - self.bytes_freed

    def execute(self) -> GcResult:
        """Delete the plan's files; an engine locked by a live process meanwhile is skipped."""
        deleted: list[Path] = []
        skipped: list[str] = []
        freed = 0
        for item in self.items:
            if item.engine is None and item.lock:
                removed = _remove_lock_file(item.paths[0])
                if removed is None:
                    skipped.append(f"{item.paths[0].name}: a live process took this lock meanwhile; kept")
                    continue
            elif item.engine is None and item.holder:
                lock = item.paths[0].with_name(item.paths[0].name.removesuffix(HOLDER_SUFFIX))
                if lock_held(lock):
                    skipped.append(f"{item.paths[0].name}: a build took its lock meanwhile; kept")
                    continue
                removed = [p for p in item.paths if _remove(p)]
            elif item.engine is None:
                removed = [p for p in item.paths if _remove(p)]
            else:
                removed = _remove_engine(item.engine)
                if removed is None:
                    skipped.append(f"{item.engine.path.name}: a live process holds its lock; kept")
                    continue
            deleted.extend(removed)
            freed += item.size
        return GcResult(tuple(deleted), freed, tuple(skipped))


def scan_cache(cache_dir: Path) -> CacheScan:
    """Read the cache folder; a missing folder is an empty cache."""
    cache_dir = Path(cache_dir)
    try:
        entries = list(os.scandir(cache_dir))
    except FileNotFoundError:
        return CacheScan(cache_dir)
    names = {e.name for e in entries}
    engines: list[CachedEngine] = []
    leftovers: list[LeftoverFile] = _orphan_locks(cache_dir / LOCK_DIR, names)
    for entry in entries:
        name = entry.name
        if name == LOCK_DIR:
            continue
        if is_temp_name(name):
            pid = temp_owner_pid(name)
            leftovers.append(LeftoverFile(Path(entry.path), _size(entry), "temp", pid, process_alive(pid)))
            continue
        for suffix in COMPANION_SUFFIXES:
            if name.endswith(ENGINE_SUFFIX + suffix) and name[: -len(suffix)] not in names:
                leftovers.append(LeftoverFile(Path(entry.path), _size(entry), "orphan"))
        if not name.endswith(ENGINE_SUFFIX) or entry.is_symlink() or not entry.is_file():
            continue
        try:
            parsed = EngineFilenameSchema.parse(name)
        except ValueError:
            continue  # not ours: never touched
        path = Path(entry.path)
        stat = entry.stat()
        size = sum(_file_size(p) for p in entry_files(path))
        engines.append(CachedEngine(path, parsed, size, max(stat.st_atime, stat.st_mtime), lock_is_held(path)))
    engines.sort(key=lambda e: e.path.name)
    leftovers.sort(key=lambda f: f.path.name)
    return CacheScan(cache_dir, tuple(engines), tuple(leftovers))


def _orphan_locks(locks: Path, names: set[str]) -> list[LeftoverFile]:
    """What in ``.locks`` belongs to no engine or to no running build (held locks marked ``owner_alive``).

    The lock files of engines not in the cache ("lock"), the holder records of builds that are
    not running ("holder": its lock is not held; a killed build leaves one) and temporary files
    of dead processes. UnsafePathError when ``.locks`` is a symlink: builds refuse it, and so does GC.
    """
    if os.path.islink(locks):
        raise UnsafePathError(f"lock folder {locks} is a symlink (not followed; nothing in the cache creates one); "
                              "remove it (the lock folder must be inside the cache)")
    try:
        entries = list(os.scandir(locks))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        path = Path(entry.path)
        if is_temp_name(entry.name):
            pid = temp_owner_pid(entry.name)
            found.append(LeftoverFile(path, _size(entry), "temp", pid, process_alive(pid)))
            continue
        holder = entry.name.endswith(".lock" + HOLDER_SUFFIX)
        lock_name = entry.name.removesuffix(HOLDER_SUFFIX) if holder else entry.name
        engine = lock_name.removesuffix(".lock")
        if engine == lock_name or (engine in names and not holder):
            continue
        try:
            EngineFilenameSchema.parse(engine)
        except ValueError:
            continue  # another kind of lock (timing cache, GPU): not an engine's
        found.append(LeftoverFile(path, _size(entry), "holder" if holder else "lock",
                                  owner_alive=lock_held(locks / lock_name)))
    return found


def plan_gc(
    scan: CacheScan,
    *,
    current: Iterable[str],
    host_keys: Iterable[str],
    max_size: int | None = None,
    keep_foreign: bool = False,
) -> GcPlan:
    """Plan a GC: ``current`` are today's engine file names, ``host_keys`` this host's keys.

    A current version-pinned name keeps its shared ``-vc`` engine too: that one is a newer
    TensorRT's, which this host cannot use but its newer neighbours do.
    """
    current, host_keys = set(current), set(host_keys)
    current |= {shared for shared in map(EngineFilenameSchema.shared_vc_name, current) if shared}
    items: list[GcItem] = []
    kept: list[CachedEngine] = []
    locked: list[CachedEngine] = []
    for leftover in scan.leftovers:
        if leftover.kind == "lock":
            if not leftover.owner_alive:
                items.append(GcItem((leftover.path,), leftover.size, "lock file of an engine that is gone", lock=True))
        elif leftover.kind == "holder":
            if not leftover.owner_alive:
                items.append(GcItem((leftover.path,), leftover.size, "lock holder record of a build that is not "
                                    "running", holder=True))
        elif leftover.kind == "temp":
            if leftover.owner_alive:
                continue
            owner = "no owner pid" if leftover.owner_pid is None else f"owner pid {leftover.owner_pid} is gone"
            items.append(GcItem((leftover.path,), leftover.size, f"leftover temporary file ({owner})"))
        else:
            items.append(GcItem((leftover.path,), leftover.size, "orphan: its engine is gone"))
    for engine in scan.engines:
        name, key = engine.path.name, engine.parsed.host_key
        if name in current or (keep_foreign and key not in host_keys):
            kept.append(engine)
        elif engine.locked:
            locked.append(engine)
        elif key in host_keys:
            items.append(GcItem(engine.existing_files(), engine.size, "superseded build of this host", engine))
        else:
            items.append(GcItem(engine.existing_files(), engine.size, f"engine of another host ({key})", engine))
    notes = []
    if max_size is not None:
        size = sum(e.size for e in kept) + sum(e.size for e in locked)
        for engine in sorted(kept, key=lambda e: e.last_used):
            if size <= max_size:
                break
            if engine.locked:
                notes.append(f"{engine.path.name}: kept over the size budget, locked by a live process")
                continue
            items.append(GcItem(engine.existing_files(), engine.size, "over the size budget (least recently used)",
                                engine))
            size -= engine.size
    deleted_with_engines = {path for item in items if item.engine is not None for path in item.paths}
    items = [item for item in items if not (item.holder and item.paths[0] in deleted_with_engines)]
    if max_size is not None and scan.total_bytes - sum(i.size for i in items) > max_size:
        notes.append("the budget cannot be met without deleting locked engines or files in use")
    return GcPlan(scan.cache_dir, tuple(items), tuple(locked), scan.total_bytes, tuple(notes))


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1.5GiB``, ``1048576``: binary units; ValueError with the accepted forms."""
    match = _SIZE_RE.fullmatch(str(text))
    if not match:
        raise ValueError(f"size {text!r} not understood; use bytes or a number with K, M, G or T (e.g. 500M, 2G)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def _remove_engine(engine: CachedEngine) -> list[Path] | None:
    """Delete an engine's files, then its lock file, holding that lock; None when a live process holds it."""
    lock_path = lock_path_for(engine.path)
    if not lock_path.parent.is_dir():
        return [p for p in engine.files if _remove(p)]
    return _holding(lock_path, lambda: [p for p in (*engine.files, holder_path(engine.path)) if _remove(p)])


def _remove_lock_file(path: Path) -> list[Path] | None:
    """Remove the lock file of an engine that is gone, holding it; None when a live process holds it."""
    return _holding(path, lambda: [])


def _holding(lock_path: Path, remove) -> list[Path] | None:
    """Run ``remove()`` holding the lock at ``lock_path`` (not waiting), then delete the lock file itself.

    The lock file goes while it is still held: a builder that opened it meanwhile and waits
    for it locks a deleted file, so at worst two builders build the same engine (the
    publish is atomic; the lock only avoids duplicate work).
    """
    lock = safe_lock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None
    try:
        removed = remove()
        if _remove(lock_path):
            removed.append(lock_path)
        return removed
    finally:
        lock.release()


def _remove(path: Path) -> bool:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _file_size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _size(entry: os.DirEntry) -> int:
    try:
        if entry.is_dir(follow_symlinks=False):
            total = 0
            for root, _, files in os.walk(entry.path):
                total += sum(_file_size(Path(root) / f) for f in files)
            return total
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0
