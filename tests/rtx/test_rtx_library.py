"""The library end to end on the real TensorRT-RTX builder: corpus builds, reuse, names, progress, precision."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from provisioning.compiler import CompileOutcome
from provisioning.errors import BackendError
from provisioning.manifest import read_manifest
from provisioning.sidecar import Sha256Sidecar
from tests.rtx.conftest import (TARGETS, build_with_library, one_line, rtx_host, spec_for, write_qdq_model,
                                write_rtx_config)

MODELS = ("det", "cls", "emb")


def _stamp(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_corpus_builds_real_plans_with_sidecar_manifest_and_build_log(rtx, rtx_corpus: Path) -> None:
    """Each backbone: a real RTX plan, sealed, described, named for its targets, with TensorRT's log."""
    built = build_with_library(rtx_corpus / "corpus.yaml")
    assert {r.model_name: r.outcome for r in built.summary} == {m: CompileOutcome.BUILT for m in MODELS}
    version = re.escape(rtx.__version__)
    for model, precision in (("det", "fp32"), ("cls", "fp32"), ("emb", "fp16")):
        engine = built.engine(model)
        assert re.fullmatch(rf"{model}\.{precision}\.trtrtx-{version}\.sm86-sm89-sm120\.[0-9a-f]{{8}}\.engine",
                            engine.name), engine.name
        plan = engine.read_bytes()
        assert len(plan) > 1000 and plan.startswith(b"vtrt")
        assert Sha256Sidecar.verify(engine)
        assert Sha256Sidecar.read(engine).file_name == engine.name
        manifest = read_manifest(engine)
        assert manifest["engine"]["size"] == len(plan)
        assert manifest["inputs"]["backend"] == "tensorrt-rtx"
        assert manifest["inputs"]["host"]["compute_capabilities"] == TARGETS
        notes = manifest["build"]["notes"]
        assert notes["compute_capabilities"] == TARGETS
        assert str(notes["deserialized"]).startswith("false") and "no GPU" in notes["deserialized"]
        assert notes["validated"] is False
        log = engine.with_name(engine.name + ".build.log").read_text()
        assert log.startswith(f"# TensorRT-RTX {rtx.__version__} build of {model} ({precision}) "
                              "for sm86, sm89, sm120")
        assert "[I] Input filename:" in log and "[I] ONNX IR version:" in log  # the real ONNX parser's lines


def test_second_run_reuses_without_building(rtx_corpus: Path) -> None:
    """Nothing is rebuilt, rewritten or re-logged when nothing changed."""
    first = build_with_library(rtx_corpus / "corpus.yaml")
    stamps = {m: _stamp(first.engine(m)) for m in MODELS}
    logs = {m: _stamp(first.engine(m).with_name(first.engine(m).name + ".build.log")) for m in MODELS}
    again = build_with_library(rtx_corpus / "corpus.yaml")
    assert {r.model_name: r.outcome for r in again.summary} == {m: CompileOutcome.REUSED for m in MODELS}
    assert all(r.compile_duration_s is None for r in again.summary)
    assert {m: _stamp(again.engine(m)) for m in MODELS} == stamps
    assert {m: _stamp(again.engine(m).with_name(again.engine(m).name + ".build.log")) for m in MODELS} == logs


def test_same_inputs_same_name_and_other_targets_another_name(rtx_corpus: Path, tmp_path: Path) -> None:
    """Targets are part of the identity: [sm89] is a new engine; the old one is left byte for byte."""
    config = rtx_corpus / "corpus.yaml"
    first = build_with_library(config)
    names = {m: first.engine(m).name for m in MODELS}
    old = {m: _stamp(first.engine(m)) for m in MODELS}

    twin = tmp_path / "twin"  # the same models and settings in another folder: the same names
    twin.mkdir()
    (twin / "models").symlink_to(rtx_corpus / "models")
    write_rtx_config(twin, yaml.safe_load(config.read_text())["backbones"], compute_capabilities=list(TARGETS))
    assert {m: build_with_library(twin / "corpus.yaml").engine(m).name for m in MODELS} == names

    document = yaml.safe_load(config.read_text())
    document["compute_capabilities"] = ["sm89"]
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    other = build_with_library(config)
    assert {r.outcome for r in other.summary} == {CompileOutcome.BUILT}
    for model in MODELS:
        engine = other.engine(model)
        assert ".sm89." in engine.name and engine.name != names[model]
        assert read_manifest(engine)["build"]["notes"]["compute_capabilities"] == ["sm89"]
        assert _stamp(first.engine(model)) == old[model]  # untouched
        assert Sha256Sidecar.verify(first.engine(model))


