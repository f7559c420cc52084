"""The composition root: config -> backend, host, specs, compiler and request.

This is the only place that chooses a backend and probes the host; the compiler gets
both handed in.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .backends.base import CompileEngineCallable
from .compiler import BackboneSpec, EngineCompiler, EngineCompileRequest
from .config import SUPPORTED_PRECISIONS, ProvisioningConfig, load_config, unsupported_precision
from .errors import BackendUnavailableError, ConfigError
from .host import HostCapabilities, probe_host
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
    """``onnxruntime`` or ``tensorrt``; ``auto`` picks TensorRT when it is installed and a GPU is visible."""
    if config.backend != "auto":
        return config.backend
    if importlib.util.find_spec("tensorrt") is None:
        return "onnxruntime"
    from .gpu import gpu_visible

    return "tensorrt" if gpu_visible() else "onnxruntime"


def probe_host_for(config: ProvisioningConfig, backend: str | None = None) -> HostCapabilities:
    """Probe this host for the config's backend (milliseconds, no heavy imports)."""
    return probe_host(backend or resolve_backend(config))


def make_backend(name: str) -> CompileEngineCallable:
    """Instantiate a backend by name (imports nothing heavy until it compiles)."""
    if name == "onnxruntime":
        from .backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "tensorrt":
        try:
            from .backends.tensorrt import TensorRTBackend
        except ImportError as exc:  # pragma: no cover - the module itself imports nothing heavy
            raise BackendUnavailableError(f"the TensorRT backend cannot be loaded ({exc})") from None
        return TensorRTBackend()
    raise BackendUnavailableError(f"unknown backend {name!r}; use onnxruntime or tensorrt")


def build_backbone_specs(config: ProvisioningConfig, backend: str | None = None) -> tuple[BackboneSpec, ...]:
    """Resolve every backbone against its ONNX file; ConfigError names file, backbone and field."""
    backend = backend or resolve_backend(config)
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
        if backend == "tensorrt":
            for graph_input in info.inputs:
                if not graph_input.is_static and graph_input.name not in backbone.inputs:
                    raise ConfigError(
                        f"{where}: field 'inputs': ONNX input {graph_input.name!r} has dynamic dims "
                        f"{_dims_text(graph_input.dims)}; give it a shape or a min/opt/max profile"
                    )
        specs.append(
            BackboneSpec(
                model_name=backbone.model_name,
                onnx_path=backbone.onnx,
                precision=backbone.precision,
                inputs=tuple(sorted(backbone.inputs.items())),
                external_data=info.external_data,
                workspace_mb=config.workspace_mb,
                validate=backbone.validate,
                hardware_compatibility=backbone.hardware_compatibility,
                version_compatible=backbone.version_compatible,
            )
        )
    if fresh:  # kept in memory until a build creates the cache folder (see remember_inspection)
        for info in fresh:
            remember_inspection(info, config.cache_dir)
    return tuple(specs)


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
    specs = specs if specs is not None else build_backbone_specs(config, host.backend)
    return EngineCompileRequest(backbones=specs, cache_dir=Path(config.cache_dir), host=host)
