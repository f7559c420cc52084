"""Failures the real RTX parser and builder report: each is one line naming what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioning.config import InputShape
from provisioning.errors import BackendError
from tests.conftest import CORPUS
from tests.rtx.conftest import build_spec, one_line, spec_for, write_matmul_mismatch_model, write_unknown_op_model

CLS = CORPUS / "models" / "cls.onnx"  # features: [batch, 64]


def _fails(tmp_path: Path, spec) -> str:
    with pytest.raises(BackendError) as caught:
        build_spec(tmp_path / "cache", spec)
    assert not list((tmp_path / "cache").glob("*.engine")), "a failed build published an engine"
    return one_line(caught.value)


def test_truncated_onnx_is_a_parse_error_naming_the_file(tmp_path: Path) -> None:
    """Half a valid model: TensorRT's parser says it cannot deserialize it."""
    data = (CORPUS / "models" / "det.onnx").read_bytes()
    (tmp_path / "half.onnx").write_bytes(data[: len(data) // 2])
    message = _fails(tmp_path, spec_for(tmp_path / "half.onnx", "half"))
    assert message.startswith("backbone half: TensorRT-RTX could not parse half.onnx: ")
    assert "MODEL_DESERIALIZE_FAILED" in message


def test_unknown_op_names_the_node(tmp_path: Path) -> None:
    """An op TensorRT-RTX does not know: the line names the node and its op."""
    message = _fails(tmp_path, spec_for(write_unknown_op_model(tmp_path / "unknown.onnx"), "unknown"))
    assert message.startswith("backbone unknown: TensorRT-RTX could not parse unknown.onnx: ")
    assert "node mystery_node (NoSuchOp)" in message


def test_matmul_shape_mismatch_names_the_node_at_parse(tmp_path: Path) -> None:
    """[1,8] x [5,4]: RTX rejects it while parsing; the line names the MatMul and both sizes."""
    message = _fails(tmp_path, spec_for(write_matmul_mismatch_model(tmp_path / "mm.onnx"), "mm"))
    assert message.startswith("backbone mm: TensorRT-RTX could not parse mm.onnx: ")
    assert "node bad_matmul (MatMul)" in message
    assert "input0 = 8" in message and "input1 = 5" in message


def test_profile_against_a_fixed_onnx_dim_fails_in_the_builder_with_its_reason(tmp_path: Path) -> None:
    """Axis 1 of features is 64 in the ONNX; a profile of 32 there gets TensorRT's own reason and the log."""
    spec = spec_for(CLS, "cls", {"features": InputShape((1, 32), (8, 32), (32, 32))})
    message = _fails(tmp_path, spec)
    assert message.startswith("backbone cls: TensorRT-RTX could not build the engine (")
    assert "Dimension mismatch for tensor features" in message and "tensor has 64" in message
    log_name = message.rsplit("full log: ", 1)[1]
    assert "Dimension mismatch for tensor features" in (tmp_path / "cache" / log_name).read_text()


def test_profile_max_below_min_is_refused_with_the_first_error_kept(tmp_path: Path) -> None:
    """RTX logs several errors; the line keeps the first (the cause), not only the last."""
    spec = spec_for(CLS, "cls", {"features": InputShape((8, 64), (8, 64), (2, 64))})
    message = _fails(tmp_path, spec)
    assert message.startswith("backbone cls: TensorRT-RTX refused the optimization profile ")
    assert "'max': [2, 64]" in message
    cause = message.index("MIN<=OPT<=MAX")  # IOptimizationProfile::isValid, the first error logged
    assert cause < message.index("addOptimizationProfile")  # a later consequence, also kept
    assert message.endswith("fix 'inputs' in the config")


def test_errors_do_not_blame_the_cuda_driver_on_a_gpu_less_build(tmp_path: Path, gpu_less) -> None:
    """Profile and graph mistakes are not CUDA problems; RTX's no-GPU noise must not be in the line."""
    profile = _fails(tmp_path / "a", spec_for(CLS, "cls", {"features": InputShape((8, 64), (8, 64), (2, 64))}))
    matmul = _fails(tmp_path / "b", spec_for(write_matmul_mismatch_model(tmp_path / "mm.onnx"), "mm"))
    for message in (profile, matmul):
        assert "cudaError 35" not in message and "CUDA driver version is insufficient" not in message, message


def test_a_shape_set_shape_raises_on_is_one_line_not_a_raw_runtime_error(tmp_path: Path) -> None:
    """IOptimizationProfile.set_shape raises RuntimeError for a negative dim: one BackendError line instead."""
    spec = spec_for(CLS, "cls", {"features": InputShape((-1, 64), (8, 64), (32, 64))})
    message = _fails(tmp_path, spec)
    assert message.startswith("backbone cls: field 'inputs.features': TensorRT refused min [-1, 64]")
    assert "IOptimizationProfile::setDimensions" in message and "x >= 0" in message  # TensorRT's own reason
