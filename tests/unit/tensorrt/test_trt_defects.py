"""The TensorRT defects only a GPU host shows, against the signature-checked fake.

Where TensorRT-RTX can show a defect on this GPU-less machine, tests/rtx proves it on the
real bindings; these cover what needs a GPU: plugins before parsing, a CUDA device that is
not the NVML GPU, a driver too old for the wheel, TensorRT failing to start CUDA during
deserialization, version strings with a metapackage suffix, and RTX builds on a GPU host.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fake_tensorrt import FakeWorld
from provisioning.backends.tensorrt import TensorRTBackend, import_tensorrt
from provisioning.backends.trt_logging import process_logger
from provisioning.backends.trt_runtime import deserialize, run_inference
from provisioning.compiler import EngineCompiler, EngineCompileRequest
from provisioning.errors import BackendError, HostProbeError, NoGpuError
from provisioning.host import GpuInfo, HostCapabilities
from trt_helpers import RTX, compile_one, gpu_host, install_fake, spec


def test_plugins_are_registered_once_before_the_first_parse(world, models, tmp_path):
    seen_at_build = []
    world.on_build = lambda record: seen_at_build.append(len(world.plugin_inits))
    compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det"), spec(models, "cls"))
    assert seen_at_build == [1, 1]  # before the first build (so before its parse), and only once
    assert world.plugin_inits[0][1] == ""  # the default plugin namespace


def test_a_metapackage_post_release_is_the_same_tensorrt(world, models, tmp_path):
    host = replace(gpu_host(world), backend_version=world.version + ".post1")
    assert compile_one(tmp_path / "cache", host, spec(models, "det")).built == 1
    other = replace(gpu_host(world), backend_version="10.15.1.29" if world.version.startswith("10") else "11.3.0.1")
    with pytest.raises(BackendError, match="package metadata says .*reinstall"):
        compile_one(tmp_path / "cache", other, spec(models, "det"))


def test_cuda_device_0_must_be_the_gpu_nvml_described(world, models, tmp_path):
    world.cuda_uuid = "GPU-99999999-8888-7777-6666-555555555555"  # CUDA numbers devices its own way
    with pytest.raises(HostProbeError) as caught:
        compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det"))
    message = str(caught.value)
    assert world.gpu_uuid in message and world.cuda_uuid in message and "CUDA_VISIBLE_DEVICES" in message
    assert world.builds == []


def test_a_driver_too_old_for_the_wheel_is_no_gpu_before_building(world, models, tmp_path, monkeypatch):
    from provisioning import gpu

    monkeypatch.setattr(gpu, "wheel_cuda_major", lambda module, **_: 13)  # a tensorrt-cu13 install
    host = gpu_host(world)
    old = replace(host, gpu=replace(host.gpu, driver_version="535.104.05"))
    with pytest.raises(NoGpuError) as caught:
        compile_one(tmp_path / "cache", old, spec(models, "det"))
    assert caught.value.exit_code == 69
    assert "535.104.05 is too old for this CUDA 13 wheel" in str(caught.value) and "tensorrt-cu12" in str(caught.value)
    assert world.builds == []
    monkeypatch.setenv("PROVISIONING_SKIP_DRIVER_CHECK", "1")  # a cuda-compat host: the user knows better
    assert compile_one(tmp_path / "cache", old, spec(models, "det")).built == 1


def test_cuda_failing_during_deserialize_is_no_gpu_not_a_bad_engine(world, models, tmp_path):
    world.deserialize_error = ("IRuntime::deserializeCudaEngine: Error Code 1: Cuda Runtime (cudaError 35: "
                               "CUDA driver version is insufficient for CUDA runtime version)")
    with pytest.raises(NoGpuError) as caught:
        compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det"))
    assert "rebuild it" not in str(caught.value) and "delete" not in str(caught.value)
    world.deserialize_error = "The engine plan file is generated on an incompatible device"
    with pytest.raises(BackendError, match="incompatible device") as caught:
        compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det"))
    assert not isinstance(caught.value, NoGpuError)


def test_an_input_shape_outside_the_profile_is_an_error_not_ignored(world, models, tmp_path):
    entry = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "cls")).by_name()["cls"].entry
    trt = import_tensorrt()
    loaded = deserialize(trt, process_logger(trt), entry.path.read_bytes(), host_code_allowed=False, where="cls")
    feed = {"features": np.zeros((64, 64), np.float32)}  # the profile's max batch is 32
    with pytest.raises(BackendError, match="refused input 'features' of shape \\[64, 64\\]"):
        run_inference(trt, loaded.engine, feed, "backbone cls")


def _rtx_host(world: FakeWorld, cc=(8, 9), name="NVIDIA L4") -> HostCapabilities:
    gpu = GpuInfo(name, world.gpu_uuid, cc, "580.65.06", 0)
    return HostCapabilities("tensorrt-rtx", RTX, "x86_64", ("avx2",), gpu)


def _compile_rtx(cache, host, *specs):
    request = EngineCompileRequest(backbones=tuple(specs), cache_dir=cache, host=host)
    return EngineCompiler(TensorRTBackend("tensorrt-rtx"), heartbeat_s=0).compile_engines_for_corpus(request)


def test_rtx_on_a_gpu_of_the_targets_deserializes_and_validates(monkeypatch, models, tmp_path):
    world = install_fake(monkeypatch, FakeWorld(version=RTX, compute_capability=(8, 9)))
    summary = _compile_rtx(tmp_path / "cache", _rtx_host(world),
                           spec(models, "det", validate=True, compute_capabilities=("sm86", "sm89")))
    notes = summary.by_name()["det"].entry.manifest["build"]["notes"]
    assert notes["deserialized"] is True and notes["validated"] is True
    assert notes["build_machine"]["gpu"]["compute_capability"] == "sm89"
    assert world.runtimes and world.cudart.live == {}


def test_rtx_on_a_gpu_outside_the_targets_builds_without_loading(monkeypatch, models, tmp_path):
    world = install_fake(monkeypatch, FakeWorld(version=RTX, compute_capability=(12, 0)))
    summary = _compile_rtx(tmp_path / "cache", _rtx_host(world, cc=(12, 0), name="NVIDIA GeForce RTX 5090"),
                           spec(models, "det", compute_capabilities=("sm86",)))
    notes = summary.by_name()["det"].entry.manifest["build"]["notes"]
    assert notes["deserialized"].startswith("false (the build machine's GPU (NVIDIA GeForce RTX 5090, sm120)")
    assert world.runtimes == []  # never handed to a runtime that cannot run it


def test_rtx_without_a_gpu_records_that_nothing_was_deserialized(world_rtx, models, tmp_path):
    host = replace(_rtx_host(world_rtx), gpu=None)
    summary = _compile_rtx(tmp_path / "cache", host, spec(models, "det", compute_capabilities=("sm86",)))
    notes = summary.by_name()["det"].entry.manifest["build"]["notes"]
    assert notes["deserialized"] == "false (no GPU on the build machine)" and notes["validated"] is False
    assert "timing-cache calls are deprecated no-ops" in notes["timing_cache"]
    assert not (tmp_path / "cache" / "timing").exists()  # nothing measured, nothing written
