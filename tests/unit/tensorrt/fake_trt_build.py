"""The fake's Builder, Runtime, ICudaEngine and IExecutionContext (see :mod:`fake_tensorrt`)."""

from __future__ import annotations

import ctypes
import json
import time
from typing import Any

from fake_trt_parts import CANCELLED, CUDA35, NUMPY, PLAN_MAGIC


def define(trt: Any, world: Any, scope: dict) -> dict[str, type]:
    """Builder, Runtime, ICudaEngine, IExecutionContext over the classes in ``scope``."""
    log, api_error, host_memory = scope["log"], scope["api_error"], scope["host_memory"]
    INetworkDefinition, IBuilderConfig = scope["INetworkDefinition"], scope["IBuilderConfig"]
    IOptimizationProfile, report, rtx = scope["IOptimizationProfile"], trt._fake.report, world.rtx

    def call(monitor, method: str, *args) -> tuple[bool, Any]:
        """One monitor callback; an exception is printed and reported as (False, None)."""
        try:
            return True, getattr(monitor, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the real bindings print and carry on
            report(method, exc)
            return False, None

    class Builder:
        def __init__(self, logger) -> None:
            if world.no_gpu and not rtx:  # RTX builds without a GPU ("CPU-only mode")
                log(logger, "ERROR", "[checkMacros.cpp] CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self._logger = logger

        def create_network(self, flags=0):
            return INetworkDefinition(int(flags))

        def create_builder_config(self):
            return IBuilderConfig(self._logger)

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            logger = self._logger
            log(logger, "INFO", f"[MemUsageChange] Init builder kernel library for {network._onnx}")
            record = {"onnx": network._onnx, "onnx_types": network._onnx_types,
                      "flags": sorted(config._flags - {"TF32"}), "tf32": "TF32" in config._flags,
                      "hwc": config._hwc.name, "pools": dict(config._pools),
                      "profiles": [p._shapes for p in config._profiles], "started": time.monotonic(),
                      "targets": [t.name for t in config._targets],
                      "timing_entries_before": len(config._timing._entries) if config._timing else None}
            with world.lock:
                world.builds.append(record)
            if world.on_build is not None:
                world.on_build(record)
            problem = self._validate(network, config)
            if problem:
                api_error(logger, f"IBuilder::buildSerializedNetwork: Error Code 4: API Usage Error ({problem})")
                return None
            if rtx and "VERSION_COMPATIBLE" in config._flags:  # no lean runtime in TensorRT-RTX
                api_error(logger, "IBuilder::buildSerializedNetwork: Error Code 6: API Usage Error (Unable to load "
                          "library: libnvinfer_lean.so.1: libnvinfer_lean.so.1: cannot open shared object file: No "
                          "such file or directory In Impl at /_src/runtime/dispatch/libLoader.cpp:305)")
                return None
            if not self._progress(config._monitor):
                api_error(logger, CANCELLED)
                return None
            record["finished"] = time.monotonic()
            if world.build_error:
                log(logger, "ERROR", world.build_error)
                return None
            if config._timing is not None and not rtx:  # RTX measures nothing
                config._timing._entries[f"{network._onnx}:{len(config._timing._entries)}"] = 1.0
            profile = config._profiles[0]._shapes if config._profiles else {}
            plan = {"version": world.version, "cc": list(world.compute_capability), "hwc": record["hwc"],
                    "version_compatible": "VERSION_COMPATIBLE" in config._flags, "onnx": network._onnx,
                    "targets": record["targets"], "profile": {n: [list(d) for d in s] for n, s in profile.items()},
                    "inputs": [(t.name, t._dtype, list(t.shape)) for t in network._inputs],
                    "outputs": [(t.name, t._dtype) for t in network._outputs]}
            log(logger, "INFO", "Engine generation completed")
            return host_memory(PLAN_MAGIC + json.dumps(plan).encode())

        @staticmethod
        def _validate(network, config) -> str | None:
            """The real builder's network checks, in its order and words (network.cpp:4023-4054)."""
            profile = config._profiles[0]._shapes if config._profiles else None
            dynamic = [t for t in network._inputs if any(d < 0 for d in t.shape)]
            if dynamic and profile is None:
                return ("Network has dynamic or shape inputs, but no optimization profile has been defined. "
                        "In validate at /_src/optimizer/api/network.cpp:4023")
            for tensor in network._inputs:
                shapes = (profile or {}).get(tensor.name)
                if shapes is None:
                    if tensor in dynamic:
                        return (f"Dynamic input tensor {tensor.name} is missing dimensions in profile 0. "
                                "In validate at /_src/optimizer/api/network.cpp:4046")
                    continue
                lo, opt, hi = shapes
                for axis, dim in enumerate(tensor.shape):
                    if axis >= len(lo) or (dim >= 0 and not lo[axis] == opt[axis] == hi[axis] == dim):
                        got = (lo[axis], opt[axis], hi[axis]) if axis < len(lo) else ("?", "?", "?")
                        return (f"Dimension mismatch for tensor {tensor.name} and profile 0. At dimension axis {axis}, "
                                f"profile has min={got[0]}, opt={got[1]}, max={got[2]} but tensor has {dim}. "
                                "In validate at /_src/optimizer/api/network.cpp:4054")
            return None

        @staticmethod
        def _progress(monitor) -> bool:
            """Two nested phases; open phases are finished even when the build is cancelled."""
            if monitor is None:
                time.sleep(world.build_seconds)
                return True
            pause = world.build_seconds / 4
            call(monitor, "phase_start", "Building engine", None, 2)
            call(monitor, "phase_start", "Tactic selection", "Building engine", 3)
            ok = True
            for step in range(3):
                time.sleep(pause)
                ran, keep_going = call(monitor, "step_complete", "Tactic selection", step)
                if not (ran and keep_going):  # an exception or a falsy return cancels
                    ok = False
                    break
            call(monitor, "phase_finish", "Tactic selection")
            if ok:
                time.sleep(pause)
                for step in range(2):
                    ran, keep_going = call(monitor, "step_complete", "Building engine", step)
                    if not (ran and keep_going):
                        ok = False
                        break
            call(monitor, "phase_finish", "Building engine")
            return ok

    class Runtime:
        def __init__(self, logger) -> None:
            if world.no_gpu and not rtx:
                log(logger, "ERROR", "CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self._logger = logger
            self._host_code = False
            world.runtimes.append(self)

        engine_host_code_allowed = property(lambda self: self._host_code,
                                            lambda self, value: setattr(self, "_host_code", bool(value)))

        def deserialize_cuda_engine(self, serialized_engine):
            plan = bytes(memoryview(serialized_engine))
            error = self._refuse(plan)
            if error:
                api_error(self._logger, error)
                return None
            return ICudaEngine(json.loads(plan[len(PLAN_MAGIC):]), self._logger)

        def _refuse(self, plan: bytes) -> str | None:
            if not plan:
                return ("IRuntime::deserializeCudaEngine: Error Code 3: API Usage Error (Cannot deserialize with an "
                        "empty memory buffer. In deserializeCudaEngineEx at /_src/runtime/dispatch/runtime.cpp:278)")
            if rtx and world.no_gpu:
                log(self._logger, "INFO", "Loaded engine size: 0 MiB")
                return ("IRuntime::deserializeCudaEngine: Error Code 1: Cuda Runtime (In ScopedCudaStream at "
                        f"/_src/common/dispatch/cudaResources.cpp:25 ({CUDA35}))")
            if world.deserialize_error:
                return world.deserialize_error
            if not plan.startswith(PLAN_MAGIC):
                return "1: [stdArchiveReader.cpp] Serialization assertion magicTagRead == kMAGIC_TAG failed"
            data = json.loads(plan[len(PLAN_MAGIC):])
            cc = world.compute_capability
            if data["version_compatible"]:
                if not self._host_code:
                    return "Cannot deserialize a version-compatible engine: engine_host_code_allowed is false"
            elif data["version"] != world.version:
                return ("The engine plan file is not compatible with this version of TensorRT, "
                        f"expecting library version {world.version} got {data['version']}")
            if data.get("targets"):
                if f"SM{cc[0]}{cc[1]}" not in data["targets"]:
                    return f"The engine plan file was not built for this GPU (sm{cc[0]}{cc[1]}): {data['targets']}"
            elif data["hwc"] == "NONE" and tuple(data["cc"]) != tuple(cc):
                return (f"The engine plan file is generated on an incompatible device, expecting compute "
                        f"{cc[0]}.{cc[1]} got {data['cc'][0]}.{data['cc'][1]}")
            return None

    class ICudaEngine:
        def __init__(self, plan: dict, logger) -> None:
            self._plan, self._logger = plan, logger
            self._io = ([(i[0], "INPUT", i[1]) for i in plan["inputs"]]
                        + [(n, "OUTPUT", d) for n, d in plan["outputs"]])

        num_io_tensors = property(lambda self: len(self._io))

        def get_tensor_name(self, index):
            return self._io[index][0]

        def get_tensor_mode(self, name):
            return getattr(trt.TensorIOMode, next(m for n, m, _ in self._io if n == name))

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, next(d for n, _, d in self._io if n == name))

        def create_execution_context(self, *args, **kwargs):
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self._engine, self._shapes, self._addresses, self._outputs = engine, {}, {}, None

        def set_input_shape(self, name, shape):
            shape = tuple(int(d) for d in shape)
            declared = next((i[2] for i in self._engine._plan["inputs"] if i[0] == name), None)
            lo, _, hi = self._engine._plan["profile"].get(name, (declared, declared, declared))
            if declared is None or len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                api_error(self._engine._logger, "IExecutionContext::setInputShape: Error Code 3: API Usage Error "
                          f"(Parameter check failed, condition: satisfyProfile. Set dimension {list(shape)} for "
                          f"tensor {name} does not satisfy any optimization profiles. Valid range for profile 0: "
                          f"{lo}..{hi}.)")
                return False
            self._shapes[name] = shape
            self._outputs = None
            return True

        def get_tensor_shape(self, name):
            if name in self._shapes:
                return self._shapes[name]
            if self._outputs is None:
                import numpy as np

                self._outputs = self._run({n: np.zeros(s, dtype=_np(self._engine, n)) for n, s in self._shapes.items()})
            return self._outputs[name].shape

        def set_tensor_address(self, name, memory):
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle):
            import numpy as np

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

    return {"Builder": Builder, "Runtime": Runtime, "ICudaEngine": ICudaEngine, "IExecutionContext": IExecutionContext}


def _np(engine, name: str) -> str:
    return NUMPY[next(d for n, _, d in engine._io if n == name)]
