"""EngineCompiler: reuse only what verifies and matches today's inputs; build everything else."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from provisioning import (
    CompileOutcome,
    EngineCompiler,
    EngineCompileRequest,
    HostCapabilities,
    Sha256Sidecar,
    build_backbone_specs,
    load_config,
)
from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.cache import read_events
from provisioning.manifest import manifest_path_for
from provisioning.sidecar import is_temp_name


class CountingBackend:
    """The real ONNX Runtime backend, counting how often it is asked to compile."""

    def __init__(self) -> None:
        self.inner = OnnxRuntimeBackend()
        self.calls: list[str] = []

    def compile_engine(self, spec, host, output):
        self.calls.append(spec.model_name)
        self.inner.compile_engine(spec, host, output)


class Boom(Exception):
    pass


class FailingBackend:
    """Writes part of a file into scratch, then fails the way a crashing compiler would."""

    def compile_engine(self, spec, host, output):
        (output.scratch_dir / "partial.plan").write_bytes(b"half")
        raise Boom("the builder ran out of memory")


HOST = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2", "fma"))


@pytest.fixture
def setup(corpus_yaml):
    config = load_config(corpus_yaml)
    specs = build_backbone_specs(config, "onnxruntime")
    return config, specs


def _request(config, specs, host=HOST):
    return EngineCompileRequest(backbones=specs, cache_dir=config.cache_dir, host=host)


def test_miss_builds_then_hit_reuses_without_calling_the_backend(setup):
    config, specs = setup
    backend = CountingBackend()
    compiler = EngineCompiler(backend)
    first = compiler.compile_engines_for_corpus(_request(config, specs))
    assert [r.outcome for r in first] == [CompileOutcome.BUILT] * 3
    assert all(isinstance(r.compile_duration_s, float) for r in first)
    assert (first.built, first.reused) == (3, 0)
    second = compiler.compile_engines_for_corpus(_request(config, specs))
    assert [r.outcome for r in second] == [CompileOutcome.REUSED] * 3
    assert all(r.compile_duration_s is None for r in second)
    assert backend.calls == ["det", "cls", "emb"]
    assert [r.entry.path for r in first] == [r.entry.path for r in second]
    for result in second:
        assert Sha256Sidecar.verify(result.entry.path)
        assert result.entry.sha256 == Sha256Sidecar.read(result.entry.path).sha256


def _rebuilds_after(setup, damage, specs_change=None, host_after=HOST):
    config, specs = setup
    backend = CountingBackend()
    compiler = EngineCompiler(backend)
    first = compiler.compile_engines_for_corpus(_request(config, specs[:1]))
    damage(first.results[0].entry.path)
    new_specs = specs_change(specs[:1]) if specs_change else specs[:1]
    again = compiler.compile_engines_for_corpus(_request(config, new_specs, host_after))
    assert again.results[0].outcome is CompileOutcome.BUILT
    assert backend.calls == ["det", "det"]
    assert Sha256Sidecar.verify(again.results[0].entry.path)
    return first.results[0], again.results[0]


def test_missing_sidecar_rebuilds(setup):
    _, result = _rebuilds_after(setup, lambda p: Sha256Sidecar.path_for(p).unlink())
    assert "sidecar missing" in result.miss_reasons


def test_mismatched_sidecar_rebuilds(setup):
    def damage(p):
        Sha256Sidecar.path_for(p).write_text("0" * 64 + "  " + p.name + "\n")
    _, result = _rebuilds_after(setup, damage)
    assert any("do not match the sidecar" in r for r in result.miss_reasons)


def test_truncated_engine_rebuilds(setup):
    _rebuilds_after(setup, lambda p: p.write_bytes(p.read_bytes()[:100]))


def test_changed_onnx_bytes_rebuild_at_the_same_path(setup):
    config, specs = setup

    def damage(_):
        # same graph, different weights: the classic stale-engine bug
        import onnx
        from onnx import numpy_helper
        model = onnx.load(specs[0].onnx_path)
        w = numpy_helper.to_array(model.graph.initializer[0]) * 2
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, model.graph.initializer[0].name))
        onnx.save(model, specs[0].onnx_path)

    first, again = _rebuilds_after(setup, damage)
    assert again.entry.path == first.entry.path
    assert again.miss_reasons == ("ONNX bytes changed (sha256 differs)",)


def test_changed_build_setting_rebuilds_at_a_new_path(setup):
    def change(specs):
        return (dataclasses.replace(specs[0], precision="int8"),)
    first, again = _rebuilds_after(setup, lambda p: None, change)
    assert again.entry.path != first.entry.path and ".int8." in again.entry.path.name


def test_changed_host_rebuilds_and_leaves_old_files_byte_identical(setup):
    config = setup[0]
    before = {}

    def snapshot(p):
        before.update({f: f.read_bytes() for f in config.cache_dir.iterdir() if f.is_file() and f.name != "events.jsonl"})

    other = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2", "fma", "avx512f"))
    first, again = _rebuilds_after(setup, snapshot, host_after=other)
    assert again.entry.path != first.entry.path
    for path, content in before.items():
        assert path.read_bytes() == content


def test_manifest_records_the_build_inputs(setup):
    config, specs = setup
    result = EngineCompiler(CountingBackend()).compile_engines_for_corpus(_request(config, specs[2:])).results[0]
    import json
    manifest = json.loads(manifest_path_for(result.entry.path).read_text())
    assert manifest["inputs"]["backend"] == "onnxruntime"
    assert manifest["inputs"]["build_settings"]["precision"] == "int8"
    assert manifest["inputs"]["host"]["cpu_flags"] == ["avx2", "fma"]
    assert manifest["engine"]["sha256"] == result.entry.sha256
    assert "int8" in manifest["build"]["notes"]["precision_mode"]


def test_backend_failure_logs_error_class_reraises_and_publishes_nothing(setup, caplog):
    config, specs = setup
    compiler = EngineCompiler(FailingBackend())
    with caplog.at_level(logging.ERROR, logger="provisioning"):
        with pytest.raises(Boom, match="out of memory"):
            compiler.compile_engines_for_corpus(_request(config, specs[:1]))
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert record.error_class == "Boom" and record.model_name == "det"
    leftovers = [p.name for p in config.cache_dir.iterdir() if p.name not in ("events.jsonl", ".locks")]
    assert leftovers == []
    assert read_events(config.cache_dir)[-1]["outcome"] == "FAILED"
    assert read_events(config.cache_dir)[-1]["error_class"] == "Boom"


def test_backend_failure_keeps_the_previously_published_engine(setup):
    config, specs = setup
    good = EngineCompiler(CountingBackend()).compile_engines_for_corpus(_request(config, specs[:1])).results[0]
    content = good.entry.path.read_bytes()
    Sha256Sidecar.path_for(good.entry.path).unlink()  # force a rebuild attempt
    Sha256Sidecar.write_atomic_and_sidecar(good.entry.path, content)  # restore, then make the manifest stale
    manifest = manifest_path_for(good.entry.path)
    manifest.write_text(manifest.read_text().replace('"precision": "fp32"', '"precision": "fp16"'))
    with pytest.raises(Boom):
        EngineCompiler(FailingBackend()).compile_engines_for_corpus(_request(config, specs[:1]))
    assert good.entry.path.read_bytes() == content and Sha256Sidecar.verify(good.entry.path)
    assert not [p for p in config.cache_dir.iterdir() if is_temp_name(p.name)]


def test_symlink_planted_at_engine_path_is_not_followed(setup, tmp_path):
    config, specs = setup
    first = EngineCompiler(CountingBackend()).compile_engines_for_corpus(_request(config, specs[:1])).results[0]
    outside = tmp_path / "outside.engine"
    original = first.entry.path.read_bytes()
    outside.write_bytes(original)
    first.entry.path.unlink()
    first.entry.path.symlink_to(outside)
    again = EngineCompiler(CountingBackend()).compile_engines_for_corpus(_request(config, specs[:1])).results[0]
    assert again.outcome is CompileOutcome.BUILT
    assert any("symlink" in r for r in again.miss_reasons)
    assert not again.entry.path.is_symlink()
    assert outside.read_bytes() == original  # never written through the link


def test_onnx_disappearing_before_the_build_is_a_clear_error(setup):
    from provisioning import ConfigError
    config, specs = setup
    os.unlink(specs[0].onnx_path)
    with pytest.raises(ConfigError, match="disappeared"):
        EngineCompiler(CountingBackend()).compile_engines_for_corpus(_request(config, specs[:1]))
    assert [p.name for p in config.cache_dir.iterdir() if p.name.endswith(".engine")] == []


def test_events_log_one_line_per_backbone(setup):
    config, specs = setup
    compiler = EngineCompiler(CountingBackend())
    compiler.compile_engines_for_corpus(_request(config, specs))
    compiler.compile_engines_for_corpus(_request(config, specs))
    events = read_events(config.cache_dir)
    assert [e["outcome"] for e in events] == ["BUILT"] * 3 + ["REUSED"] * 3
    for event in events:
        assert {"time", "model_name", "outcome", "engine", "compile_duration_s", "error_class", "host_key",
                "pid"} <= set(event)
    assert events[3]["compile_duration_s"] is None and events[0]["compile_duration_s"] >= 0


def test_unwritable_cache_folder_is_a_clear_error(setup, tmp_path):
    from provisioning import CacheError
    if os.geteuid() == 0:
        blocker = tmp_path / "file-not-folder"
        blocker.write_text("x")
        cache = blocker / "cache"
    else:  # pragma: no cover - non-root runs
        cache = tmp_path / "ro"
        cache.mkdir(mode=0o500)
    config, specs = setup
    with pytest.raises(CacheError, match="cache"):
        EngineCompiler(CountingBackend()).compile_engines_for_corpus(
            EngineCompileRequest(backbones=specs, cache_dir=cache, host=HOST))


def test_the_domain_records_live_below_the_compiler():
    """specs.py imports nothing that imports the compiler: backends, schema and host depend on it one way."""
    import ast

    import provisioning.specs as specs

    tree = ast.parse(open(specs.__file__).read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "compiler" not in imported
    from provisioning import BackboneSpec, EngineCompileRequest
    from provisioning.compiler import BackboneSpec as old_name

    assert BackboneSpec is old_name is specs.BackboneSpec and EngineCompileRequest is specs.EngineCompileRequest
    for module in ("schema", "host", "backends/base", "backends/tensorrt", "backends/onnxruntime"):
        source = open(specs.__file__.replace("specs.py", module + ".py")).read()
        assert "compiler import" not in source, module
