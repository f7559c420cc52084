"""The cache folder on disk: entries, their verification, locks and the event log.

Layout (one folder, flat, so ``sha256sum -c *.sha256`` works in it)::

    cache_dir/
      det.fp32.ort-1.23.2.x86_64-avx512-1a2b3c.0c4e7d21.engine                the engine
      det.fp32.ort-1.23.2.x86_64-avx512-1a2b3c.0c4e7d21.engine.manifest.json  what it was built from
      det.fp32.ort-1.23.2.x86_64-avx512-1a2b3c.0c4e7d21.engine.sha256         the commit point
      .det.fp32....engine.<pid>.<token>.incomplete                             a write in progress
      .locks/<engine name>.lock                                                one builder per engine
      events.jsonl                                                             one line per backbone per run

The cache, not doit's database, is the source of truth: an engine exists when its
sidecar matches its bytes and its manifest matches today's build inputs.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from filelock import FileLock

from .backends.open import open_engine
from .errors import CacheError
from .manifest import (
    MANIFEST_SUFFIX,
    BuildInputs,
    built_by_newer_runtime,
    explain_mismatch,
    manifest_path_for,
    read_manifest,
)
from .schema import BUILD_LOG_SUFFIX, COMMIT_SUFFIX, EVENTS_FILE, LOCK_DIR, EngineFilenameSchema
from .locks import check_lock_path, lock_held, safe_lock  # noqa: F401 (re-exported for gc, serving, tests)
from .sidecar import SIDECAR_SUFFIX, Sha256Sidecar, Verification, is_regular_or_gone, open_nofollow
from .verify import record_path

if TYPE_CHECKING:  # pragma: no cover
    from .host import HostCapabilities
    from .specs import BackboneSpec

COMPANION_SUFFIXES = (SIDECAR_SUFFIX, MANIFEST_SUFFIX, BUILD_LOG_SUFFIX, COMMIT_SUFFIX)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
log = logging.getLogger("provisioning.cache")


@dataclass(frozen=True)
class EngineCacheEntry:
    """The canonical description of one cached, verified engine."""

    model_name: str
    path: Path
    sha256: str
    size: int
    inputs: Mapping[str, Any] = field(compare=False, hash=False)
    manifest: Mapping[str, Any] = field(compare=False, hash=False, repr=False)

    @property
    def file_name(self) -> str:
        """The engine's canonical file name."""
        return self.path.name

    @property
    def sidecar_path(self) -> Path:
        """The ``.sha256`` sidecar beside the engine."""
        return Sha256Sidecar.path_for(self.path)

    def open(self) -> Any:
        """The engine ready to run (see :func:`provisioning.serving.open_engine`)."""
        return open_engine(self)


@dataclass(frozen=True)
class EntryCheck:
    """Whether a cached engine may be reused, and if not, why."""

    entry: EngineCacheEntry | None
    reasons: tuple[str, ...] = ()

    @property
    def hit(self) -> bool:
        """True when the engine verified and its manifest matches today's inputs."""
        return self.entry is not None


def check_entry(
    engine_path: Path,
    model_name: str,
    expected: BuildInputs,
    verify: Callable[[Path], Verification] | None = None,
) -> EntryCheck:
    """Verify one cache entry against today's build inputs (manifest first, then bytes).

    ``verify`` replaces the plain sidecar check (for example a prefetching
    :class:`~provisioning.verify.EngineVerifier`, or trusted-stat mode).
    """
    if os.path.islink(engine_path):
        return EntryCheck(None, (f"engine path {engine_path.name} is a symlink; refusing to follow it",))
    if not os.path.lexists(engine_path):
        return EntryCheck(None, ("no engine in the cache",))
    manifest = read_manifest(engine_path)
    if manifest is None and os.path.islink(manifest_path_for(engine_path)):
        return EntryCheck(None, (f"manifest {manifest_path_for(engine_path).name} is a symlink; not followed",))
    if manifest is None and not is_regular_or_gone(manifest_path_for(engine_path)):
        return EntryCheck(None, (f"manifest {manifest_path_for(engine_path).name} is not a regular file (a FIFO?); "
                                 "not read",))
    reasons = explain_mismatch(manifest, expected)
    if reasons:
        return EntryCheck(None, tuple(reasons))
    verification = (verify or Sha256Sidecar.check)(engine_path)
    if not verification.ok:
        return EntryCheck(None, (verification.reason,))
    recorded = manifest.get("engine") if isinstance(manifest.get("engine"), dict) else {}
    if recorded.get("sha256") != verification.sha256 or recorded.get("file_name") != engine_path.name:
        return EntryCheck(None, ("manifest describes another engine (sha256 or name differs)",))
    entry = EngineCacheEntry(
        model_name=model_name,
        path=engine_path,
        sha256=verification.sha256 or "",
        size=verification.size or 0,
        inputs=manifest["inputs"],
        manifest=manifest,
    )
    return EntryCheck(entry)


