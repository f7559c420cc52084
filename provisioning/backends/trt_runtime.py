"""Loading TensorRT plans and running one inference with cuda-python (``cuda.bindings``).

Used after a build (deserialize before publishing, optionally validate) and for engines
taken from the cache, which are verified against their sidecar *before* TensorRT sees
a byte. The ``trt`` module is passed in; only :mod:`provisioning.backends.trt_import`
imports TensorRT. ``cuda.bindings`` is imported only when an inference runs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import BackendError, BackendUnavailableError, NoGpuError
from ..manifest import read_manifest
from ..sidecar import Sha256Sidecar, open_nofollow
from ..versions import release_tuple
from .trt_logging import capture

_NUMPY_BY_TRT = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32",
                 "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}
REBUILD_HINT = "rebuild it on this host (doit engines) or delete it"
# Opening a cached plan (a server, engines-export's checks) on a host CUDA cannot use: the plan
# is fine and building it elsewhere changes nothing; the process must see a GPU to run it.
OPEN_NO_GPU_HINT = ("a TensorRT plan runs only on a GPU: open it in a process that sees an NVIDIA GPU{targets} "
                    "(check the driver, nvidia-smi and CUDA_VISIBLE_DEVICES; in a container, pass the GPU in, "
                    "for example docker run --gpus all)")


@dataclass(frozen=True)
class LoadedEngine:
    """A deserialized engine with the runtime that must outlive it."""

    engine: Any
    runtime: Any
    path: Path | None = None
    manifest: Mapping[str, Any] = field(default_factory=dict, repr=False)


_NO_GPU_MARKERS = ("cudaError 35", "CUDA driver version is insufficient", "CUDA initialization failure",
                   "cudaErrorNoDevice", "cudaError 100", "no CUDA-capable device")


def no_gpu_error(where: str, what: str, build_log: Any, fallback: str, gpu: Any = None,
                 module: str = "tensorrt", hint: str | None = None) -> NoGpuError:
    """NoGpuError (exit 69) with the real cause from TensorRT's log: no GPU, or a driver too old for the wheel.

    ``hint`` is the fix; by default the build's (build on a GPU host, or use ONNX Runtime).
    """
    from .. import gpu as gpu_probe

    text = "\n".join(build_log.messages())
    cause = gpu_probe.no_gpu_reason(text, gpu, module=module)
    return NoGpuError(f"{where}: {what}: {cause or 'no usable GPU (' + build_log.reason(fallback) + ')'}; "
                      f"{hint or gpu_probe.NO_GPU_HINT}")


def shows_no_gpu(build_log: Any) -> bool:
    """True when TensorRT's log says CUDA has no usable device (rather than a bad plan)."""
    return any(marker in message for message in build_log.messages() for marker in _NO_GPU_MARKERS)


def deserialize(trt: Any, logger: Any, plan: Any, *, host_code_allowed: bool, where: str,
                gpu: Any = None, no_gpu_hint: str | None = None) -> LoadedEngine:
    """``trt.Runtime.deserialize_cuda_engine``; a ``None`` becomes BackendError with TensorRT's reason.

    Where the log shows CUDA itself failed (error 35: no driver, or one too old for the
    wheel), it is NoGpuError with that cause: the engine is fine, the host cannot run it.
    ``no_gpu_hint`` is that error's fix (by default the build's).
    """
    product = "TensorRT-RTX" if getattr(trt, "__name__", "") == "tensorrt_rtx" else "TensorRT"
    with capture(logger) as build_log:
        try:
            runtime = trt.Runtime(logger)
        except TypeError as exc:  # pybind11 'factory function returned nullptr': no CUDA device
            raise no_gpu_error(where, f"{product}'s runtime could not start", build_log, str(exc), gpu,
                               trt.__name__, no_gpu_hint) from None
        if host_code_allowed:
            # Version-compatible plans embed a lean runtime (host code); only our own
            # verified bytes get here.
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(plan)
    if engine is None and shows_no_gpu(build_log):
        raise no_gpu_error(where, f"{product} could not deserialize the engine", build_log, "no reason logged", gpu,
                           trt.__name__, no_gpu_hint)
    if engine is None:
        raise BackendError(
            f"{where}: {product} could not deserialize the engine "
            f"({build_log.reason('no reason logged')}); {REBUILD_HINT}"
        )
    return LoadedEngine(engine, runtime)


