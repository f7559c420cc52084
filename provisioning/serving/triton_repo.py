"""The writing half of a Triton export: hidden version folder, fsync, rename; config.pbtxt by rename.

Nothing at ``REPO/<model>`` or below is followed through a link: the model folder is opened
with O_NOFOLLOW (a link there, or at a version folder, ``config.pbtxt``, the lock file or
inside a version, is refused with one line, exit 2), and every write, rename and deletion
goes through that open folder (``/proc/self/fd/N``), never through its name again.

Order per model, under a per-model lock file (``.provisioning-export.lock``) so that two
exports never interleave: remove the hidden leftovers of interrupted exports, compare the
newest version with the engines (SHA-256), write a new version only if they differ,
replace ``config.pbtxt`` only if its text differs, then retire old versions (``keep``).
A kill at any instant leaves complete integer versions and, at worst, hidden leftovers.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ..cache import safe_lock
from ..sidecar import atomic_write_bytes, fsync_dir, hash_fd, open_nofollow, write_temp
from .triton_model import (DIR_FLAGS, LOCK_NAME, NOFOLLOW, PROVENANCE, RETIRED_SUFFIX, SUMS, TEMP_SUFFIX,
                           ExportError, ExportPlan, ExportResult, ModelExport, TritonEngine, open_model_dir, pinned,
                           provenance, published_versions, temp_name, version_holds)

__all__ = ["execute_export"]

# link() failures that mean "this file system (or mount) cannot hard-link here": copy instead
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.ENOSYS}


def execute_export(plan: ExportPlan, *, keep: int | None = None, link: bool = True) -> ExportResult:
    """Write the plan's models into the repository; ExportError (one line) if a write fails.

    A failed write removes its hidden version folder; versions published before stay intact.
    """
    result = ExportResult([f"engines-export: {plan.repo}"])
    for model in plan.models:
        try:
            _export_model(model, keep, link, result)
        except OSError as exc:
            raise ExportError(f"{model.model_name}: cannot write {model.model_dir} ({exc.strerror or exc}); fix "
                              "that and export again (published versions are untouched)") from None
    result.lines += note_lines(plan)
    return result


def note_lines(plan: ExportPlan) -> list[str]:
    """Each distinct note once, with the models it concerns."""
    by_note: dict[str, list[str]] = {}
    for model in plan.models:
        for note in model.notes:
            by_note.setdefault(note, []).append(model.model_name)
    return [f"note ({', '.join(models)}): {note}" for note, models in by_note.items()]


def _export_model(model: ModelExport, keep: int | None, link: bool, result: ExportResult) -> None:
    model.model_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = open_model_dir(model.model_dir, create=True)  # ExportInputError for a link at REPO/<model> or below
    try:
        with safe_lock(model.model_dir / LOCK_NAME):
            _export_locked(model, pinned(fd, model.model_dir), keep, link, result)
    finally:
        os.close(fd)


def _export_locked(model: ModelExport, folder: Path, keep: int | None, link: bool, result: ExportResult) -> None:
    """The export of one model into ``folder``, the pinned path of its open, checked folder."""
    name = model.model_name
    removed = _clean_leftovers(folder)
    if removed:
        result.lines.append(f"{name}: removed {removed} hidden leftover(s) of an interrupted export")
    versions = published_versions(folder)
    newest = versions[-1] if versions else None
    if newest is not None and version_holds(folder / str(newest), model.engines):
        result.lines.append(f"{name}: unchanged: version {newest} already holds these engines (sha256); "
                            "no version written")
    else:
        version = (newest or 0) + 1
        method = _write_version(model, folder, version, link)
        versions.append(version)
        result.written.append(model.model_dir / str(version))
        files = ", ".join(e.file_name + (f" [{e.compute_capability}]" if len(model.engines) > 1 else "")
                          for e in model.engines)
        result.lines.append(f"{name}: version {version} ({model.platform}, {method}): {files}")
    config = folder / "config.pbtxt"
    if current_text(config) != model.config_text:
        atomic_write_bytes(config, model.config_text.encode())
        fsync_dir(folder)
        result.lines.append(f"{name}: wrote {model.model_dir / 'config.pbtxt'}")
    if keep is not None and len(versions) > keep:
        retired = versions[:-keep]
        _retire(folder, retired)
        result.lines.append(f"{name}: retired version(s) {', '.join(map(str, retired))} (--keep {keep})")


def _write_version(model: ModelExport, folder: Path, version: int, link: bool) -> str:
    """Fill a hidden folder, fsync it, rename it to ``version``; returns how the bytes got there."""
    tmp = folder / temp_name(version)
    os.mkdir(tmp)
    try:
        tmp_fd = os.open(tmp, DIR_FLAGS | NOFOLLOW)  # the new folder itself, whatever its name becomes meanwhile
        try:
            inside = pinned(tmp_fd, tmp)
            methods = [_place(model.model_name, engine, inside / engine.file_name, link) for engine in model.engines]
            method = " and ".join(sorted(set(methods)))
            atomic_write_bytes(inside / PROVENANCE, provenance(model, version, method))
            sums = "".join(f"{e.sha256}  {e.file_name}\n" for e in model.engines)
            atomic_write_bytes(inside / SUMS, sums.encode())
            os.fsync(tmp_fd)
        finally:
            os.close(tmp_fd)
        os.rename(tmp, folder / str(version))  # the commit point: Triton sees all of it or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(folder)
    return method


def _place(model_name: str, engine: TritonEngine, dest: Path, link: bool) -> str:
    """Put the verified bytes at ``dest``: hard link (then hash the link) or copy while hashing.

    Hashing what landed at ``dest``, not the cache file before, means a cache entry replaced
    or damaged in between can never slip into a version.
    """
    if link:
        try:
            os.link(engine.source, dest, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
        else:
            fd = open_nofollow(dest)
            try:
                sha256 = hash_fd(fd)[0]
            finally:
                os.close(fd)
            _require(model_name, engine, sha256, dest)
            return "hard-linked"
    tmp, sha256, _ = write_temp(dest, engine.source)  # fsynced
    _require(model_name, engine, sha256, tmp)
    os.rename(tmp, dest)
    return "copied"


def _require(model_name: str, engine: TritonEngine, sha256: str, landed: Path) -> None:
    if sha256 != engine.sha256:
        landed.unlink()
        raise ExportError(f"{model_name}: cache entry {engine.source} does not match its sidecar any more (corrupt "
                          "or replaced during the export); nothing published for it; run doit engines, then "
                          "export again")


def current_text(path: Path) -> str | None:
    """The text of a regular file (no link, no FIFO: see :func:`open_nofollow`); None when unreadable."""
    try:
        with os.fdopen(open_nofollow(path), "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def _clean_leftovers(folder: Path) -> int:
    """Remove hidden version folders and config temp files of exports that died (we hold the lock)."""
    removed = 0
    for name in os.listdir(folder):
        if name.startswith(".") and (name.endswith(TEMP_SUFFIX) or name.endswith(RETIRED_SUFFIX)):
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def _retire(folder: Path, versions: list[int]) -> None:
    """Hide each old version with one rename (Triton unloads it whole), then delete it."""
    hidden = []
    for version in versions:
        target = folder / temp_name(version).replace(TEMP_SUFFIX, RETIRED_SUFFIX)
        os.rename(folder / str(version), target)
        hidden.append(target)
    fsync_dir(folder)
    for path in hidden:
        shutil.rmtree(path, ignore_errors=True)
