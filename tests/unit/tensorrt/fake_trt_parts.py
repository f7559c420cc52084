"""The classes of the fake TensorRT (see :mod:`fake_tensorrt`), defined per module by :func:`define_classes`.

Log texts are the real ones seen on TensorRT for RTX 1.7.1.116 without a GPU; the
"[checkMacros.cpp::catchCudaError::250]" line that RTX adds after each API error there is
added by the fake too (RTX without a GPU only).
"""

from __future__ import annotations

import ctypes
import json
import warnings
from typing import Any

PLAN_MAGIC = b"FAKETRT-PLAN\n"
CACHE_MAGIC = b"FAKETRT-TIMING\n"
CUDA35 = "cudaError 35: CUDA driver version is insufficient for CUDA runtime version"
CATCH_CUDA = ("[checkMacros.cpp::catchCudaError::250] Error Code 1: Cuda Runtime (In catchCudaError at "
              f"/_src/common/dispatch/checkMacros.cpp:250 ({CUDA35}))")
RTX_TIMING_DEPRECATED = ("Use Deprecated in TensorRT-RTX 1.2. Timing cache operations are no-ops in "
                         "TensorRT-RTX. instead.")
BAD_TIMING_CACHE = "Failed to deserialize timing cache. Returning an empty timing cache."
CANCELLED = ("IBuilder::buildSerializedNetwork: Error Code 7: BuildCanceled (Build canceled by user In next at "
             "/_src/optimizer/common/scopedProgressReporter.cpp:92)")
NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
         "BOOL": "bool", "UINT8": "uint8", "BF16": "float32"}
_ONNX_TO_TRT = {"FLOAT": "FLOAT", "FLOAT16": "HALF", "BFLOAT16": "BF16", "INT8": "INT8", "INT32": "INT32",
                "INT64": "INT64", "BOOL": "BOOL", "UINT8": "UINT8"}


