"""How a strongly typed TensorRT build gets its precision, on real graphs and real converters.

:mod:`provisioning.backends.trt_precision` imports no TensorRT: these tests run the real
onnx, onnxconverter-common and ONNX Runtime quantizer, and check the graphs it produces
or refuses.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from provisioning.backends import trt_precision
from provisioning.backends.trt_features import FEATURES
from provisioning.backends.trt_precision import prepare_precision
from provisioning.compiler import BackboneSpec
from provisioning.config import InputShape
from provisioning.errors import BackendError

RTX = FEATURES["tensorrt-rtx", 1]
TRT10 = FEATURES["tensorrt", 10]


def _matmul_model(path, weight_value=0.5) -> None:
    weights = np.full((8, 4), weight_value, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(weights, "w")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _quantized(tmp_path, **options):
    """The MatMul model through ONNX Runtime's real static quantizer (Q/DQ format)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    source, target = tmp_path / "mm.onnx", tmp_path / "mm.qdq.onnx"
    _matmul_model(source)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.samples = iter([{"x": np.random.default_rng(i).standard_normal((1, 8)).astype(np.float32)}
                                 for i in range(4)])

        def get_next(self):
            return next(self.samples, None)

    quantization.quantize_static(str(source), str(target), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 **options)
    return target


def _spec(path, precision, **extra) -> BackboneSpec:
    return BackboneSpec(model_name="mm", onnx_path=path, precision=precision, **extra)


def test_int8_without_qdq_says_how_to_quantize_for_tensorrt(tmp_path):
    _matmul_model(tmp_path / "mm.onnx")
    with pytest.raises(BackendError) as info:
        prepare_precision(_spec(tmp_path / "mm.onnx", "int8"), RTX, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "backbone mm" in message and "has none" in message
    assert "QuantType.QInt8" in message and "ActivationSymmetric" in message and "Model Optimizer" in message


@pytest.mark.parametrize("activation", ["QUInt8", None])
def test_onnx_runtime_asymmetric_qdq_is_refused_before_tensorrt_sees_it(tmp_path, activation):
    quantization = pytest.importorskip("onnxruntime.quantization")
    # ONNX Runtime's defaults (asymmetric activations), or explicitly uint8 activations
    options = {"activation_type": getattr(quantization.QuantType, activation)} if activation else {}
    model = _quantized(tmp_path, **options)
    with pytest.raises(BackendError) as info:
        prepare_precision(_spec(model, "int8"), RTX, tmp_path)
    message = str(info.value)
    assert "asymmetric zero points" in message and "ActivationSymmetric" in message and "\n" not in message


def test_symmetric_int8_qdq_is_accepted_as_explicit_quantization(tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    model = _quantized(tmp_path, activation_type=quantization.QuantType.QInt8,
                       weight_type=quantization.QuantType.QInt8,
                       extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    for row, flags in ((RTX, ()), (TRT10, ("INT8",))):
        prepared = prepare_precision(_spec(model, "int8"), row, tmp_path)
        assert prepared.flags == flags and "explicit quantization" in prepared.notes["precision_mode"]


def test_fp16_conversion_keeps_weights_up_to_the_fp16_maximum(tmp_path):
    pytest.importorskip("onnxconverter_common")
    _matmul_model(tmp_path / "mm.onnx", weight_value=30000.0)  # above the converter's default clamp of 1e4
    prepared = prepare_precision(_spec(tmp_path / "mm.onnx", "fp16"), RTX, tmp_path)
    converted = onnx.load_model(str(prepared.onnx_path))
    weights = [numpy_helper.to_array(t) for t in converted.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert weights and float(np.max(weights[0])) == 30000.0
    assert "max_finite_val=65504" in prepared.notes["precision_mode"]


def test_fp16_of_a_model_over_the_protobuf_limit_infers_shapes_file_to_file(tmp_path, monkeypatch, corpus_dir):
    pytest.importorskip("onnxconverter_common")
    # emb keeps its weights in emb.onnx.data; pretend that is past protobuf's 2 GiB
    monkeypatch.setattr(trt_precision, "_PROTOBUF_LIMIT", 1000)
    called = []
    real = onnx.shape_inference.infer_shapes_path
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", lambda *a, **k: (called.append(a), real(*a, **k)))
    models = corpus_dir / "models"
    spec = _spec(models / "emb.onnx", "fp16", external_data=(models / "emb.onnx.data",),
                 inputs=(("tokens", InputShape((4, 128), (4, 128), (4, 128))),))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    prepared = prepare_precision(spec, RTX, scratch)
    assert called, "shape inference must run on files, not in memory"
    assert "shapes inferred file to file" in prepared.notes["precision_mode"]
    converted = onnx.load_model(str(prepared.onnx_path))  # loads with its own external data
    assert any(t.data_type == TensorProto.FLOAT16 for t in converted.graph.initializer)
    assert (scratch / f"{prepared.onnx_path.name}.data").exists()
