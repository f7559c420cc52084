"""The composition root: config -> backend, host, specs, compiler and request.

This is the only place that chooses a backend and probes the host; the compiler gets
both handed in.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

from .backends.base import CompileEngineCallable
from .compiler import BackboneSpec, EngineCompiler, EngineCompileRequest
from .config import (SUPPORTED_PRECISIONS, TENSORRT_BACKENDS, BackboneConfig, ProvisioningConfig, load_config,
                     unsupported_precision)
from .errors import BackendUnavailableError, ConfigError
from .host import HostCapabilities, sort_targets
from .probe import probe_host
from .onnxinfo import cached_inspection, inspect_onnx, remember_inspection

__all__ = [
    "build_backbone_specs",
    "build_compile_request",
    "build_engine_compiler",
    "load_config",
    "make_backend",
    "probe_host_for",
    "resolve_backend",
]


def resolve_backend(config: ProvisioningConfig) -> str:
    """The config's backend; ``auto`` picks TensorRT when it is installed and a GPU is visible.

    ``auto`` never picks TensorRT-RTX: its engines run only on the GPUs listed as targets,
    so choosing it is the user's decision (``backend: tensorrt-rtx``).
    """
    if config.backend != "auto":
        return config.backend
    if importlib.util.find_spec("tensorrt") is None:
        return "onnxruntime"
    from .gpu import gpu_visible

    return "tensorrt" if gpu_visible() else "onnxruntime"


def probe_host_for(config: ProvisioningConfig, backend: str | None = None) -> HostCapabilities:
    """Probe this host for the config's backend (milliseconds, no heavy imports).

    For TensorRT-RTX the host also carries the union of the backbones' targets, the host
    key that ``engines-status`` and ``engines-key`` show.
    """
    host = probe_host(backend or resolve_backend(config))
    if host.backend != "tensorrt-rtx":
        return host
    targets: set[str] = set()
    for backbone in config.backbones:
        try:
            targets.update(rtx_targets(config, backbone, host))
        except ConfigError:
            continue  # build_backbone_specs reports it, naming the backbone
    return replace(host, compute_capabilities=sort_targets(targets))


def rtx_targets(config: ProvisioningConfig, backbone: BackboneConfig, host: HostCapabilities) -> tuple[str, ...]:
    """The backbone's TensorRT-RTX targets, ``current`` resolved, checked against the installed version."""
    from .backends.tensorrt import compute_capability_targets

    where = f"{config.config_path}: backbone {backbone.model_name}: field 'compute_capabilities'"
    known = compute_capability_targets("tensorrt_rtx")
    allowed = ", ".join(known)
    raw = backbone.compute_capabilities or config.compute_capabilities
    if raw is None:
        if host.gpu is None:
            raise ConfigError(f"{where}: missing, and no GPU is visible to build for; list the target GPUs, "
                              f"e.g. compute_capabilities: [sm86, sm89] (TensorRT-RTX {host.backend_version} "
                              f"targets {allowed}; current needs a visible GPU)")
        raw = ("current",)
    resolved = []
    for item in raw:
        if item == "current":
            if host.gpu is None:
                raise ConfigError(f"{where}: current means the visible GPU and none is visible; list the "
                                  f"targets instead (TensorRT-RTX {host.backend_version} targets {allowed})")
            item = host.gpu.sm
            if item not in known:
                raise ConfigError(f"{where}: current is {host.gpu.name} ({item}), which TensorRT-RTX "
                                  f"{host.backend_version} cannot target (it targets {allowed}); list the "
                                  "targets of your inference GPUs instead")
        elif item not in known:
            raise ConfigError(f"{where}: {item} is not a target of TensorRT-RTX {host.backend_version}; use "
                              f"some of {allowed}")
        resolved.append(item)
    return sort_targets(resolved)


def make_backend(name: str) -> CompileEngineCallable:
    """Instantiate a backend by name (imports nothing heavy until it compiles)."""
    if name == "onnxruntime":
        from .backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name in TENSORRT_BACKENDS:
        try:
            from .backends.tensorrt import TensorRTBackend
        except ImportError as exc:  # pragma: no cover - the module itself imports nothing heavy
            raise BackendUnavailableError(f"the TensorRT backend cannot be loaded ({exc})") from None
        return TensorRTBackend(name)
    raise BackendUnavailableError(f"unknown backend {name!r}; use onnxruntime, tensorrt or tensorrt-rtx")


