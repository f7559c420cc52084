"""The TensorRT backend: one code path for TensorRT 10.x and 11.x.

This is the only module that imports ``tensorrt``, and only inside functions, so
``import provisioning`` and ``doit list`` work where TensorRT is not installed. Version
differences live in :mod:`.trt_features`; the helpers (``trt_*`` modules) get the
``trt`` module handed in.

One build: parse the ONNX (precision prepared by :mod:`.trt_precision`), one
optimization profile from the backbone's min/opt/max, the hardware/version
compatibility settings, the per-GPU timing cache, then ``build_serialized_network``
under the GPU's lock; the plan is deserialized (and with ``validate: true`` run once
against ONNX Runtime) before it is published. TensorRT's log of every build that reached
the builder is saved as ``<engine>.build.log``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import BUILD_LOG_SUFFIX
from ..errors import BackendError, BackendUnavailableError, NoGpuError
from ..gpu import NO_GPU_HINT
from ..sidecar import atomic_write_bytes
from .base import EngineOutput
from .trt_cache import device_lock, load_timing_cache, save_timing_cache, timing_cache_path
from .trt_features import AMPERE_PLUS_MIN_CC, HARDWARE_COMPATIBILITY_LEVELS, TrtFeatures, features_for
from .trt_logging import BuildLog, capture, make_progress_monitor, process_logger
from .trt_precision import PreparedModel, prepare_precision
from .trt_runtime import LoadedEngine, deserialize, load_verified, run_inference
from .validation import compare_outputs, random_inputs, run_reference

if TYPE_CHECKING:  # pragma: no cover
    from ..compiler import BackboneSpec
    from ..host import HostCapabilities

__all__ = ["BUILD_LOG_SUFFIX", "LoadedEngine", "TensorRTBackend", "build_log_path", "import_tensorrt",
           "load_verified_engine"]

log = logging.getLogger("provisioning.tensorrt")
_MIB = 1 << 20


def import_tensorrt() -> Any:
    """``import tensorrt``, or BackendUnavailableError saying how to install it."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError from a missing libnvinfer
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise BackendUnavailableError(
            f"TensorRT cannot be imported ({type(exc).__name__}: {first}); install the tensorrt extra "
            "from NVIDIA's package index (README, TensorRT)"
        ) from None
    return trt


def build_log_path(engine_path: Path) -> Path:
    """Where the TensorRT log of the build of ``engine_path`` is kept."""
    return engine_path.with_name(engine_path.name + BUILD_LOG_SUFFIX)


def load_verified_engine(path: str | Path) -> LoadedEngine:
    """Load a cached engine: verify its sidecar first, then deserialize; BackendError for a foreign plan."""
    trt = import_tensorrt()
    return load_verified(trt, process_logger(trt), Path(path))


