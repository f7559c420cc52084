"""The TensorRT backend: one build path for TensorRT 10.x, 11.x and TensorRT for RTX 1.x.

Only :mod:`.trt_import` imports ``tensorrt`` or ``tensorrt_rtx``, and only inside
functions, so ``import provisioning`` and ``doit list`` work where neither is installed.
Differences between the builders are rows of :mod:`.trt_features`; the helpers
(``trt_*`` modules) get the ``trt`` module handed in. This module is the build path and
the backend's entry points; each setting of the build (targets, compatibility level,
optimization profile) is set and read back in :mod:`.trt_network`; loading and running a
plan is :mod:`.trt_runtime`.

One build: plugins registered, the ONNX parsed (precision prepared by
:mod:`.trt_precision`), one optimization profile from the backbone's min/opt/max, the
compatibility settings or compute-capability targets (each read back after it is set),
the per-GPU timing cache where the builder measures kernels, then
``build_serialized_network``. Where a GPU that can run the plan is present it is
deserialized (and with ``validate: true`` run once against ONNX Runtime) before it is
published; TensorRT-RTX without such a GPU publishes the plan it built, saying so in the
manifest. TensorRT's log of every build that reached the builder is kept beside the
engine as ``<engine>.build.log``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..schema import BUILD_LOG_SUFFIX
from ..errors import BackendError, BackendUnavailableError, HostProbeError, NoGpuError
from ..gpu import NO_GPU_HINT
from ..versions import release_tuple
from ..sidecar import atomic_write_bytes
from .base import EngineOutput
from .trt_cache import device_lock, load_timing_cache, save_timing_cache, timing_cache_path
from .trt_features import MIN_COMPUTE_CAPABILITY, MODULES, PRODUCT_NAMES, TrtFeatures, features_for
from .trt_import import check_imported_version, compute_capability_targets, import_tensorrt, init_plugins
from .trt_logging import BuildLog, capture, make_progress_monitor, process_logger
from .trt_network import optimization_profile, parser_errors, set_hardware_compatibility, set_targets, tolerance_basis
from .trt_precision import PreparedModel, prepare_precision
from .trt_runtime import LoadedEngine, deserialize, load_verified, no_gpu_error, run_inference

if TYPE_CHECKING:  # pragma: no cover
    from ..specs import BackboneSpec
    from ..host import HostCapabilities

__all__ = ["BUILD_LOG_SUFFIX", "LoadedEngine", "TensorRTBackend", "build_log_path", "compute_capability_targets",
           "import_tensorrt", "load_verified_engine"]

log = logging.getLogger("provisioning.tensorrt")
_MIB = 1 << 20
# What TensorRT-RTX logs (and appends to parser errors) after every API error when there is
# no GPU: "[checkMacros.cpp::catchCudaError::250] Error Code 1: Cuda Runtime (... cudaError 35 ...)".
CUDA_ABSENT_NOISE = ("[checkMacros.cpp::catchCudaError", "Error Code 1: Cuda Runtime (In catchCudaError")


def build_log_path(engine_path: Path) -> Path:
    """Where the TensorRT log of the build of ``engine_path`` is kept."""
    return engine_path.with_name(engine_path.name + BUILD_LOG_SUFFIX)


def load_verified_engine(path: str | Path) -> LoadedEngine:
    """Load a cached engine: verify its sidecar first, then deserialize; BackendError for a foreign plan."""
    from ..manifest import read_manifest

    manifest = read_manifest(Path(path)) or {}
    inputs = manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else {}
    module = MODULES.get(str(inputs.get("backend")), "tensorrt")
    trt = import_tensorrt(module)
    host = inputs.get("host") if isinstance(inputs.get("host"), dict) else {}
    built_with = inputs.get("backend_version")
    if host.get("version_compatible") is True and isinstance(built_with, str):
        if release_tuple(built_with) > release_tuple(str(trt.__version__)):
            raise BackendError(
                f"{Path(path).name}: a version-compatible plan built by TensorRT {built_with} does not load on "
                f"the older runtime {trt.__version__} (compatibility is forward only); run doit engines on this "
                "host to build its own, or upgrade TensorRT"
            )
    logger = process_logger(trt)
    init_plugins(trt, logger)
    return load_verified(trt, logger, Path(path))


class TensorRTBackend:
    """Compiles a backbone into a TensorRT plan (``tensorrt``) or a TensorRT-RTX plan (``tensorrt-rtx``)."""

    def __init__(self, name: str = "tensorrt", *, log_severity: str = "INFO") -> None:
        if name not in MODULES:
            raise BackendUnavailableError(f"unknown TensorRT backend {name!r}; use tensorrt or tensorrt-rtx")
        self.name = name
        self.module = MODULES[name]
        # INFO keeps the build log readable; VERBOSE runs to hundreds of MB on large models.
        self.log_severity = log_severity

    def compile_engine(self, spec: "BackboneSpec", host: "HostCapabilities", output: EngineOutput) -> None:
        """Build, deserialize where possible, optionally validate, then publish ``spec``'s engine."""
        where = f"backbone {spec.model_name}"
        product = PRODUCT_NAMES[self.name]
        features = features_for(host.backend_version, self.name)
        if host.gpu is None and not features.builds_without_gpu:
            raise NoGpuError(f"{where}: no GPU was probed for this host; {NO_GPU_HINT}")
        self._precheck(spec, host, features, where)
        trt = import_tensorrt(self.module)
        check_imported_version(trt, host.backend_version, self.name, product, where)
        runs_here = self._runs_here(spec, host, features)
        if runs_here is True:
            self._check_gpu(host, where)
        output.progress("prepare", spec.precision)
        prepared = prepare_precision(spec, features, output.scratch_dir)
        logger = process_logger(trt)
        with capture(logger, self.log_severity) as build_log:
            if host.gpu is None:  # an ahead-of-time build: CUDA's absence is expected, not a cause
                build_log.noise = CUDA_ABSENT_NOISE
            plugins = init_plugins(trt, logger)
            try:
                builder = trt.Builder(logger)
            except TypeError as exc:  # pybind11: "factory function returned nullptr"
                raise no_gpu_error(where, f"{product} could not initialise CUDA", build_log, str(exc),
                                   host.gpu, self.module) from None
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            try:
                plan, notes = self._build(trt, features, builder, logger, spec, host, output, prepared,
                                          build_log, runs_here)
            finally:
                self._save_log(output.path, build_log, spec, host, trt, started)
        notes["plugins"] = "registered" if plugins else "not registered (init_libnvinfer_plugins failed)"
        output.progress("publish")
        output.write(memoryview(plan), notes)

    @staticmethod
    def _precheck(spec: "BackboneSpec", host: "HostCapabilities", features: TrtFeatures, where: str) -> None:
        """Settings this builder or this GPU cannot honour, refused before anything is built."""
        if spec.hardware_compatibility not in features.hardware_compatibility:
            raise BackendError(f"{where}: {features.product} does not support hardware_compatibility "
                               f"{spec.hardware_compatibility}; set none")
        if spec.version_compatible and not features.version_compatible:
            raise BackendError(f"{where}: {features.product} cannot build version-compatible engines; "
                               "set version_compatible: false")
        if host.gpu is None or features.compute_capability_targets:
            return
        checks = [(spec.hardware_compatibility, f"hardware_compatibility {spec.hardware_compatibility}",
                   "use none")]
        if features.precision_route(spec.precision) == "flag":
            checks.append((spec.precision, f"precision {spec.precision}", "choose fp16 or fp32"))
        for key, what, fix in checks:
            needed = MIN_COMPUTE_CAPABILITY.get(key)
            if needed and host.gpu.compute_capability < needed:
                raise BackendError(
                    f"{where}: {what} needs compute capability {needed[0]}.{needed[1]}+ and {host.gpu.name} is "
                    f"{host.gpu.sm}; {fix}")

    @staticmethod
    def _runs_here(spec: "BackboneSpec", host: "HostCapabilities", features: TrtFeatures) -> bool | str:
        """True when this host's GPU can deserialize the plan; otherwise why not (for the notes)."""
        if not features.compute_capability_targets:
            return True  # classic TensorRT builds on, and for, this GPU
        if host.gpu is None:
            return "no GPU on the build machine"
        if host.gpu.sm not in spec.compute_capabilities:
            return f"the build machine's GPU ({host.gpu.name}, {host.gpu.sm}) is not a target"
        return True

    @staticmethod
    def _check_gpu(host: "HostCapabilities", where: str) -> None:
        """The driver can run this wheel's CUDA, and CUDA device 0 is the GPU NVML described."""
        import os

        from ..gpu import check_cuda_device_matches, check_driver_for_wheel

        assert host.gpu is not None
        if os.environ.get("PROVISIONING_SKIP_DRIVER_CHECK") != "1":  # CUDA forward compatibility (cuda-compat)
            check_driver_for_wheel(host.gpu, MODULES.get(host.backend, "tensorrt"))
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            return  # cuda-python absent: nothing to cross-check with (validation would say so)
        try:
            check_cuda_device_matches(cudart, host.gpu)
        except (HostProbeError, NoGpuError) as exc:
            raise type(exc)(f"{where}: {exc}") from None

    def _build(self, trt: Any, features: TrtFeatures, builder: Any, logger: Any, spec: "BackboneSpec",
               host: "HostCapabilities", output: EngineOutput, prepared: PreparedModel,
               build_log: BuildLog, runs_here: bool | str) -> tuple[Any, dict[str, Any]]:
        where = f"backbone {spec.model_name}"
        product = features.product
        see_log = f"full log: {build_log_path(output.path).name}"
        network = builder.create_network(0)  # explicit batch on 10.x, strongly typed on 11.x and RTX
        parser = trt.OnnxParser(network, logger)
        output.progress("parse", prepared.onnx_path.name)
        if not parser.parse_from_file(str(prepared.onnx_path)):
            errors = parser_errors(parser, build_log) or [build_log.reason("no error reported")]
            raise BackendError(f"{where}: {product} could not parse {spec.onnx_path.name}: {'; '.join(errors)}")
        if network.num_inputs == 0:
            raise BackendError(f"{where}: {product} parsed {spec.onnx_path.name} into a network without inputs "
                               f"({build_log.reason('no error reported')}); is it the model you meant?")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_mb) * _MIB)
        flags = list(prepared.flags)
        if spec.version_compatible:
            flags.append("VERSION_COMPATIBLE")
        for flag in flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
            if not config.get_flag(getattr(trt.BuilderFlag, flag)):
                raise BackendError(f"{where}: {product} did not take BuilderFlag.{flag} "
                                   f"({build_log.reason('no reason logged')})")
        notes: dict[str, Any] = {}
        if features.compute_capability_targets:
            notes["compute_capabilities"] = set_targets(trt, config, spec.compute_capabilities, build_log, where)
        else:
            notes["hardware_compatibility_level"] = set_hardware_compatibility(
                trt, config, spec.hardware_compatibility, build_log, where, product)
        tf32 = bool(config.get_flag(trt.BuilderFlag.TF32))
        profile = optimization_profile(builder, network, spec, where, build_log)
        if config.add_optimization_profile(profile[0]) < 0:
            raise BackendError(f"{where}: {product} refused the optimization profile {profile[1]} "
                               f"({build_log.reason('no reason logged')}); fix 'inputs' in the config")
        # Keep a Python reference for the whole build: the config holds only a C++ pointer.
        monitor = make_progress_monitor(trt, output.progress)
        config.progress_monitor = monitor
        cache_dir = output.path.parent
        timing = "not used (TensorRT-RTX: timing-cache calls are deprecated no-ops; nothing measured)"
        with self._gpu_turn(features, host, cache_dir, spec):
            if features.timing_cache:
                timing_path = timing_cache_path(cache_dir, host)
                timing_loaded = load_timing_cache(config, timing_path, build_log)
            output.progress("build", f"{product} builder")
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise BackendError(f"{where}: {product} could not build the engine "
                                   f"({build_log.reason('no reason logged')}); {see_log}")
            if features.timing_cache:
                timing = f"{timing_path.name}: {timing_loaded}, {save_timing_cache(config, timing_path)}"
            loaded = None
            if runs_here is True:
                output.progress("deserialize", "trt.Runtime")
                loaded = deserialize(trt, logger, plan, host_code_allowed=spec.version_compatible, where=where,
                                     gpu=host.gpu)
                if spec.validate:
                    output.progress("validate", "the engine next to ONNX Runtime on the CPU")
                    tolerance = tolerance_basis(spec, host, tf32)
                    notes["validation"] = self._qualify(trt, loaded, spec, host, tolerance)
                    notes["validation_tolerance"] = tolerance
            elif spec.validate:  # compose refuses this; never publish "validated" without a run
                raise BackendError(f"{where}: validate: true but the plan cannot run here ({runs_here})")
        del monitor  # the build is over; TensorRT will not call it again
        version_key = "tensorrt_rtx_version" if features.backend == "tensorrt-rtx" else "tensorrt_version"
        notes.update({
            version_key: str(trt.__version__),
            **prepared.notes,
            "network": "strongly typed" if features.strongly_typed else "weakly typed (builder flags)",
            "builder_flags": sorted(flags),
            "tf32": ("enabled (TensorRT's default: fp32 matmul and convolution may use TF32 on compute "
                     "capability 8.0+; validation uses the TF32 tolerance there)") if tf32 else "disabled",
            "version_compatible": spec.version_compatible,
            "optimization_profile": profile[1],
            "timing_cache": timing,
            "build_log": build_log_path(output.path).name,
            "build_machine": {"machine": host.machine,
                              "gpu": None if host.gpu is None else
                              {"name": host.gpu.name, "uuid": host.gpu.uuid, "compute_capability": host.gpu.sm}},
            "deserialized": True if runs_here is True else f"false ({runs_here})",
            "validated": bool(spec.validate and loaded is not None),
        })
        if features.backend == "tensorrt" and host.gpu is not None:
            notes["gpu"] = notes["build_machine"]["gpu"]
        return plan, notes

    @staticmethod
    def _gpu_turn(features: TrtFeatures, host: "HostCapabilities", cache_dir: Path, spec: "BackboneSpec"):
        """One kernel-timing build per GPU at a time; an ahead-of-time build measures nothing."""
        import contextlib

        if not features.timing_cache or host.gpu is None:
            return contextlib.nullcontext()

        def waiting(uuid: str) -> None:
            log.info("%s: waiting for GPU %s (another TensorRT build holds it)", spec.model_name, uuid,
                     extra={"event": "gpu_wait", "model_name": spec.model_name, "gpu_uuid": uuid})

        return device_lock(cache_dir, host.gpu.uuid, waiting)

    def validate_engine(self, spec: "BackboneSpec", host: "HostCapabilities", engine: Path) -> dict:
        """Qualify a cached plan under today's criteria (no rebuild); ValidationFailed when it misses them."""
        from ..manifest import read_manifest

        if self._runs_here(spec, host, features_for(host.backend_version, self.name)) is not True:
            raise BackendError(f"backbone {spec.model_name}: validation needs a GPU that can run this plan")
        loaded = load_verified_engine(engine)
        notes = ((read_manifest(engine) or {}).get("build") or {}).get("notes") or {}
        tf32 = str(notes.get("tf32", "")).startswith("enabled")
        trt = import_tensorrt(self.module)
        return self._qualify(trt, loaded, spec, host, tolerance_basis(spec, host, tf32))

    @staticmethod
    def _qualify(trt: Any, loaded: LoadedEngine, spec: "BackboneSpec", host: "HostCapabilities",
                 tolerance: str) -> dict:
        from .qualify import qualify

        where = f"backbone {spec.model_name}"
        device = f"GPU {host.gpu.name}" if host.gpu is not None else "no GPU"
        return qualify(spec, lambda feed: run_inference(trt, loaded.engine, feed, where), tolerance=tolerance,
                       device=device)

    def _save_log(self, engine_path: Path, build_log: BuildLog, spec: "BackboneSpec",
                  host: "HostCapabilities", trt: Any, started: str) -> None:
        gpu = host.gpu
        machine = f"{gpu.name} {gpu.uuid}" if gpu else f"{host.machine} without a GPU"
        targets = f" for {', '.join(spec.compute_capabilities)}" if spec.compute_capabilities else ""
        header = (f"# {PRODUCT_NAMES[self.name]} {trt.__version__} build of {spec.model_name} ({spec.precision})"
                  f"{targets} on {machine}, started {started}\n")
        try:
            atomic_write_bytes(build_log_path(engine_path), (header + build_log.text()).encode())
        except OSError as exc:  # the log helps; it must not turn a good build into a failure
            log.warning("cannot save the TensorRT build log beside %s (%s)", engine_path.name, exc.strerror or exc)
