"""Qualification (``validate:``) end to end: real ONNX Runtime, real files, the real ``doit``.

An engine is compared with its source model (ONNX Runtime, optimizations off) and timed
before it is published; the report goes into the manifest and events.jsonl. Changing only
the criteria keeps the engine's name: the cached engine is validated again (REUSED, the
manifest rewritten, the sidecar and the engine untouched) or, when it misses them,
rebuilt, and a rebuild that misses them too publishes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from provisioning import load_config
from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.compiler import CompileOutcome, EngineCompiler
from provisioning.compose import build_compile_request, build_engine_compiler
from provisioning.errors import ValidationFailed
from provisioning.manifest import manifest_path_for
from provisioning.sidecar import TEMP_SUFFIX, Sha256Sidecar
from tests.conftest import shipped_file, write_corpus_yaml
from tests.integration.conftest import Project, outcomes, task_lines

VAD_INPUTS = {"input": [1, 512], "state": [2, 1, 128]}
DET = {"model_name": "det", "onnx": "models/det.onnx"}  # images [1, 3, 32, 32], fp32
EMB_INT8 = {"model_name": "emb", "onnx": "models/emb.onnx", "precision": "int8"}  # tokens [4, 128]


def _silero_onnx() -> Path:
    return shipped_file("silero_vad", "data/silero_vad.onnx")


def _configure(project: Project, *backbones: dict) -> None:
    write_corpus_yaml(project.corpus, [dict(b) for b in backbones])


def _run(project: Project, *args: str):
    result = project.doit("engines", *args)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def _failed_lines(result, model_name: str) -> set[str]:
    """The distinct ``FAILED <model>:`` lines (the compiler's log and doit's report print the same one)."""
    return {line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith(f"FAILED {model_name}:")}


def _report(engine: Path) -> dict:
    return json.loads(manifest_path_for(engine).read_text())["build"]["notes"]["validation"]


def _snapshot(engine: Path) -> dict:
    """Bytes and inode of an engine's files: what must not change when nothing is published."""
    return {
        "engine": engine.read_bytes(), "inode": os.stat(engine).st_ino,
        "sidecar": Sha256Sidecar.path_for(engine).read_bytes(),
        "manifest": manifest_path_for(engine).read_bytes(),
    }