def define_classes(trt: Any, world: Any) -> dict[str, type]:
    """Every fake class for one module; ``trt._fake`` carries the world, prefix and reporter."""
    import fake_onnx

    prefix, report = trt._fake.prefix, trt._fake.report
    rtx = world.rtx

    def log(logger, severity: str, msg: str) -> None:
        """Hand one message to the user's logger; its exceptions are printed, never raised."""
        try:
            logger.log(getattr(ILogger, severity), msg)
        except Exception as exc:  # noqa: BLE001 - the real bindings print and carry on
            report("log", exc)

    def api_error(logger, msg: str) -> None:
        log(logger, "ERROR", msg)
        if rtx and world.no_gpu:
            log(logger, "ERROR", CATCH_CUDA)

    class ILogger:
        _trampoline_base = "ILogger"

        def __init__(self) -> None:
            self._trampoline_ready = True

        def log(self, severity, msg):
            raise RuntimeError('Tried to call pure virtual function "ILogger::log"')

    class IProgressMonitor:
        _trampoline_base = "IProgressMonitor"

        def __init__(self) -> None:
            self._trampoline_ready = True

        def phase_start(self, phase_name, parent_phase, num_steps):
            raise RuntimeError('Tried to call pure virtual function "IProgressMonitor::phase_start"')

        def step_complete(self, phase_name, step):
            raise RuntimeError('Tried to call pure virtual function "IProgressMonitor::step_complete"')

        def phase_finish(self, phase_name):
            raise RuntimeError('Tried to call pure virtual function "IProgressMonitor::phase_finish"')

    class IHostMemory:
        """Buffer protocol (a ctypes char array underneath), ``nbytes``, ``dtype``; no len, no slicing."""

        @property
        def nbytes(self):
            return ctypes.sizeof(self)

        @property
        def dtype(self):
            return trt.DataType.INT8

        def __len__(self):
            raise TypeError(f"object of type '{prefix}.IHostMemory' has no len()")

        def __getitem__(self, key):
            raise TypeError(f"'{prefix}.IHostMemory' object is not subscriptable")

        def __iter__(self):
            raise TypeError(f"'{prefix}.IHostMemory' object is not iterable")

    sized: dict[int, type] = {}

    def host_memory(data: bytes) -> IHostMemory:
        # Real IHostMemory exports format 'f' with itemsize 1; pure Python cannot, so this
        # one exports '<c' (itemsize 1): neither compares equal to bytes or indexes to ints.
        if len(data) not in sized:
            sized[len(data)] = type("IHostMemory", (IHostMemory, ctypes.c_char * len(data)), {})
        return sized[len(data)].from_buffer_copy(data)

    class ParserError:
        def __init__(self, **values: Any) -> None:
            self._values = values

        def code(self):
            return getattr(trt.ErrorCode, self._values.get("code", "UNSUPPORTED_NODE"))

        def desc(self):
            return self._values.get("desc", "")

        def node(self):
            return self._values.get("node", -1)

        def node_name(self):
            return self._values.get("node_name", "")

        def node_operator(self):
            return self._values.get("node_operator", "")

        def file(self):
            return self._values.get("file", "ModelImporter.cpp")

        def func(self):
            return self._values.get("func", "parseNode")

        def line(self):
            return self._values.get("line", 0)

    class ITensor:
        def __init__(self, name: str, shape: tuple, dtype: str) -> None:
            self._name, self._shape, self._dtype = name, tuple(shape), dtype

        name = property(lambda self: self._name, lambda self, value: setattr(self, "_name", value))
        shape = property(lambda self: self._shape, lambda self, value: setattr(self, "_shape", tuple(value)))
        dtype = property(lambda self: getattr(trt.DataType, self._dtype),
                         lambda self, value: setattr(self, "_dtype", value.name))
        is_shape_tensor = property(lambda self: False)

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._layers = 0
            self._onnx: str | None = None
            self._onnx_types: list[str] = []
            self._flags = flags

        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))
        num_layers = property(lambda self: self._layers)

        def get_input(self, index):
            return self._inputs[index] if 0 <= index < len(self._inputs) else None

        def get_output(self, index):
            return self._outputs[index] if 0 <= index < len(self._outputs) else None

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            self._network, self._logger, self._errors = network, logger, []

        def parse_from_file(self, model):
            if world.parse_errors:
                self._errors = [ParserError(**e) for e in world.parse_errors]
                log(self._logger, "ERROR", "ModelImporter.cpp: failed to import a node")
                return False
            result = fake_onnx.parse(model)
            for message in result.log:
                log(self._logger, "ERROR", message)
            net = self._network
            net._inputs = [ITensor(n, s, _ONNX_TO_TRT.get(t, "FLOAT")) for n, s, t in result.inputs]
            if result.error is not None:
                self._errors.append(ParserError(**result.error))
                return False
            net._inputs = [ITensor(n, s, _ONNX_TO_TRT.get(t, "FLOAT")) for n, s, t in result.inputs]
            net._outputs = [ITensor(n, s, _ONNX_TO_TRT.get(t, "FLOAT")) for n, s, t in result.outputs]
            net._layers, net._onnx, net._onnx_types = result.layers, model, result.initializer_types
            return True

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, index):
            return self._errors[index] if 0 <= index < len(self._errors) else None

        def clear_errors(self):
            self._errors = []

    class IOptimizationProfile:
        def __init__(self) -> None:
            self._shapes: dict[str, tuple] = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's own argument names
            for which, dims in (("min", min), ("opt", opt), ("max", max)):
                if any(int(d) < 0 for d in dims):
                    raise RuntimeError(f"Shape provided for {which} is inconsistent with other shapes.")
            self._shapes[input] = tuple(tuple(int(d) for d in dims) for dims in (min, opt, max))

        def get_shape(self, input):  # noqa: A002
            return [tuple(d) for d in self._shapes.get(input, ())]

        def _invalid(self) -> list[str]:
            return [name for name, (lo, opt, hi) in self._shapes.items()
                    if not (len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi)))]

        def __bool__(self) -> bool:  # the real profile's truth is isValid()
            return not self._invalid()

    class ITimingCache:
        def __init__(self, device: str, entries: dict) -> None:
            self._device, self._entries = device, dict(entries)

        def combine(self, input_cache, ignore_mismatch):
            if rtx:
                warnings.warn(RTX_TIMING_DEPRECATED, DeprecationWarning, stacklevel=3)
                return True
            # Real RTX spins forever on combine(c, c); the fake refuses to pretend otherwise.
            assert input_cache is not self, "ITimingCache.combine(c, c) never returns on real TensorRT-RTX"
            if input_cache._device != self._device and not ignore_mismatch:
                return False
            self._entries.update(input_cache._entries)
            return True

        def serialize(self):
            if rtx:
                warnings.warn(RTX_TIMING_DEPRECATED, DeprecationWarning, stacklevel=3)
            return host_memory(CACHE_MAGIC + json.dumps({"device": self._device, "entries": self._entries}).encode())

        def reset(self):
            self._entries.clear()
            return True

    class IBuilderConfig:
        def __init__(self, logger) -> None:
            self._logger = logger
            # TF32 is on by default (real RTX: get_flag(TF32) is True on a fresh config).
            self._flags: set[str] = {"TF32"} if "TF32" in trt.BuilderFlag.__members__ else set()
            self._pools: dict[str, int] = {}
            self._profiles: list[IOptimizationProfile] = []
            self._timing: ITimingCache | None = None
            self._hwc = trt.HardwareCompatibilityLevel.NONE
            self._monitor = None
            self._targets: list[Any] = []

        def set_memory_pool_limit(self, pool, pool_size):
            if int(pool_size) < 0:  # size_t in C++: pybind11 refuses a negative int
                raise TypeError("set_memory_pool_limit(): incompatible function arguments (pool_size is a size_t)")
            self._pools[pool.name] = int(pool_size)

        def get_memory_pool_limit(self, pool):
            return self._pools.get(pool.name, 0)

        def set_flag(self, flag):
            self._flags.add(flag.name)

        def clear_flag(self, flag):
            self._flags.discard(flag.name)

        def get_flag(self, flag):
            return flag.name in self._flags

        def _get_flags(self):
            return sum(1 << int(getattr(trt.BuilderFlag, f)) for f in self._flags)

        def _set_flags(self, value):
            self._flags = {m for m, v in trt.BuilderFlag.__members__.items() if int(value) >> int(v) & 1}

        flags = property(_get_flags, _set_flags)

        def _get_hwc(self):
            if rtx:
                log(self._logger, "WARNING", "getHardwareCompatibilityLevel() is unsupported in TensorRT-RTX.")
                return trt.HardwareCompatibilityLevel.NONE
            return self._hwc

        def _set_hwc(self, level):
            if rtx:
                log(self._logger, "WARNING", "setHardwareCompatibilityLevel() is unsupported in TensorRT-RTX.")
                return
            self._hwc = level

        hardware_compatibility_level = property(_get_hwc, _set_hwc)
        progress_monitor = property(lambda self: self._monitor, lambda self, value: setattr(self, "_monitor", value))
        num_optimization_profiles = property(lambda self: len(self._profiles))

        def _get_ncc(self):
            return len(self._targets)

        def _set_ncc(self, count):
            if int(count) < 0:
                raise ValueError("Provided number of compute capabilities is incorrect")
            self._targets = (self._targets + [trt.ComputeCapability.NONE] * int(count))[: int(count)]

        num_compute_capabilities = property(_get_ncc, _set_ncc)

        def set_compute_capability(self, compute_capability, index):
            if not 0 <= index < len(self._targets):
                api_error(self._logger, "IBuilderConfig::setComputeCapability: Error Code 3: API Usage Error (Parameter "
                          "check failed, condition: index >= 0 && index < std::ssize(mConfig.computeCapabilities). "
                          "Index of compute capability is not in a valid range. In setComputeCapability at "
                          "/_src/optimizer/api/builderConfig.cpp:796)")
                return False
            self._targets[index] = compute_capability
            return True

        def get_compute_capability(self, index):
            return self._targets[index] if 0 <= index < len(self._targets) else trt.ComputeCapability.NONE

        def add_optimization_profile(self, profile):
            invalid = profile._invalid() if profile is not None else ["(None)"]
            if invalid:
                for _ in range(2):  # the real one checks twice, and says so twice
                    api_error(self._logger, "IOptimizationProfile::isValid: Error Code 4: API Usage Error (Invalid "
                              f"optimization profiles for input tensors {', '.join(invalid)}, please ensure that the "
                              "optimization profiles satisfy MIN<=OPT<=MAX. In isValid at "
                              "/_src/optimizer/api/optimizationProfile.cpp:367)")
                api_error(self._logger, "IBuilderConfig::addOptimizationProfile: Error Code 3: API Usage Error "
                          "(Parameter check failed, condition: profile->isValid().  In addOptimizationProfile at "
                          "/_src/optimizer/api/builderConfig.cpp:569)")
                return -1
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            blob = bytes(memoryview(serialized_timing_cache))
            if blob.startswith(CACHE_MAGIC):
                try:
                    data = json.loads(blob[len(CACHE_MAGIC):])
                    return ITimingCache(data["device"], data["entries"])
                except (ValueError, KeyError):
                    pass
            elif not blob:
                return ITimingCache(world.device_key, {})
            if rtx and world.no_gpu:
                api_error(self._logger, "[cudaResources.cpp::ScopedCudaStream::25] Error Code 1: Cuda Runtime (In "
                          f"ScopedCudaStream at /_src/common/dispatch/cudaResources.cpp:25 ({CUDA35}))")
                log(self._logger, "WARNING", "The timing cache will not be used!")
            log(self._logger, "WARNING", BAD_TIMING_CACHE)
            return ITimingCache(world.device_key, {})

        def set_timing_cache(self, cache, ignore_mismatch):
            if rtx:
                warnings.warn(RTX_TIMING_DEPRECATED, DeprecationWarning, stacklevel=3)
                self._timing = cache
                return True
            if cache._device != world.device_key and not ignore_mismatch:
                log(self._logger, "ERROR", "Timing cache was created on a different device or version")
                return False
            self._timing = cache
            return True

        def get_timing_cache(self):
            if rtx:
                warnings.warn(RTX_TIMING_DEPRECATED, DeprecationWarning, stacklevel=3)
            return self._timing

    import fake_trt_build

    build = fake_trt_build.define(trt, world, locals())
    return {"ILogger": ILogger, "IProgressMonitor": IProgressMonitor, "ParserError": ParserError, "ITensor": ITensor,
            "INetworkDefinition": INetworkDefinition, "OnnxParser": OnnxParser,
            "IOptimizationProfile": IOptimizationProfile, "ITimingCache": ITimingCache, "IHostMemory": IHostMemory,
            "IBuilderConfig": IBuilderConfig, **build}