def test_progress_reports_real_tensorrt_phases_and_the_log_has_info(tmp_path: Path) -> None:
    """The progress callback gets TensorRT's own nested phase names during the build."""
    from provisioning.backends.base import EngineOutput
    from provisioning.backends.tensorrt import TensorRTBackend
    from tests.conftest import CORPUS

    reports: list[tuple[str, str]] = []
    published: dict = {}
    output = EngineOutput(tmp_path / "det.engine", tmp_path,
                          lambda payload, notes: published.update(plan=bytes(payload), notes=notes),
                          lambda phase, detail: reports.append((phase, detail)))
    spec = spec_for(CORPUS / "models" / "det.onnx", "det")
    TensorRTBackend("tensorrt-rtx").compile_engine(spec, rtx_host(), output)
    phases = [phase for phase, _ in reports]
    assert phases[:3] == ["prepare", "parse", "build"] and phases[-1] == "publish"
    tensorrt_phases = [p for p in phases if p not in ("prepare", "parse", "build", "publish")]
    assert "Building engine" in tensorrt_phases
    nested = [p for p in tensorrt_phases if p.startswith("Building engine > ")]
    assert nested, tensorrt_phases
    assert any(re.fullmatch(r"step \d+/\d+", d) for p, d in reports if p in nested)
    assert published["plan"].startswith(b"vtrt")
    log = (tmp_path / "det.engine.build.log").read_text()
    assert sum(line.startswith("[I] ") for line in log.splitlines()) >= 5


def test_fp16_is_built_by_converting_the_graph(rtx_corpus: Path) -> None:
    """fp16 on the strongly typed RTX network: the manifest says the graph was converted."""
    built = build_with_library(rtx_corpus / "corpus.yaml")
    notes = read_manifest(built.engine("emb"))["build"]["notes"]
    assert "onnxconverter-common" in notes["precision_mode"]
    assert built.engine("emb").read_bytes().startswith(b"vtrt")


def test_int8_with_qdq_nodes_builds(tmp_path: Path) -> None:
    """An explicitly quantized graph builds at int8 through the config."""
    folder = tmp_path / "q"
    folder.mkdir()
    write_qdq_model(folder / "q.onnx")
    write_rtx_config(folder, [{"model_name": "q", "onnx": "q.onnx", "precision": "int8"}],
                     compute_capabilities=["sm86"])
    built = build_with_library(folder / "corpus.yaml")
    engine = built.engine("q")
    assert ".int8." in engine.name and engine.read_bytes().startswith(b"vtrt")
    assert Sha256Sidecar.verify(engine)
    assert "Q/DQ" in read_manifest(engine)["build"]["notes"]["precision_mode"]


def test_int8_without_qdq_is_refused_in_one_line(rtx_corpus: Path) -> None:
    """emb has no Q/DQ nodes: one line naming the backbone; nothing is published."""
    config = rtx_corpus / "corpus.yaml"
    document = yaml.safe_load(config.read_text())
    document["backbones"] = [dict(b, precision="int8") for b in document["backbones"] if b["model_name"] == "emb"]
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(BackendError) as caught:
        build_with_library(config)
    message = one_line(caught.value)
    assert message.startswith("backbone emb: ") and "Q/DQ" in message and "emb.onnx" in message
    assert not list((rtx_corpus / "cache").glob("*.engine"))
