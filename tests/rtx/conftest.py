"""Fixtures for the TensorRT-RTX suite: the real ``tensorrt_rtx``, never a fake.

The folder is skipped (with the reason) where ``tensorrt_rtx`` cannot be imported, except
under ``CI=true``: CI installs it with the test extra, so there a missing module is a
broken install and every test here errors. Builds run for real on a machine without a
GPU (TensorRT-RTX compiles ahead of time for the listed compute capabilities).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from provisioning.compiler import BackboneSpec, EngineCompiler, EngineCompileRequest, EngineCompileSummary
from provisioning.host import HostCapabilities
from tests.conftest import CORPUS, DoitProject, shipped_file, write_corpus_yaml
from tests.rtx_guard import require_rtx

TARGETS = ["sm86", "sm89", "sm120"]
RTX_BACKBONES = [
    {"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"},
    {"model_name": "cls", "onnx": "models/cls.onnx", "precision": "fp32",
     "inputs": {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}},
    {"model_name": "emb", "onnx": "models/emb.onnx", "precision": "fp16"},  # int8 would need Q/DQ nodes
]
DODO = "from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n"


@pytest.fixture(scope="session", autouse=True)
def rtx() -> Any:
    """The real ``tensorrt_rtx`` module (skip without it; fail under CI=true): :func:`tests.rtx_guard.require_rtx`."""
    return require_rtx()


@pytest.fixture(scope="session")
def gpu_less(rtx: Any) -> None:
    """These tests assert what a machine without a GPU sees; skipped where one is visible."""
    from provisioning.probe import probe_host

    if probe_host("tensorrt-rtx").gpu is not None:
        pytest.skip("a GPU is visible here; this test asserts the behaviour of a GPU-less build machine")


def write_rtx_config(folder: Path, backbones: list[dict], **top: Any) -> Path:
    """``folder/corpus.yaml`` for backend tensorrt-rtx (workspace 256 MiB, cache ./cache)."""
    top = {"backend": "tensorrt-rtx", "workspace_mb": 256, **top}
    return write_corpus_yaml(folder, backbones, **top)


@pytest.fixture
def rtx_corpus(tmp_path: Path, gpu_less: None) -> Path:
    """A private copy of the example corpus: backend tensorrt-rtx, targets sm86, sm89, sm120."""
    folder = tmp_path / "corpus"
    shutil.copytree(CORPUS / "models", folder / "models")
    write_rtx_config(folder, [dict(b) for b in RTX_BACKBONES], compute_capabilities=list(TARGETS))
    return folder


@dataclass
class Built:
    """One library run: what compose resolved and what the compiler returned."""

    config: Any
    host: HostCapabilities
    specs: tuple[BackboneSpec, ...]
    summary: EngineCompileSummary

    def engine(self, model_name: str) -> Path:
        return self.summary.by_name()[model_name].entry.path


def build_with_library(config_path: Path, heartbeat_s: float = 0) -> Built:
    """load_config -> probe_host_for -> build_backbone_specs -> EngineCompiler(make_backend)."""
    from provisioning.compose import build_backbone_specs, load_config, make_backend, probe_host_for

    config = load_config(config_path)
    host = probe_host_for(config)
    specs = build_backbone_specs(config, host=host)
    compiler = EngineCompiler(make_backend(host.backend), heartbeat_s=heartbeat_s)
    summary = compiler.compile_engines_for_corpus(EngineCompileRequest(specs, config.cache_dir, host))
    return Built(config, host, specs, summary)


def rtx_host(targets: tuple[str, ...] = ("sm86",)) -> HostCapabilities:
    """This machine probed for tensorrt-rtx, carrying ``targets`` (as probe_host_for would)."""
    from provisioning.probe import probe_host

    return replace(probe_host("tensorrt-rtx"), compute_capabilities=tuple(targets))


def build_spec(cache: Path, spec: BackboneSpec) -> EngineCompileSummary:
    """Build one spec with the real backend, bypassing config validation."""
    from provisioning.backends.tensorrt import TensorRTBackend

    request = EngineCompileRequest((spec,), cache, rtx_host(spec.compute_capabilities))
    return EngineCompiler(TensorRTBackend("tensorrt-rtx"), heartbeat_s=0).compile_engines_for_corpus(request)


def spec_for(path: Path, name: str, inputs: dict | None = None, **fields: Any) -> BackboneSpec:
    """A BackboneSpec for one ONNX file, targets sm86, workspace 256 MiB."""
    values = {"model_name": name, "onnx_path": path, "workspace_mb": 256, "compute_capabilities": ("sm86",),
              "inputs": tuple(sorted((inputs or {}).items())), **fields}
    return BackboneSpec(**values)


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list = ()) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def write_qdq_model(path: Path) -> Path:
    """x[1,16] -> Q -> DQ -> MatMul(DQ(int8 W)) -> Relu -> y[1,8]: explicit int8 quantization."""
    rng = np.random.default_rng(7)
    weights = np.clip(np.round(rng.standard_normal((16, 8)) * 40), -127, 127).astype(np.int8)
    return _save(path, [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="quant_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dequant_x"),
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["wd"], name="dequant_w"),
        helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="matmul"),
        helper.make_node("Relu", ["mm"], ["y"], name="relu"),
    ], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
         numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
         numpy_helper.from_array(weights, "wq"),
         numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
         numpy_helper.from_array(np.array(0, np.int8), "w_zero")])


def write_unknown_op_model(path: Path) -> Path:
    """x -> NoSuchOp (node 'mystery_node') -> y."""
    return _save(path, [helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery_node")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])


def write_matmul_mismatch_model(path: Path) -> Path:
    """x[1,8] x W[5,4] in node 'bad_matmul': inner dimensions disagree."""
    return _save(path, [helper.make_node("MatMul", ["x", "w"], ["y"], name="bad_matmul")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                 [numpy_helper.from_array(np.zeros((5, 4), np.float32), "w")])


@pytest.fixture(scope="session")
def silero_vad_models() -> Path:
    """``silero_vad/data`` in site-packages (the ONNX files shipped in the wheel)."""
    return shipped_file("silero_vad", "data/silero_vad_16k_op15.onnx").parent


@pytest.fixture(scope="session")
def rapidocr_det() -> Path:
    """rapidocr's PP-OCRv4 detector: x[p2o.DynamicDimension.0, 3, p2o.DynamicDimension.1, ...2]."""
    return shipped_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")


@pytest.fixture(scope="session")
def rapidocr_cls() -> Path:
    """rapidocr's direction classifier: x[None, 3, '?', '?'] (both spatial dims named '?')."""
    return shipped_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")


@pytest.fixture
def rtx_project(rtx_corpus: Path) -> DoitProject:
    """A throw-away doit project (dodo.py) around :func:`rtx_corpus`."""
    root = rtx_corpus.parent
    (root / "dodo.py").write_text(DODO)
    return DoitProject(root)


def one_line(exc: BaseException) -> str:
    """The error's message, asserted to be a single line."""
    text = str(exc)
    assert "\n" not in text and text.strip(), repr(text)
    return text
