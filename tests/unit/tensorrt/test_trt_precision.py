"""Each precision on 10.x (builder flags) and 11.x (strongly typed graphs), as the manifest records it."""

from __future__ import annotations

import sys

import onnx
import pytest

from provisioning.errors import BackendError
from provisioning.manifest import read_manifest
from trt_helpers import compile_one, gpu_host, spec

TRT10 = "10.16.1.11"


def notes_of(summary, name):
    return read_manifest(summary.by_name()[name].entry.path)["build"]["notes"]


@pytest.mark.parametrize("precision, flag", [("fp16", "FP16"), ("bf16", "BF16")])
def test_trt10_reduced_precision_uses_builder_flags(world10, models, tmp_path, precision, flag):
    world = world10
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det", precision=precision))
    assert world.builds[0]["flags"] == [flag]
    assert world.builds[0]["onnx"] == str(models / "det.onnx")  # the graph is parsed unchanged
    assert notes_of(summary, "det")["precision_mode"] == f"{precision} via BuilderFlag.{flag}"


def test_int8_with_qdq_nodes_is_explicit_quantization(world, models, tmp_path):
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "qdq", precision="int8"))
    mode = notes_of(summary, "qdq")["precision_mode"]
    assert "int8 explicit quantization (2 Q/DQ nodes)" in mode
    if world.version == TRT10:
        assert world.builds[0]["flags"] == ["INT8"] and "BuilderFlag.INT8" in mode
    else:
        assert world.builds[0]["flags"] == [] and "strongly typed" in mode


def test_int8_without_qdq_is_refused_with_what_to_do(world, models, tmp_path):
    with pytest.raises(BackendError, match=r"backbone det: precision int8 needs Q/DQ nodes .* det.onnx has none; "
                                           r"quantize it with NVIDIA Model Optimizer.*QuantType.QInt8"):
        compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det", precision="int8"))
    assert world.builds == []


def test_trt11_fp16_converts_the_graph_keeping_io_types(world11, models, tmp_path):
    world = world11
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common (tensorrt extra) is not installed")
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det", precision="fp16", validate=True))
    build = world.builds[0]
    assert build["flags"] == []
    assert build["onnx"].endswith("det.fp16.onnx") and "FLOAT16" in build["onnx_types"]
    notes = notes_of(summary, "det")
    assert "fp16 by converting the ONNX graph with onnxconverter-common" in notes["precision_mode"]
    assert "keep_io_types=True" in notes["precision_mode"] and notes["validated"] is True


def test_trt11_fp16_without_converter_is_refused_with_install_hint(world11, models, tmp_path, monkeypatch):
    world = world11
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    with pytest.raises(BackendError, match="networks are strongly typed.*pip install onnxconverter-common"):
        compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det", precision="fp16"))
    assert world.builds == []


def test_trt11_bf16_is_refused_unless_the_graph_already_carries_it(world11, models, tmp_path):
    world = world11
    with pytest.raises(BackendError, match="export the ONNX with bf16 casts, choose fp16, or build with TensorRT 10.x"):
        compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det", precision="bf16"))
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "bf16", precision="bf16"))
    assert "bf16 as exported" in notes_of(summary, "bf16")["precision_mode"]
    assert world.builds[0]["onnx"] == str(models / "bf16.onnx")


def test_converted_graph_never_lands_in_the_cache(world11, models, tmp_path):
    world = world11
    pytest.importorskip("onnxconverter_common")
    cache = tmp_path / "cache"
    compile_one(cache, gpu_host(world), spec(models, "det", precision="fp16"))
    assert not list(cache.rglob("*.onnx"))  # it lived in the build's scratch folder only
    assert onnx.load_model(str(models / "det.onnx")).graph.initializer[0].data_type == onnx.TensorProto.FLOAT
