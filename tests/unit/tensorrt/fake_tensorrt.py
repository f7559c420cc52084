"""A fake ``tensorrt`` / ``tensorrt_rtx`` (and ``cuda.bindings.runtime``) for tests without a GPU.

The fake has the enums and class attributes of one recorded version (tests/data/tensorrt-api)
and, where signatures were recorded (10.16, 11.4, RTX 1.7), every method and settable property
is checked by :mod:`signatures` the way pybind11 checks the real bindings: a float where an int
is wanted, a str for an enum, a non-settable or unknown attribute, a logger subclass that skipped
``ILogger.__init__``, all fail as on the real thing. It is not a claim that TensorRT works:
plans are JSON, "GPU memory" is host memory, and an engine computes with ONNX Runtime.

Behaviour observed on real TensorRT for RTX 1.7.1.116 (no GPU) and mirrored here, version
1.7.1.116 being that builder (tests/unit/tensorrt/test_fake_parity.py runs both):

* parsing: a truncated ONNX gives ``MODEL_DESERIALIZE_FAILED`` (node -1), an unknown op
  ``INVALID_NODE`` with the node's index, name and op, a MatMul shape mismatch
  ``INVALID_NODE`` at parse time ("last dimension of input0 = 8 and second to last
  dimension of input1 = 5 but must match"), a missing file ``INVALID_VALUE``; a file
  whose first byte is 0 "parses" into an empty network (C++ protobuf stops at tag 0);
* ``IOptimizationProfile.set_shape`` raises RuntimeError only for a negative dim; min>opt
  is accepted there and ``add_optimization_profile`` returns -1; a profile missing an
  input or with a wrong static dim is accepted and the build returns None;
* a logger's or monitor's exception never leaves the builder: it is printed to stderr
  ("[ERROR] Exception caught in log(): ..."); one in ``step_complete`` cancels the build,
  as does a falsy return;
* a corrupt timing cache gives an empty cache and the WARNING "Failed to deserialize timing
  cache. Returning an empty timing cache."; RTX's timing-cache calls warn
  (DeprecationWarning) and do nothing; RTX reads ``hardware_compatibility_level`` as NONE
  with a WARNING; ``num_compute_capabilities`` starts at 0; TF32 is on by default;
* RTX builds without a GPU; its ``deserialize_cuda_engine`` then returns None and logs
  cudaError 35. Classic 10/11 ``Builder``/``Runtime`` raise TypeError without a GPU.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import threading
import traceback
import types
import uuid as uuid_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import fake_trt_parts as parts
from fake_trt_parts import CACHE_MAGIC, CUDA35, PLAN_MAGIC, RTX_TIMING_DEPRECATED
from signatures import Checker, apply_signatures, checked_function, load_signatures, module_prefix

DATA = Path(__file__).resolve().parents[2] / "data" / "tensorrt-api"
SURFACE_FILES = {"10": "tensorrt-10.16.1.11.json", "11": "tensorrt-11.4.0.106.json", "8": "tensorrt-8.6.1.json"}
RTX_VERSION = "1.7.1.116"
__all__ = ["CACHE_MAGIC", "CUDA35", "PLAN_MAGIC", "RTX_TIMING_DEPRECATED", "RTX_VERSION", "FakeCudaRuntime",
           "FakeWorld", "load_surface", "make_fake_tensorrt"]
def is_rtx(version: str) -> bool:
    """TensorRT for RTX versions are 1.x; classic TensorRT is 8.x and later."""
    return str(version).split(".")[0] == "1"


def load_surface(version: str) -> dict:
    """The recorded API surface (enum member names, class attribute names) for a version."""
    if is_rtx(version):
        sigs = load_signatures(version)
        return {"enums": {n: list(m) for n, m in sigs["enums"].items()},
                "classes": {n: sorted(a for a in c["attrs"] if not a.startswith("_")) for n, c in sigs["classes"].items()}}
    return json.loads((DATA / SURFACE_FILES[version.split(".")[0]]).read_text())


@dataclass
class FakeWorld:
    """The GPU and TensorRT the fake pretends to be, and what it saw."""

    version: str = "10.16.1.11"
    gpu_uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    cuda_uuid: str | None = None            # CUDA device 0's UUID where it differs from NVML's
    gpu_name: str = "NVIDIA H200"
    compute_capability: tuple[int, int] = (9, 0)
    cuda_driver_version: int = 13000        # cudaDriverGetVersion (0 without a driver)
    no_gpu: bool = False
    parse_errors: list[dict] = field(default_factory=list)
    build_error: str | None = None          # logged, then build_serialized_network returns None
    deserialize_error: str | None = None    # logged, then deserialize_cuda_engine returns None
    output_offset: float = 0.0              # added to every float output (validation mismatch)
    build_seconds: float = 0.0              # spread over the progress steps
    on_build: Callable[[dict], None] | None = None
    builds: list[dict] = field(default_factory=list)
    runtimes: list[Any] = field(default_factory=list)
    plugin_inits: list[tuple[Any, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def device_key(self) -> str:
        """What a timing cache is tied to: this GPU, its compute capability, this version."""
        return f"{self.gpu_uuid}/sm{self.compute_capability[0]}{self.compute_capability[1]}/{self.version}"

    @property
    def rtx(self) -> bool:
        """Whether this world is TensorRT for RTX."""
        return is_rtx(self.version)


class _BindingsEnum:
    """A pybind11 enum member: ``.name``, ``.value``, ``int()``, ``__index__``; ``== 6`` is False."""

    __slots__ = ("name", "value")

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class _EnumType(type):
    # Iterable for the tests' convenience (real pybind11 enum types are not iterable).
    def __iter__(cls):
        return iter(cls.__members__.values())


def make_enum(name: str, members: dict[str, int]) -> type:
    """A pybind11-like enum class with these members, in this order."""
    cls = _EnumType(name, (_BindingsEnum,), {"__slots__": ()})
    table = {}
    for member, value in members.items():
        item = object.__new__(cls)
        object.__setattr__(item, "name", member)
        object.__setattr__(item, "value", value)
        table[member] = item
        type.__setattr__(cls, member, item)
    type.__setattr__(cls, "__members__", table)
    return cls


def _report_exception(where: str, exc: BaseException) -> None:
    """What the real bindings print when a Python callback raises (then carry on)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.endswith(("fake_tensorrt.py", "fake_trt_parts.py", "signatures.py"))]
    outer = [f for f in traceback.extract_stack()[:-2]
             if not f.filename.endswith(("fake_tensorrt.py", "fake_trt_parts.py", "signatures.py"))]
    lines = "".join(f"  {f.filename}({f.lineno}): {f.name}\n" for f in [*reversed(frames), *reversed(outer)])
    sys.stderr.write(f"[ERROR] Exception caught in {where}(): {type(exc).__name__}: {exc}\n\nAt:\n{lines}\n")


