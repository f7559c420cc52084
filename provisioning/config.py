"""The corpus configuration: YAML in, frozen and validated dataclasses out.

Everything a user can get wrong is caught here (or, for facts only the ONNX file knows,
in :mod:`provisioning.compose`) before anything is built or written, and reported as one
line naming the file, the backbone and the field.

This module holds the corpus structure (the dataclasses, the top-level and per-backbone
keys); the concepts under it live beside it, and their names stay importable from here:

- :mod:`provisioning.config_yaml`: reading the YAML document (duplicate keys refused);
- :mod:`provisioning.config_fields`: the checker of each kind of field, and the capped
  :func:`~provisioning.config_fields.shown` that error messages echo values with;
- :mod:`provisioning.config_validate`: the ``validate:`` criteria.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config_fields import (MAX_DIM, MAX_ELEMENTS, Where, bool_field, choice, dims_field, int_field, names,
                            nested_shape, path_field, shown)
from .config_validate import (DEFAULT_MIN_COSINE, DEFAULT_VALIDATION_RUNS, VALIDATE_KEYS, VALIDATION_METRICS,
                              ValidationCriteria, criteria_of, parse_validate)
from .config_yaml import load_yaml, read_yaml_file
from .errors import ConfigError

__all__ = ["BACKENDS", "DEFAULT_MIN_COSINE", "DEFAULT_VALIDATION_RUNS", "DEFAULT_WORKSPACE_MB",
           "HARDWARE_COMPATIBILITY", "MAX_DIM", "MAX_ELEMENTS", "MODEL_NAME_RE", "PRECISIONS", "RTX_UNSUPPORTED",
           "SUPPORTED_PRECISIONS", "TARGET_RE", "TENSORRT_BACKENDS", "VALIDATION_METRICS", "VERIFY_MODES",
           "BackboneConfig", "ConfigError", "InputShape", "ProvisioningConfig", "ValidationCriteria",
           "criteria_of", "load_config", "nested_shape", "parse_config", "shown", "unsupported_precision"]

# The private names other modules and tests have used, kept as they were.
_shown = shown
_names = names
_nested_shape = nested_shape
_load_yaml = load_yaml
_Where = Where
_VALIDATE_KEYS = VALIDATE_KEYS
_validate_field = parse_validate
_choice, _int_field, _bool_field, _path_field, _dims = choice, int_field, bool_field, path_field, dims_field

BACKENDS = ("auto", "onnxruntime", "tensorrt", "tensorrt-rtx")
TENSORRT_BACKENDS = ("tensorrt", "tensorrt-rtx")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
SUPPORTED_PRECISIONS = {
    "onnxruntime": ("fp32", "int8"),
    "tensorrt": ("fp32", "fp16", "bf16", "int8"),
    "tensorrt-rtx": ("fp32", "fp16", "bf16", "int8"),
}
# Compute-capability targets of TensorRT-RTX as written in a config: sm86, SM120, or current
# (the visible GPU). Which targets exist is the installed version's ComputeCapability enum,
# checked in compose once the backend is known.
TARGET_RE = re.compile(r"(?i)sm[1-9][0-9]{1,2}|current")
# What TensorRT-RTX cannot honour, and why (refused when the config is loaded).
RTX_UNSUPPORTED = {
    "hardware_compatibility": "TensorRT-RTX has no hardware compatibility levels (an RTX engine already runs "
                              "on every GPU of its compute_capabilities); remove it or set none",
    "version_compatible": "TensorRT-RTX cannot build version-compatible engines (it ships no lean runtime); "
                          "remove it or set false",
}
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
VERIFY_MODES = ("full", "stat")
DEFAULT_WORKSPACE_MB = 4096
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TOP_KEYS = ("cache_dir", "backend", "workspace_mb", "verify", "compute_capabilities", "backbones", "remote")
_BACKBONE_KEYS = (
    "model_name",
    "onnx",
    "precision",
    "inputs",
    "validate",
    "hardware_compatibility",
    "version_compatible",
    "compute_capabilities",
)


@dataclass(frozen=True)
class InputShape:
    """One input's optimisation profile; a fixed shape has min == opt == max."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def is_static(self) -> bool:
        """True when the profile admits exactly one shape."""
        return self.min == self.opt == self.max

    def as_dict(self) -> dict[str, list[int]]:
        """A JSON-friendly form, used in manifests and settings digests."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class BackboneConfig:
    """One backbone as the user wrote it, validated (paths already absolute)."""

    model_name: str
    onnx: Path
    precision: str = "fp32"
    inputs: Mapping[str, InputShape] = field(default_factory=dict)
    validate: ValidationCriteria = ValidationCriteria()
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    # TensorRT-RTX targets as written (lower case), None: the top-level list applies
    compute_capabilities: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ProvisioningConfig:
    """The whole corpus configuration, validated."""

    config_path: Path
    cache_dir: Path
    backend: str
    workspace_mb: int
    verify: str
    backbones: tuple[BackboneConfig, ...]
    remote: Mapping[str, Any] | None = None
    # TensorRT-RTX targets for every backbone without its own list (None: not given)
    compute_capabilities: tuple[str, ...] | None = None


def load_config(path: str | os.PathLike[str]) -> ProvisioningConfig:
    """Read and validate a corpus YAML file; raises :class:`ConfigError` with one line."""
    config_path = Path(os.path.abspath(os.fspath(path)))
    return parse_config(read_yaml_file(config_path), config_path)


def parse_config(data: Any, config_path: Path) -> ProvisioningConfig:
    """Validate an already-parsed YAML document (``config_path`` anchors relative paths)."""
    where = Where(config_path)
    if not isinstance(data, dict):
        raise where.error("the top level must be a mapping with a 'backbones' list")
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        raise where.error(f"unknown key(s) {names(unknown)}; allowed keys are {', '.join(_TOP_KEYS)}")
    base = config_path.parent

    cache_dir = path_field(data.get("cache_dir", "build/engines"), base, where, key="cache_dir")
    backend = choice(data.get("backend", "auto"), BACKENDS, where, key="backend")
    workspace_mb = int_field(data.get("workspace_mb", DEFAULT_WORKSPACE_MB), where, key="workspace_mb")
    verify = choice(data.get("verify", "full"), VERIFY_MODES, where, key="verify")
    targets = _targets(data.get("compute_capabilities"), backend, where)
    remote = data.get("remote")
    if remote is not None:
        if not isinstance(remote, dict):
            raise where.error("must be a mapping (url, mode, ...)", key="remote")
        from .config_remote import parse_remote_config

        parse_remote_config(remote, config_path)  # a bad block fails here, before any task runs

    raw_backbones = data.get("backbones")
    if raw_backbones is None:
        raise where.error("missing; list at least one backbone (model_name, onnx)", key="backbones")
    if not isinstance(raw_backbones, list) or not raw_backbones:
        raise where.error("must be a non-empty list of backbones", key="backbones")
    backbones = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_backbones):
        backbone = _parse_backbone(raw, index, base, where, backend)
        folded = backbone.model_name.lower()
        if folded in seen:
            raise where.error(
                f"duplicate model_name (also backbones[{seen[folded]}]; names are compared "
                "case-insensitively because some file systems are); rename one of them",
                backbone=backbone.model_name,
                key="model_name",
            )
        seen[folded] = index
        backbones.append(backbone)
    return ProvisioningConfig(
        config_path=config_path,
        cache_dir=cache_dir,
        backend=backend,
        workspace_mb=workspace_mb,
        verify=verify,
        backbones=tuple(backbones),
        remote=remote,
        compute_capabilities=targets,
    )


def _targets(raw: Any, backend: str, where: Where, backbone: str | None = None) -> tuple[str, ...] | None:
    """A ``compute_capabilities`` list, checked for form (membership is checked in compose)."""
    if raw is None:
        return None
    key = "compute_capabilities"
    if backend != "tensorrt-rtx":
        raise where.error(
            f"applies only to backend: tensorrt-rtx (this config uses {backend}); remove it or set "
            "backend: tensorrt-rtx", backbone=backbone, key=key)
    if not isinstance(raw, list) or not raw:
        raise where.error("must be a non-empty list such as [sm86, sm89, sm120] (or [current] on a GPU host)",
                          backbone=backbone, key=key)
    seen: list[str] = []
    for item in raw:
        if not isinstance(item, str) or not TARGET_RE.fullmatch(item):
            raise where.error(f"{shown(item)} is not a compute capability; write it like sm86 or sm120, "
                              "or current for the visible GPU", backbone=backbone, key=key)
        if item.lower() in seen:
            raise where.error(f"{item} is listed twice", backbone=backbone, key=key)
        seen.append(item.lower())
    return tuple(seen)


def _parse_backbone(raw: Any, index: int, base: Path, where: Where, backend: str) -> BackboneConfig:
    label = f"backbones[{index}]"
    if not isinstance(raw, dict):
        raise where.error("must be a mapping with model_name and onnx", backbone=label)
    name = raw.get("model_name")
    if name is None:
        raise where.error("missing", backbone=label, key="model_name")
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name):
        raise where.error(
            f"invalid name {shown(name)}: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit (it becomes part of a file name in the cache)",
            backbone=label,
            key="model_name",
        )
    unknown = [k for k in raw if k not in _BACKBONE_KEYS]
    if unknown:
        raise where.error(
            f"unknown key(s) {names(unknown)}; allowed keys are {', '.join(_BACKBONE_KEYS)}",
            backbone=name,
        )
    if "onnx" not in raw:
        raise where.error("missing; give the path of the ONNX file", backbone=name, key="onnx")
    onnx = path_field(raw["onnx"], base, where, backbone=name, key="onnx")
    precision = choice(raw.get("precision", "fp32"), PRECISIONS, where, backbone=name, key="precision")
    if backend in SUPPORTED_PRECISIONS and precision not in SUPPORTED_PRECISIONS[backend]:
        raise unsupported_precision(where.path, name, precision, backend)
    inputs = _parse_inputs(raw.get("inputs", {}), where, name)
    validate = parse_validate(raw.get("validate", False), base, where, name)
    hwc = choice(
        raw.get("hardware_compatibility", "none"), HARDWARE_COMPATIBILITY, where, backbone=name,
        key="hardware_compatibility",
    )
    version_compatible = bool_field(raw.get("version_compatible", False), where, name, "version_compatible")
    if backend == "tensorrt-rtx":
        for key, value, default in (("hardware_compatibility", hwc, "none"),
                                    ("version_compatible", version_compatible, False)):
            if value != default:
                raise where.error(f"{shown(value)}: {RTX_UNSUPPORTED[key]}", backbone=name, key=key)
    targets = _targets(raw.get("compute_capabilities"), backend, where, backbone=name)
    return BackboneConfig(
        model_name=name,
        onnx=onnx,
        precision=precision,
        inputs=inputs,
        validate=validate,
        hardware_compatibility=hwc,
        version_compatible=version_compatible,
        compute_capabilities=targets,
    )


def unsupported_precision(config_path: Path, name: str, precision: str, backend: str) -> ConfigError:
    """The error for a precision the chosen backend cannot build."""
    allowed = ", ".join(SUPPORTED_PRECISIONS[backend])
    return Where(config_path).error(
        f"{precision} is not supported by the {backend} backend (it builds {allowed}); "
        "choose one of those or another backend",
        backbone=name,
        key="precision",
    )


def _parse_inputs(raw: Any, where: Where, name: str) -> dict[str, InputShape]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise where.error("must map input names to shapes", backbone=name, key="inputs")
    shapes: dict[str, InputShape] = {}
    for input_name, spec in raw.items():
        key = f"inputs.{input_name}"
        if not isinstance(input_name, str) or not input_name or "\x00" in input_name:
            raise where.error("input names must be non-empty strings", backbone=name, key="inputs")
        if isinstance(spec, list):
            dims = dims_field(spec, where, name, key)
            shapes[input_name] = InputShape(dims, dims, dims)
            continue
        if not isinstance(spec, dict):
            raise where.error(
                "must be a shape like [1, 3, 224, 224] or {min: [...], opt: [...], max: [...]}",
                backbone=name, key=key,
            )
        extra = [k for k in spec if k not in ("min", "opt", "max")]
        missing = [k for k in ("min", "opt", "max") if k not in spec]
        if extra or missing:
            raise where.error(
                "a profile needs exactly min, opt and max"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unknown {names(extra)})" if extra else ""),
                backbone=name, key=key,
            )
        lo, opt, hi = (dims_field(spec[k], where, name, f"{key}.{k}") for k in ("min", "opt", "max"))
        if not len(lo) == len(opt) == len(hi):
            raise where.error(
                f"min, opt and max have different ranks ({len(lo)}, {len(opt)}, {len(hi)})",
                backbone=name, key=key,
            )
        for axis, (a, b, c) in enumerate(zip(lo, opt, hi)):
            if not a <= b <= c:
                raise where.error(
                    f"axis {axis} is out of order (min {a}, opt {b}, max {c}); need min <= opt <= max",
                    backbone=name, key=key,
                )
        shapes[input_name] = InputShape(lo, opt, hi)
    return shapes
