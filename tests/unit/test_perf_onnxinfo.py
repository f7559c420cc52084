"""ONNX inspection records are a shortcut: written without an fsync each, never left half-made."""

from __future__ import annotations

import errno
import os

import pytest

from provisioning import build_backbone_specs, load_config
from provisioning.errors import ConfigError
from provisioning.onnxinfo import INSPECT_DIR, cached_inspection
from provisioning.sidecar import is_temp_name


def test_recording_inspections_costs_no_fsync(corpus_yaml, monkeypatch):
    config = load_config(corpus_yaml)
    config.cache_dir.mkdir(parents=True)
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    build_backbone_specs(config, "onnxruntime")  # inspects every model and records it
    assert synced == [], "each record's fsync is a journal commit (~4 ms a backbone on a cold build)"
    assert all(cached_inspection(b.onnx, config.cache_dir) is not None for b in config.backbones)


def test_a_failed_record_write_leaves_no_temporary_file_and_no_record(corpus_yaml, monkeypatch):
    config = load_config(corpus_yaml)
    config.cache_dir.mkdir(parents=True)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    build_backbone_specs(config, "onnxruntime")  # best effort: the run goes on
    monkeypatch.undo()
    folder = config.cache_dir / INSPECT_DIR
    assert [p.name for p in folder.iterdir() if is_temp_name(p.name)] == []
    assert all(cached_inspection(b.onnx, config.cache_dir) is None for b in config.backbones)


def _big_model(folder):
    """An ONNX over 16 MiB: a large inline weight, a symbolic batch dim, a tensor with external data."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2100, 2100), dtype=np.float32), "w")  # 17.6 MB inline
    extra = TensorProto(name="e", data_type=TensorProto.FLOAT, dims=[2100])
    extra.data_location = TensorProto.EXTERNAL
    extra.external_data.add(key="location", value="e.bin")
    (folder / "e.bin").write_bytes(np.zeros(2100, dtype=np.float32).tobytes())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "e"], ["y"])]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2100]),
                                             helper.make_tensor_value_info("w", TensorProto.FLOAT, [2100, 2100])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2100])], [weight, extra])
    path = folder / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert path.stat().st_size > 16 << 20
    return path


def test_a_large_model_is_inspected_without_parsing_its_inline_weights(tmp_path, monkeypatch):
    import onnx

    from provisioning import onnxinfo

    path = _big_model(tmp_path)
    parsed = onnxinfo._parse_model(onnx, path, ValueError)
    assert [t.name for t in parsed.graph.initializer] == ["w", "e"]
    assert len(parsed.graph.initializer[0].raw_data) == 0, "the 17 MB weight was copied by the parser"
    fast = onnxinfo.inspect_onnx(path)
    monkeypatch.setattr(onnxinfo, "_STRIP_FROM", 1 << 62)  # the full parse: the reference
    assert onnxinfo.inspect_onnx(path) == fast
    assert [(i.name, i.dims) for i in fast.inputs] == [("x", ("batch", 2100))]  # the weight is no input
    assert fast.external_data == (tmp_path / "e.bin",)


@pytest.mark.parametrize("cut", [1, 1000, 9 << 20])
def test_a_truncated_large_model_is_still_refused_in_one_line(tmp_path, cut):
    from provisioning.onnxinfo import inspect_onnx

    path = _big_model(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(ConfigError) as failure:
        inspect_onnx(path)
    assert "is not a valid ONNX model" in str(failure.value) and "\n" not in str(failure.value)


def test_a_model_with_too_many_fields_to_walk_is_parsed_in_full(tmp_path):
    """250,000 unknown fields (legal protobuf): walking them in Python would cost seconds; the parser takes them."""
    from provisioning.onnxinfo import _without_inline_weights, inspect_onnx

    path = _big_model(tmp_path)
    reference = inspect_onnx(path)
    unknown = bytes([0xA0, 0x06, 0x01]) * 250_000  # field 100, varint 1
    path.write_bytes(path.read_bytes() + unknown)
    assert _without_inline_weights(memoryview(path.read_bytes())) is None
    info = inspect_onnx(path)
    assert (info.inputs, info.external_data) == (reference.inputs, reference.external_data)