class TensorRTBackend:
    """Compiles a backbone into a TensorRT plan for this host's GPU."""

    name = "tensorrt"

    def __init__(self, *, log_severity: str = "INFO") -> None:
        # INFO keeps the build log readable; VERBOSE runs to hundreds of MB on large models.
        self.log_severity = log_severity

    def compile_engine(self, spec: "BackboneSpec", host: "HostCapabilities", output: EngineOutput) -> None:
        """Build, deserialize, optionally validate, then publish ``spec``'s engine."""
        where = f"backbone {spec.model_name}"
        if host.gpu is None:
            raise NoGpuError(f"{where}: no GPU was probed for this host; {NO_GPU_HINT}")
        trt = import_tensorrt()
        features = features_for(str(trt.__version__))
        if str(trt.__version__) != host.backend_version:
            raise BackendError(
                f"{where}: the imported TensorRT is {trt.__version__} but its package metadata says "
                f"{host.backend_version}; reinstall the tensorrt extra so both agree"
            )
        if spec.hardware_compatibility == "ampere_plus" and host.gpu.compute_capability < AMPERE_PLUS_MIN_CC:
            raise BackendError(
                f"{where}: hardware_compatibility ampere_plus needs an Ampere or newer GPU (compute capability "
                f"8.0+) and {host.gpu.name} is {host.gpu.sm}; use none or same_compute_capability"
            )
        output.progress("prepare", spec.precision)
        prepared = prepare_precision(spec, features, output.scratch_dir)
        logger = process_logger(trt)
        with capture(logger, self.log_severity) as build_log:
            try:
                builder = trt.Builder(logger)
            except TypeError as exc:  # pybind11: "factory function returned nullptr"
                raise NoGpuError(
                    f"{where}: no usable GPU: TensorRT could not initialise CUDA "
                    f"({build_log.reason(str(exc))}); {NO_GPU_HINT}"
                ) from None
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            try:
                plan, notes = self._build(trt, features, builder, logger, spec, host, output, prepared, build_log)
            finally:
                self._save_log(output.path, build_log, spec, host, trt, started)
        output.progress("publish")
        output.write(memoryview(plan), notes)

    def _build(self, trt: Any, features: TrtFeatures, builder: Any, logger: Any, spec: "BackboneSpec",
               host: "HostCapabilities", output: EngineOutput, prepared: PreparedModel,
               build_log: BuildLog) -> tuple[Any, dict[str, Any]]:
        where = f"backbone {spec.model_name}"
        see_log = f"full log: {build_log_path(output.path).name}"
        network = builder.create_network(0)  # explicit batch on 10.x, strongly typed on 11.x
        parser = trt.OnnxParser(network, logger)
        output.progress("parse", prepared.onnx_path.name)
        if not parser.parse_from_file(str(prepared.onnx_path)):
            errors = _parser_errors(parser) or [build_log.reason("no error reported")]
            raise BackendError(f"{where}: TensorRT could not parse {spec.onnx_path.name}: {'; '.join(errors)}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb * _MIB)
        flags = list(prepared.flags)
        if spec.version_compatible:
            flags.append("VERSION_COMPATIBLE")
        for flag in flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        level = HARDWARE_COMPATIBILITY_LEVELS[spec.hardware_compatibility]
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
        profile = _optimization_profile(builder, network, spec, where)
        config.add_optimization_profile(profile[0])
        # Keep a Python reference for the whole build: the config holds only a C++ pointer.
        monitor = make_progress_monitor(trt, output.progress)
        config.progress_monitor = monitor
        cache_dir = output.path.parent
        timing_path = timing_cache_path(cache_dir, host)

        def waiting(uuid: str) -> None:
            output.progress("waiting for the GPU", f"another build holds {uuid}")
            log.info("%s: waiting for GPU %s (another TensorRT build holds it)", spec.model_name, uuid,
                     extra={"event": "gpu_wait", "model_name": spec.model_name, "gpu_uuid": uuid})

        with device_lock(cache_dir, host.gpu.uuid, waiting):
            timing_loaded = load_timing_cache(config, timing_path)
            output.progress("build", "TensorRT builder")
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise BackendError(f"{where}: TensorRT could not build the engine "
                                   f"({build_log.reason('no reason logged')}); {see_log}")
            timing_saved = save_timing_cache(config, timing_path)
            output.progress("deserialize", "trt.Runtime")
            loaded = deserialize(trt, logger, plan, host_code_allowed=spec.version_compatible, where=where)
            if spec.validate:
                output.progress("validate", "one inference vs. ONNX Runtime on the CPU")
                self._validate(trt, loaded, spec, where)
        del monitor  # the build is over; TensorRT will not call it again
        notes = {
            "tensorrt_version": str(trt.__version__),
            **prepared.notes,
            "network": "strongly typed" if features.strongly_typed else "weakly typed (builder flags)",
            "builder_flags": sorted(flags),
            "hardware_compatibility_level": level,
            "version_compatible": spec.version_compatible,
            "optimization_profile": profile[1],
            "timing_cache": f"{timing_path.name}: {timing_loaded}, {timing_saved}",
            "build_log": build_log_path(output.path).name,
            "gpu": {"name": host.gpu.name, "uuid": host.gpu.uuid, "compute_capability": host.gpu.sm},
            "validated": bool(spec.validate),
        }
        return plan, notes

    @staticmethod
    def _validate(trt: Any, loaded: LoadedEngine, spec: "BackboneSpec", where: str) -> None:
        from ..onnxinfo import inspect_onnx

        feed = random_inputs(inspect_onnx(spec.onnx_path).inputs, spec.input_shapes)
        names, expected = run_reference(spec.onnx_path, feed, where)
        actual = run_inference(trt, loaded.engine, feed, where)
        missing = [n for n in names if n not in actual]
        if missing:
            raise BackendError(f"{where}: validation failed: the engine lacks output(s) {', '.join(missing)}")
        problems = compare_outputs(names, expected, [actual[n] for n in names], spec.precision)
        if problems:
            raise BackendError(f"{where}: validation against ONNX Runtime failed ({spec.precision} tolerance): "
                               f"{'; '.join(problems)}; the engine was not published")

    def _save_log(self, engine_path: Path, build_log: BuildLog, spec: "BackboneSpec",
                  host: "HostCapabilities", trt: Any, started: str) -> None:
        gpu = host.gpu
        header = (f"# TensorRT {trt.__version__} build of {spec.model_name} ({spec.precision}) "
                  f"on {gpu.name if gpu else '?'} {gpu.uuid if gpu else ''}, started {started}\n")
        try:
            atomic_write_bytes(build_log_path(engine_path), (header + build_log.text()).encode())
        except OSError as exc:  # the log helps; it must not turn a good build into a failure
            log.warning("cannot save the TensorRT build log beside %s (%s)", engine_path.name, exc.strerror or exc)


def _optimization_profile(builder: Any, network: Any, spec: "BackboneSpec",
                          where: str) -> tuple[Any, dict[str, dict[str, list[int]]]]:
    """One profile: the backbone's min/opt/max per input; static inputs min = opt = max."""
    shapes = spec.input_shapes
    profile = builder.create_optimization_profile()
    recorded: dict[str, dict[str, list[int]]] = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        name, dims = tensor.name, tuple(int(d) for d in tensor.shape)
        if tensor.is_shape_tensor:
            raise BackendError(f"{where}: input {name!r} is a shape tensor, which this backend cannot profile; "
                               "export the model with the shape as a constant")
        if name in shapes:
            shape = shapes[name]
            if len(shape.opt) != len(dims):
                raise BackendError(f"{where}: field 'inputs.{name}': rank {len(shape.opt)}, but TensorRT "
                                   f"reads rank {len(dims)} {list(dims)}")
            lo, opt, hi = shape.min, shape.opt, shape.max
        elif all(d >= 0 for d in dims):
            lo = opt = hi = dims
        else:
            raise BackendError(f"{where}: ONNX input {name!r} has dynamic dims {list(dims)}; give it a shape "
                               "or a min/opt/max profile under 'inputs'")
        profile.set_shape(name, lo, opt, hi)
        recorded[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    unknown = sorted(set(shapes) - set(recorded))
    if unknown:
        raise BackendError(f"{where}: field 'inputs' names {', '.join(unknown)}, which TensorRT's network "
                           f"does not have (its inputs: {', '.join(recorded) or 'none'})")
    return profile, recorded


def _value(attribute: Any) -> Any:
    return attribute() if callable(attribute) else attribute


def _parser_errors(parser: Any) -> list[str]:
    """Every parser error as 'node NAME (OP): description [CODE]'."""
    errors = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        desc = " ".join(str(_value(error.desc)).split())
        code = _value(error.code)
        code = getattr(code, "name", code)
        node, name, op = _value(error.node), _value(error.node_name), _value(error.node_operator)
        if name or (isinstance(node, int) and node >= 0):
            label = name or f"#{node}"
            errors.append(f"node {label}" + (f" ({op})" if op else "") + f": {desc} [{code}]")
        else:
            errors.append(f"{desc} [{code}]")
    return errors
