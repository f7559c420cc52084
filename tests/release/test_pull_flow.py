"""The whole flow on the serving side: the build farm's release (see test_release_fleet) pulled by each host.

Three simulated GPU classes (fake NVML + the signature-checked TensorRT fake), a real
TensorRT-RTX plan and a real ONNX Runtime engine are in a moto bucket; engines-release
--require passed. Each "serving host" is a fresh folder with a serving.yaml and nothing
else (no ONNX, no corpus, no dodo.py); engines-pull runs as a user runs it, with a fake
NVML describing that host's GPU. Then resolve_engine and engines-export --triton --release
work from what was pulled.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from provisioning import resolve_engine
from provisioning.host import GpuInfo, RTX_DISTRIBUTIONS, installed_version
from tests.conftest import DOIT
from tests.release.pull_fixtures import cpu_key, fake_nvml_dir, with_path
from tests.remote.conftest import S3_ENV
from tests.serving.conftest import model_config

from .conftest import CREATED, doit
from .test_release_fleet import GPUS, REQUIRED, farm  # noqa: F401 (the fixture)

TRT = "10.16.1.11"  # the fake TensorRT the farm built with (tests/unit/tensorrt/trt_helpers.VERSIONS)


def gpu(name: str, cc: tuple[int, int]) -> GpuInfo:
    return GpuInfo(name, "GPU-0", cc, "580.65.06", 0)


@pytest.fixture
def release(farm, tmp_path):  # noqa: F811
    out = tmp_path / "engines.release.json"
    done = doit("engines-release", str(out), "--require", REQUIRED, "--config", str(farm.config_path),
                "--created", CREATED, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return out


def serving_host(tmp_path: Path, name: str, farm) -> Path:  # noqa: F811
    """A fresh serving folder: serving.yaml (the bucket, the fleet's public key), nothing else."""
    remote = yaml.safe_load(farm.config_path.read_text())["remote"]
    folder = tmp_path / "serving" / name
    folder.mkdir(parents=True)
    public = {"algorithm": "ed25519", "id": remote["signing_key"]["id"],
              "public_key": {"file": str(Path(remote["signing_key"]["private_key"]["file"]).with_suffix(".pub"))}}
    block = {k: remote[k] for k in ("url", "endpoint_url", "namespace", "timeout_s")}
    (folder / "serving.yaml").write_text(yaml.safe_dump({"cache_dir": "cache", "remote": {**block,
                                                                                         "signing_key": public}}))
    return folder


def pull(folder: Path, release: Path, *args: str, gpu_info: GpuInfo | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    env.update(S3_ENV)
    env["PYTHONPATH"] = with_path(fake_nvml_dir(folder / "nvml", gpu_info) if gpu_info else None)
    if gpu_info is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([DOIT, "engines-pull", str(release), "--serving-config", str(folder / "serving.yaml"),
                           *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def reasons(done) -> dict[str, tuple[str, str, str]]:
    """model -> (state, engine host key, reason) from engines-pull's lines."""
    found = {}
    for line in done.stdout.splitlines()[1:]:
        state, model, engine, reason = line.split(" ", 3)
        found[model] = (state, engine.split(".")[-3], reason.strip("()"))
    return found


def test_each_serving_host_pulls_its_documented_variant_and_serves_from_it(farm, release, tmp_path):  # noqa: F811
    h100, cc = GPUS["h100"]
    done = pull(serving_host(tmp_path, "h100", farm), release, "--runtime", f"tensorrt=={TRT}", gpu_info=gpu(h100, cc))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"tensorrt {TRT} (given)" in done.stdout.splitlines()[0]
    assert reasons(done) == {m: ("PULLED", "sm90-h100-80gb-hbm3", "exact") for m in ("cls", "det")}

    l4, cc = GPUS["l4"]
    done = pull(serving_host(tmp_path, "l4", farm), release, "--runtime", f"tensorrt=={TRT}", gpu_info=gpu(l4, cc))
    assert reasons(done) == {m: ("PULLED", "sm89-l4", "exact") for m in ("cls", "det")}

    rtx = installed_version(RTX_DISTRIBUTIONS)
    done = pull(serving_host(tmp_path, "a6000", farm), release, "--runtime", f"tensorrt-rtx=={rtx}",
                gpu_info=gpu("NVIDIA RTX A6000", (8, 6)))
    assert reasons(done) == {m: ("PULLED", "sm86-sm89", "rtx-targets sm86") for m in ("cls", "det")}

    old = serving_host(tmp_path, "old-trt", farm)  # plans of 10.16 do not load on 10.8: one line per backbone
    done = pull(old, release, "--runtime", "tensorrt==10.8.0.43", gpu_info=gpu(h100, GPUS["h100"][1]))
    assert done.returncode == 1 and all(line.startswith("NO-VARIANT ") for line in done.stdout.splitlines()[1:])
    assert "sm90-h100-80gb-hbm3 (tensorrt 10.16.1.11)" in done.stdout

    cpu = serving_host(tmp_path, "cpu", farm)
    done = pull(cpu, release, "--allow-cpu-fallback")
    isa = cpu_key().split("-")[-2]
    assert reasons(done) == {m: ("PULLED", cpu_key(), f"cpu-fallback {isa}") for m in ("cls", "det")}, done.stdout
    again = pull(cpu, release, "--allow-cpu-fallback")
    assert [line.split()[0] for line in again.stdout.splitlines()[1:]] == ["PRESENT", "PRESENT"]

    # Serving from there: a Python server resolves from the release, a Triton repository is exported from it.
    (cpu / "serving.yaml").write_text((cpu / "serving.yaml").read_text() + "allow_cpu_fallback: true\n")
    entry = resolve_engine(release=release, model="det", serving_config=cpu / "serving.yaml")
    assert entry.path.parent == cpu / "cache"
    output = entry.open().run(None, {"images": np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert output.shape == (1, 4, 32, 32)

    repo = tmp_path / "triton"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    env.update(S3_ENV, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([DOIT, "engines-export", "--triton", str(repo), "--release", str(release),
                           "--serving-config", str(tmp_path / "serving" / "h100" / "serving.yaml"),
                           "--runtime", f"tensorrt=={TRT}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for model in ("cls", "det"):
        config = model_config(repo / model / "config.pbtxt")
        assert config.platform == "tensorrt_plan"
        assert sorted(dict(config.cc_model_filenames)) == ["8.0", "8.9", "9.0"]
        assert sorted(os.listdir(repo / model / "1")) == sorted([*dict(config.cc_model_filenames).values(),
                                                                  "SHA256SUMS", "provisioning.json"])
