"""config.pbtxt text against Triton's own schema: awkward names, data types, scalars, reading platforms."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper, save_model

from provisioning.config import InputShape
from provisioning.errors import ConfigError
from provisioning.serving.triton_config import (ModelConfigSpec, onnx_tensors, read_platform, render_config,
                                                warmup_inputs)

NAME = 'in"pu\\t é:{x}\n'  # quotes, a backslash, non-ASCII, braces, a newline


def _model(path, inputs, outputs, nodes):
    save_model(helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                                 opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _parse(text):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_names_types_dims_and_scalars_survive_triton_parsing(tmp_path):
    path = tmp_path / "m.onnx"
    _model(path,
           [helper.make_tensor_value_info(NAME, TensorProto.INT64, ["batch", 7]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
           [helper.make_tensor_value_info("half", TensorProto.FLOAT16, [None, 7]),
            helper.make_tensor_value_info("out", TensorProto.BOOL, [])],
           [helper.make_node("Cast", [NAME], ["half"], to=TensorProto.FLOAT16),
            helper.make_node("Identity", ["flag"], ["out"])])
    inputs, outputs = onnx_tensors(path)
    warmup = warmup_inputs(inputs, {NAME: InputShape((1, 7), (4, 7), (8, 7))})
    spec = ModelConfigSpec("m", "onnxruntime_onnx", inputs, outputs, cc_model_filenames=(("8.6", "a b\".engine"),),
                           default_model_filename="a b\".engine", warmup=warmup, source="m\n.onnx")
    config = _parse(render_config(spec))
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [(NAME, 9, [-1, 7]), ("flag", 1, [1])]
    assert list(config.input[1].reshape.shape) == []  # a scalar: dims [1] reshaped to []
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("half", 10, [-1, 7]), ("out", 1, [1])]
    assert dict(config.cc_model_filenames) == {"8.6": 'a b".engine'}
    warm = config.model_warmup[0].inputs
    assert (list(warm[NAME].dims), list(warm["flag"].dims), warm["flag"].random_data) == ([4, 7], [1], True)


def test_a_type_triton_lacks_is_one_line(tmp_path):
    path = tmp_path / "c.onnx"
    _model(path, [helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [2])],
           [helper.make_tensor_value_info("y", TensorProto.COMPLEX64, [2])],
           [helper.make_node("Identity", ["x"], ["y"])])
    with pytest.raises(ConfigError, match="element type COMPLEX64, which Triton has no data type for") as caught:
        onnx_tensors(path)
    assert "\n" not in str(caught.value)


def test_dynamic_inputs_without_a_profile_get_no_warmup(tmp_path):
    path = tmp_path / "d.onnx"
    _model(path, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [helper.make_node("Relu", ["x"], ["y"])])
    inputs, outputs = onnx_tensors(path)
    assert warmup_inputs(inputs, {}) == ()
    assert "model_warmup" not in render_config(ModelConfigSpec("d", "onnxruntime_onnx", inputs, outputs))


@pytest.mark.parametrize("text, platform", [
    ('name: "a"\nplatform: "tensorrt_plan"\n', "tensorrt_plan"),
    ('# platform: "x"\nbackend: "onnxruntime"\n', "onnxruntime_onnx"),
    ('input [ { name: "platform" } ]\nplatform: "pytorch_libtorch"', "pytorch_libtorch"),
    ('name: "a"\n', None),
])
def test_read_platform(text, platform):
    assert read_platform(text) == platform