def _leftovers(project: Project) -> list[str]:
    return [p.name for p in project.cache.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def _assert_parity_report(report: dict, outputs: set[str]) -> None:
    assert report["passed"] is True
    assert set(report["outputs"]) == outputs
    for stats in report["outputs"].values():
        assert set(stats) == {"max_abs_diff", "max_rel_diff", "cosine"}
        assert 0 <= stats["max_abs_diff"] < 1e-3 and stats["max_rel_diff"] >= 0
        assert stats["cosine"] == pytest.approx(1.0, abs=1e-6)
    latency = report["latency_ms"]
    assert set(latency) == {"p50", "p90", "max", "runs"}
    assert 0 < latency["p50"] <= latency["p90"] <= latency["max"]
    assert report["machine"]["device"].startswith("CPU")
    assert isinstance(report["machine"]["load_average"], float)


# --- 1. silero-vad: its sr input needs a fixed value -------------------------------------------------------------

def test_silero_vad_validates_with_a_fixed_sr(project: Project) -> None:
    shutil.copyfile(_silero_onnx(), project.corpus / "models" / "silero_vad.onnx")
    _configure(project, {"model_name": "vad", "onnx": "models/silero_vad.onnx", "inputs": VAD_INPUTS,
                         "validate": {"inputs": {"sr": 16000}, "runs": 3}})
    result = _run(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BUILT  vad" in result.stdout
    engine = project.engine("vad")
    report = _report(engine)
    _assert_parity_report(report, {"output", "stateN"})
    assert report["latency_ms"]["runs"] == 3
    assert report["criteria"]["inputs"] == {"sr": 16000}
    assert report["criteria"]["runs"] == 3
    assert report["seed"] == 0 and report["samples"] == 1 and report["inputs_file_sha256"] is None
    assert "ORT_DISABLE_ALL" in report["reference"]
    [event] = project.events()
    assert event["outcome"] == "BUILT" and event["validation"] == report
    assert task_lines(_run(project).stdout) == {"vad": "--"}  # the fixed value round-trips through the manifest


def test_silero_vad_without_sr_fails_in_one_line_naming_validate_inputs(project: Project) -> None:
    shutil.copyfile(_silero_onnx(), project.corpus / "models" / "silero_vad.onnx")
    _configure(project, {"model_name": "vad", "onnx": "models/silero_vad.onnx", "inputs": VAD_INPUTS,
                         "validate": True})
    result = _run(project)
    assert result.returncode == 1
    [line] = _failed_lines(result, "vad")
    assert "validation cannot run the source model" in line and "validate.inputs" in line, line
    assert "sr: 16000" in line  # says which value it needs
    assert list(project.cache.glob("*.engine")) == [] and _leftovers(project) == []
    assert outcomes(project.events()) == {"vad": "FAILED"}


# --- validate: true, as before ----------------------------------------------------------------------------------

def test_validate_true_uses_seeded_random_inputs(project: Project) -> None:
    _configure(project, {**DET, "validate": True})
    result = _run(project)
    assert result.returncode == 0, result.stdout + result.stderr
    report = _report(project.engine("det"))
    _assert_parity_report(report, {"scores"})
    assert report["seed"] == 0 and report["criteria"]["seed"] == 0
    assert report["criteria"]["inputs"] == {} and report["criteria"]["inputs_file"] is None
    assert report["samples"] == 1 and report["latency_ms"]["runs"] == 10  # the default runs
    assert report["tolerance"] == {"basis": "fp32", "rtol": 1e-3, "atol": 1e-4, "metric": "allclose"}
    assert task_lines(_run(project).stdout) == {"det": "--"}


# --- 2. an .npz of samples, a file_dep ---------------------------------------------------------------------------

def _samples(path: Path, count: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.standard_normal((count, 1, 3, 32, 32)).astype(np.float32))
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_npz_samples_are_a_file_dep_and_a_new_npz_revalidates_the_cached_engine(project: Project) -> None:
    (project.corpus / "data").mkdir()
    npz = project.corpus / "data" / "samples.npz"
    first_digest = _samples(npz, 3, seed=1)
    _configure(project, {**DET, "validate": {"inputs": "data/samples.npz", "runs": 1}})
    result = _run(project)
    assert result.returncode == 0, result.stdout + result.stderr
    engine = project.engine("det")
    report = _report(engine)
    assert report["passed"] is True and report["samples"] == 3
    assert report["inputs_file_sha256"] == first_digest == report["criteria"]["inputs_file_sha256"]
    assert report["criteria"]["inputs_file"] == "samples.npz"
    before = _snapshot(engine)

    assert task_lines(_run(project).stdout) == {"det": "--"}

    second_digest = _samples(npz, 2, seed=2)
    assert second_digest != first_digest
    result = _run(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert task_lines(result.stdout) == {"det": "."}  # the npz is a file_dep
    assert "REUSED det" in result.stdout and "BUILT" not in result.stdout
    last = project.events()[-1]
    assert last["outcome"] == "REUSED" and last["compile_duration_s"] is None
    assert last["miss_reasons"] == ["validation criteria changed since it was validated"]
    report = _report(engine)
    assert report["inputs_file_sha256"] == second_digest and report["samples"] == 2
    after = _snapshot(engine)
    assert (after["engine"], after["inode"], after["sidecar"]) == (before["engine"], before["inode"],
                                                                   before["sidecar"])
    assert task_lines(_run(project).stdout) == {"det": "--"}


def test_a_missing_npz_is_a_config_error_before_any_task(project: Project) -> None:
    _configure(project, {**DET, "validate": {"inputs": "data/samples.npz"}})
    result = _run(project)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"ERROR: {project.config}: backbone det: field 'validate.inputs': ")
    assert "samples.npz" in result.stderr and "not found" in result.stderr
    assert task_lines(result.stdout) == {}


def test_an_npz_array_for_an_unknown_input_is_one_line(project: Project) -> None:
    npz = project.corpus / "samples.npz"
    np.savez(npz, images=np.zeros((1, 3, 32, 32), np.float32), bogus=np.zeros(3, np.float32))
    _configure(project, {**DET, "validate": {"inputs": "samples.npz", "runs": 1}})
    result = _run(project)
    assert result.returncode == 1
    [line] = _failed_lines(result, "det")
    assert "field 'validate.inputs'" in line and "'bogus'" in line and "not an input of the ONNX" in line, line
    assert "its inputs: images" in line
    assert list(project.cache.glob("*.engine")) == [] and _leftovers(project) == []


# --- 3. a tolerance the engine cannot meet; 4. a latency gate ----------------------------------------------------

def test_too_tight_a_tolerance_fails_and_keeps_the_previous_engine(project: Project) -> None:
    _configure(project, {**EMB_INT8, "validate": False})
    assert _run(project).returncode == 0
    engine = project.engine("emb")
    before = _snapshot(engine)

    _configure(project, {**EMB_INT8, "validate": {"atol": 1e-9, "rtol": 0, "runs": 1}})
    result = _run(project)
    assert result.returncode == 1
    [line] = _failed_lines(result, "emb")
    assert "validation: output 'embedding' max abs diff " in line and " > atol 1e-09" in line, line
    assert line.endswith("the engine was not published"), line
    assert "miss emb: cached engine failed validation: output 'embedding'" in result.stdout + result.stderr
    assert project.engine("emb") == engine  # same name: only the criteria changed
    assert _snapshot(engine) == before  # byte-identical, same inode, sidecar and manifest unchanged
    assert _leftovers(project) == []
    failed = project.events()[-1]
    assert failed["outcome"] == "FAILED" and failed["error_class"] == "ValidationFailed"
    assert [e["outcome"] for e in project.events()] == ["BUILT", "FAILED"]
    status = project.status_json()["backbones"][0]
    assert (status["state"], status["qualified"]) == ("unvalidated", "no")


def test_a_latency_gate_that_fails_publishes_nothing(project: Project) -> None:
    _configure(project, {**DET, "validate": {"max_latency_ms": 0.000001, "runs": 2}})
    result = _run(project)
    assert result.returncode == 1
    [line] = _failed_lines(result, "det")
    assert "validation: latency p90 " in line and " ms > max_latency_ms 1e-06 (2 runs on CPU" in line, line
    assert line.endswith("the engine was not published"), line
    assert list(project.cache.glob("*.engine")) == [] and list(project.cache.glob("*.sha256")) == []
    assert _leftovers(project) == []
    assert project.events()[-1]["error_class"] == "ValidationFailed"


def test_several_failing_samples_name_each_output_once(project: Project) -> None:
    """With an .npz of N samples the line names a failing output once (its worst difference), not N times."""
    np.savez(project.corpus / "samples.npz",
             tokens=np.random.default_rng(3).standard_normal((3, 4, 128)).astype(np.float32))
    _configure(project, {**EMB_INT8, "validate": {"inputs": "samples.npz", "atol": 1e-9, "rtol": 0, "runs": 1}})
    result = _run(project)
    assert result.returncode == 1
    [line] = _failed_lines(result, "emb")
    assert line.count("output 'embedding'") == 1, line
    assert list(project.cache.glob("*.engine")) == []


# --- 5. turning validation on for a cached engine; 7. engines-status -------------------------------------------

def test_turning_validation_on_validates_the_cached_engine_without_a_build(project: Project) -> None:
    _configure(project, {**DET, "validate": False})
    assert _run(project).returncode == 0
    engine = project.engine("det")
    before = _snapshot(engine)
    manifest_before = json.loads(before["manifest"])
    assert "validation" not in manifest_before["build"]["notes"]
    assert project.status_json()["backbones"][0]["qualified"] == "-"

    _configure(project, {**DET, "validate": {"runs": 2}})
    status = project.doit("engines-status")
    assert status.returncode == 1
    header = next(line for line in status.stdout.splitlines() if line.startswith("MODEL"))
    assert header.split()[:4] == ["MODEL", "STATE", "SIZE", "QUALIFIED"]
    row = next(line for line in status.stdout.splitlines() if line.startswith("det "))
    assert row.split()[1] == "unvalidated" and row.split()[4] == "no", row
    assert "why: no validation recorded for this engine" in status.stdout

    result = _run(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert task_lines(result.stdout) == {"det": "."}
    assert "REUSED det" in result.stdout and "BUILT" not in result.stdout
    events = project.events()
    assert [e["outcome"] for e in events] == ["BUILT", "REUSED"]
    reused = events[-1]
    assert reused["compile_duration_s"] is None
    assert reused["miss_reasons"] == ["no validation recorded for this engine"]
    report = _report(engine)
    assert report["passed"] is True and report["latency_ms"]["runs"] == 2 and report["criteria"]["runs"] == 2
    assert reused["validation"] == report
    after = _snapshot(engine)
    assert after["sidecar"] == before["sidecar"]
    assert (after["engine"], after["inode"]) == (before["engine"], before["inode"])
    manifest_after = json.loads(after["manifest"])
    assert manifest_after["engine"] == manifest_before["engine"]  # still vouches for the same bytes
    assert manifest_after["inputs"] == manifest_before["inputs"]
    assert manifest_after["build"]["compile_duration_s"] == manifest_before["build"]["compile_duration_s"]

    assert task_lines(_run(project).stdout) == {"det": "--"}

    status = project.doit("engines-status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    row = json.loads(status.stdout)["backbones"][0]
    assert (row["state"], row["qualified"]) == ("fresh", "yes")
    assert row["validation"] == report
    text = project.doit("engines-status")
    assert text.returncode == 0
    assert next(line for line in text.stdout.splitlines() if line.startswith("det ")).split()[4] == "yes"


def test_changed_criteria_make_a_validated_engine_unvalidated_in_status(project: Project) -> None:
    _configure(project, {**DET, "validate": {"runs": 1}})
    assert _run(project).returncode == 0
    assert project.status_json()["backbones"][0]["qualified"] == "yes"
    _configure(project, {**DET, "validate": {"runs": 1, "seed": 5}})
    result = project.doit("engines-status", "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    row = document["backbones"][0]
    assert (row["state"], row["qualified"]) == ("unvalidated", "no")
    assert "validation criteria changed" in row["reason"]
    assert row["validation"]["criteria"]["seed"] == 0  # the record it has
    assert document["totals"]["unvalidated"] == 1 and document["totals"]["fresh"] == 0


# --- 5./6. through the library: REUSED with a reason, then a rebuild that fails the gate -------------------------

class SpyBackend(OnnxRuntimeBackend):
    """The real ONNX Runtime backend, counting what the compiler asks of it."""

    def __init__(self) -> None:
        self.compiled: list[str] = []
        self.validated: list[str] = []

    def compile_engine(self, spec, host, output) -> None:
        self.compiled.append(spec.model_name)
        super().compile_engine(spec, host, output)

    def validate_engine(self, spec, host, engine):
        self.validated.append(spec.model_name)
        return super().validate_engine(spec, host, engine)


def test_library_revalidates_then_rebuilds_when_the_cached_engine_misses_tighter_criteria(corpus_dir: Path) -> None:
    path = write_corpus_yaml(corpus_dir, [{**DET, "validate": False}])
    config = load_config(path)
    first = build_engine_compiler(config).compile_engines_for_corpus(build_compile_request(config))
    assert first.results[0].outcome is CompileOutcome.BUILT
    engine = first.results[0].entry.path
    before = _snapshot(engine)

    write_corpus_yaml(corpus_dir, [{**DET, "validate": {"runs": 2}}])
    config = load_config(path)
    spy = SpyBackend()
    [reused] = EngineCompiler(spy).compile_engines_for_corpus(build_compile_request(config)).results
    assert reused.outcome is CompileOutcome.REUSED and reused.compile_duration_s is None
    assert reused.miss_reasons == ("no validation recorded for this engine",)
    assert spy.compiled == [] and spy.validated == ["det"]
    assert reused.entry.path == engine and reused.entry.manifest["build"]["notes"]["validation"]["passed"] is True
    validated = _snapshot(engine)
    assert (validated["engine"], validated["inode"], validated["sidecar"]) == (before["engine"], before["inode"],
                                                                               before["sidecar"])

    # the same criteria again: reused from the record, nothing run
    spy = SpyBackend()
    [again] = EngineCompiler(spy).compile_engines_for_corpus(build_compile_request(config)).results
    assert again.outcome is CompileOutcome.REUSED and again.miss_reasons == ()
    assert spy.compiled == [] and spy.validated == []

    write_corpus_yaml(corpus_dir, [{**DET, "validate": {"runs": 2, "max_latency_ms": 0.000001}}])
    config = load_config(path)
    spy = SpyBackend()
    with pytest.raises(ValidationFailed) as info:
        EngineCompiler(spy).compile_engines_for_corpus(build_compile_request(config))
    assert "latency p90" in str(info.value) and "the engine was not published" in str(info.value)
    assert spy.validated == ["det"] and spy.compiled == ["det"]  # validated, then a rebuild was attempted
    assert _snapshot(engine) == validated  # the published engine, sidecar and manifest are intact
    events = [e["outcome"] for e in json.loads("[" + ",".join(
        (corpus_dir / "cache" / "events.jsonl").read_text().splitlines()) + "]")]
    assert events == ["BUILT", "REUSED", "REUSED", "FAILED"]


# --- a cached engine that cannot be validated at all ------------------------------------------------------------

def test_a_revalidation_that_cannot_run_is_recorded_as_failed(project: Project) -> None:
    """Every action appends one line per backbone to events.jsonl, a failed revalidation too.

    The cached silero engine (validate: false) is validated once validate: true is set; the
    reference cannot run without sr (a BackendError, not ValidationFailed).
    """
    shutil.copyfile(_silero_onnx(), project.corpus / "models" / "silero_vad.onnx")
    vad = {"model_name": "vad", "onnx": "models/silero_vad.onnx", "inputs": VAD_INPUTS}
    _configure(project, {**vad, "validate": False})
    assert _run(project).returncode == 0
    before = _snapshot(project.engine("vad"))
    _configure(project, {**vad, "validate": True})
    result = _run(project)
    assert result.returncode == 1
    [line] = _failed_lines(result, "vad")
    assert "validate.inputs" in line
    assert _snapshot(project.engine("vad")) == before
    assert [e["outcome"] for e in project.events()] == ["BUILT", "FAILED"]
