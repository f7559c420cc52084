"""The corpus configuration: YAML in, frozen and validated dataclasses out.

Everything a user can get wrong is caught here (or, for facts only the ONNX file knows,
in :mod:`provisioning.compose`) before anything is built or written, and reported as one
line naming the file, the backbone and the field.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

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
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**34

# Values echoed in error messages are cut short: a YAML alias bomb expands to billions of
# elements, and a full repr() of it would take the memory and the screen.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 1, 6, 4, 60, 60


def _shown(value: Any) -> str:
    """A bounded repr of a user's value for an error message."""
    return _SHORT.repr(value)


def _names(keys: Any) -> str:
    """At most five key names, each bounded, for an 'unknown key(s)' message."""
    names = sorted(_SHORT.repr(k) if not isinstance(k, str) else _SHORT.repr(k)[1:-1] for k in keys)
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


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


VALIDATION_METRICS = ("allclose", "cosine")
_VALIDATE_KEYS = ("inputs", "rtol", "atol", "metric", "min_cosine", "runs", "max_latency_ms", "seed")
DEFAULT_VALIDATION_RUNS = 10
DEFAULT_MIN_COSINE = 0.999


@dataclass(frozen=True)
class ValidationCriteria:
    """What ``validate:`` asks of an engine before it is published (or reused).

    ``validate: true`` is the defaults: random inputs from seed 0, the precision's
    tolerances, ``allclose``. ``fixed_inputs`` holds values given in the YAML as JSON text
    (frozen and comparable); ``inputs_file`` an ``.npz`` of samples.
    """

    enabled: bool = False
    fixed_inputs: tuple[tuple[str, str], ...] = ()
    inputs_file: Path | None = None
    rtol: float | None = None
    atol: float | None = None
    metric: str = "allclose"
    min_cosine: float = DEFAULT_MIN_COSINE
    runs: int = DEFAULT_VALIDATION_RUNS
    max_latency_ms: float | None = None
    seed: int = 0

    def __bool__(self) -> bool:
        return self.enabled

    def as_dict(self) -> dict[str, Any]:
        """The criteria as recorded in the manifest (the input file by name; its digest is added by the caller)."""
        import json

        return {
            "inputs": {name: json.loads(value) for name, value in self.fixed_inputs},
            "inputs_file": self.inputs_file.name if self.inputs_file else None,
            "rtol": self.rtol, "atol": self.atol, "metric": self.metric,
            "min_cosine": self.min_cosine if self.metric == "cosine" else None,
            "runs": self.runs, "max_latency_ms": self.max_latency_ms, "seed": self.seed,
        }


def criteria_of(validate: "ValidationCriteria | bool") -> ValidationCriteria:
    """``validate`` as criteria (a plain bool means the defaults, or nothing)."""
    if isinstance(validate, ValidationCriteria):
        return validate
    return ValidationCriteria(enabled=bool(validate))


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys instead of keeping the last."""


# libyaml's parser (when PyYAML was built with it) reads a 1,000-backbone config ~8x faster
# than the pure-Python one; the same constructors run on top, so the document is the same
_HAVE_LIBYAML = hasattr(yaml, "CSafeLoader")


class _FastUniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """:class:`_UniqueKeyLoader` over libyaml's parser (the pure one where PyYAML lacks it)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            duplicate = False
        if duplicate:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_shown(key)} (line {line})", key_node.start_mark
            )
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


for _loader in (_UniqueKeyLoader, _FastUniqueKeyLoader):
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _load_yaml(text: str) -> Any:
    """The YAML document in ``text``: libyaml's parser, or on any error the pure-Python one.

    A broken config is parsed again by the pure-Python loader, which raises the error the
    user sees: its messages and positions are the ones this module always reported, and
    libyaml's own limits (flow nesting beyond 1,000) never reject a config PyYAML accepts.
    """
    if _HAVE_LIBYAML:
        try:
            return yaml.load(text, Loader=_FastUniqueKeyLoader)  # noqa: S506 - a SafeLoader equivalent
        except (yaml.YAMLError, RecursionError):
            pass
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