def make_fake_tensorrt(world: FakeWorld) -> types.ModuleType:
    """A ``tensorrt`` (``tensorrt_rtx`` for 1.x) module for ``world.version``, backed by ``world``."""
    sigs = load_signatures(world.version)
    surface = load_surface(world.version)
    trt = types.ModuleType("tensorrt_rtx" if world.rtx else "tensorrt")
    trt.__version__ = world.version
    for name, members in surface["enums"].items():
        values = (sigs or {}).get("enums", {}).get(name) or {m: i for i, m in enumerate(members)}
        setattr(trt, name, make_enum(name, {m: values[m] for m in members}))
    prefix = module_prefix(sigs) if sigs else "tensorrt.tensorrt"
    trt._fake = types.SimpleNamespace(world=world, prefix=prefix, report=_report_exception)
    classes = parts.define_classes(trt, world)
    _install_logger_severities(trt, classes, sigs)
    checker = Checker(trt, prefix)
    for name, cls in classes.items():
        if name not in surface["classes"]:
            continue  # absent in this version (IProgressMonitor before 10.0)
        recorded = sigs["classes"][name]["attrs"] if sigs else {a: {"kind": "any"} for a in surface["classes"][name]}
        _prune(cls, recorded)
        _read_only_where_recorded(cls, recorded)
        if sigs:
            apply_signatures(cls, recorded, checker)  # every setter typed from its recording
        setattr(trt, name, cls)

    def init_libnvinfer_plugins(logger, namespace):
        world.plugin_inits.append((logger, namespace))
        return True

    doc = (sigs or {}).get("functions", {}).get("init_libnvinfer_plugins")
    trt.init_libnvinfer_plugins = checked_function(init_libnvinfer_plugins, doc, checker) if doc else init_libnvinfer_plugins
    return trt


