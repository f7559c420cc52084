"""Helpers for the TensorRT unit tests: install the fake, a GPU host, test models, drive the compiler."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fake_tensorrt import FakeCudaRuntime, FakeWorld, make_fake_tensorrt
from provisioning.backends.tensorrt import TensorRTBackend
from provisioning.compiler import BackboneSpec, EngineCompiler, EngineCompileRequest
from provisioning.config import InputShape
from provisioning.host import GpuInfo, HostCapabilities

VERSIONS = {"trt10": "10.16.1.11", "trt11": "11.4.0.106"}
RTX = "1.7.1.116"  # TensorRT for RTX: its fake is ``tensorrt_rtx`` (see install_fake)
ALL_VERSIONS = {**VERSIONS, "rtx": RTX}
H200 = "GPU-11111111-2222-3333-4444-555555555555"


def install_fake(monkeypatch, world: FakeWorld) -> FakeWorld:
    """Put the fake ``tensorrt`` (``tensorrt_rtx`` for RTX 1.x) and ``cuda.bindings.runtime`` into sys.modules."""
    world.trt = make_fake_tensorrt(world)
    world.cudart = FakeCudaRuntime(world)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, world.cudart
    monkeypatch.setitem(sys.modules, world.trt.__name__, world.trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", world.cudart)
    return world


def gpu_host(world: FakeWorld, *, name: str = "NVIDIA H200", uuid: str | None = None,
             cc: tuple[int, int] | None = None) -> HostCapabilities:
    """The host a real probe would report for the fake's GPU."""
    gpu = GpuInfo(name, uuid or world.gpu_uuid, cc or world.compute_capability, "580.65.06", 0)
    return HostCapabilities("tensorrt", world.version, "x86_64", ("avx2",), gpu)


def write_qdq_model(path: Path) -> None:
    """x[1,8] -> QuantizeLinear -> DequantizeLinear -> MatMul(W) -> y[1,4]: explicit int8."""
    weights = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"], name="quant_x"),
         helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"], name="dequant_x"),
         helper.make_node("MatMul", ["xd", "w"], ["y"], name="matmul")],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(0.05, dtype=np.float32), "scale"),
         numpy_helper.from_array(np.array(0, dtype=np.int8), "zero"),
         numpy_helper.from_array(weights, "w")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def write_bf16_model(path: Path) -> None:
    """A graph exported with bf16 casts (x -> Cast(bf16) -> Cast(fp32) -> Relu)."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
         helper.make_node("Cast", ["xb"], ["xf"], to=TensorProto.FLOAT),
         helper.make_node("Relu", ["xf"], ["y"])],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def spec(models: Path, name: str = "det", **overrides) -> BackboneSpec:
    """A backbone of the corpus (cls gets its dynamic-batch profile unless told otherwise)."""
    values = {"model_name": name, "onnx_path": models / f"{name}.onnx", "workspace_mb": 256}
    if name == "cls":
        values["inputs"] = (("features", InputShape((1, 64), (8, 64), (32, 64))),)
    if name == "emb":
        values["external_data"] = (models / "emb.onnx.data",)
    values.update(overrides)
    return BackboneSpec(**values)


def compile_one(cache: Path, host: HostCapabilities, *specs: BackboneSpec, heartbeat_s: float = 0):
    """Drive the real compiler with the TensorRT backend; returns the summary."""
    request = EngineCompileRequest(backbones=tuple(specs), cache_dir=cache, host=host)
    return EngineCompiler(TensorRTBackend(), heartbeat_s=heartbeat_s).compile_engines_for_corpus(request)


def _save(path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def write_onnx_cases(folder):
    """relu (dynamic batch), unknown op, MatMul mismatch, truncated, zero-led garbage, static relu, missing."""
    f = TensorProto.FLOAT
    files = {
        "relu": _save(folder / "relu.onnx", [helper.make_node("Relu", ["x"], ["y"], name="relu0")],
                      [helper.make_tensor_value_info("x", f, ["N", 8])], [helper.make_tensor_value_info("y", f, ["N", 8])]),
        "static": _save(folder / "static.onnx", [helper.make_node("Relu", ["x"], ["y"], name="relu0")],
                        [helper.make_tensor_value_info("x", f, [1, 8])], [helper.make_tensor_value_info("y", f, [1, 8])]),
        "unknown": _save(folder / "unknown.onnx", [helper.make_node("Relu", ["x"], ["a"], name="relu0"),
                                                   helper.make_node("FancyOp", ["a"], ["y"], name="fancy_1")],
                         [helper.make_tensor_value_info("x", f, [1, 8])], [helper.make_tensor_value_info("y", f, [1, 8])]),
        "matmul": _save(folder / "matmul.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm0")],
                        [helper.make_tensor_value_info("x", f, [1, 8])], [helper.make_tensor_value_info("y", f, [1, 4])],
                        [numpy_helper.from_array(np.ones((5, 4), np.float32), "w")]),
    }
    data = open(files["relu"], "rb").read()
    (folder / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (folder / "garbage.onnx").write_bytes(b"\x00\x01garbage garbage")
    files.update(trunc=str(folder / "trunc.onnx"), garbage=str(folder / "garbage.onnx"),
                 missing=str(folder / "missing.onnx"))
    return files
