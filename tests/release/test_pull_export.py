"""engines-export --triton REPO --release RELEASE: one version per backbone holding every GPU class's plan."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from provisioning.host import GpuInfo
from provisioning.release.export import export_release
from provisioning.release.serving_config import load_serving_config
from provisioning.serving.triton import ExportInputError
from tests.conftest import DOIT
from tests.release.pull_fixtures import ONNX_SHA, H100, L4, file_kit, ort, rtx, serving_host, trt
from tests.serving.conftest import model_config

H200 = GpuInfo("NVIDIA H200", "GPU-77777777-0000-0000-0000-000000000000", (9, 0), "580.65.06", 0)


@pytest.fixture
def kit(tmp_path):
    ONNX_SHA.setdefault("seg", "5" * 64)
    kit = file_kit(tmp_path)
    kit.add("det", trt("det", H100, "10.8.0.43"))
    kit.add("det", trt("det", L4, "10.8.0.43"))
    kit.add("det", trt("det", H100, "10.8.0.43", hwc="ampere_plus"))
    kit.add("cls", trt("cls", H100, "10.6.0.26", vc=True))
    kit.add("emb", ort("emb"))
    kit.add("seg", rtx("seg", ("sm89",)))
    return kit


def serving(kit, tmp_path, **top):
    release = kit.write(tmp_path / "engines.release.json")
    return release, load_serving_config(kit.serving_yaml(tmp_path / "serving", runtime="tensorrt==10.8.0.43", **top))


def test_one_version_holds_every_gpu_class_plan_under_cc_model_filenames(kit, tmp_path):
    release, config = serving(kit, tmp_path)
    repo = tmp_path / "models"
    host = serving_host(None, tensorrt="10.8.0.43", onnxruntime="1.23.2")
    result = export_release(release, repo, config, models=["cls", "det", "emb"], host=host)
    assert sum(line.startswith("pulled ") for line in result.lines) == 4  # nothing was in the cache yet
    det = model_config(repo / "det" / "config.pbtxt")
    h100, l4 = (v.engine for v in kit.variants["det"][:2])
    assert det.platform == "tensorrt_plan" and dict(det.cc_model_filenames) == {"8.9": l4, "9.0": h100}
    assert not det.input and not det.default_model_filename  # left to Triton's auto-complete
    version = repo / "det" / "1"
    for name in (h100, l4):
        assert hashlib.sha256((version / name).read_bytes()).hexdigest() == next(
            v.sha256 for v in kit.variants["det"] if v.engine == name)
    cls = model_config(repo / "cls" / "config.pbtxt")
    assert (repo / "cls" / "1" / "model.plan").read_bytes() == kit.data[kit.variants["cls"][0].engine]
    assert not cls.cc_model_filenames
    emb = model_config(repo / "emb" / "config.pbtxt")
    assert emb.platform == "onnxruntime_onnx" and (repo / "emb" / "1" / "model.onnx").is_file()
    assert any("version-compatible=true" in line for line in result.lines)

    again = export_release(release, repo, config, models=["cls", "det", "emb"], host=host)
    assert not any(line.startswith("pulled ") for line in again.lines)
    assert "2" not in os.listdir(repo / "det")  # the newest version already holds these engines


def test_gpu_models_sharing_a_compute_capability_need_prefer_and_rtx_is_refused(kit, tmp_path):
    kit.add("det", trt("det", H200, "10.8.0.43"))
    release, config = serving(kit, tmp_path)
    host = serving_host(None, tensorrt="10.8.0.43")
    with pytest.raises(ExportInputError, match="share compute capability 9.0.*--prefer"):
        export_release(release, tmp_path / "models", config, models=["det"], host=host)
    result = export_release(release, tmp_path / "models", config, models=["det"], host=host, prefer="h200",
                            dry_run=True)
    assert any("would write version 1" in line for line in result.lines)
    assert not (tmp_path / "models").exists()
    with pytest.raises(ExportInputError, match="TensorRT-RTX"):
        export_release(release, tmp_path / "models", config, models=["seg"], host=host)


def test_doit_engines_export_from_a_release(kit, tmp_path):
    release, _ = serving(kit, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([DOIT, "engines-export", "--triton", str(tmp_path / "models"), "--release", str(release),
                           "--serving-config", str(tmp_path / "serving" / "serving.yaml"), "--models", "det",
                           "--runtime", "tensorrt==10.8.0.43"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pulled det." in done.stdout and (tmp_path / "models" / "det" / "1").is_dir()
    done = subprocess.run([DOIT, "engines-export", "--triton", str(tmp_path / "models"), "--release", str(release),
                           "--serving-config", str(tmp_path / "serving" / "serving.yaml"), "--models", "det",
                           "--runtime", "tensorrt==9.0.0.1"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "none of the release's TensorRT plans loads on TensorRT 9.0.0.1" in done.stderr
