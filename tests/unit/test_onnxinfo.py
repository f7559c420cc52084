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
