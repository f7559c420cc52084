"""What a user sees when TensorRT refuses: parser errors, builder None, runtime None, no GPU."""

from __future__ import annotations

import pytest

from provisioning.backends.tensorrt import build_log_path
from provisioning.errors import BackendError, BackendUnavailableError, NoGpuError
from trt_helpers import compile_one, gpu_host, spec


def cache_files(cache):
    """Everything a build left in the cache, less the compiler's own lock/event bookkeeping."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.rglob("*")
                  if p.is_file() and ".locks" not in p.parts and p.name != "events.jsonl"
                  and not p.name.startswith("gpu-"))


def test_parser_failure_names_every_failing_node(world, models, tmp_path):
    world.parse_errors = [
        {"desc": "No importer registered for op: FancyOp", "node": 3, "node_name": "fancy_3",
         "node_operator": "FancyOp", "code": "UNSUPPORTED_NODE"},
        {"desc": "Assertion failed: axis in range", "node": 7, "node_name": "concat_7",
         "node_operator": "Concat", "code": "INVALID_NODE"},
    ]
    cache = tmp_path / "cache"
    with pytest.raises(BackendError) as caught:
        compile_one(cache, gpu_host(world), spec(models, "det"))
    message = str(caught.value)
    assert "backbone det: TensorRT could not parse det.onnx" in message
    assert "node fancy_3 (FancyOp): No importer registered for op: FancyOp [UNSUPPORTED_NODE]" in message
    assert "node concat_7 (Concat)" in message and "\n" not in message
    assert not list(cache.glob("*.engine"))
    assert "failed to import a node" in next(cache.glob("*.build.log")).read_text()


def test_builder_returning_none_fails_with_tensorrt_reason_and_publishes_nothing(world, models, tmp_path):
    world.build_error = "Internal Error: could not find any implementation for node conv_1 [Convolution]"
    cache = tmp_path / "cache"
    with pytest.raises(BackendError, match="could not find any implementation for node conv_1") as caught:
        compile_one(cache, gpu_host(world), spec(models, "det"))
    assert ".build.log" in str(caught.value)
    assert not list(cache.glob("*.engine")) and not list(cache.glob("*.sha256"))
    log_file = next(cache.glob("*.build.log"))
    assert "could not find any implementation" in log_file.read_text()


def test_runtime_returning_none_means_not_published(world, models, tmp_path):
    world.deserialize_error = "Serialization assertion safeVersionRead == kSAFE_SERIALIZATION_VERSION failed"
    cache = tmp_path / "cache"
    with pytest.raises(BackendError, match="could not deserialize the engine .*safeVersionRead"):
        compile_one(cache, gpu_host(world), spec(models, "det"))
    assert not list(cache.glob("*.engine"))


def test_no_driver_is_no_gpu_with_the_cuda_cause_and_nothing_cached(world, models, tmp_path):
    world.no_gpu = True  # NVML saw a GPU, but CUDA cannot start (no usable driver)
    cache = tmp_path / "cache"
    with pytest.raises(NoGpuError) as caught:
        compile_one(cache, gpu_host(world), spec(models, "det"))
    message = str(caught.value)
    assert caught.value.exit_code == 69 and "\n" not in message
    assert "cudaErrorInsufficientDriver" in message  # cuda-python's device check, before TensorRT
    assert "run the engine build on a GPU host" in message and "mounted volume" in message
    assert world.builds == [] and cache_files(cache) == []


def test_builder_nullptr_is_no_gpu_with_hint_and_nothing_cached(world, models, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # no cuda-python: TensorRT is the first to try CUDA
    world.no_gpu = True
    cache = tmp_path / "cache"
    with pytest.raises(NoGpuError) as caught:
        compile_one(cache, gpu_host(world), spec(models, "det"))
    message = str(caught.value)
    assert caught.value.exit_code == 69
    assert "CUDA initialization failure" in message or "CUDA error 35" in message, message
    assert "run the engine build on a GPU host" in message and "mounted volume" in message
    assert cache_files(cache) == []


def test_host_without_gpu_is_no_gpu(world, models, tmp_path):
    host = gpu_host(world)
    from dataclasses import replace

    with pytest.raises(NoGpuError, match="no GPU was probed"):
        from provisioning.backends.tensorrt import TensorRTBackend

        TensorRTBackend().compile_engine(spec(models), replace(host, gpu=None), output=None)


def test_missing_tensorrt_is_backend_unavailable_with_install_hint(models, tmp_path, monkeypatch):
    import sys

    from fake_tensorrt import FakeWorld

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailableError, match="install the tensorrt-cu12 or tensorrt-cu13 extra .*from NVIDIA's package index"):
        compile_one(tmp_path / "cache", gpu_host(FakeWorld()), spec(models))


def test_unsupported_tensorrt_major_is_refused(models, tmp_path, monkeypatch):
    from fake_tensorrt import FakeWorld
    from trt_helpers import install_fake

    world = install_fake(monkeypatch, FakeWorld(version="8.6.1"))
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 8.6.1 is not supported .*10.x, 11.x"):
        compile_one(tmp_path / "cache", gpu_host(world), spec(models))


def test_metadata_and_imported_version_must_agree(world, models, tmp_path):
    from dataclasses import replace

    host = replace(gpu_host(world), backend_version="10.0.0.1")
    with pytest.raises(BackendError, match="package metadata says 10.0.0.1; reinstall"):
        compile_one(tmp_path / "cache", host, spec(models))


def test_build_log_lands_beside_the_engine(world, models, tmp_path):
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models))
    engine = summary.by_name()["det"].entry.path
    assert build_log_path(engine).is_file()
    assert build_log_path(engine).name == engine.name + ".build.log"
