"""Build, cache and reuse through the real EngineCompiler; the fake stands only for TensorRT/GPU."""

from __future__ import annotations

import json

import pytest

from provisioning.backends.tensorrt import build_log_path
from provisioning.compiler import CompileOutcome
from provisioning.errors import BackendError
from provisioning.manifest import read_manifest
from provisioning.sidecar import Sha256Sidecar
from trt_helpers import compile_one, gpu_host, spec


def notes_of(path):
    return read_manifest(path)["build"]["notes"]


def test_build_publishes_a_verified_engine_then_reuses_it(world, models, tmp_path):
    cache, host = tmp_path / "cache", gpu_host(world)
    first = compile_one(cache, host, spec(models, "det"))
    result = first.by_name()["det"]
    assert result.outcome is CompileOutcome.BUILT
    engine = result.entry.path
    assert Sha256Sidecar.verify(engine)
    assert f"trt-{world.version}" in engine.name or world.version in engine.name
    notes = notes_of(engine)
    assert notes["tensorrt_version"] == world.version
    assert notes["precision_mode"] == "fp32"
    assert notes["network"] == ("strongly typed" if world.version.startswith("11") else "weakly typed (builder flags)")
    log_text = build_log_path(engine).read_text()
    assert "Engine generation completed" in log_text and world.version in log_text
    assert world.builds[0]["pools"] == {"WORKSPACE": 256 << 20}

    again = compile_one(cache, host, spec(models, "det"))
    assert again.by_name()["det"].outcome is CompileOutcome.REUSED
    assert len(world.builds) == 1  # TensorRT was not asked again


def test_static_inputs_get_min_opt_max_from_the_network_and_dynamic_ones_the_profile(world, models, tmp_path):
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det"), spec(models, "cls"))
    det, cls = world.builds
    assert det["profiles"] == [{"images": ((1, 3, 32, 32),) * 3}]
    assert cls["profiles"] == [{"features": ((1, 64), (8, 64), (32, 64))}]
    recorded = notes_of(summary.by_name()["cls"].entry.path)["optimization_profile"]
    assert recorded == {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}


def test_dynamic_input_without_a_profile_is_refused_by_name(world, models, tmp_path):
    with pytest.raises(BackendError, match=r"backbone cls: ONNX input 'features' has dynamic dims \[-1, 64\]"):
        compile_one(tmp_path / "cache", gpu_host(world), spec(models, "cls", inputs=()))
    assert world.builds == []


def test_external_data_model_builds(world, models, tmp_path):
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "emb"))
    assert summary.built == 1
    assert world.builds[0]["onnx"].endswith("emb.onnx")


def test_manifest_records_enum_names_not_integers(world, models, tmp_path):
    summary = compile_one(tmp_path / "cache", gpu_host(world), spec(models, "det", version_compatible=True))
    notes = notes_of(summary.by_name()["det"].entry.path)
    assert notes["builder_flags"] == ["VERSION_COMPATIBLE"]
    assert notes["hardware_compatibility_level"] == "NONE"
    json.dumps(notes)  # plain JSON all the way


def test_new_tensorrt_version_builds_a_new_engine_instead_of_loading_the_old(models, tmp_path, monkeypatch):
    from fake_tensorrt import FakeWorld
    from trt_helpers import VERSIONS, install_fake

    cache = tmp_path / "cache"
    old = install_fake(monkeypatch, FakeWorld(version=VERSIONS["trt10"]))
    before = compile_one(cache, gpu_host(old), spec(models)).by_name()["det"]
    new = install_fake(monkeypatch, FakeWorld(version=VERSIONS["trt11"]))
    after = compile_one(cache, gpu_host(new), spec(models)).by_name()["det"]
    assert after.outcome is CompileOutcome.BUILT and len(new.builds) == 1
    assert after.entry.path != before.entry.path and Sha256Sidecar.verify(before.entry.path)
