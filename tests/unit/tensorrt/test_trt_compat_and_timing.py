"""Hardware/version compatibility (builder settings and host key) and the per-GPU timing cache."""

from __future__ import annotations

import logging

import pytest

from provisioning.backends.trt_cache import timing_cache_path
from provisioning.errors import BackendError
from provisioning.manifest import read_manifest
from trt_helpers import compile_one, gpu_host, spec


@pytest.mark.parametrize("setting, level, key", [
    ("none", "NONE", ".sm90-h200."),
    ("ampere_plus", "AMPERE_PLUS", ".ampere-plus."),
    ("same_compute_capability", "SAME_COMPUTE_CAPABILITY", ".sm90."),
])
def test_hardware_compatibility_sets_the_level_and_names_the_engine(world, models, tmp_path, setting, level, key):
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, hardware_compatibility=setting))
    engine = summary.by_name()["det"].entry.path
    assert world.builds[0]["hwc"] == level
    assert key in engine.name
    assert read_manifest(engine)["build"]["notes"]["hardware_compatibility_level"] == level


def test_ampere_plus_engine_is_shared_by_another_ampere_plus_gpu(world, models, tmp_path):
    cache = tmp_path / "cache"
    compile_one(cache, gpu_host(world), spec(models, hardware_compatibility="ampere_plus"))
    other = gpu_host(world, name="NVIDIA A100-SXM4-80GB", uuid="GPU-aaaaaaaa", cc=(8, 0))
    summary = compile_one(cache, other, spec(models, hardware_compatibility="ampere_plus"))
    assert summary.reused == 1 and len(world.builds) == 1


def test_ampere_plus_on_a_turing_gpu_is_refused(world, models, tmp_path):
    host = gpu_host(world, name="Tesla T4", cc=(7, 5))
    with pytest.raises(BackendError, match="ampere_plus needs compute capability 8.0.* Tesla T4 is sm75"):
        compile_one(tmp_path / "cache", host, spec(models, hardware_compatibility="ampere_plus"))
    assert world.builds == []


def test_same_compute_capability_needs_turing_or_newer(world, models, tmp_path):
    host = gpu_host(world, name="Tesla V100-SXM2-16GB", cc=(7, 0))
    with pytest.raises(BackendError, match="same_compute_capability needs compute capability 7.5.* is sm70"):
        compile_one(tmp_path / "cache", host, spec(models, hardware_compatibility="same_compute_capability"))
    assert world.builds == []
    summary = compile_one(tmp_path / "cache", gpu_host(world, name="Tesla T4", cc=(7, 5)),
                          spec(models, hardware_compatibility="same_compute_capability"))
    assert summary.built == 1


def test_bf16_on_trt10_needs_ampere(world10, models, tmp_path):
    with pytest.raises(BackendError, match="precision bf16 needs compute capability 8.0.* Tesla T4 is sm75"):
        compile_one(tmp_path / "cache", gpu_host(world10, name="Tesla T4", cc=(7, 5)), spec(models, precision="bf16"))
    assert world10.builds == []


def test_version_compatible_sets_the_flag_and_relaxes_the_version_in_the_name(world, models, tmp_path):
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, version_compatible=True))
    engine = summary.by_name()["det"].entry.path
    major = world.version.split(".")[0]
    assert world.builds[0]["flags"] == ["VERSION_COMPATIBLE"]
    assert f"{major}-vc" in engine.name and world.version not in engine.name
    assert world.runtimes[-1].engine_host_code_allowed is True  # our own fresh plan, checked before publish


def test_plain_engines_are_loaded_without_host_code(world, models, tmp_path):
    compile_one(tmp_path / "cache", gpu_host(world), spec(models))
    assert world.runtimes[-1].engine_host_code_allowed is False


def test_timing_cache_is_saved_then_loaded_and_merged(world, models, tmp_path):
    cache, host = tmp_path / "cache", gpu_host(world)
    first = compile_one(cache, host, spec(models, "det"))
    path = timing_cache_path(cache, host)
    assert path.is_file() and path.parent.name == "timing"
    assert world.version in path.name and "sm90-h200" in path.name
    notes = read_manifest(first.by_name()["det"].entry.path)["build"]["notes"]
    assert notes["timing_cache"].endswith(": new, saved")
    second = compile_one(cache, host, spec(models, "cls"))
    assert world.builds[1]["timing_entries_before"] == 1  # det's timings were offered to cls's build
    notes = read_manifest(second.by_name()["cls"].entry.path)["build"]["notes"]
    assert ": loaded (" in notes["timing_cache"]
    assert path.read_bytes().count(b".onnx:") == 2  # both builds' timings kept


def test_corrupt_timing_cache_is_ignored_with_a_warning_and_replaced(world, models, tmp_path, caplog):
    cache, host = tmp_path / "cache", gpu_host(world)
    path = timing_cache_path(cache, host)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="provisioning.tensorrt"):
        summary = compile_one(cache, host, spec(models))
    assert summary.built == 1
    assert any("timing cache" in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    assert not path.read_bytes().startswith(b"\x00garbage")  # replaced by a good one
    assert "ignored (corrupt" in read_manifest(summary.by_name()["det"].entry.path)["build"]["notes"]["timing_cache"]


def test_timing_cache_of_another_device_is_ignored_not_fatal(world, models, tmp_path, caplog, monkeypatch):
    cache, host = tmp_path / "cache", gpu_host(world)
    compile_one(cache, host, spec(models, "det"))
    monkeypatch.setattr(world, "gpu_uuid", "GPU-22222222-3333-4444-5555-666666666666")  # same name, another card
    with caplog.at_level(logging.WARNING, logger="provisioning.tensorrt"):
        summary = compile_one(cache, gpu_host(world), spec(models, "cls"))
    assert summary.built == 1
    assert any("another GPU or TensorRT version" in r.getMessage() for r in caplog.records)
    assert world.builds[1]["timing_entries_before"] == 0
