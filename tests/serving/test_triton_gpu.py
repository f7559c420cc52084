"""TensorRT exports from a fleet cache (engines built through the compiler with the fake TensorRT), and RTX.

The fake stands only for TensorRT and the GPU; names, manifests, sidecars and the export are real.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from provisioning.compose import build_backbone_specs, load_config
from provisioning.doit.corpus import LoadedCorpus
from provisioning.serving.triton import ExportError, ExportInputError, export_triton_repository
from tests.conftest import CORPUS, DOIT
from tests.rtx_guard import require_rtx
from tests.serving.conftest import complete_versions, edit_onnx, model_config

GPUS = {  # name, compute capability
    "h200": ("NVIDIA H200", (9, 0)),
    "a100": ("NVIDIA A100-SXM4-80GB", (8, 0)),
    "a6000": ("NVIDIA RTX A6000", (8, 6)),
    "3090": ("NVIDIA GeForce RTX 3090", (8, 6)),
}


class Fleet:
    """One corpus (det fp16, cls with a profile) whose cache several GPU hosts build into."""

    def __init__(self, root, world):
        from trt_helpers import gpu_host

        self.root, self.world = root, world
        shutil.copytree(CORPUS / "models", root / "models")
        (root / "corpus.yaml").write_text(yaml.safe_dump({
            "cache_dir": "cache", "backend": "tensorrt", "workspace_mb": 256, "backbones": [
                {"model_name": "det", "onnx": "models/det.onnx", "precision": "fp16"},
                {"model_name": "cls", "onnx": "models/cls.onnx", "precision": "fp32",
                 "inputs": {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}}]}))
        self.hosts = {key: gpu_host(world, name=name, cc=cc) for key, (name, cc) in GPUS.items()}
        self.repo = root / "triton"

    def corpus(self, gpu: str) -> LoadedCorpus:
        config = load_config(self.root / "corpus.yaml")
        host = self.hosts[gpu]
        return LoadedCorpus(config, host, build_backbone_specs(config, "tensorrt", host=host))

    def build(self, *gpus: str) -> None:
        from trt_helpers import compile_one

        for gpu in gpus:
            corpus = self.corpus(gpu)
            self.world.gpu_name, self.world.compute_capability = GPUS[gpu]
            compile_one(corpus.cache_dir, corpus.host, *corpus.specs)

    def engine(self, model: str, gpu: str):
        corpus = self.corpus(gpu)
        return corpus.engine_path(next(s for s in corpus.specs if s.model_name == model))


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    from fake_tensorrt import FakeWorld
    from trt_helpers import VERSIONS, install_fake

    return Fleet(tmp_path, install_fake(monkeypatch, FakeWorld(version=VERSIONS["trt10"])))


def test_plans_of_several_compute_capabilities_give_cc_model_filenames(fleet):
    fleet.build("h200", "a100")
    lines = export_triton_repository(fleet.corpus("h200"), fleet.repo).lines
    for model in ("det", "cls"):
        config = model_config(fleet.repo / model / "config.pbtxt")
        h200, a100 = fleet.engine(model, "h200").name, fleet.engine(model, "a100").name
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 0
        assert dict(config.cc_model_filenames) == {"8.0": a100, "9.0": h200}
        assert config.default_model_filename == h200  # this host's engine
        assert sorted(os.listdir(fleet.repo / model / "1")) == sorted([a100, h200, "SHA256SUMS", "provisioning.json"])
        assert complete_versions(fleet.repo / model) == [1]
    cls = model_config(fleet.repo / "cls" / "config.pbtxt")
    assert [(t.name, list(t.dims)) for t in cls.input] == [("features", [-1, 64])]
    assert list(cls.model_warmup[0].inputs["features"].dims) == [8, 64]
    assert not cls.instance_group  # TensorRT: Triton's default GPU instances
    assert any("det: version 1 (tensorrt_plan, hard-linked)" in line for line in lines), lines


def test_a_single_plan_is_model_plan(fleet):
    fleet.build("a100")
    export_triton_repository(fleet.corpus("a100"), fleet.repo, models=["det"])
    config = model_config(fleet.repo / "det" / "config.pbtxt")
    assert not config.cc_model_filenames and not config.default_model_filename
    assert sorted(os.listdir(fleet.repo / "det" / "1")) == ["SHA256SUMS", "model.plan", "provisioning.json"]


def test_two_gpu_models_of_one_compute_capability_are_refused_unless_preferred(fleet):
    fleet.build("h200", "a6000", "3090")
    with pytest.raises(ExportInputError) as caught:
        export_triton_repository(fleet.corpus("h200"), fleet.repo)
    message = str(caught.value)
    assert "\n" not in message and "NVIDIA RTX A6000" in message and "NVIDIA GeForce RTX 3090" in message
    assert "share compute capability 8.6" in message and "--prefer" in message
    assert not fleet.repo.exists()
    with pytest.raises(ExportInputError, match="--prefer 'v100' matches none"):
        export_triton_repository(fleet.corpus("h200"), fleet.repo, prefer="v100")
    export_triton_repository(fleet.corpus("h200"), fleet.repo, prefer="RTX A6000")
    config = model_config(fleet.repo / "det" / "config.pbtxt")
    assert dict(config.cc_model_filenames) == {"8.6": fleet.engine("det", "a6000").name,
                                               "9.0": fleet.engine("det", "h200").name}


def test_stale_plans_of_other_gpus_are_skipped_and_corrupt_ones_refused(fleet):
    fleet.build("a100")
    edit_onnx(fleet.root / "models" / "det.onnx", "newer")
    fleet.build("h200")  # the A100 plan of det is from the old ONNX now
    lines = export_triton_repository(fleet.corpus("h200"), fleet.repo, models=["det"]).lines
    assert any("skipped " + fleet.engine("det", "a100").name + ": ONNX bytes changed" in line for line in lines)
    assert sorted(os.listdir(fleet.repo / "det" / "1")) == ["SHA256SUMS", "model.plan", "provisioning.json"]

    a100_cls = fleet.engine("cls", "a100")
    sidecar = a100_cls.with_name(a100_cls.name + ".sha256")
    sidecar.rename(sidecar.with_name("away"))  # unpublished (a publish or a GC in progress): skipped
    lines = export_triton_repository(fleet.corpus("h200"), fleet.repo, models=["cls"]).lines
    assert any(f"skipped {a100_cls.name}: not published" in line for line in lines), lines
    sidecar.with_name("away").rename(sidecar)
    a100_cls.write_bytes(a100_cls.read_bytes()[:-1])  # truncated
    with pytest.raises(ExportError, match=r"cls: cached engine .*sm80-a100.* does not verify \(engine bytes"):
        export_triton_repository(fleet.corpus("h200"), fleet.repo)
    assert complete_versions(fleet.repo / "cls") == [1]  # nothing new


def test_tensorrt_rtx_plans_are_refused(tmp_path):
    """A real TensorRT-RTX plan (built for sm86 without a GPU) cannot be served by Triton's TensorRT backend."""
    require_rtx()  # skip without the tensorrt-rtx extra, fail under CI=true
    shutil.copytree(CORPUS / "models", tmp_path / "corpus" / "models")
    (tmp_path / "corpus" / "corpus.yaml").write_text(yaml.safe_dump({
        "cache_dir": "cache", "backend": "tensorrt-rtx", "workspace_mb": 256, "compute_capabilities": ["sm86"],
        "backbones": [{"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"}]}))
    (tmp_path / "dodo.py").write_text("from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PROVISIONING_CONFIG", "PROVISIONING_DOIT_DB")}
    built = subprocess.run([DOIT, "engines"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0 and "trtrtx" in built.stdout, built.stdout + built.stderr
    result = subprocess.run([DOIT, "engines-export", "--triton", "triton"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "TensorRT-RTX plans cannot be served by Triton's TensorRT backend" in result.stderr
    assert not (tmp_path / "triton").exists()
