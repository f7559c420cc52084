"""Every config rule, each with the one-line error a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from provisioning import ConfigError, build_backbone_specs, load_config

DET = {"model_name": "det", "onnx": "models/det.onnx"}


def _write(folder: Path, document) -> Path:
    path = folder / "corpus.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def _error(folder: Path, document, *, specs: bool = False) -> str:
    path = _write(folder, document)
    with pytest.raises(ConfigError) as info:
        config = load_config(path)
        if specs:
            build_backbone_specs(config)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


BAD_CONFIGS = [
    # (document, expected fragments)
    ("backbones: [\n  - {model_name: det", ["invalid YAML", "line"]),
    ("- just\n- a list\n", ["top level must be a mapping"]),
    ({"backbones": [DET], "cahce_dir": "x"}, ["unknown key(s) cahce_dir"]),
    ({"backbones": [{**DET, "precison": "fp32"}]}, ["backbone det", "unknown key(s) precison"]),
    ({"backbones": []}, ["field 'backbones'", "non-empty list"]),
    ({"cache_dir": "x"}, ["field 'backbones'", "missing"]),
    ({"backbones": [DET, dict(DET)]}, ["backbone det", "duplicate model_name"]),
    ({"backbones": [DET, {**DET, "model_name": "DET"}]}, ["duplicate model_name"]),
    ("backbones:\n  - model_name: a\n    model_name: b\n    onnx: x.onnx\n", ["duplicate key 'model_name'"]),
    ({"backbones": [{**DET, "model_name": "../../etc/x"}]}, ["field 'model_name'", "invalid name"]),
    ({"backbones": [{**DET, "model_name": "/abs/name"}]}, ["field 'model_name'"]),
    ({"backbones": [{**DET, "model_name": "a\x00b"}]}, ["field 'model_name'"]),
    ({"backbones": [{**DET, "model_name": "x" * 300}]}, ["field 'model_name'"]),
    ({"backbones": [{**DET, "model_name": "a.b"}]}, ["field 'model_name'"]),
    ({"backbones": [{**DET, "model_name": ""}]}, ["field 'model_name'"]),
    ({"backbones": [{**DET, "model_name": 7}]}, ["field 'model_name'"]),
    ({"backbones": [{"onnx": "models/det.onnx"}]}, ["field 'model_name'", "missing"]),
    ({"backbones": [{"model_name": "det"}]}, ["backbone det", "field 'onnx'", "missing"]),
    ({"backbones": [{**DET, "onnx": ""}]}, ["field 'onnx'"]),
    ({"backbones": [{**DET, "onnx": 5}]}, ["field 'onnx'"]),
    ({"backbones": [{**DET, "precision": "fp64"}]}, ["field 'precision'", "fp64"]),
    ({"backend": "onnxruntime", "backbones": [{**DET, "precision": "fp16"}]},
     ["field 'precision'", "not supported by the onnxruntime backend"]),
    ({"backend": "cuda", "backbones": [DET]}, ["field 'backend'", "cuda"]),
    ({"workspace_mb": 0, "backbones": [DET]}, ["field 'workspace_mb'", "positive"]),
    ({"workspace_mb": -5, "backbones": [DET]}, ["field 'workspace_mb'"]),
    ({"workspace_mb": "4G", "backbones": [DET]}, ["field 'workspace_mb'"]),
    ({"workspace_mb": True, "backbones": [DET]}, ["field 'workspace_mb'"]),
    ({"verify": "sometimes", "backbones": [DET]}, ["field 'verify'"]),
    ({"backbones": [{**DET, "inputs": {"images": [1, 3, 0, 32]}}]}, ["field 'inputs.images'", "positive"]),
    ({"backbones": [{**DET, "inputs": {"images": [1, -3, 32, 32]}}]}, ["field 'inputs.images'", "positive"]),
    ({"backbones": [{**DET, "inputs": {"images": [1, 3, 2**40, 32]}}]}, ["field 'inputs.images'", "larger"]),
    ({"backbones": [{**DET, "inputs": {"images": [65536, 65536, 65536]}}]}, ["field 'inputs.images'", "elements"]),
    ({"backbones": [{**DET, "inputs": {"images": [1, 3.5, 32, 32]}}]}, ["not an integer"]),
    ({"backbones": [{**DET, "inputs": {"images": []}}]}, ["field 'inputs.images'"]),
    ({"backbones": [{**DET, "inputs": {"images": "1x3x32x32"}}]}, ["field 'inputs.images'"]),
    ({"backbones": [{**DET, "inputs": {"x": {"min": [4], "opt": [2], "max": [8]}}}]},
     ["field 'inputs.x'", "out of order"]),
    ({"backbones": [{**DET, "inputs": {"x": {"min": [1], "opt": [8], "max": [4]}}}]}, ["out of order"]),
    ({"backbones": [{**DET, "inputs": {"x": {"min": [1, 2], "opt": [2], "max": [4]}}}]}, ["different ranks"]),
    ({"backbones": [{**DET, "inputs": {"x": {"min": [1], "max": [4]}}}]}, ["missing opt"]),
    ({"backbones": [{**DET, "inputs": {"x": {"min": [1], "opt": [1], "max": [4], "best": [2]}}}]},
     ["unknown best"]),
    ({"backbones": [{**DET, "validate": "yes"}]}, ["field 'validate'"]),
    ({"backbones": [{**DET, "hardware_compatibility": "turing_plus"}]}, ["field 'hardware_compatibility'"]),
    ({"backbones": [{**DET, "version_compatible": 1}]}, ["field 'version_compatible'"]),
    ({"remote": "s3://bucket", "backbones": [DET]}, ["field 'remote'"]),
    ({"backbones": "det"}, ["field 'backbones'"]),
    ({"backbones": ["det"]}, ["backbones[0]"]),
]


@pytest.mark.parametrize("document,fragments", BAD_CONFIGS, ids=[str(i) for i in range(len(BAD_CONFIGS))])
def test_bad_config_is_one_line_naming_file_and_field(corpus_dir: Path, document, fragments):
    message = _error(corpus_dir, document)
    for fragment in fragments:
        assert fragment in message, message


def _onnx_error(folder: Path, backbone: dict, **top) -> str:
    return _error(folder, {"backend": "onnxruntime", **top, "backbones": [backbone]}, specs=True)


def test_missing_onnx_file(corpus_dir):
    message = _onnx_error(corpus_dir, {"model_name": "det", "onnx": "models/nope.onnx"})
    assert "backbone det" in message and "not found" in message


def test_file_that_is_not_onnx(corpus_dir):
    (corpus_dir / "models" / "fake.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    message = _onnx_error(corpus_dir, {"model_name": "det", "onnx": "models/fake.onnx"})
    assert "not a valid ONNX model" in message or "holds no ONNX graph" in message


def test_yaml_text_pretending_to_be_onnx(corpus_dir):
    (corpus_dir / "models" / "text.onnx").write_text("hello: world\n")
    message = _onnx_error(corpus_dir, {"model_name": "det", "onnx": "models/text.onnx"})
    assert "ONNX" in message


def test_empty_onnx_file(corpus_dir):
    (corpus_dir / "models" / "empty.onnx").write_bytes(b"")
    assert "empty" in _onnx_error(corpus_dir, {"model_name": "det", "onnx": "models/empty.onnx"})


def test_onnx_path_is_a_folder(corpus_dir):
    assert "not a regular file" in _onnx_error(corpus_dir, {"model_name": "det", "onnx": "models"})


def test_missing_external_data(corpus_dir):
    (corpus_dir / "models" / "emb.onnx.data").unlink()
    message = _onnx_error(corpus_dir, {"model_name": "emb", "onnx": "models/emb.onnx"})
    assert "external data file 'emb.onnx.data'" in message and "missing" in message


def test_unknown_input_name(corpus_dir):
    message = _onnx_error(corpus_dir, {**DET, "inputs": {"image": [1, 3, 32, 32]}})
    assert "field 'inputs.image'" in message and "its inputs: images" in message


def test_rank_mismatch(corpus_dir):
    message = _onnx_error(corpus_dir, {**DET, "inputs": {"images": [1, 3, 32]}})
    assert "rank 3" in message and "rank 4" in message


def test_fixed_dim_contradicted(corpus_dir):
    message = _onnx_error(corpus_dir, {**DET, "inputs": {"images": [1, 3, 64, 64]}})
    assert "axis 2 is fixed to 32" in message


def test_dynamic_input_without_profile_is_refused_for_tensorrt(corpus_dir):
    from provisioning.compose import build_backbone_specs as specs_for

    path = _write(corpus_dir, {"backend": "tensorrt", "backbones": [{"model_name": "cls", "onnx": "models/cls.onnx"}]})
    with pytest.raises(ConfigError, match="'features' has dynamic dims"):
        specs_for(load_config(path), "tensorrt")


def test_relative_paths_resolve_against_the_config_folder(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(_write(corpus_dir, {"cache_dir": "../engines", "backbones": [DET]}))
    assert config.cache_dir == corpus_dir.parent / "engines"
    assert config.backbones[0].onnx == corpus_dir / "models" / "det.onnx"


def test_defaults(corpus_dir):
    config = load_config(_write(corpus_dir, {"backbones": [DET]}))
    assert (config.backend, config.workspace_mb, config.verify) == ("auto", 4096, "full")
    assert config.backbones[0].precision == "fp32" and not config.backbones[0].validate


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_non_utf8_config(tmp_path):
    path = tmp_path / "corpus.yaml"
    path.write_bytes(b"backbones: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_nul_byte_in_config(tmp_path):
    path = tmp_path / "corpus.yaml"
    path.write_text("backbones:\n  - model_name: a\x00\n")
    with pytest.raises(ConfigError, match="NUL"):
        load_config(path)


def test_the_bundled_corpus_is_valid():
    from tests.conftest import CORPUS

    config = load_config(CORPUS / "corpus.yaml")
    specs = build_backbone_specs(config, "onnxruntime")
    assert [s.model_name for s in specs] == ["det", "cls", "emb"]
    assert [p.name for p in specs[2].external_data] == ["emb.onnx.data"]


def test_a_bad_remote_block_fails_when_the_config_is_loaded(corpus_dir):
    message = _error(corpus_dir, {"remote": {"url": "s3://bucket/engines", "mode": "sometimes"}, "backbones": [DET]})
    assert "field 'remote.mode'" in message and "sometimes" in message, message