def build_backbone_specs(config: ProvisioningConfig, backend: str | None = None, *,
                         host: HostCapabilities | None = None) -> tuple[BackboneSpec, ...]:
    """Resolve every backbone against its ONNX file; ConfigError names file, backbone and field.

    ``host`` (probed when needed and not given) resolves TensorRT-RTX targets.
    """
    backend = backend or (host.backend if host is not None else resolve_backend(config))
    if backend == "tensorrt-rtx" and (host is None or host.backend != backend):
        host = probe_host_for(config, backend)
    specs = []
    fresh = []  # inspections to remember, written only once the whole config is valid
    for backbone in config.backbones:
        where = f"{config.config_path}: backbone {backbone.model_name}"
        if backbone.precision not in SUPPORTED_PRECISIONS[backend]:
            raise unsupported_precision(config.config_path, backbone.model_name, backbone.precision, backend)
        info = cached_inspection(backbone.onnx, config.cache_dir)
        if info is None:
            info = inspect_onnx(backbone.onnx, where=f"{where}: field 'onnx'")
            fresh.append(info)
        for name, shape in backbone.inputs.items():
            graph_input = info.input(name)
            if graph_input is None:
                known = ", ".join(i.name for i in info.inputs) or "none"
                raise ConfigError(
                    f"{where}: field 'inputs.{name}': the ONNX has no input {name!r} (its inputs: {known})"
                )
            if graph_input.dims and len(graph_input.dims) != len(shape.opt):
                raise ConfigError(
                    f"{where}: field 'inputs.{name}': rank {len(shape.opt)} but the ONNX input has rank "
                    f"{len(graph_input.dims)} {_dims_text(graph_input.dims)}"
                )
            for axis, fixed in enumerate(graph_input.dims):
                if isinstance(fixed, int) and not shape.min[axis] == shape.max[axis] == fixed:
                    raise ConfigError(
                        f"{where}: field 'inputs.{name}': axis {axis} is fixed to {fixed} in the ONNX "
                        f"{_dims_text(graph_input.dims)}; the profile must use {fixed} there"
                    )
        if backbone.validate:
            _check_validation_inputs(info, backbone, where)
        targets: tuple[str, ...] = ()
        if backend in TENSORRT_BACKENDS:
            for graph_input in info.inputs:
                if not graph_input.is_static and graph_input.name not in backbone.inputs:
                    raise ConfigError(
                        f"{where}: field 'inputs': ONNX input {graph_input.name!r} has dynamic dims "
                        f"{_dims_text(graph_input.dims)}; give it a shape or a min/opt/max profile"
                    )
            _check_shared_dim_names(info, backbone, where)
        if backend == "tensorrt-rtx":
            assert host is not None
            targets = rtx_targets(config, backbone, host)
            if backbone.validate and (host.gpu is None or host.gpu.sm not in targets):
                gpu = "no GPU is visible" if host.gpu is None else \
                    f"the visible GPU ({host.gpu.name}, {host.gpu.sm}) is not among the targets"
                raise ConfigError(
                    f"{where}: field 'validate': validation runs the engine on a GPU and {gpu}; set "
                    "validate: false here (the engine is still built and sealed) and validate on an "
                    "inference host, or add that GPU's target")
        specs.append(backbone_spec(config, backbone, info.external_data, compute_capabilities=targets))
    if fresh:  # kept in memory until a build creates the cache folder (see remember_inspection)
        for info in fresh:
            remember_inspection(info, config.cache_dir)
    return tuple(specs)


def backbone_spec(config: ProvisioningConfig, backbone: BackboneConfig, external_data: tuple[Path, ...], *,
                  compute_capabilities: tuple[str, ...] = ()) -> BackboneSpec:
    """The one mapping of a config backbone to the BackboneSpec its engine is built (and named) from.

    :func:`build_backbone_specs` adds the checks against the ONNX and the host; a release
    builder (:mod:`provisioning.release.today`) uses it to compute today's inputs the same way.
    """
    return BackboneSpec(
        model_name=backbone.model_name,
        onnx_path=backbone.onnx,
        precision=backbone.precision,
        inputs=tuple(sorted(backbone.inputs.items())),
        external_data=external_data,
        workspace_mb=config.workspace_mb,
        validate=backbone.validate,
        hardware_compatibility=backbone.hardware_compatibility,
        version_compatible=backbone.version_compatible,
        compute_capabilities=compute_capabilities,
    )


_INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOAT_TYPES = ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16")


