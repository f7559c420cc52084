"""The records of a Triton export, shared by its planning half and its writing half.

:mod:`provisioning.serving.triton` plans (checks, touches nothing) and
:mod:`provisioning.serving.triton_repo` writes; both import these names from here, so
neither imports the other back.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import ProvisioningError
from ..sidecar import hash_fd, open_nofollow

DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
PROVENANCE = "provisioning.json"
SUMS = "SHA256SUMS"
LOCK_NAME = ".provisioning-export.lock"
TEMP_SUFFIX = ".incomplete"
RETIRED_SUFFIX = ".retired"


class ExportError(ProvisioningError, RuntimeError):
    """The export cannot be made from the cache as it is (exit 1): no fresh engine, a corrupt entry."""

    exit_code = 1


class ExportInputError(ProvisioningError, ValueError):
    """The export was asked for something it must refuse (exit 2); nothing is written."""

    exit_code = 2


@dataclass(frozen=True)
class TritonEngine:
    """One verified cache entry and the name it takes inside the version folder."""

    source: Path
    sha256: str
    size: int
    file_name: str  # inside REPO/<model>/<version>/
    host_key: str
    compute_capability: str | None = None  # "8.0"; TensorRT only
    gpu_name: str | None = None


@dataclass(frozen=True)
class ModelExport:
    """What one model's export writes (or, ``unchanged``, need not write)."""

    model_name: str
    model_dir: Path
    platform: str
    engines: tuple[TritonEngine, ...]
    config_text: str
    newest_version: int | None
    unchanged: bool  # the newest version already holds exactly these engines (by SHA-256)
    config_current: bool  # config.pbtxt already has exactly this text
    notes: tuple[str, ...] = ()

    @property
    def next_version(self) -> int:
        """The integer the new version folder gets."""
        return (self.newest_version or 0) + 1


@dataclass(frozen=True)
class ExportPlan:
    """The checked plan of a whole export; nothing has been written."""

    repo: Path
    models: tuple[ModelExport, ...]


@dataclass
class ExportResult:
    """What :func:`execute_export` did, as lines for people."""

    lines: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # the new version folders


def published_versions(model_dir: Path) -> list[int]:
    """The integer version folders Triton sees in ``model_dir``, oldest first."""
    try:
        names = os.listdir(model_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names
                  if n.isdigit() and int(n) > 0 and (model_dir / n).is_dir() and not (model_dir / n).is_symlink())


def version_holds(version_dir: Path, engines: Iterable[TritonEngine]) -> bool:
    """True when ``version_dir`` holds exactly these engine files, by SHA-256 of the bytes there."""
    wanted = {e.file_name: e.sha256 for e in engines}
    try:
        present = {n for n in os.listdir(version_dir) if n not in (PROVENANCE, SUMS)}
    except OSError:
        return False
    if present != set(wanted):
        return False
    for name, sha256 in wanted.items():
        try:
            fd = open_nofollow(version_dir / name)
        except OSError:
            return False
        try:
            if hash_fd(fd)[0] != sha256:
                return False
        finally:
            os.close(fd)
    return True


def provenance(model: ModelExport, version: int, method: str) -> bytes:
    """``provisioning.json`` of a version: which cache entries its files are, by SHA-256."""
    document = {
        "model_name": model.model_name, "version": version, "platform": model.platform,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "method": method,
        "files": [{"file_name": e.file_name, "sha256": e.sha256, "size": e.size, "engine": e.source.name,
                   "host_key": e.host_key, "compute_capability": e.compute_capability, "gpu_name": e.gpu_name}
                  for e in model.engines],
    }
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def temp_name(version: int) -> str:
    """A hidden, process-unique name for a version being written (Triton ignores it)."""
    return f".{version}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"



def link_refusal(path: Path) -> "ExportInputError":
    """The one-line refusal of a link at ``REPO/<model>`` or below (exit 2)."""
    return ExportInputError(f"{path} is a symlink; engines-export never writes, retires or reads through a link at "
                            "REPO/<model> or below (it could reach outside the repository); replace it with a real "
                            "folder or file, or remove it")


def open_model_dir(model_dir: Path, *, create: bool) -> int | None:
    """A descriptor of ``REPO/<model>``, opened without following a link; None when absent (and not created).

    ExportInputError when the folder, or a version folder, ``config.pbtxt``, the lock file or
    anything inside a version folder is a symlink. The repository folder itself may be a link
    (the user chose it); below it, every write goes through this descriptor (:func:`pinned`),
    so swapping ``REPO/<model>`` for a link afterwards changes nothing.
    """
    try:
        repo_fd = os.open(model_dir.parent, DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        if create:
            try:
                os.mkdir(model_dir.name, 0o755, dir_fd=repo_fd)
            except FileExistsError:
                pass
        try:
            fd = os.open(model_dir.name, DIR_FLAGS | NOFOLLOW, dir_fd=repo_fd)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError:
            if os.path.islink(model_dir):
                raise link_refusal(model_dir) from None
            raise
    finally:
        os.close(repo_fd)
    try:
        refuse_links(fd, model_dir)
    except BaseException:
        os.close(fd)
        raise
    return fd


def refuse_links(fd: int, model_dir: Path) -> None:
    with os.scandir(fd) as entries:
        for entry in entries:
            ours = entry.name in ("config.pbtxt", LOCK_NAME) or entry.name.isdigit()
            if ours and entry.is_symlink():
                raise link_refusal(model_dir / entry.name)
            if entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                child = os.open(entry.name, DIR_FLAGS | NOFOLLOW, dir_fd=fd)
                try:
                    with os.scandir(child) as inside:
                        for item in inside:
                            if item.is_symlink():
                                raise link_refusal(model_dir / entry.name / item.name)
                finally:
                    os.close(child)


def pinned(fd: int, fallback: Path) -> Path:
    """A path that reaches the folder open at ``fd`` whatever its name now points to (``/proc/self/fd``).

    Where /proc is missing, ``fallback`` (the folder's name): then a link swapped in after
    :func:`open_model_dir` checked is followed; a documented limit of such systems.
    """
    path = Path(f"/proc/self/fd/{fd}")
    return path if os.path.isdir(path) else fallback
