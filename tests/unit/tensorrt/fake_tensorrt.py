"""A fake ``tensorrt`` (and ``cuda.bindings.runtime``) for tests on machines without a GPU.

It implements only the calls the backend makes, with the enums and class attributes of
one recorded TensorRT version (tests/data/tensorrt-api): anything the recorded version
lacks is removed from the fake, so the backend touching a 10.x-only name under the 11.x
fake fails the way it would on a real 11.x. It is not a claim that TensorRT works: plans
are JSON, "GPU memory" is host memory, and an engine computes with ONNX Runtime.

Behaviour is steered by a :class:`FakeWorld` (no GPU, parser errors, a failing build, a
failing deserialization, wrong outputs, slow builds) and every build is recorded there.
"""

from __future__ import annotations

import ctypes
import enum
import json
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DATA = Path(__file__).resolve().parents[2] / "data" / "tensorrt-api"
SURFACE_FILES = {"10": "tensorrt-10.16.1.11.json", "11": "tensorrt-11.4.0.106.json", "8": "tensorrt-8.6.1.json"}
PLAN_MAGIC = b"FAKETRT-PLAN\n"
CACHE_MAGIC = b"FAKETRT-TIMING\n"
_ONNX_TO_TRT = {"FLOAT": "FLOAT", "FLOAT16": "HALF", "BFLOAT16": "BF16", "INT8": "INT8", "INT32": "INT32",
                "INT64": "INT64", "BOOL": "BOOL", "UINT8": "UINT8"}


def load_surface(version: str) -> dict:
    """The recorded API surface for a version string's major."""
    return json.loads((DATA / SURFACE_FILES[version.split(".")[0]]).read_text())


@dataclass
class FakeWorld:
    """The GPU and TensorRT the fake pretends to be, and what it saw."""

    version: str = "10.16.1.11"
    gpu_uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    compute_capability: tuple[int, int] = (9, 0)
    no_gpu: bool = False
    parse_errors: list[dict] = field(default_factory=list)
    build_error: str | None = None          # logged, then build_serialized_network returns None
    deserialize_error: str | None = None    # logged, then deserialize_cuda_engine returns None
    output_offset: float = 0.0              # added to every float output (validation mismatch)
    build_seconds: float = 0.0              # spread over the progress steps
    on_build: Callable[[dict], None] | None = None
    builds: list[dict] = field(default_factory=list)
    runtimes: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def device_key(self) -> str:
        return f"{self.gpu_uuid}/sm{self.compute_capability[0]}{self.compute_capability[1]}/{self.version}"


def _prune(cls: type, allowed: list[str]) -> type:
    """Drop public attributes this version's recorded class does not have."""
    for name in [n for n in vars(cls) if not n.startswith("_")]:
        if name not in allowed:
            delattr(cls, name)
    return cls