def _check_validation_inputs(info, backbone: BackboneConfig, where: str) -> None:
    """Fixed validation values name real inputs, have their kind of number and fit their shapes."""
    import json

    from .config_fields import nested_shape as _nested_shape

    for name, text in backbone.validate.fixed_inputs:
        key = f"{where}: field 'validate.inputs.{name}'"
        graph_input = info.input(name)
        if graph_input is None:
            known = ", ".join(i.name for i in info.inputs) or "none"
            raise ConfigError(f"{key}: the ONNX has no input {name!r} (its inputs: {known})")
        value = json.loads(text)
        shape = _nested_shape(value)
        flat = _flatten(value)
        if graph_input.elem_type in _INTEGER_TYPES and not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in flat):
            raise ConfigError(f"{key}: input {name!r} is {graph_input.elem_type}; give whole numbers")
        if graph_input.elem_type == "BOOL" and not all(isinstance(v, bool) for v in flat):
            raise ConfigError(f"{key}: input {name!r} is BOOL; give true or false")
        if graph_input.elem_type not in (*_INTEGER_TYPES, *_FLOAT_TYPES, "BOOL"):
            raise ConfigError(f"{key}: input {name!r} is {graph_input.elem_type}, which validation cannot feed")
        profile = backbone.inputs.get(name)
        wanted = _dims_text(graph_input.dims)
        if profile is not None:
            fits = len(shape) == len(profile.min) and all(lo <= d <= hi for d, lo, hi in
                                                          zip(shape, profile.min, profile.max))
            wanted = f"between {list(profile.min)} and {list(profile.max)} (the profile)"
        else:
            fits = len(shape) == len(graph_input.dims) and all(
                not isinstance(d, int) or d == s for d, s in zip(graph_input.dims, shape))
        if not fits:
            raise ConfigError(f"{key}: shape {list(shape)} does not fit input {name!r}: it must be {wanted}")


def _flatten(value):
    if isinstance(value, list):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def _check_shared_dim_names(info, backbone: BackboneConfig, where: str) -> None:
    """TensorRT treats ONNX dims that share a ``dim_param`` as one size: the profile must agree.

    rapidocr's ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` has ``x: [-1, 3, '?', '?']``; a 48x192
    profile fails deep in the builder ("contradictory IOptimizationProfile kMIN/kMAX
    constraints"). Said here, before anything is built.
    """
    groups: dict[str, list[tuple[str, int]]] = {}
    for graph_input in info.inputs:
        for axis, dim in enumerate(graph_input.dims):
            if isinstance(dim, str) and dim:
                groups.setdefault(dim, []).append((graph_input.name, axis))
    for dim_name, places in groups.items():
        if len(places) < 2:
            continue
        sizes = {}
        for name, axis in places:
            shape = backbone.inputs.get(name)
            if shape is not None and axis < len(shape.opt):
                sizes[(name, axis)] = (shape.min[axis], shape.opt[axis], shape.max[axis])
        if len(set(sizes.values())) > 1:
            first_input = next(name for name, _ in sizes)
            shown = ", ".join(f"{name} axis {axis} {'/'.join(map(str, size))}" for (name, axis), size in sizes.items())
            raise ConfigError(
                f"{where}: field 'inputs.{first_input}': {shown} (min/opt/max) share the ONNX dim name "
                f"{dim_name!r}, which TensorRT treats as one size; give those axes equal sizes, or re-export "
                "the model with distinct dim names (e.g. height and width)")


def _dims_text(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def build_engine_compiler(config: ProvisioningConfig, *, backend: str | None = None) -> EngineCompiler:
    """The compiler wired to the config's backend, and to its remote cache when one is enabled.

    A bad ``remote:`` block (or a missing signing key) raises ConfigError here, before any build.
    """
    remote = None
    if config.remote is not None:
        from .remote import make_remote_cache  # fsspec/s3fs load only for configs that use them

        remote = make_remote_cache(config)
    return EngineCompiler(make_backend(backend or resolve_backend(config)), remote=remote)


def build_compile_request(
    config: ProvisioningConfig,
    *,
    host: HostCapabilities | None = None,
    specs: tuple[BackboneSpec, ...] | None = None,
) -> EngineCompileRequest:
    """A request for the whole corpus on this host."""
    host = host or probe_host_for(config)
    specs = specs if specs is not None else build_backbone_specs(config, host.backend, host=host)
    return EngineCompileRequest(backbones=specs, cache_dir=Path(config.cache_dir), host=host)
