"""Defects reproduced on the real bindings: each check the backend makes is needed on TensorRT-RTX."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioning.config import InputShape
from provisioning.errors import BackendError, ConfigError, NoGpuError
from provisioning.sidecar import Sha256Sidecar
from tests.rtx.conftest import build_spec, build_with_library, one_line, spec_for, write_rtx_config

OCR_CLS_192 = {"min": [1, 3, 48, 192], "opt": [8, 3, 48, 192], "max": [16, 3, 48, 192]}
OCR_CLS_48 = {"min": [1, 3, 48, 48], "opt": [4, 3, 48, 48], "max": [8, 3, 48, 48]}


def _shape(profile: dict) -> InputShape:
    return InputShape(*(tuple(profile[k]) for k in ("min", "opt", "max")))


def test_shared_symbolic_dims_are_a_config_error_naming_input_axes_and_fix(rapidocr_cls: Path,
                                                                           tmp_path: Path) -> None:
    """rapidocr cls x[?, 3, '?', '?'] with a 48x192 profile: refused before anything is built."""
    from provisioning.compose import build_backbone_specs, load_config, probe_host_for

    config = load_config(write_rtx_config(tmp_path, [{"model_name": "ocrcls", "onnx": str(rapidocr_cls),
                                                      "inputs": {"x": OCR_CLS_192}}],
                                          compute_capabilities=["sm86"]))
    with pytest.raises(ConfigError) as caught:
        build_backbone_specs(config, host=probe_host_for(config))
    message = one_line(caught.value)
    assert "backbone ocrcls: field 'inputs.x'" in message
    assert "x axis 2 48/48/48" in message and "x axis 3 192/192/192" in message
    assert "give those axes equal sizes" in message
    assert not (tmp_path / "cache").exists()


def test_shared_symbolic_dims_really_fail_in_the_rtx_builder(rapidocr_cls: Path, tmp_path: Path) -> None:
    """Bypassing config, the real builder rejects the same profile: the config check is needed."""
    with pytest.raises(BackendError) as caught:
        build_spec(tmp_path / "cache", spec_for(rapidocr_cls, "ocrcls", {"x": _shape(OCR_CLS_192)}))
    message = one_line(caught.value)
    assert message.startswith("backbone ocrcls: TensorRT-RTX could not build the engine (")
    assert "contradictory" in message


def test_shared_symbolic_dims_with_equal_sizes_build(rapidocr_cls: Path, tmp_path: Path, gpu_less) -> None:
    """48x48 on both '?' axes passes config and builds a sealed plan."""
    config = write_rtx_config(tmp_path, [{"model_name": "ocrcls", "onnx": str(rapidocr_cls),
                                          "inputs": {"x": OCR_CLS_48}}], compute_capabilities=["sm86"])
    engine = build_with_library(config).engine("ocrcls")
    assert engine.read_bytes().startswith(b"vtrt") and Sha256Sidecar.verify(engine)


@pytest.mark.filterwarnings("ignore:Use Deprecated in TensorRT-RTX:DeprecationWarning")
def test_corrupt_timing_cache_is_reported_ignored_on_a_real_builder_config(rtx, tmp_path: Path) -> None:
    """A garbage file: TensorRT returns an empty cache and only logs it; the log is read to tell."""
    from provisioning.backends.trt_cache import load_timing_cache
    from provisioning.backends.trt_logging import capture, process_logger

    (tmp_path / "garbage.timing-cache").write_bytes(b"not a timing cache " * 64)
    logger = process_logger(rtx)
    with capture(logger) as build_log:
        config = rtx.Builder(logger).create_builder_config()
        outcome = load_timing_cache(config, tmp_path / "garbage.timing-cache", build_log)
    assert outcome.startswith("ignored (corrupt"), outcome
    assert "Failed to deserialize timing cache" in outcome


def test_hardware_compatibility_is_read_back_and_refused(rtx) -> None:
    """RTX logs 'unsupported' and reads back NONE: the backend never records what was not taken."""
    from provisioning.backends.trt_network import set_hardware_compatibility
    from provisioning.backends.trt_logging import capture, process_logger

    logger = process_logger(rtx)
    with capture(logger) as build_log:
        config = rtx.Builder(logger).create_builder_config()
        with pytest.raises(BackendError) as caught:
            set_hardware_compatibility(rtx, config, "ampere_plus", build_log, "backbone x", "TensorRT-RTX")
    message = one_line(caught.value)
    assert message.startswith("backbone x: TensorRT-RTX did not take hardware_compatibility ampere_plus")
    assert "reads back NONE" in message and "unsupported" in message
    assert message.endswith("set hardware_compatibility: none")


def test_deserialize_without_a_gpu_is_no_gpu_error_with_the_cuda_cause(rtx, tmp_path: Path, gpu_less) -> None:
    """A good plan on a machine without a GPU: NoGpuError (exit 69), not 'the engine is bad'."""
    from provisioning.backends.trt_logging import process_logger
    from provisioning.backends.trt_runtime import deserialize
    from tests.conftest import CORPUS

    engine = build_spec(tmp_path, spec_for(CORPUS / "models" / "det.onnx", "det")).results[0].entry.path
    with pytest.raises(NoGpuError) as caught:
        deserialize(rtx, process_logger(rtx), engine.read_bytes(), host_code_allowed=False, where="backbone x")
    assert not isinstance(caught.value, BackendError)
    assert caught.value.exit_code == 69
    message = one_line(caught.value)
    assert message.startswith("backbone x: ") and "error 35" in message
    assert "rebuild" not in message  # the plan is fine; the host cannot run it


def test_opening_a_plan_without_a_gpu_gives_a_servers_advice(rtx, tmp_path: Path, gpu_less) -> None:
    """Opening (a server, resolve -> open_engine) is not building: no 'run the engine build on a GPU host'."""
    from provisioning.backends.tensorrt import load_verified_engine
    from tests.conftest import CORPUS

    engine = build_spec(tmp_path, spec_for(CORPUS / "models" / "det.onnx", "det")).results[0].entry.path
    with pytest.raises(NoGpuError) as caught:
        load_verified_engine(engine)
    message = one_line(caught.value)
    assert caught.value.exit_code == 69 and message.startswith(f"engine {engine}: ") and "error 35" in message
    assert "open it in a process that sees an NVIDIA GPU of its targets (sm86)" in message, message
    assert "CUDA_VISIBLE_DEVICES" in message and "--gpus" in message
    assert "engine build" not in message and "backend: onnxruntime" not in message, message