def load_verified(trt: Any, logger: Any, path: Path) -> LoadedEngine:
    """Verify ``path`` against its sidecar, then deserialize exactly the bytes that verified."""
    path = Path(path)
    where = f"engine {path}"
    record = Sha256Sidecar.read(path)
    if record is None or record.file_name != path.name:
        raise BackendError(f"{where}: no valid .sha256 sidecar, so it is not trusted; {REBUILD_HINT}")
    try:
        fd = open_nofollow(path)
    except OSError as exc:
        raise BackendError(f"{where}: cannot open it ({exc.strerror or exc}); {REBUILD_HINT}") from None
    with os.fdopen(fd, "rb") as handle:
        plan = handle.read()
    if hashlib.sha256(plan).hexdigest() != record.sha256:
        raise BackendError(f"{where}: bytes do not match the sidecar (corrupt or truncated); {REBUILD_HINT}")
    manifest = read_manifest(path) or {}
    inputs = manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else {}
    backend = inputs.get("backend")
    wanted = "tensorrt-rtx" if getattr(trt, "__name__", "") == "tensorrt_rtx" else "tensorrt"
    product = "TensorRT-RTX" if wanted == "tensorrt-rtx" else "TensorRT"
    if backend != wanted:
        raise BackendError(f"{where}: was built by {backend or 'an unknown backend'}, not {product}; {REBUILD_HINT}")
    settings = inputs.get("build_settings") if isinstance(inputs.get("build_settings"), dict) else {}
    version_compatible = settings.get("version_compatible") is True
    built_with = str(inputs.get("backend_version"))
    if not version_compatible and release_tuple(built_with) != release_tuple(str(trt.__version__)):
        raise BackendError(
            f"{where}: was built with {product} {built_with}, this host runs {trt.__version__} "
            f"(a foreign plan); {REBUILD_HINT}"
        )
    host = inputs.get("host") if isinstance(inputs.get("host"), dict) else {}
    targets = host.get("compute_capabilities") if wanted == "tensorrt-rtx" else None
    shown = f" of its targets ({', '.join(map(str, targets))})" if isinstance(targets, list) and targets else ""
    loaded = deserialize(trt, logger, plan, host_code_allowed=version_compatible, where=where,
                         no_gpu_hint=OPEN_NO_GPU_HINT.format(targets=shown))
    return LoadedEngine(loaded.engine, loaded.runtime, path, manifest)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendUnavailableError(
            f"validate: true needs cuda-python ({exc}); install the tensorrt extra: "
            "pip install 'provisioning[tensorrt]'"
        ) from None
    return cudart


def _check(cudart: Any, call: str, result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA {call} failed ({getattr(err, 'name', err)}); check the GPU and its driver")
    return rest[0] if rest else None


def run_inference(trt: Any, engine: Any, feed: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One synchronous inference on the GPU: host arrays in, host arrays out (by tensor name)."""
    import numpy as np

    cudart = _cudart()
    dtypes = {getattr(trt.DataType, name): dtype for name, dtype in _NUMPY_BY_TRT.items()}
    context = engine.create_execution_context()
    if context is None:
        raise BackendError(f"{where}: TensorRT could not create an execution context (out of GPU memory?)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    host: dict[str, Any] = {}
    outputs = []
    for name in names:
        dtype = dtypes.get(engine.get_tensor_dtype(name))
        if dtype is None:
            raise BackendError(f"{where}: tensor {name!r} has type {engine.get_tensor_dtype(name)}, "
                               "which validation cannot read; set validate: false")
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if name not in feed:
                raise BackendError(f"{where}: the engine has an input {name!r} the ONNX model does not")
            host[name] = np.ascontiguousarray(feed[name], dtype=dtype)
            if not context.set_input_shape(name, tuple(host[name].shape)):
                raise BackendError(f"{where}: TensorRT refused input {name!r} of shape {list(host[name].shape)} "
                                   "(outside the engine's optimization profile); fix 'inputs' in the config")
        else:
            outputs.append((name, dtype))
    for name, dtype in outputs:
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise BackendError(f"{where}: output {name!r} has a data-dependent shape {shape}; "
                               "validation cannot size it, set validate: false")
        host[name] = np.empty(shape, dtype=dtype)
    stream = _check(cudart, "cudaStreamCreate", cudart.cudaStreamCreate())
    device: dict[str, int] = {}
    try:
        for name, array in host.items():
            device[name] = _check(cudart, "cudaMalloc", cudart.cudaMalloc(max(array.nbytes, 1)))
            context.set_tensor_address(name, int(device[name]))
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in names:
            if name not in dict(outputs):
                _check(cudart, "cudaMemcpy", cudart.cudaMemcpy(device[name], host[name].ctypes.data,
                                                               host[name].nbytes, h2d))
        if not context.execute_async_v3(int(stream)):
            raise BackendError(f"{where}: execute_async_v3 failed (see the TensorRT log)")
        _check(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
        for name, _ in outputs:
            _check(cudart, "cudaMemcpy", cudart.cudaMemcpy(host[name].ctypes.data, device[name],
                                                           host[name].nbytes, d2h))
    finally:
        for pointer in device.values():
            cudart.cudaFree(pointer)
        cudart.cudaStreamDestroy(stream)
    return {name: host[name] for name, _ in outputs}
