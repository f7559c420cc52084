"""A build farm fills a moto bucket over HTTP; ``engines-release --require`` assembles and gates it.

Three GPU classes are simulated (the fake NVML identity and the signature-checked TensorRT
fake, as in tests/unit/tensorrt), a TensorRT-RTX plan is built by the real builder (no GPU
needed) and an ONNX Runtime engine by real ONNX Runtime. The release lists the five
variants of each backbone, tied to what each one needs, verifies with securesystemslib
alone, and was assembled without a single engine object leaving the bucket.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from provisioning import load_config
from provisioning.release import load_release
from provisioning.release.assemble import assemble_release
from provisioning.remote.store import RemoteStore
from tests.conftest import REPO

from .conftest import CREATED, KEY_ID, doit, make_builder, reader, s3_remote
from .test_release_format import VERIFY_ALONE

TRT_HELPERS = str(REPO / "tests" / "unit" / "tensorrt")
if TRT_HELPERS not in sys.path:
    sys.path.insert(0, TRT_HELPERS)

GPUS = {  # slug: (NVML name, compute capability)
    "h100": ("NVIDIA H100 80GB HBM3", (9, 0)),
    "l4": ("NVIDIA L4", (8, 9)),
    "a100": ("NVIDIA A100-SXM4-80GB", (8, 0)),
}
REQUIRED = ",".join([*(name for name, _ in GPUS.values()), "sm86-sm89", "x86_64"])

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="tensorrt_rtx is not installed (pip install -e '.[test]')")


@pytest.fixture
def farm(tmp_path, models, fleet_keys, s3_server, bucket, monkeypatch):
    """The bucket after a TensorRT-RTX CI job, a CPU builder and three GPU classes built the corpus."""
    from fake_tensorrt import FakeWorld
    from trt_helpers import VERSIONS, gpu_host, install_fake

    block = s3_remote(s3_server.endpoint, bucket, fleet_keys)
    rtx = make_builder(tmp_path, "rtx-ci", models, block, backend="tensorrt-rtx",
                       compute_capabilities=["sm86", "sm89"])
    assert rtx.build().built == 2  # the real builder, before the fake takes the cuda modules
    cpu = make_builder(tmp_path, "cpu", models, block)
    assert cpu.build().built == 2
    world = install_fake(monkeypatch, FakeWorld(version=VERSIONS["trt10"]))
    for slug, (name, cc) in GPUS.items():
        builder = make_builder(tmp_path, slug, models, block, backend="tensorrt")
        world.gpu_name, world.compute_capability = name, cc
        assert builder.build(host=gpu_host(world, name=name, cc=cc)).built == 2
    return cpu


def test_the_farm_s_release_lists_every_gpu_class_and_passes_the_gate(farm, tmp_path, fleet_keys, s3_server):
    out = tmp_path / "engines.release.json"
    done = doit("engines-release", str(out), "--require", REQUIRED, "--config", str(farm.config_path),
                "--created", CREATED, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "MISSING" not in done.stderr
    assert "2 backbone(s), 10 variant(s), 0 uploaded first" in done.stdout
    release = load_release(out, [reader(fleet_keys)], "prod")
    assert release.remote.startswith("s3://") and release.signed_by == (KEY_ID,)
    for backbone in release.backbones:
        by_backend: dict[str, list] = {}
        for variant in backbone.variants:
            by_backend.setdefault(variant.backend, []).append(variant)
        assert {k: len(v) for k, v in by_backend.items()} == {"tensorrt": 3, "tensorrt-rtx": 1, "onnxruntime": 1}
        gpus = {(v.tied_to.gpu_model, v.tied_to.compute_capability, v.backend_version) for v in by_backend["tensorrt"]}
        assert gpus == {(name, f"{cc[0]}.{cc[1]}", "10.16.1.11") for name, cc in GPUS.values()}
        (rtx,) = by_backend["tensorrt-rtx"]
        assert rtx.host_key == "sm86-sm89" and rtx.compatibility.rtx_targets == ("sm86", "sm89")
        assert rtx.tied_to.gpu_model is None
        (ort,) = by_backend["onnxruntime"]
        assert ort.tied_to.kind == "cpu" and ort.host_key.startswith(ort.tied_to.machine)
        assert all(v.settings_sha256 != backbone.settings_sha256 for v in backbone.variants)

    # Any securesystemslib user verifies it with the fleet's public key, nothing of ours imported.
    alone = subprocess.run([sys.executable, "-I", "-c", VERIFY_ALONE, str(out), str(fleet_keys.public_file), KEY_ID],
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0, alone.stderr
    assert json.loads(alone.stdout)["subjects"] == 10

    # A sixth class that nobody built fails the gate with one line per backbone.
    done = doit("engines-release", str(tmp_path / "gated.json"), "--require", REQUIRED + ",NVIDIA B200",
                "--config", str(farm.config_path), "--created", CREATED, cwd=tmp_path)
    assert done.returncode == 1
    assert [line for line in done.stderr.splitlines() if line.startswith("MISSING")] == [
        f"MISSING {model}: no variant for NVIDIA B200 (the bucket has "
        f"{', '.join(sorted(v.host_key for v in release.backbone(model).variants))} for today's inputs)"
        for model in ("cls", "det")]


def test_assembling_from_s3_downloads_no_engine(farm, monkeypatch):
    seen: list[str] = []
    real_read = RemoteStore.read_small_tagged

    def refuse(self, path, *args, **kwargs):
        raise AssertionError(f"engines-release downloaded {path}")

    def reading(self, path, *args, **kwargs):
        seen.append(path)
        return real_read(self, path, *args, **kwargs)

    monkeypatch.setattr(RemoteStore, "download", refuse)
    monkeypatch.setattr(RemoteStore, "read_range", refuse)
    monkeypatch.setattr(RemoteStore, "read_small_tagged", reading)
    assembly = assemble_release(load_config(farm.config_path), CREATED)
    assert sum(len(b.variants) for b in assembly.release.backbones) == 10
    assert assembly.calls == {"find": 1, "read_small": 20}
    assert len(seen) == 20 and not any("/engine/" in path for path in seen)
    assert sorted({path.split("/")[-2] for path in seen}) == ["commit", "manifest"]