def engine_path_for(cache_dir: Path, spec: "BackboneSpec", host: "HostCapabilities") -> Path:
    """Where ``spec``'s engine for ``host`` lives: the canonical name, or the version-pinned one.

    The canonical name, unless it is a shared TensorRT version-compatible name whose engine
    a newer runtime built: this host cannot load that plan and must not replace it, so its
    own engine is the version-pinned one beside it. Reads at most one small manifest; the
    compiler, the doit checker, status, GC and ``resolve_engine`` all ask here.
    """
    shared = Path(cache_dir) / EngineFilenameSchema.build(spec, host)
    if not (host.backend == "tensorrt" and spec.version_compatible):
        return shared
    want = {"backend": host.backend, "backend_version": host.backend_version,
            "host": host.identity_for(spec).as_dict()}
    return version_pinned_path(shared, want) or shared


def version_pinned_path(engine_path: Path, expected: BuildInputs | Mapping[str, Any]) -> Path | None:
    """The version-pinned path to use instead of ``engine_path``, when a newer runtime built the engine there."""
    if not built_by_newer_runtime(read_manifest(engine_path), expected):
        return None
    version = expected.backend_version if isinstance(expected, BuildInputs) else expected["backend_version"]
    return engine_path.with_name(EngineFilenameSchema.version_pinned(engine_path.name, version))


def entry_files(engine_path: Path) -> tuple[Path, ...]:
    """Every file of one cache entry, sidecar first: deleting in this order unpublishes first."""
    companions = [engine_path.with_name(engine_path.name + s) for s in COMPANION_SUFFIXES[1:]]
    return (Sha256Sidecar.path_for(engine_path), engine_path, *companions, record_path(engine_path))


def ensure_cache_dir(cache_dir: Path) -> None:
    """Create the cache folder (and its lock folder); CacheError with a fix if impossible."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        locks = cache_dir / LOCK_DIR
        if locks.is_symlink():
            raise CacheError(f"{locks} is a symlink; remove it (the lock folder must be inside the cache)")
        locks.mkdir(exist_ok=True)
    except CacheError:
        raise
    except FileExistsError:
        if cache_dir.is_dir():  # the folder is fine: something else sits where its lock folder goes
            raise CacheError(f"{cache_dir / LOCK_DIR} exists but is not a folder; remove it (the lock folder "
                             "must be inside the cache)") from None
        raise CacheError(f"cache folder {cache_dir} exists but is not a folder; set cache_dir to a folder") from None
    except OSError as exc:
        what = "write into" if cache_dir.is_dir() else "create"
        raise CacheError(
            f"cannot {what} the cache folder {cache_dir} ({exc.strerror}); make it writable or set cache_dir elsewhere"
        ) from None
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        raise CacheError(f"cache folder {cache_dir} is not writable; fix its permissions or set cache_dir elsewhere")


def lock_path_for(engine_path: Path) -> Path:
    """The lock file guarding builds of ``engine_path``."""
    return engine_path.parent / LOCK_DIR / (engine_path.name + ".lock")


def engine_lock(engine_path: Path) -> FileLock:
    """An inter-process lock for one canonical engine (only avoids duplicate work).

    UnsafePathError when something planted a symlink, a hard link or a FIFO at the lock's
    path (or a symlink at the lock folder): see :func:`provisioning.locks.safe_lock`.
    """
    return safe_lock(lock_path_for(engine_path))


def lock_is_held(engine_path: Path) -> bool:
    """True when a live process holds the build lock of ``engine_path`` (see :func:`provisioning.locks.lock_held`)."""
    return lock_held(lock_path_for(engine_path))


def append_event(cache_dir: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to ``events.jsonl`` in a single write (no interleaving).

    A line torn by an earlier short write (a full disk, a quota) is ended first, so this
    event is not glued onto it and lost with it.
    """
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    path = cache_dir / EVENTS_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, 0o644)
    except OSError as exc:
        why = "it is a symlink; not followed" if os.path.islink(path) else exc.strerror or exc
        log.warning("cannot append to %s (%s); event not recorded", path, why)
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # a FIFO, or a second name of an outside file
            why = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"it has {st.st_nlink} hard links"
            log.warning("cannot append to %s (%s; nothing in the cache makes one; remove it); event not recorded",
                        path, why)
            return
        os.set_blocking(fd, True)
        size = st.st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    except OSError as exc:
        log.warning("cannot append to %s (%s); event not recorded", path, exc.strerror or exc)
    finally:
        os.close(fd)


def read_events(cache_dir: Path) -> list[dict[str, Any]]:
    """Every well-formed event in the log (a torn last line is skipped)."""
    try:
        with os.fdopen(open_nofollow(cache_dir / EVENTS_FILE), "rb") as handle:  # no link, no FIFO
            raw = handle.read()
    except OSError:
        return []
    events = []
    for line in raw.splitlines():
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # a torn or hostile line is skipped, never a crash
            continue
        if isinstance(value, dict):
            events.append(value)
    return events
