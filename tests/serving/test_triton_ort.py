"""``doit engines-export`` with real ONNX Runtime engines: layout, config.pbtxt, versions, refusals."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from provisioning.serving.triton import ExportError, export_triton_repository, plan_triton_export
from provisioning.serving.triton_repo import execute_export
from provisioning.sidecar import Sha256Sidecar

from tests.serving.conftest import (build_engines, complete_versions, edit_onnx, hidden_leftovers, model_config,
                                    sha256_of)

EXPECTED = {  # from corpus/models: (input, dims, output, dims)
    "det": ("images", [1, 3, 32, 32], "scores", [1, 4, 32, 32]),
    "cls": ("features", [-1, 64], "probs", [-1, 10]),
    "emb": ("tokens", [4, 128], "embedding", [4, 256]),
}


def tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")) if folder.exists() else []


def test_export_writes_triton_layout_with_a_valid_config(ort_project):
    result = ort_project.export()
    assert result.returncode == 0, result.stderr
    assert "hard-linked" in result.stdout and result.stderr == ""
    corpus = ort_project.corpus_loaded()
    for spec in corpus.specs:
        config = model_config(ort_project.repo / spec.model_name / "config.pbtxt")
        name_in, dims_in, name_out, dims_out = EXPECTED[spec.model_name]
        assert (config.name, config.platform, config.max_batch_size) == (spec.model_name, "onnxruntime_onnx", 0)
        assert [(t.name, list(t.dims)) for t in config.input] == [(name_in, dims_in)]
        assert [(t.name, list(t.dims)) for t in config.output] == [(name_out, dims_out)]
        assert config.input[0].data_type == config.output[0].data_type == 11  # TYPE_FP32
        assert [g.kind for g in config.instance_group] == [2]  # KIND_CPU: the engine is optimised for this CPU
        engine = corpus.engine_path(spec)
        exported = ort_project.repo / spec.model_name / "1" / "model.onnx"
        assert sha256_of(exported) == Sha256Sidecar.read(engine).sha256
        assert os.stat(exported).st_ino == os.stat(engine).st_ino  # hard link: same file system
        assert complete_versions(ort_project.repo / spec.model_name) == [1]
    warmup = model_config(ort_project.repo / "cls" / "config.pbtxt").model_warmup
    assert [(w.batch_size, list(w.inputs["features"].dims), w.inputs["features"].random_data) for w in warmup] == [
        (1, [8, 64], True)]  # the profile's opt shape


def test_exported_model_runs_in_onnx_runtime(ort_project):
    import onnxruntime as ort

    assert ort_project.export().returncode == 0
    exported = ort_project.repo / "cls" / "1" / "model.onnx"
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"features": np.ones((3, 64), np.float32)})
    assert out.shape == (3, 10)


def test_reexport_is_a_no_op_and_a_rebuild_gives_the_next_version(ort_project):
    assert ort_project.export().returncode == 0
    config = ort_project.repo / "det" / "config.pbtxt"
    before, stamp = tree(ort_project.repo), config.stat().st_mtime_ns
    again = ort_project.export()
    assert again.returncode == 0 and again.stdout.count("unchanged") == 3, again.stdout
    assert tree(ort_project.repo) == before and config.stat().st_mtime_ns == stamp
    old = sha256_of(ort_project.repo / "det" / "1" / "model.onnx")
    edit_onnx(ort_project.corpus / "models" / "det.onnx", "v2")
    build_engines(ort_project.config)
    third = ort_project.export()
    assert third.returncode == 0 and "det: version 2" in third.stdout, third.stdout
    assert complete_versions(ort_project.repo / "det") == [1, 2]
    assert sha256_of(ort_project.repo / "det" / "1" / "model.onnx") == old  # published versions never change
    assert complete_versions(ort_project.repo / "cls") == [1]


def test_keep_retires_the_oldest_versions_and_dry_run_writes_nothing(ort_project):
    corpus = ort_project.corpus_loaded()
    for round_ in range(3):
        edit_onnx(ort_project.corpus / "models" / "det.onnx", f"round {round_}")
        corpus = build_engines(ort_project.config)
        export_triton_repository(corpus, ort_project.repo, models=["det"])
    assert complete_versions(ort_project.repo / "det") == [1, 2, 3]
    edit_onnx(ort_project.corpus / "models" / "det.onnx", "round 3")
    build_engines(ort_project.config)
    before = tree(ort_project.repo)
    dry = ort_project.export("--dry-run", "--keep", "2", "--models", "det")
    assert dry.returncode == 0 and "would write version 4" in dry.stdout
    assert "would retire version(s) 1, 2" in dry.stdout
    assert tree(ort_project.repo) == before
    assert not (ort_project.root / "elsewhere").exists()
    fresh = ort_project.doit("engines-export", "--triton", str(ort_project.root / "elsewhere"), "--dry-run")
    assert fresh.returncode == 0 and not (ort_project.root / "elsewhere").exists()
    kept = ort_project.export("--keep", "2", "--models", "det")
    assert kept.returncode == 0 and "retired version(s) 1, 2" in kept.stdout, kept.stdout
    assert complete_versions(ort_project.repo / "det") == [3, 4]
    assert hidden_leftovers(ort_project.repo) == []


@pytest.mark.parametrize("args, message", [
    (("--models", "det,nope"), "--models: nope not in"),
    (("--keep", "0"), "--keep 0: give a whole number"),
])
def test_bad_arguments_are_one_line_exit_2_nothing_written(ort_project, args, message):
    result = ort_project.export(*args)
    assert result.returncode == 2 and result.stderr.startswith("ERROR: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not ort_project.repo.exists()


def test_repository_path_that_is_a_file_is_refused(ort_project):
    ort_project.repo.write_text("not a folder")
    result = ort_project.export()
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr and result.stderr.count("\n") == 1


def test_config_of_another_platform_is_replaced_only_with_force(ort_project):
    (ort_project.repo / "det").mkdir(parents=True)
    config = ort_project.repo / "det" / "config.pbtxt"
    config.write_text('name: "det"\nplatform: "tensorrt_plan"\n')
    result = ort_project.export()
    assert result.returncode == 2 and "declares platform tensorrt_plan, not onnxruntime_onnx" in result.stderr
    assert "--force" in result.stderr and not (ort_project.repo / "cls").exists()
    assert config.read_text() == 'name: "det"\nplatform: "tensorrt_plan"\n'
    forced = ort_project.export("--force")
    assert forced.returncode == 0 and model_config(config).platform == "onnxruntime_onnx"


def test_a_missing_engine_fails_the_whole_export_before_anything_is_written(ort_project):
    corpus = ort_project.corpus_loaded()
    engine = corpus.engine_path(corpus.specs[2])
    Sha256Sidecar.path_for(engine).unlink()  # no sidecar: not published
    result = ort_project.export()
    assert result.returncode == 1 and "emb: no fresh verified engine" in result.stderr
    assert "run doit engines first" in result.stderr and result.stderr.count("\n") == 1
    assert not ort_project.repo.exists()


def test_a_corrupt_cache_entry_is_refused(ort_project):
    corpus = ort_project.corpus_loaded()
    engine = corpus.engine_path(corpus.specs[0])
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    result = ort_project.export()
    assert result.returncode == 1 and "engine bytes do not match the sidecar" in result.stderr
    assert not ort_project.repo.exists()


def test_bytes_are_checked_as_they_land_in_the_version(ort_project):
    """An entry replaced after the check (between plan and write) never reaches a version."""
    corpus = ort_project.corpus_loaded()
    plan = plan_triton_export(corpus, ort_project.repo, models=["det"])
    engine = corpus.engine_path(corpus.specs[0])
    swapped = engine.with_name("swap")
    swapped.write_bytes(engine.read_bytes() + b"tampered")
    os.replace(swapped, engine)
    for link in (True, False):
        with pytest.raises(ExportError, match="does not match its sidecar any more"):
            execute_export(plan, link=link)
        assert not (ort_project.repo / "det" / "1").exists()
        assert [n for n in os.listdir(ort_project.repo / "det") if n != ".provisioning-export.lock"] == []


def test_copy_when_linking_is_impossible_or_refused(ort_project, monkeypatch):
    result = ort_project.export("--copy", "--models", "det")
    exported = ort_project.repo / "det" / "1" / "model.onnx"
    corpus = ort_project.corpus_loaded()
    assert result.returncode == 0 and "copied" in result.stdout
    assert os.stat(exported).st_ino != os.stat(corpus.engine_path(corpus.specs[0])).st_ino

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    lines = export_triton_repository(corpus, ort_project.root / "other", models=["cls"]).lines
    assert any("cls: version 1 (onnxruntime_onnx, copied)" in line for line in lines), lines
    assert complete_versions(ort_project.root / "other" / "cls") == [1]
