"""The domain records everything else passes around: a resolved backbone, a request, an outcome.

They sit below the compiler (which decides compile-or-reuse), so backends, the file name
schema and the host probe import them without importing the compiler: dependencies point
one way. :mod:`provisioning.compiler` re-exports them under their old names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import InputShape, ValidationCriteria, criteria_of
from .host import HostCapabilities

__all__ = ["BackboneSpec", "CompileOutcome", "EngineCompileRequest"]


class CompileOutcome(enum.Enum):
    """What happened to one backbone: compiled now, or an identical engine reused."""

    BUILT = "BUILT"
    REUSED = "REUSED"


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone, resolved for building: absolute paths, explicit input profiles."""

    model_name: str
    onnx_path: Path
    precision: str = "fp32"
    inputs: tuple[tuple[str, InputShape], ...] = ()
    external_data: tuple[Path, ...] = ()
    workspace_mb: int = 4096
    validate: ValidationCriteria | bool = False  # a bool means the default criteria (or none)
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    # TensorRT-RTX: the compute capabilities the plan targets (sorted ``sm86`` tags; part of the host key)
    compute_capabilities: tuple[str, ...] = ()

    @property
    def input_shapes(self) -> dict[str, InputShape]:
        """The explicit input profiles by input name."""
        return dict(self.inputs)

    def build_settings(self, backend: str) -> dict[str, Any]:
        """Every setting that can change the engine's bytes on ``backend`` (JSON-friendly)."""
        settings: dict[str, Any] = {
            "precision": self.precision,
            "inputs": {name: shape.as_dict() for name, shape in sorted(self.inputs)},
        }
        if backend in ("tensorrt", "tensorrt-rtx"):
            settings["workspace_mb"] = self.workspace_mb
        if backend == "tensorrt":
            settings["hardware_compatibility"] = self.hardware_compatibility
            settings["version_compatible"] = self.version_compatible
        return settings

    @property
    def source_files(self) -> tuple[Path, ...]:
        """The ONNX file and its external data files (the ``file_dep`` of its task)."""
        return (self.onnx_path, *self.external_data)

    @property
    def criteria(self) -> ValidationCriteria:
        """What validation asks of this backbone's engine (``enabled`` False: nothing)."""
        return criteria_of(self.validate)

    @property
    def validation_files(self) -> tuple[Path, ...]:
        """Files validation reads (an ``.npz`` of inputs): also a ``file_dep`` of the task."""
        file = self.criteria.inputs_file
        return (file,) if self.criteria.enabled and file is not None else ()


@dataclass(frozen=True)
class EngineCompileRequest:
    """What to compile, where to cache it, and for which host."""

    backbones: tuple[BackboneSpec, ...]
    cache_dir: Path
    host: HostCapabilities
    workspace_mb: int | None = None  # when set, overrides every backbone's workspace

    def resolved_backbones(self) -> tuple[BackboneSpec, ...]:
        """The backbones with the request-wide workspace applied."""
        if self.workspace_mb is None:
            return tuple(self.backbones)
        return tuple(replace(spec, workspace_mb=self.workspace_mb) for spec in self.backbones)
