"""ONNX inspection: external data found, records reused only while the model is unchanged."""

from __future__ import annotations

import subprocess
import sys

from provisioning import build_backbone_specs, load_config
from provisioning.onnxinfo import cached_inspection, onnx_digest
from tests.conftest import REPO

WARM = (
    "import sys; from provisioning import load_config, build_backbone_specs;"
    "specs = build_backbone_specs(load_config(sys.argv[1]), 'onnxruntime');"
    "print('onnx' in sys.modules, [p.name for s in specs for p in s.external_data])"
)


def test_second_spec_build_reuses_the_inspection_without_importing_onnx(corpus_yaml):
    config = load_config(corpus_yaml)
    config.cache_dir.mkdir(parents=True)
    build_backbone_specs(config, "onnxruntime")
    out = subprocess.run([sys.executable, "-c", WARM, str(corpus_yaml)], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "False ['emb.onnx.data']"


def test_a_changed_model_is_inspected_again(corpus_yaml):
    config = load_config(corpus_yaml)
    config.cache_dir.mkdir(parents=True)
    build_backbone_specs(config, "onnxruntime")
    det = config.backbones[0].onnx
    assert cached_inspection(det, config.cache_dir) is not None
    det.write_bytes((corpus_yaml.parent / "models" / "cls.onnx").read_bytes())
    assert cached_inspection(det, config.cache_dir) is None
    specs = build_backbone_specs(config, "onnxruntime")
    assert specs[0].onnx_path == det


def test_inspection_is_not_recorded_when_the_config_is_invalid(corpus_dir):
    from tests.conftest import write_corpus_yaml
    import pytest
    from provisioning import ConfigError

    path = write_corpus_yaml(corpus_dir, [
        {"model_name": "det", "onnx": "models/det.onnx"},
        {"model_name": "cls", "onnx": "models/cls.onnx", "inputs": {"nope": [1, 64]}},
    ])
    config = load_config(path)
    config.cache_dir.mkdir()
    with pytest.raises(ConfigError):
        build_backbone_specs(config, "onnxruntime")
    assert list(config.cache_dir.iterdir()) == []


def test_digest_covers_external_data(corpus_dir):
    model = corpus_dir / "models" / "emb.onnx"
    data = corpus_dir / "models" / "emb.onnx.data"
    before = onnx_digest(model, (data,))
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(raw)
    assert onnx_digest(model, (data,)) != before


def _model_with_external_tensors(folder):
    """A model whose tensors live outside it: an initialiser, a Constant's attribute, an If's subgraph initialiser."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    big = lambda name, seed: numpy_helper.from_array(np.full((64, 64), seed, dtype=np.float32), name)  # noqa: E731
    branch = helper.make_graph([helper.make_node("Identity", ["inner"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [64, 64])],
                               initializer=[big("inner", 3)])
    other = helper.make_graph([helper.make_node("Identity", ["w"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [64, 64])])
    nodes = [
        helper.make_node("Constant", [], ["c"], value=big("c_value", 2)),
        helper.make_node("Add", ["w", "c"], ["s"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=branch, else_branch=other),
        helper.make_node("Add", ["s", "branch"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
                              initializer=[big("w", 1)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0, convert_attribute=True)
    return path


def test_the_wire_walk_finds_the_external_data_the_onnx_parser_finds(tmp_path):
    from provisioning.onnxinfo import inspect_onnx
    from provisioning.onnxwire import external_data_locations

    path = _model_with_external_tensors(tmp_path / "m")
    parsed = {p.name for p in inspect_onnx(path).external_data}
    assert len(parsed) == 3  # the initialiser, the attribute and the subgraph's initialiser
    assert external_data_locations(path) == parsed
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x0f" * 100)  # wire type 7: not protobuf
    assert external_data_locations(garbage) is None
    assert external_data_locations(tmp_path / "absent.onnx") is None


def test_an_inspection_record_is_bound_to_the_external_data_its_model_names(tmp_path):
    """Issue 22 item 9: a record may neither drop a file the bytes name, nor add one, nor reach outside."""
    import json
    import os

    import onnx
    import pytest

    from provisioning import ConfigError
    from provisioning.onnxinfo import _record_path, inspect_onnx, remember_inspection
    from provisioning.onnxwire import external_data_locations
    from provisioning.sidecar import stat_signature

    cache = tmp_path / "cache"
    cache.mkdir()
    path = _model_with_external_tensors(tmp_path / "m")
    info = inspect_onnx(path)
    remember_inspection(info, cache)
    assert cached_inspection(path, cache) == info
    record_file = _record_path(cache, path)
    record = json.loads(record_file.read_text())
    for planted in (record["external_data"][1:], record["external_data"] + ["m.onnx"]):
        record_file.write_text(json.dumps({**record, "external_data": planted}))
        assert cached_inspection(path, cache) is None, planted

    record_file.write_text(json.dumps(record))
    assert cached_inspection(path, cache) == info
    (path.parent / "inner").rename(tmp_path / "inner")  # an external data file gone: inspect (and fail) again
    assert cached_inspection(path, cache) is None
    (tmp_path / "inner").rename(path.parent / "inner")

    # a model that itself names a file outside its folder: the record repeating it is no shortcut
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 64 * 64 * 4)
    model = onnx.load_model(str(path), load_external_data=False)
    entry = next(e for e in model.graph.initializer[0].external_data if e.key == "location")
    entry.value = "../outside.bin"
    onnx.save_model(model, str(path))
    with pytest.raises(ConfigError, match="outside the model's folder"):
        inspect_onnx(path)
    names = sorted(external_data_locations(path))
    assert "../outside.bin" in names and "w" not in names
    record_file.write_text(json.dumps({**record, "signature": stat_signature(os.stat(path)), "external_data": names}))
    assert cached_inspection(path, cache) is None