class _Where:
    """Builds the 'file: backbone: field' prefix of an error message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, message: str, *, backbone: str | None = None, key: str | None = None) -> ConfigError:
        parts = [str(self.path)]
        if backbone is not None:
            parts.append(f"backbone {backbone}")
        if key is not None:
            parts.append(f"field '{key}'")
        return ConfigError(": ".join(parts) + ": " + " ".join(message.split()))


def load_config(path: str | os.PathLike[str]) -> ProvisioningConfig:
    """Read and validate a corpus YAML file; raises :class:`ConfigError` with one line."""
    config_path = Path(os.path.abspath(os.fspath(path)))
    where = _Where(config_path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise where.error("config file not found; pass config=PATH or set PROVISIONING_CONFIG") from None
    except IsADirectoryError:
        raise where.error("is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise where.error("is not UTF-8 text; save the config as UTF-8 YAML") from None
    except OSError as exc:
        raise where.error(f"cannot read the config ({exc.strerror}); check its permissions") from None
    if "\x00" in text:
        raise where.error("contains a NUL byte; the config must be plain YAML text")
    try:
        data = _load_yaml(text)
    except RecursionError:  # PyYAML composes nested collections recursively
        raise where.error("invalid YAML: collections are nested too deeply; flatten the document") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise where.error(f"invalid YAML{at}: {problem}") from None
    return parse_config(data, config_path)


def parse_config(data: Any, config_path: Path) -> ProvisioningConfig:
    """Validate an already-parsed YAML document (``config_path`` anchors relative paths)."""
    where = _Where(config_path)
    if not isinstance(data, dict):
        raise where.error("the top level must be a mapping with a 'backbones' list")
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        raise where.error(f"unknown key(s) {_names(unknown)}; allowed keys are {', '.join(_TOP_KEYS)}")
    base = config_path.parent

    cache_dir = _path_field(data.get("cache_dir", "build/engines"), base, where, key="cache_dir")
    backend = _choice(data.get("backend", "auto"), BACKENDS, where, key="backend")
    workspace_mb = _int_field(data.get("workspace_mb", DEFAULT_WORKSPACE_MB), where, key="workspace_mb")
    verify = _choice(data.get("verify", "full"), VERIFY_MODES, where, key="verify")
    targets = _targets(data.get("compute_capabilities"), backend, where)
    remote = data.get("remote")
    if remote is not None:
        if not isinstance(remote, dict):
            raise where.error("must be a mapping (url, mode, ...)", key="remote")
        from .remote.config import parse_remote_config  # only configs with a remote pay for it

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


def _targets(raw: Any, backend: str, where: _Where, backbone: str | None = None) -> tuple[str, ...] | None:
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
            raise where.error(f"{_shown(item)} is not a compute capability; write it like sm86 or sm120, "
                              "or current for the visible GPU", backbone=backbone, key=key)
        if item.lower() in seen:
            raise where.error(f"{item} is listed twice", backbone=backbone, key=key)
        seen.append(item.lower())
    return tuple(seen)


def _parse_backbone(raw: Any, index: int, base: Path, where: _Where, backend: str) -> BackboneConfig:
    label = f"backbones[{index}]"
    if not isinstance(raw, dict):
        raise where.error("must be a mapping with model_name and onnx", backbone=label)
    name = raw.get("model_name")
    if name is None:
        raise where.error("missing", backbone=label, key="model_name")
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name):
        raise where.error(
            f"invalid name {_shown(name)}: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit (it becomes part of a file name in the cache)",
            backbone=label,
            key="model_name",
        )
    unknown = [k for k in raw if k not in _BACKBONE_KEYS]
    if unknown:
        raise where.error(
            f"unknown key(s) {_names(unknown)}; allowed keys are {', '.join(_BACKBONE_KEYS)}",
            backbone=name,
        )
    if "onnx" not in raw:
        raise where.error("missing; give the path of the ONNX file", backbone=name, key="onnx")
    onnx = _path_field(raw["onnx"], base, where, backbone=name, key="onnx")
    precision = _choice(raw.get("precision", "fp32"), PRECISIONS, where, backbone=name, key="precision")
    if backend in SUPPORTED_PRECISIONS and precision not in SUPPORTED_PRECISIONS[backend]:
        raise unsupported_precision(where.path, name, precision, backend)
    inputs = _parse_inputs(raw.get("inputs", {}), where, name)
    validate = _validate_field(raw.get("validate", False), base, where, name)
    hwc = _choice(
        raw.get("hardware_compatibility", "none"), HARDWARE_COMPATIBILITY, where, backbone=name,
        key="hardware_compatibility",
    )
    version_compatible = _bool_field(raw.get("version_compatible", False), where, name, "version_compatible")
    if backend == "tensorrt-rtx":
        for key, value, default in (("hardware_compatibility", hwc, "none"),
                                    ("version_compatible", version_compatible, False)):
            if value != default:
                raise where.error(f"{_shown(value)}: {RTX_UNSUPPORTED[key]}", backbone=name, key=key)
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
    return _Where(config_path).error(
        f"{precision} is not supported by the {backend} backend (it builds {allowed}); "
        "choose one of those or another backend",
        backbone=name,
        key="precision",
    )


def _parse_inputs(raw: Any, where: _Where, name: str) -> dict[str, InputShape]:
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
            dims = _dims(spec, where, name, key)
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
                + (f" (unknown {_names(extra)})" if extra else ""),
                backbone=name, key=key,
            )
        lo, opt, hi = (_dims(spec[k], where, name, f"{key}.{k}") for k in ("min", "opt", "max"))
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


def _dims(raw: Any, where: _Where, name: str, key: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw:
        raise where.error("must be a non-empty list of positive integers", backbone=name, key=key)
    for dim in raw:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise where.error(f"dimension {_shown(dim)} is not an integer", backbone=name, key=key)
        if dim <= 0:
            raise where.error(f"dimension {dim} must be positive", backbone=name, key=key)
        if dim > MAX_DIM:
            raise where.error(f"dimension {dim} is larger than {MAX_DIM}", backbone=name, key=key)
    if math.prod(raw) > MAX_ELEMENTS:
        raise where.error(
            f"shape {_shown(raw)} has {math.prod(raw)} elements, more than any engine can take ({MAX_ELEMENTS})",
            backbone=name, key=key,
        )
    return tuple(raw)


def _choice(raw: Any, allowed: tuple[str, ...], where: _Where, *, backbone: str | None = None, key: str) -> str:
    if not isinstance(raw, str) or raw not in allowed:
        raise where.error(f"unknown value {_shown(raw)}; use one of {', '.join(allowed)}", backbone=backbone, key=key)
    return raw


def _int_field(raw: Any, where: _Where, *, key: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise where.error(f"must be a whole number of MiB, got {_shown(raw)}", key=key)
    if raw <= 0:
        raise where.error(f"must be positive, got {raw}", key=key)
    if raw > 2**30:
        raise where.error(f"{raw} MiB is larger than any GPU memory", key=key)
    return raw


def _validate_field(raw: Any, base: Path, where: _Where, name: str) -> ValidationCriteria:
    """``validate: true | false`` or a mapping of criteria; each bad field is one line."""
    import json

    if isinstance(raw, bool):
        return ValidationCriteria(enabled=raw)
    if not isinstance(raw, dict):
        raise where.error(f"must be true, false or a mapping (inputs, rtol, atol, metric, runs, ...), got {_shown(raw)}",
                          backbone=name, key="validate")
    unknown = [k for k in raw if k not in _VALIDATE_KEYS]
    if unknown:
        raise where.error(f"unknown key(s) {_names(unknown)}; allowed keys are {', '.join(_VALIDATE_KEYS)}",
                          backbone=name, key="validate")

    def number(key: str, *, low: float, high: float | None = None, strict: bool = False) -> float | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise where.error(f"must be a number, got {_shown(raw.get(key))}", backbone=name, key=f"validate.{key}")
        if value < low or (strict and value == low) or (high is not None and value > high):
            bound = f"greater than {low:g}" if strict else f"at least {low:g}"
            bound += f" and at most {high:g}" if high is not None else ""
            raise where.error(f"{value:g} must be {bound}", backbone=name, key=f"validate.{key}")
        return float(value)

    metric = _choice(raw.get("metric", "allclose"), VALIDATION_METRICS, where, backbone=name, key="validate.metric")
    min_cosine = number("min_cosine", low=-1.0, high=1.0)
    if min_cosine is not None and metric != "cosine":
        raise where.error("applies only to metric: cosine", backbone=name, key="validate.min_cosine")
    runs = raw.get("runs", DEFAULT_VALIDATION_RUNS)
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= 10000:
        raise where.error(f"must be a whole number of runs from 1 to 10000, got {_shown(runs)}",
                          backbone=name, key="validate.runs")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise where.error(f"must be a whole number from 0 to 2**32-1, got {_shown(seed)}",
                          backbone=name, key="validate.seed")
    fixed: list[tuple[str, str]] = []
    inputs_file = None
    values = raw.get("inputs")
    if isinstance(values, str):
        inputs_file = _path_field(values, base, where, backbone=name, key="validate.inputs")
        if inputs_file.suffix != ".npz":
            raise where.error(f"{values} is not an .npz file (one array per input name, numpy.savez)",
                              backbone=name, key="validate.inputs")
        if not inputs_file.is_file():
            raise where.error(f"file {inputs_file} not found; fix the path or write it with numpy.savez",
                              backbone=name, key="validate.inputs")
    elif isinstance(values, dict):
        for input_name, value in values.items():
            key = f"validate.inputs.{input_name}"
            if not isinstance(input_name, str) or not input_name:
                raise where.error("input names must be non-empty strings", backbone=name, key="validate.inputs")
            if _nested_shape(value) is None:
                raise where.error(f"{_shown(value)} is not a number or a rectangular nested list of numbers",
                                  backbone=name, key=key)
            fixed.append((input_name, json.dumps(value)))
    elif values is not None:
        raise where.error("must map input names to values (sr: 16000) or name an .npz file",
                          backbone=name, key="validate.inputs")
    return ValidationCriteria(
        enabled=True, fixed_inputs=tuple(sorted(fixed)), inputs_file=inputs_file,
        rtol=number("rtol", low=0.0), atol=number("atol", low=0.0), metric=metric,
        min_cosine=DEFAULT_MIN_COSINE if min_cosine is None else min_cosine, runs=runs,
        max_latency_ms=number("max_latency_ms", low=0.0, strict=True), seed=seed,
    )


def _nested_shape(value: Any) -> tuple[int, ...] | None:
    """The shape of a scalar or a rectangular nested list of numbers (None when it is neither)."""
    if isinstance(value, (bool, int, float)):
        return ()
    if not isinstance(value, list) or not value:
        return None
    shapes = {_nested_shape(item) for item in value}
    if len(shapes) != 1 or None in shapes:
        return None
    return (len(value), *shapes.pop())


def _bool_field(raw: Any, where: _Where, name: str, key: str) -> bool:
    if not isinstance(raw, bool):
        raise where.error(f"must be true or false, got {_shown(raw)}", backbone=name, key=key)
    return raw


def _path_field(raw: Any, base: Path, where: _Where, *, backbone: str | None = None, key: str) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise where.error(f"must be a non-empty path string, got {_shown(raw)}", backbone=backbone, key=key)
    if "\x00" in raw:
        raise where.error("contains a NUL byte", backbone=backbone, key=key)
    expanded = os.path.expanduser(raw)
    return Path(os.path.normpath(os.path.join(base, expanded)))
