"""docs/configuration.md's silero-vad example, read from the page and built as written.

The YAML block is taken from the docs text (not copied into the test), written as
corpus.yaml beside the real ``silero_vad.onnx`` of the ``silero-vad`` package, and built with
``validate:`` by the real ONNX Runtime backend: the reference run of the source model and the
comparison must pass, so the example is true (issue 22 item 26: it said ``inputs: {sr:
16000}`` alone, which cannot run: ``input`` has dynamic dims, taken as 1, and a 1 x 1 chunk
is too short for the model's padding).
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from provisioning import CompileOutcome, load_config
from provisioning.compose import build_compile_request, build_engine_compiler
from provisioning.errors import BackendError
from provisioning.manifest import manifest_path_for
from tests.conftest import shipped_file

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```yaml\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)


def docs_block(containing: str) -> str:
    """The one ```yaml block of docs/configuration.md that contains ``containing`` (dedented)."""
    blocks = [textwrap.dedent(m.group("body")) for m in _FENCE.finditer(DOC.read_text()) if containing in m.group("body")]
    assert len(blocks) == 1, f"expected one yaml block with {containing!r} in {DOC.name}, found {len(blocks)}"
    return blocks[0]


@pytest.fixture
def silero_project(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    shutil.copyfile(shipped_file("silero_vad", "data/silero_vad.onnx"), tmp_path / "models" / "silero_vad.onnx")
    return tmp_path


def test_the_silero_vad_example_builds_and_validates_as_written(silero_project: Path) -> None:
    text = docs_block("silero_vad.onnx")
    document = yaml.safe_load(text)
    (silero_project / "corpus.yaml").write_text(yaml.safe_dump({"cache_dir": "cache", **document}))
    config = load_config(silero_project / "corpus.yaml")
    summary = build_engine_compiler(config).compile_engines_for_corpus(build_compile_request(config))
    [result] = summary.results
    assert result.outcome is CompileOutcome.BUILT, result
    report = result.entry.manifest["build"]["notes"]["validation"]
    assert json.loads(manifest_path_for(result.entry.path).read_text())["build"]["notes"]["validation"] == report
    assert report["criteria"]["inputs"] == {"sr": 16000}
    assert {output for output in report["outputs"]} == {"output", "stateN"}


def test_the_sr_value_alone_is_not_enough(silero_project: Path) -> None:
    # what the docs said before: without shapes for input and state the backbone is refused
    document = yaml.safe_load(docs_block("silero_vad.onnx"))
    del document["backbones"][0]["inputs"]
    (silero_project / "corpus.yaml").write_text(yaml.safe_dump({"cache_dir": "cache", **document}))
    config = load_config(silero_project / "corpus.yaml")
    with pytest.raises(BackendError, match="validation cannot run the source model"):
        build_engine_compiler(config).compile_engines_for_corpus(build_compile_request(config))
    assert not list((silero_project / "cache").glob("*.engine"))
