"""Validation against ONNX Runtime (real) through cuda.bindings (fake), and loading cached engines."""

from __future__ import annotations

import pytest

from provisioning.backends.tensorrt import load_verified_engine
from provisioning.compiler import EngineCompiler, EngineCompileRequest
from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.errors import BackendError, BackendUnavailableError, NoGpuError
from provisioning.host import HostCapabilities
from provisioning.manifest import read_manifest
from trt_helpers import VERSIONS, compile_one, gpu_host, install_fake, spec
from fake_tensorrt import FakeWorld


def test_validate_runs_the_engine_and_records_the_report(world, models, tmp_path):
    from provisioning.config import ValidationCriteria

    criteria = ValidationCriteria(enabled=True, runs=3)
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "cls", validate=criteria))
    notes = read_manifest(summary.by_name()["cls"].entry.path)["build"]["notes"]
    assert notes["validated"] is True and notes["validation"]["passed"] is True
    assert notes["validation"]["latency_ms"]["runs"] == 3 and notes["validation"]["machine"]["device"] == "GPU NVIDIA H200"
    # one inference compared with the reference, one warm-up, three timed: each copies in and out once
    assert world.cudart.copies == ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"] * 5
    assert world.cudart.live == {} and world.cudart.streams == set()  # every buffer and stream released


def test_outputs_off_by_more_than_the_tolerance_are_not_published(world, models, tmp_path):
    world.output_offset = 0.05
    cache = tmp_path / "cache"
    with pytest.raises(BackendError, match=r"validation: output 'scores' max abs diff 0.05 > atol 0.001 \(rtol 0.01\); "
                                           r"the engine was not published"):
        compile_one(cache, gpu_host(world), spec(models, "det", validate=True))
    assert not list(cache.glob("*.engine"))
    assert world.cudart.live == {}


def test_tolerance_depends_on_precision(world10, models, tmp_path):
    world10.output_offset = 0.01  # inside fp16's tolerance, outside fp32's and TF32's
    summary = compile_one(tmp_path / "cache", gpu_host(world10), spec(models, "det", precision="fp16", validate=True))
    assert summary.built == 1
    with pytest.raises(BackendError, match=r"atol 0.001 \(rtol 0.01\)"):  # TF32's tolerance
        compile_one(tmp_path / "cache", gpu_host(world10), spec(models, "det", validate=True))


def test_fp32_validation_is_tf32_aware_from_compute_capability_8(world, models, tmp_path, monkeypatch):
    world.output_offset = 0.002  # what TF32 rounding can cost: over strict fp32, inside the TF32 tolerance
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det", validate=True))
    notes = summary.by_name()["det"].entry.manifest["build"]["notes"]
    assert notes["validation_tolerance"] == "tf32" and notes["tf32"].startswith("enabled")
    monkeypatch.setattr(world, "compute_capability", (7, 5))  # Turing: no TF32, fp32 is fp32
    with pytest.raises(BackendError, match=r"atol 0.0001 \(rtol 0.001\)"):  # strict fp32
        compile_one(tmp_path / "cache2", gpu_host(world, name="Tesla T4"), spec(models, "det", validate=True))


def test_validate_without_cuda_python_says_how_to_install(world, models, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(BackendUnavailableError, match=r"validate: true needs cuda-python"):
        compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det", validate=True))


def test_load_verified_engine_loads_a_cached_engine(world, models, tmp_path):
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models))
    loaded = load_verified_engine(summary.by_name()["det"].entry.path)
    assert loaded.engine.num_io_tensors == 2
    assert loaded.manifest["model_name"] == "det"


def test_tampered_engine_is_never_deserialized(world, models, tmp_path):
    engine = compile_one(tmp_path / "cache", gpu_host(world), spec(models)).by_name()["det"].entry.path
    engine.write_bytes(engine.read_bytes() + b"x")
    runtimes = len(world.runtimes)
    with pytest.raises(BackendError, match="bytes do not match the sidecar"):
        load_verified_engine(engine)
    assert len(world.runtimes) == runtimes  # TensorRT never saw the bytes


def test_engine_without_sidecar_is_not_trusted(world, models, tmp_path):
    engine = compile_one(tmp_path / "cache", gpu_host(world), spec(models)).by_name()["det"].entry.path
    (engine.parent / (engine.name + ".sha256")).unlink()
    with pytest.raises(BackendError, match="no valid .sha256 sidecar"):
        load_verified_engine(engine)


def test_opening_a_plan_where_cuda_has_no_gpu_advises_a_server_not_a_build(world, models, tmp_path, monkeypatch):
    # issue 22 item 32: a server that opens a plan without a usable GPU was told to run the build on a GPU host
    engine = compile_one(tmp_path / "cache", gpu_host(world), spec(models)).by_name()["det"].entry.path
    monkeypatch.setattr(world, "no_gpu", True)  # the server's container was started without the GPU
    with pytest.raises(NoGpuError) as caught:
        load_verified_engine(engine)
    message = str(caught.value)
    assert caught.value.exit_code == 69 and "\n" not in message and message.startswith(f"engine {engine}: ")
    assert "open it in a process that sees an NVIDIA GPU (check the driver" in message, message
    assert "engine build" not in message and "backend: onnxruntime" not in message


def test_plan_of_another_tensorrt_version_is_rejected_as_foreign(models, tmp_path, monkeypatch):
    old = install_fake(monkeypatch, FakeWorld(version=VERSIONS["trt10"]))
    engine = compile_one(tmp_path / "cache", gpu_host(old), spec(models)).by_name()["det"].entry.path
    install_fake(monkeypatch, FakeWorld(version=VERSIONS["trt11"]))
    with pytest.raises(BackendError, match=r"built with TensorRT 10.16.1.11, this host runs 11.4.0.106 \(a foreign plan\)"):
        load_verified_engine(engine)


def test_plan_of_another_gpu_is_rejected_with_tensorrt_reason(world, models, tmp_path, monkeypatch):
    engine = compile_one(tmp_path / "cache", gpu_host(world), spec(models)).by_name()["det"].entry.path
    monkeypatch.setattr(world, "compute_capability", (8, 9))  # the cache was copied to an L4 host
    with pytest.raises(BackendError, match="incompatible device, expecting compute 8.9 got 9.0.*rebuild it"):
        load_verified_engine(engine)


def test_version_compatible_plan_loads_on_a_newer_tensorrt_with_host_code(models, tmp_path, monkeypatch):
    old = install_fake(monkeypatch, FakeWorld(version="10.16.1.11"))
    engine = compile_one(tmp_path / "cache", gpu_host(old),
                         spec(models, version_compatible=True)).by_name()["det"].entry.path
    newer = install_fake(monkeypatch, FakeWorld(version="10.17.0.2"))
    loaded = load_verified_engine(engine)
    assert loaded.runtime.engine_host_code_allowed is True and newer.runtimes == [loaded.runtime]


def test_onnxruntime_engine_is_not_taken_for_a_plan(world, models, tmp_path, monkeypatch):
    host = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2",))
    request = EngineCompileRequest(backbones=(spec(models),), cache_dir=tmp_path / "cache", host=host)
    engine = EngineCompiler(OnnxRuntimeBackend(), heartbeat_s=0).compile_engines_for_corpus(request).results[0].entry.path
    with pytest.raises(BackendError, match="was built by onnxruntime, not TensorRT"):
        load_verified_engine(engine)
