"""Third-party models from installed wheels, built for real through config, compose and the compiler."""

from __future__ import annotations

from pathlib import Path

from provisioning.compiler import CompileOutcome
from provisioning.errors import BackendError
from provisioning.manifest import read_manifest
from provisioning.sidecar import Sha256Sidecar
from tests.rtx.conftest import build_with_library, one_line, write_rtx_config

# 'batch' is shared by input[batch, sequence] and state[2, batch, 128]: equal sizes on both; sr is a static scalar.
VAD_INPUTS = {"input": {"min": [1, 512], "opt": [2, 512], "max": [4, 512]},
              "state": {"min": [2, 1, 128], "opt": [2, 2, 128], "max": [2, 4, 128]}}
OCR_DET_INPUTS = {"x": {"min": [1, 3, 32, 32], "opt": [1, 3, 320, 320], "max": [1, 3, 640, 640]}}


def _build_one(tmp_path: Path, name: str, onnx: Path, inputs: dict):
    config = write_rtx_config(tmp_path, [{"model_name": name, "onnx": str(onnx), "inputs": inputs}],
                              compute_capabilities=["sm86", "sm89"])
    return build_with_library(config)


def _assert_sealed_plan(built, name: str, inputs: dict) -> None:
    result = built.summary.by_name()[name]
    assert result.outcome is CompileOutcome.BUILT
    engine = result.entry.path
    assert engine.read_bytes().startswith(b"vtrt") and Sha256Sidecar.verify(engine)
    notes = read_manifest(engine)["build"]["notes"]
    assert notes["compute_capabilities"] == ["sm86", "sm89"]
    assert {k: v for k, v in notes["optimization_profile"].items() if k in inputs} == inputs


def test_silero_vad_op18_builds_with_a_shared_batch_profile(silero_vad_models: Path, tmp_path: Path) -> None:
    """silero_vad_op18_ifless.onnx: batch 1..4 on input and state, sr taken as its static scalar shape."""
    built = _build_one(tmp_path, "vad", silero_vad_models / "silero_vad_op18_ifless.onnx", VAD_INPUTS)
    _assert_sealed_plan(built, "vad", VAD_INPUTS)
    assert read_manifest(built.engine("vad"))["build"]["notes"]["optimization_profile"]["sr"] == \
        {"min": [], "opt": [], "max": []}


def test_silero_vad_op15_fails_in_one_clear_line_or_builds(silero_vad_models: Path, tmp_path: Path) -> None:
    """silero_vad_16k_op15.onnx (If on sr): RTX 1.7 hits an internal assertion; the user gets one line."""
    try:
        built = _build_one(tmp_path, "vad15", silero_vad_models / "silero_vad_16k_op15.onnx", VAD_INPUTS)
    except BackendError as exc:
        message = one_line(exc)
        assert message.startswith("backbone vad15: TensorRT-RTX could not build the engine (")
        assert "Error Code" in message  # TensorRT's own words
        log_name = message.rsplit("full log: ", 1)[1]
        assert (tmp_path / "cache" / log_name).is_file()
        assert not list((tmp_path / "cache").glob("*.engine"))
    else:  # a later RTX release may build it: then it must be a sealed plan like any other
        _assert_sealed_plan(built, "vad15", VAD_INPUTS)


def test_rapidocr_ppocrv4_det_builds_with_a_spatial_profile(rapidocr_det: Path, tmp_path: Path) -> None:
    """PP-OCRv4 det, x[p2o.DynamicDimension.0, 3, ...1, ...2]: 32x32 .. 640x640 builds."""
    built = _build_one(tmp_path, "ocrdet", rapidocr_det, OCR_DET_INPUTS)
    _assert_sealed_plan(built, "ocrdet", OCR_DET_INPUTS)
    again = build_with_library(built.config.config_path)
    assert again.summary.by_name()["ocrdet"].outcome is CompileOutcome.REUSED