def _install_logger_severities(trt, classes, sigs) -> None:
    members = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
    if sigs:
        members = dict(sorted(sigs["classes"]["ILogger"]["attrs"]["Severity"]["members"].items(), key=lambda kv: kv[1]))
    logger = classes["ILogger"]
    logger.Severity = make_enum("Severity", members)
    for member in members:
        setattr(logger, member, getattr(logger.Severity, member))


def _read_only_where_recorded(cls: type, recorded) -> None:
    """A fake property written with a setter loses it where this version's is read-only (ITensor.dtype)."""
    for name, value in list(vars(cls).items()):
        if isinstance(value, property) and value.fset is not None and recorded.get(name, {}).get("settable") is False:
            setattr(cls, name, property(value.fget, doc=value.__doc__))


def _prune(cls: type, allowed) -> type:
    """Drop public attributes this version's recorded class does not have."""
    for name in [n for n in vars(cls) if not n.startswith("_")]:
        if name not in allowed and name != "Severity":
            delattr(cls, name)
    return cls


class _Props:
    """``cudaDeviceProp``: the two fields the backend reads."""

    def __init__(self, name: str, uuid_text: str) -> None:
        self.name = name.encode()
        hexdigits = uuid_text.removeprefix("GPU-").replace("-", "")
        try:
            raw = bytes.fromhex(hexdigits)[:16].ljust(16, b"\0")
        except ValueError:  # a test's made-up UUID: stable bytes all the same
            raw = uuid_module.uuid5(uuid_module.NAMESPACE_OID, uuid_text).bytes
        self.uuid = types.SimpleNamespace(bytes=raw)


class FakeCudaRuntime(types.ModuleType):
    """``cuda.bindings.runtime``: malloc/memcpy/streams over host memory; tracks what is live.

    With a world it also answers the device queries (``cudaGetDeviceCount``,
    ``cudaSetDevice``, ``cudaGetDeviceProperties`` with ``uuid.bytes`` from
    ``world.cuda_uuid or world.gpu_uuid``, ``cudaDriverGetVersion``); without a GPU
    they fail with cudaErrorInsufficientDriver (35), as CUDA does without a driver.
    """

    def __init__(self, world: FakeWorld | None = None) -> None:
        super().__init__("cuda.bindings.runtime")
        self.world = world or FakeWorld()
        self.cudaError_t = enum.Enum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1,
                                                     "cudaErrorMemoryAllocation": 2, "cudaErrorInsufficientDriver": 35,
                                                     "cudaErrorNoDevice": 100, "cudaErrorInvalidDevice": 101})
        self.cudaMemcpyKind = enum.Enum("cudaMemcpyKind", ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"])
        self.live: dict[int, Any] = {}
        self.streams: set[int] = set()
        self.copies: list[str] = []
        self.current_device = 0
        ok, errors = self.cudaError_t.cudaSuccess, self.cudaError_t

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

        def cudaGetDeviceCount():
            return (errors.cudaErrorInsufficientDriver, 0) if self.world.no_gpu else (ok, 1)

        def _device(device) -> Any:
            if self.world.no_gpu:
                return errors.cudaErrorInsufficientDriver
            return ok if int(device) == 0 else errors.cudaErrorInvalidDevice

        def cudaSetDevice(device):
            err = _device(device)
            if err == ok:
                self.current_device = int(device)
            return (err,)

        def cudaGetDeviceProperties(device):
            err = _device(device)
            if err != ok:
                return err, None
            return ok, _Props(self.world.gpu_name, self.world.cuda_uuid or self.world.gpu_uuid)

        def cudaDriverGetVersion():
            return ok, 0 if self.world.no_gpu else int(self.world.cuda_driver_version)

        for function in (cudaMalloc, cudaFree, cudaMemcpy, cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy,
                         cudaGetDeviceCount, cudaSetDevice, cudaGetDeviceProperties, cudaDriverGetVersion):
            setattr(self, function.__name__, function)
        self.cudaStream_t = cudaStream_t

