"""The ONNX Runtime backend on real models: engines load and agree with their source models."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from provisioning import (
    CompileOutcome,
    Sha256Sidecar,
    build_compile_request,
    build_engine_compiler,
    load_config,
)
from provisioning.cache import read_events
from tests.conftest import REPO, package_dir, write_corpus_yaml


def _silero_models() -> Path | None:
    folder = package_dir("silero_vad")
    folder = folder / "data" if folder is not None else None
    return folder if folder is not None and (folder / "silero_vad.onnx").is_file() else None


SILERO = _silero_models()
requires_silero = pytest.mark.skipif(SILERO is None, reason="silero-vad is not installed (pip install --no-deps silero-vad)")


def _compile(config_path: Path):
    config = load_config(config_path)
    assert config.backend == "onnxruntime"
    summary = build_engine_compiler(config).compile_engines_for_corpus(build_compile_request(config))
    return config, summary


def _run(path: Path, feed: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


# int8 dynamic quantisation changes numerics; fp32 optimisation must not
TOLERANCE = {"fp32": 1e-5, "int8": 0.05}


def test_bundled_models_compile_load_and_match_their_sources(corpus_yaml):
    config, summary = _compile(corpus_yaml)
    assert [r.outcome for r in summary] == [CompileOutcome.BUILT] * 3
    rng = np.random.default_rng(1)
    feeds = {
        "det": {"images": rng.standard_normal((1, 3, 32, 32), dtype=np.float32)},
        "cls": {"features": rng.standard_normal((5, 64), dtype=np.float32)},  # dynamic batch kept
        "emb": {"tokens": rng.standard_normal((4, 128), dtype=np.float32)},
    }
    backbones = {b.model_name: b for b in config.backbones}
    assert {b.precision for b in backbones.values()} <= set(TOLERANCE), "a precision without a tolerance here"
    for result in summary:
        backbone = backbones[result.model_name]
        want = _run(backbone.onnx, feeds[result.model_name])
        got = _run(result.entry.path, feeds[result.model_name])
        tolerance = TOLERANCE[backbone.precision]  # by the precision the config asks for, not the model's name
        for w, g in zip(want, got):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance)


@requires_silero
def test_third_party_silero_vad_compiles_and_runs(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("silero_vad.onnx", "silero_vad_16k_op15.onnx"):
        shutil.copy(SILERO / name, models / name)
    config_path = write_corpus_yaml(tmp_path, [
        {"model_name": "silero", "onnx": "models/silero_vad.onnx", "validate": False},
        {"model_name": "silero-op15", "onnx": "models/silero_vad_16k_op15.onnx"},
    ])
    config, summary = _compile(config_path)
    assert [r.outcome for r in summary] == [CompileOutcome.BUILT] * 2
    rng = np.random.default_rng(7)
    audio = (rng.standard_normal((1, 512)) * 0.1).astype(np.float32)
    feed = {"input": audio, "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, dtype=np.int64)}
    for result in summary:
        assert Sha256Sidecar.verify(result.entry.path)
        source = models / ("silero_vad.onnx" if result.model_name == "silero" else "silero_vad_16k_op15.onnx")
        want, got = _run(source, feed), _run(result.entry.path, feed)
        assert 0.0 <= float(got[0].ravel()[0]) <= 1.0  # a speech probability
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    _, again = _compile(config_path)
    assert [r.outcome for r in again] == [CompileOutcome.REUSED] * 2


def test_models_in_a_read_only_folder_compile(corpus_yaml):
    """Building never writes beside the source model (shared or read-only model folders)."""
    models = corpus_yaml.parent / "models"
    if subprocess.run(["chattr", "+i", str(models)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        probe = models / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        _, summary = _compile(corpus_yaml)  # includes int8 quantisation of emb (external data)
        assert [r.outcome for r in summary] == [CompileOutcome.BUILT] * 3
    finally:
        subprocess.run(["chattr", "-i", str(models)], check=True)


def test_validate_true_runs_the_engine_against_the_source(corpus_dir):
    config_path = write_corpus_yaml(corpus_dir, [
        {"model_name": "det", "onnx": "models/det.onnx", "validate": True},
        {"model_name": "cls", "onnx": "models/cls.onnx", "validate": True,
         "inputs": {"features": {"min": [1, 64], "opt": [3, 64], "max": [8, 64]}}},
    ])
    _, summary = _compile(config_path)
    for result in summary:
        assert result.entry.manifest["build"]["notes"]["validated"] is True


RACER = textwrap.dedent(
    """
    import sys, time
    from provisioning import build_backbone_specs, build_compile_request, build_engine_compiler, load_config
    config = load_config(sys.argv[1])
    specs = build_backbone_specs(config, "onnxruntime")
    request = build_compile_request(config, specs=specs)
    compiler = build_engine_compiler(config, backend="onnxruntime")
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    summary = compiler.compile_engines_for_corpus(request)
    print(" ".join(r.outcome.value for r in summary))
    """
)


def test_two_processes_racing_on_one_cache_build_once(corpus_yaml):
    import time
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(corpus_yaml), start], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    outcomes = [out.split() for out, _ in outputs]
    for index in range(3):  # per backbone: exactly one BUILT across the two processes
        assert sorted(o[index] for o in outcomes) == ["BUILT", "REUSED"], outcomes
    config = load_config(corpus_yaml)
    built = [e for e in read_events(config.cache_dir) if e["outcome"] == "BUILT"]
    assert len(built) == 3
    for engine in config.cache_dir.glob("*.engine"):
        assert Sha256Sidecar.verify(engine)


def test_import_provisioning_loads_no_heavy_library():
    code = ("import sys, provisioning, provisioning.compose, provisioning.backends.onnxruntime;"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'tensorrt', 'doit', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


@requires_silero
def test_validation_that_cannot_run_the_source_model_fails_clearly(tmp_path):
    """Random inputs cannot drive every model (silero's sample rate): a clear failure, never a pass."""
    from provisioning import BackendError

    shutil.copy(SILERO / "silero_vad.onnx", tmp_path / "vad.onnx")
    config_path = write_corpus_yaml(tmp_path, [
        {"model_name": "vad", "onnx": "vad.onnx", "validate": True, "inputs": {"input": [1, 512]}},
    ])
    with pytest.raises(BackendError) as info:
        _compile(config_path)
    message = str(info.value)
    assert "\n" not in message and "validation cannot run the source model" in message
    assert "set validate: false" in message
    cache = tmp_path / "cache"
    assert not list(cache.glob("*.engine")) and not list(cache.glob("*.sha256"))