def make_fake_tensorrt(world: FakeWorld) -> types.ModuleType:
    """A ``tensorrt`` module for ``world.version``, backed by ``world``."""
    surface = load_surface(world.version)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = world.version
    for name, members in surface["enums"].items():
        setattr(trt, name, enum.Enum(name, members))
    classes = surface["classes"]

    class ILogger:
        Severity = enum.Enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])
        INTERNAL_ERROR, ERROR, WARNING = Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING
        INFO, VERBOSE = Severity.INFO, Severity.VERBOSE

        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:  # overridden by the backend
            raise NotImplementedError

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

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

    class ITensor:
        def __init__(self, name: str, shape: tuple, dtype: str) -> None:
            self.name, self.shape, self._dtype = name, shape, dtype
            self.is_shape_tensor = False

    class INetworkDefinition:
        def __init__(self) -> None:
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._onnx: str | None = None

        @property
        def num_inputs(self):
            return len(self._inputs)

        def get_input(self, index):
            return self._inputs[index]

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            self._network, self._logger, self._errors = network, logger, []

        def parse_from_file(self, path: str) -> bool:
            import onnx

            if world.parse_errors:
                self._errors = [ParserError(**e) for e in world.parse_errors]
                self._logger.log(ILogger.ERROR, "ModelImporter.cpp: failed to import a node")
                return False
            model = onnx.load_model(path, load_external_data=False)
            initialisers = {t.name for t in model.graph.initializer}
            name_of = onnx.TensorProto.DataType.Name

            def tensor(value):
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                return ITensor(value.name, dims, _ONNX_TO_TRT[name_of(value.type.tensor_type.elem_type)])

            self._network._inputs = [tensor(v) for v in model.graph.input if v.name not in initialisers]
            self._network._outputs = [tensor(v) for v in model.graph.output]
            self._network._onnx = path
            self._network._onnx_types = sorted({name_of(t.data_type) for t in model.graph.initializer})
            return True

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, index):
            return self._errors[index]

    class IOptimizationProfile:
        def __init__(self) -> None:
            self._shapes: dict[str, tuple] = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's own argument names
            self._shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class ITimingCache:
        def __init__(self, device: str, entries: dict) -> None:
            self._device, self._entries = device, dict(entries)

        def combine(self, other, ignore_mismatch):
            if other._device != self._device and not ignore_mismatch:
                return False
            self._entries.update(other._entries)
            return True

        def serialize(self):
            return IHostMemory(CACHE_MAGIC + json.dumps({"device": self._device, "entries": self._entries}).encode())

    class IHostMemory(bytes):
        @property
        def nbytes(self):
            return len(self)

    class IBuilderConfig:
        def __init__(self, logger) -> None:
            self._logger = logger
            self._flags: set[str] = set()
            self._pools: dict[str, int] = {}
            self._profiles: list[IOptimizationProfile] = []
            self._timing: ITimingCache | None = None
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            self.progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            self._pools[pool.name] = size

        def set_flag(self, flag):
            self._flags.add(flag.name)

        def add_optimization_profile(self, profile):
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, blob):
            blob = bytes(blob)
            if not blob:
                return ITimingCache(world.device_key, {})
            if not blob.startswith(CACHE_MAGIC):
                self._logger.log(ILogger.ERROR, "Timing cache deserialization failed: bad magic")
                return None
            data = json.loads(blob[len(CACHE_MAGIC):])
            return ITimingCache(data["device"], data["entries"])

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache._device != world.device_key and not ignore_mismatch:
                self._logger.log(ILogger.ERROR, "Timing cache was created on a different device or version")
                return False
            self._timing = cache
            return True

        def get_timing_cache(self):
            return self._timing

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            if world.no_gpu:
                logger.log(ILogger.ERROR, "[checkMacros.cpp] CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self._logger = logger

        def create_network(self, flags):
            assert flags == 0
            return INetworkDefinition()

        def create_builder_config(self):
            return IBuilderConfig(self._logger)

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            log = self._logger.log
            log(ILogger.INFO, f"[MemUsageChange] Init builder kernel library for {network._onnx}")
            record = {"onnx": network._onnx, "onnx_types": network._onnx_types, "flags": sorted(config._flags),
                      "hwc": config.hardware_compatibility_level.name, "pools": dict(config._pools),
                      "profiles": [p._shapes for p in config._profiles], "started": time.monotonic(),
                      "timing_entries_before": len(config._timing._entries) if config._timing else None}
            with world.lock:
                world.builds.append(record)
            if world.on_build is not None:
                world.on_build(record)
            dynamic = [t.name for t in network._inputs if -1 in t.shape]
            covered = config._profiles[0]._shapes if config._profiles else {}
            if any(name not in covered for name in dynamic):
                log(ILogger.ERROR, "Network has dynamic or shape inputs, but no optimization profile has been defined.")
                return None
            if not self._progress(config.progress_monitor):
                log(ILogger.ERROR, "Build cancelled by the progress monitor")
                return None
            record["finished"] = time.monotonic()
            if world.build_error:
                log(ILogger.ERROR, world.build_error)
                return None
            if config._timing is not None:
                config._timing._entries[f"{network._onnx}:{len(config._timing._entries)}"] = 1.0
            plan = {"version": world.version, "cc": list(world.compute_capability), "hwc": record["hwc"],
                    "version_compatible": "VERSION_COMPATIBLE" in config._flags, "onnx": network._onnx,
                    "inputs": [(t.name, t._dtype) for t in network._inputs],
                    "outputs": [(t.name, t._dtype) for t in network._outputs]}
            log(ILogger.INFO, "Engine generation completed")
            return IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())

        def _progress(self, monitor) -> bool:
            if monitor is None:
                time.sleep(world.build_seconds)
                return True
            pause = world.build_seconds / 4
            monitor.phase_start("Building engine", None, 2)
            monitor.phase_start("Tactic selection", "Building engine", 3)
            for step in range(3):
                time.sleep(pause)
                if not monitor.step_complete("Tactic selection", step):
                    return False
            monitor.phase_finish("Tactic selection")
            time.sleep(pause)
            ok = monitor.step_complete("Building engine", 0) and monitor.step_complete("Building engine", 1)
            monitor.phase_finish("Building engine")
            return ok

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            if world.no_gpu:
                logger.log(ILogger.ERROR, "CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self._logger = logger
            self.engine_host_code_allowed = False
            world.runtimes.append(self)

        def deserialize_cuda_engine(self, plan):
            plan = bytes(plan)
            error = self._refuse(plan)
            if error:
                self._logger.log(ILogger.ERROR, error)
                return None
            return ICudaEngine(json.loads(plan[len(PLAN_MAGIC):]))

        def _refuse(self, plan: bytes) -> str | None:
            if world.deserialize_error:
                return world.deserialize_error
            if not plan.startswith(PLAN_MAGIC):
                return "1: [stdArchiveReader.cpp] Serialization assertion magicTagRead == kMAGIC_TAG failed"
            data = json.loads(plan[len(PLAN_MAGIC):])
            if data["version_compatible"]:
                if not self.engine_host_code_allowed:
                    return "Cannot deserialize a version-compatible engine: engine_host_code_allowed is false"
            elif data["version"] != world.version:
                return ("The engine plan file is not compatible with this version of TensorRT, "
                        f"expecting library version {world.version} got {data['version']}")
            if data["hwc"] == "NONE" and tuple(data["cc"]) != world.compute_capability:
                cc = world.compute_capability
                return f"The engine plan file is generated on an incompatible device, expecting compute {cc[0]}.{cc[1]} got {data['cc'][0]}.{data['cc'][1]}"
            return None

    class ICudaEngine:
        def __init__(self, plan: dict) -> None:
            self._plan = plan
            self._io = [(n, "INPUT", d) for n, d in plan["inputs"]] + [(n, "OUTPUT", d) for n, d in plan["outputs"]]

        @property
        def num_io_tensors(self):
            return len(self._io)

        def get_tensor_name(self, index):
            return self._io[index][0]

        def get_tensor_mode(self, name):
            return getattr(trt.TensorIOMode, next(m for n, m, _ in self._io if n == name))

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, next(d for n, _, d in self._io if n == name))

        def create_execution_context(self):
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self._engine, self._shapes, self._addresses, self._outputs = engine, {}, {}, None

        def set_input_shape(self, name, shape):
            self._shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if self._outputs is None:
                import numpy as np

                self._outputs = self._run({n: np.zeros(s, dtype=_np(self._engine, n)) for n, s in self._shapes.items()})
            return self._outputs[name].shape

        def set_tensor_address(self, name, address):
            self._addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle):
            import numpy as np

            assert isinstance(stream_handle, int)
            feed = {}
            for name, shape in self._shapes.items():
                dtype = np.dtype(_np(self._engine, name))
                size = int(np.prod(shape)) * dtype.itemsize
                raw = (ctypes.c_char * size).from_address(self._addresses[name])
                feed[name] = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)
            for name, value in self._run(feed).items():
                value = np.ascontiguousarray(value, dtype=_np(self._engine, name))
                if value.dtype.kind == "f":
                    value = value + np.asarray(world.output_offset, dtype=value.dtype)
                ctypes.memmove(self._addresses[name], value.ctypes.data, value.nbytes)
            return True

        def _run(self, feed):
            import onnxruntime as ort

            session = ort.InferenceSession(self._engine._plan["onnx"], providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            return dict(zip(names, session.run(names, feed)))

    local = dict(locals())
    for name in ("ILogger", "IProgressMonitor", "ParserError", "ITensor", "INetworkDefinition", "OnnxParser",
                 "IOptimizationProfile", "ITimingCache", "IHostMemory", "IBuilderConfig", "Builder", "Runtime",
                 "ICudaEngine", "IExecutionContext"):
        cls = local[name]
        if name not in classes:
            continue  # absent in this version (IProgressMonitor before 10.0)
        if name != "ILogger":  # ILogger's severities live on the class in every version
            _prune(cls, classes[name])
        setattr(trt, name, cls)
    return trt


def _np(engine, name: str) -> str:
    kind = next(d for n, _, d in engine._io if n == name)
    return {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
            "BOOL": "bool", "UINT8": "uint8"}[kind]


class FakeCudaRuntime(types.ModuleType):
    """``cuda.bindings.runtime``: malloc/memcpy/streams over host memory; tracks what is live."""

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.cudaError_t = enum.Enum("cudaError_t", ["cudaSuccess", "cudaErrorMemoryAllocation"])
        self.cudaMemcpyKind = enum.Enum("cudaMemcpyKind", ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"])
        self.live: dict[int, Any] = {}
        self.streams: set[int] = set()
        self.copies: list[str] = []
        ok = self.cudaError_t.cudaSuccess

        def cudaMalloc(size):
            buffer = ctypes.create_string_buffer(int(size))
            self.live[ctypes.addressof(buffer)] = buffer
            return ok, ctypes.addressof(buffer)

        def cudaFree(pointer):
            self.live.pop(int(pointer))
            return (ok,)

        def cudaMemcpy(dst, src, count, kind):
            self.copies.append(kind.name)
            ctypes.memmove(int(dst), int(src), int(count))
            return (ok,)

        class cudaStream_t:
            def __init__(self, handle):
                self._handle = handle

            def __int__(self):
                return self._handle

        def cudaStreamCreate():
            handle = 0x1000 + len(self.streams) + 1
            self.streams.add(handle)
            return ok, cudaStream_t(handle)

        def cudaStreamSynchronize(stream):
            return (ok,)

        def cudaStreamDestroy(stream):
            self.streams.discard(int(stream))
            return (ok,)

        for function in (cudaMalloc, cudaFree, cudaMemcpy, cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy):
            setattr(self, function.__name__, function)
