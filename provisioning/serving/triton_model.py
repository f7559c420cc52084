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
    return sorted(int(n) for n in names if n.isdigit() and int(n) > 0 and (model_dir / n).is_dir())


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

