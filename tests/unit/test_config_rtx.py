"""TensorRT-RTX in the config: targets, what RTX cannot honour, and a name shared by builder and GPU host.

These run against the installed ``tensorrt_rtx`` (its ``ComputeCapability`` enum is the
list of allowed targets) and the real host probe of this GPU-less machine; hosts with a
GPU are plain ``HostCapabilities`` records, the data a real NVML probe returns.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from provisioning import ConfigError, build_backbone_specs, load_config
from provisioning.compose import probe_host_for, resolve_backend
from provisioning.host import GpuInfo
from provisioning.schema import EngineFilenameSchema

if importlib.util.find_spec("tensorrt_rtx") is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("tensorrt_rtx is missing in CI: the test extra installs tensorrt-rtx")
    pytest.skip("tensorrt_rtx is not installed (pip install -e '.[test]')", allow_module_level=True)

DET = {"model_name": "det", "onnx": "models/det.onnx"}
RTX = {"backend": "tensorrt-rtx", "cache_dir": "cache"}


def _write(folder: Path, **document) -> Path:
    path = folder / "corpus.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _specs(folder: Path, host=None, **document):
    config = load_config(_write(folder, **document))
    return build_backbone_specs(config, host=host) if host is not None else build_backbone_specs(config)


def _error(folder: Path, host=None, **document) -> str:
    with pytest.raises(ConfigError) as info:
        _specs(folder, host, **document)
    message = str(info.value)
    assert "\n" not in message and str(folder / "corpus.yaml") in message, message
    return message


def _gpu_host(folder: Path, cc=(8, 6), name="NVIDIA GeForce RTX 3090"):
    config = load_config(_write(folder, **RTX, compute_capabilities=["sm86"], backbones=[DET]))
    host = probe_host_for(config)
    assert host.gpu is None  # this machine: the real probe finds no GPU
    return replace(host, gpu=GpuInfo(name, "GPU-0a0b0c0d-0000-1111-2222-333333333333", cc, "580.65.06", 0))


def test_without_a_gpu_and_without_a_list_the_error_names_the_field_and_the_allowed_targets(corpus_dir):
    message = _error(corpus_dir, **RTX, backbones=[DET])
    assert "field 'compute_capabilities'" in message and "backbone det" in message
    assert "sm75" in message and "sm120" in message and "no GPU is visible" in message


def test_targets_are_sorted_numerically_into_the_name_and_manifest_identity(corpus_dir):
    (spec,) = _specs(corpus_dir, **RTX, compute_capabilities=["SM120", "sm86", "sm89"], backbones=[DET])
    assert spec.compute_capabilities == ("sm86", "sm89", "sm120")
    host = probe_host_for(load_config(corpus_dir / "corpus.yaml"))
    name = EngineFilenameSchema.build(spec, host)
    assert ".trtrtx-1.7.1.116.sm86-sm89-sm120." in name or ".trtrtx-" in name and ".sm86-sm89-sm120." in name
    assert host.identity_for(spec).details["compute_capabilities"] == ["sm86", "sm89", "sm120"]


def test_a_backbone_list_overrides_the_top_level_one(corpus_dir):
    cls = {"model_name": "cls", "onnx": "models/cls.onnx", "compute_capabilities": ["sm89"],
           "inputs": {"features": [4, 64]}}
    det, cls_spec = _specs(corpus_dir, **RTX, compute_capabilities=["sm86"], backbones=[DET, cls])
    assert det.compute_capabilities == ("sm86",) and cls_spec.compute_capabilities == ("sm89",)


@pytest.mark.parametrize("targets, fragment", [
    (["sm90"], "sm90 is not a target of TensorRT-RTX"),
    (["ampere"], "is not a compute capability"),
    (["sm86", "SM86"], "listed twice"),
    ([], "non-empty list"),
    ("sm86", "non-empty list"),
    (["current"], "current means the visible GPU and none is visible"),
])
def test_bad_targets_are_one_line_naming_the_field(corpus_dir, targets, fragment):
    message = _error(corpus_dir, **RTX, compute_capabilities=targets, backbones=[DET])
    assert "field 'compute_capabilities'" in message and fragment in message, message


def test_targets_are_refused_for_other_backends(corpus_dir):
    message = _error(corpus_dir, backend="onnxruntime", compute_capabilities=["sm86"], backbones=[DET])
    assert "applies only to backend: tensorrt-rtx" in message


@pytest.mark.parametrize("key, value, fragment", [
    ("hardware_compatibility", "ampere_plus", "no hardware compatibility levels"),
    ("version_compatible", True, "cannot build version-compatible engines"),
])
def test_settings_rtx_cannot_honour_are_refused_with_the_reason(corpus_dir, key, value, fragment):
    message = _error(corpus_dir, **RTX, compute_capabilities=["sm86"], backbones=[{**DET, key: value}])
    assert f"field '{key}'" in message and fragment in message, message


def test_validate_needs_a_gpu_among_the_targets(corpus_dir):
    message = _error(corpus_dir, **RTX, compute_capabilities=["sm86"], backbones=[{**DET, "validate": True}])
    assert "field 'validate'" in message and "no GPU is visible" in message
    host = _gpu_host(corpus_dir, cc=(8, 9), name="NVIDIA L4")
    message = _error(corpus_dir, host, **RTX, compute_capabilities=["sm86"], backbones=[{**DET, "validate": True}])
    assert "NVIDIA L4" in message and "not among the targets" in message
    (spec,) = _specs(corpus_dir, host, **RTX, compute_capabilities=["sm89"], backbones=[{**DET, "validate": True}])
    assert spec.validate


def test_current_is_the_visible_gpu_and_a_gpu_rtx_cannot_target_is_refused(corpus_dir):
    host = _gpu_host(corpus_dir)
    (spec,) = _specs(corpus_dir, host, **RTX, compute_capabilities=["current", "sm120"], backbones=[DET])
    assert spec.compute_capabilities == ("sm86", "sm120")
    (default,) = _specs(corpus_dir, host, **RTX, backbones=[DET])
    assert default.compute_capabilities == ("sm86",)  # with a GPU and no list: the visible GPU
    h200 = replace(host, gpu=replace(host.gpu, name="NVIDIA H200", compute_capability=(9, 0)))
    message = _error(corpus_dir, h200, **RTX, compute_capabilities=["current"], backbones=[DET])
    assert "NVIDIA H200 (sm90), which TensorRT-RTX" in message and "cannot target" in message


def test_a_cpu_only_builder_and_a_gpu_host_compute_the_same_engine_name(corpus_dir):
    document = dict(**RTX, compute_capabilities=["sm86", "sm89"], backbones=[DET])
    (cpu_spec,) = _specs(corpus_dir, **document)
    cpu_host = probe_host_for(load_config(corpus_dir / "corpus.yaml"))
    gpu_host = _gpu_host(corpus_dir)
    (gpu_spec,) = _specs(corpus_dir, gpu_host, **document)
    assert EngineFilenameSchema.build(cpu_spec, cpu_host) == EngineFilenameSchema.build(gpu_spec, gpu_host)
    assert cpu_host.identity_for(cpu_spec).as_dict() == gpu_host.identity_for(gpu_spec).as_dict()


def test_auto_never_picks_rtx(corpus_dir):
    config = load_config(_write(corpus_dir, backend="auto", cache_dir="cache", backbones=[DET]))
    assert resolve_backend(config) != "tensorrt-rtx"


def _shared_dims_model(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "?", "?"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "?", "?"])])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("backend", ["tensorrt", "tensorrt-rtx"])
def test_axes_sharing_an_onnx_dim_name_must_get_equal_sizes_for_tensorrt(corpus_dir, backend):
    _shared_dims_model(corpus_dir / "models" / "shared.onnx")
    backbone = {"model_name": "cls", "onnx": "models/shared.onnx",
                "inputs": {"x": {"min": [1, 3, 48, 192], "opt": [1, 3, 48, 192], "max": [4, 3, 48, 192]}}}
    extra = {"compute_capabilities": ["sm86"]} if backend == "tensorrt-rtx" else {}
    config = load_config(_write(corpus_dir, backend=backend, cache_dir="cache", backbones=[backbone], **extra))
    with pytest.raises(ConfigError) as info:
        build_backbone_specs(config, backend)
    message = str(info.value)
    assert "field 'inputs.x'" in message and "axis 2" in message and "axis 3" in message
    assert "'?'" in message and "equal sizes" in message
    square = {**backbone, "inputs": {"x": {"min": [1, 3, 48, 48], "opt": [1, 3, 96, 96], "max": [4, 3, 192, 192]}}}
    config = load_config(_write(corpus_dir, backend=backend, cache_dir="cache", backbones=[square], **extra))
    assert build_backbone_specs(config, backend)[0].model_name == "cls"


def test_onnx_runtime_accepts_different_sizes_on_shared_dim_names(corpus_dir):
    _shared_dims_model(corpus_dir / "models" / "shared.onnx")
    backbone = {"model_name": "cls", "onnx": "models/shared.onnx", "inputs": {"x": [1, 3, 48, 192]}}
    config = load_config(_write(corpus_dir, backend="onnxruntime", cache_dir="cache", backbones=[backbone]))
    assert build_backbone_specs(config)[0].input_shapes["x"].opt == (1, 3, 48, 192)
