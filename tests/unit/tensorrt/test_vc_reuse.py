"""Version-compatible (VC) TensorRT engines: forward-only reuse, and no host overwrites a newer host's engine.

A VC plan loads on the runtime that built it and on any newer one of the same major, never
on an older one. All 10.x hosts share the name ``...trt-10-vc...``; the real compiler with
the signature-checked fake TensorRT at two versions pins the three cases:

- a newer runtime reuses an older builder's engine (no build);
- an older runtime finding a newer builder's engine leaves it alone and keeps its own engine
  under the version-pinned name ``...trt-10.16.1.11-vc...``; neither host rebuilds again;
- an equal runtime reuses it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fake_tensorrt import FakeWorld
from provisioning.cache import check_entry, engine_path_for
from provisioning.compiler import expected_build_inputs
from provisioning.doit.tasks import CHECKER_VALUE, ONNX_DIGEST_VALUE, EngineUpToDate
from provisioning.gc import plan_gc, scan_cache
from provisioning.manifest import (
    MANIFEST_SCHEMA_VERSION,
    NEWER_VC_BUILDER,
    built_by_newer_runtime,
    explain_mismatch,
    read_manifest,
)
from provisioning.schema import EngineFilenameSchema
from provisioning.specs import CompileOutcome
from trt_helpers import VERSIONS, compile_one, gpu_host, install_fake, spec

OLD = VERSIONS["trt10"]  # 10.16.1.11
NEW = "10.17.0.4"


@pytest.fixture
def at(monkeypatch):
    """``at(version)``: the fake TensorRT of that version installed, and a host that runs it."""
    def install(version: str):
        world = install_fake(monkeypatch, FakeWorld(version=version))
        return world, gpu_host(world)
    return install


def _vc(models: Path):
    return spec(models, version_compatible=True)


def _fingerprint(engine: Path) -> tuple[str, str, str]:
    """The engine's bytes, sidecar and manifest digests: what a replacement would change."""
    return tuple(hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in (engine, engine.with_name(engine.name + ".sha256"),
                           engine.with_name(engine.name + ".manifest.json")))


def _built_by(engine: Path) -> str:
    return read_manifest(engine)["inputs"]["backend_version"]


# --- 1. a newer runtime reuses an older builder's VC engine ---------------------------------------------------------

def test_a_newer_runtime_reuses_an_older_builders_vc_engine_without_building(at, models, tmp_path):
    cache = tmp_path / "cache"
    old_world, old_host = at(OLD)
    engine = compile_one(cache, old_host, _vc(models)).results[0].entry.path
    assert ".trt-10-vc." in engine.name and len(old_world.builds) == 1
    before = _fingerprint(engine)

    new_world, new_host = at(NEW)
    result = compile_one(cache, new_host, _vc(models)).results[0]
    assert result.outcome is CompileOutcome.REUSED
    assert new_world.builds == [] and result.entry.path == engine
    assert _fingerprint(engine) == before and _built_by(engine) == OLD  # the old plan serves the new runtime
    assert engine_path_for(cache, _vc(models), new_host) == engine


def test_doits_checker_on_a_newer_runtime_says_an_older_vc_engine_is_up_to_date(at, models, tmp_path):
    cache = tmp_path / "cache"
    _, old_host = at(OLD)
    result = compile_one(cache, old_host, _vc(models)).results[0]
    _, new_host = at(NEW)
    engine = engine_path_for(cache, _vc(models), new_host)
    checker = EngineUpToDate(_vc(models), new_host, engine)
    values = {CHECKER_VALUE: engine.name, ONNX_DIGEST_VALUE: result.entry.inputs["onnx_sha256"]}
    assert checker(None, values) is True


# --- 2. an older runtime never replaces a newer builder's VC engine ------------------------------------------------

def test_an_older_runtime_builds_its_own_pinned_engine_and_leaves_the_newer_one_alone(at, models, tmp_path):
    cache = tmp_path / "cache"
    _, new_host = at(NEW)
    shared = compile_one(cache, new_host, _vc(models)).results[0].entry.path
    before = _fingerprint(shared)

    old_world, old_host = at(OLD)
    result = compile_one(cache, old_host, _vc(models)).results[0]
    pinned = cache / EngineFilenameSchema.version_pinned(shared.name, OLD)
    assert result.outcome is CompileOutcome.BUILT and len(old_world.builds) == 1
    assert result.entry.path == pinned and ".trt-10.16.1.11-vc." in pinned.name
    assert _fingerprint(shared) == before and _built_by(shared) == NEW  # the newer host's engine is untouched
    assert _built_by(pinned) == OLD
    assert any(NEWER_VC_BUILDER in reason and NEW in reason for reason in result.miss_reasons), result.miss_reasons

    # from now on neither host builds: no taking turns at one name
    again = compile_one(cache, old_host, _vc(models)).results[0]
    assert again.outcome is CompileOutcome.REUSED and again.entry.path == pinned and len(old_world.builds) == 1
    new_world, new_host = at(NEW)
    newer = compile_one(cache, new_host, _vc(models)).results[0]
    assert newer.outcome is CompileOutcome.REUSED and newer.entry.path == shared and new_world.builds == []
    assert _fingerprint(shared) == before


def test_the_older_runtime_asks_for_its_pinned_engine_everywhere(at, models, tmp_path):
    """doit's target and checker, status and resolve ask engine_path_for: all name the pinned engine."""
    cache = tmp_path / "cache"
    _, new_host = at(NEW)
    shared = compile_one(cache, new_host, _vc(models)).results[0].entry.path
    _, old_host = at(OLD)
    result = compile_one(cache, old_host, _vc(models)).results[0]
    assert engine_path_for(cache, _vc(models), old_host) == result.entry.path != shared
    checker = EngineUpToDate(_vc(models), old_host, result.entry.path)
    values = {CHECKER_VALUE: result.entry.path.name, ONNX_DIGEST_VALUE: result.entry.inputs["onnx_sha256"]}
    assert checker(None, values) is True
    # and the shared engine, checked from the older host, is a miss that says why
    expected = expected_build_inputs(_vc(models), old_host)
    check = check_entry(shared, "det", expected)
    assert not check.hit and check.reasons[0].startswith(NEWER_VC_BUILDER)


def test_a_newer_engine_published_while_the_older_host_waited_for_the_lock_is_not_replaced(at, models, tmp_path,
                                                                                          monkeypatch):
    """The shared name was free when the older host looked; a newer host built it before the lock was taken."""
    from provisioning import compiler

    cache = tmp_path / "cache"
    _, new_host = at(NEW)
    shared = compile_one(cache, new_host, _vc(models)).results[0].entry.path
    before = _fingerprint(shared)
    monkeypatch.setattr(compiler, "engine_path_for", lambda cache_dir, s, host: cache_dir /
                        EngineFilenameSchema.build(s, host))  # as resolved before the newer host published
    old_world, old_host = at(OLD)
    result = compile_one(cache, old_host, _vc(models)).results[0]
    assert result.outcome is CompileOutcome.BUILT and result.entry.path.name == \
        EngineFilenameSchema.version_pinned(shared.name, OLD)
    assert _fingerprint(shared) == before


def test_gc_on_the_older_host_keeps_the_newer_hosts_shared_engine(at, models, tmp_path):
    cache = tmp_path / "cache"
    _, new_host = at(NEW)
    shared = compile_one(cache, new_host, _vc(models)).results[0].entry.path
    _, old_host = at(OLD)
    pinned = compile_one(cache, old_host, _vc(models)).results[0].entry.path
    host_key = old_host.identity_for(_vc(models)).host_key
    plan = plan_gc(scan_cache(cache), current=[pinned.name], host_keys=[host_key])
    assert {item.engine.path for item in plan.items if item.engine is not None} == set()
    # once the host is upgraded its pinned engine is a superseded build like any other
    plan = plan_gc(scan_cache(cache), current=[shared.name], host_keys=[host_key])
    assert {item.engine.path for item in plan.items if item.engine is not None} == {pinned}


# --- 3. an equal runtime reuses ------------------------------------------------------------------------------------

def test_an_equal_runtime_reuses_the_vc_engine(at, models, tmp_path):
    cache = tmp_path / "cache"
    _, host = at(OLD)
    engine = compile_one(cache, host, _vc(models)).results[0].entry.path
    world, host = at(OLD)  # another host, same version
    result = compile_one(cache, host, _vc(models)).results[0]
    assert result.outcome is CompileOutcome.REUSED and result.entry.path == engine and world.builds == []


# --- the comparison itself (what the remote cache asks of a fetched manifest too) ---------------------------------

def _recorded(models: Path, host, backend_version: str, **spec_fields) -> dict:
    inputs = expected_build_inputs(spec(models, **spec_fields), host, "ab" * 32).as_dict()
    inputs["backend_version"] = backend_version
    return {"schema_version": MANIFEST_SCHEMA_VERSION, "inputs": inputs}


@pytest.mark.parametrize("recorded, today, matches", [
    ("10.16.1.11", "10.17.0.4", True),        # older builder, newer runtime
    ("10.16.1.11", "10.16.1.11", True),       # equal
    ("10.16.1.11", "10.16.1.11.post1", True),  # the same release (a metapackage's .postN)
    ("10.16.1.11", "10.16.1.12", True),       # a newer build number
    ("10.17.0.4", "10.16.1.11", False),       # newer builder: forward only
    ("10.16.2", "10.16.1.11", False),
], ids=["older", "equal", "post-release", "build-number", "newer", "newer-patch"])
def test_a_vc_engine_matches_an_older_or_equal_builder_only(at, models, recorded, today, matches):
    _, host = at(OLD)
    host = type(host)(host.backend, today, host.machine, host.cpu_flags, host.gpu)
    expected = expected_build_inputs(spec(models, version_compatible=True), host, "ab" * 32)
    manifest = _recorded(models, host, recorded, version_compatible=True)
    reasons = explain_mismatch(manifest, expected)
    assert (reasons == []) is matches, reasons
    assert built_by_newer_runtime(manifest, expected) is (not matches)
    if not matches:
        assert reasons == [f"{NEWER_VC_BUILDER} {recorded} (a version-compatible plan loads only on its own or a "
                           f"newer runtime; this host runs {today})"]


def test_a_plain_tensorrt_engine_still_needs_the_exact_version(at, models):
    """Only version-compatible plans load on another runtime: a plain plan of an older version is a miss."""
    _, host = at(NEW)
    expected = expected_build_inputs(spec(models), host, "ab" * 32)
    manifest = _recorded(models, host, OLD)
    manifest["inputs"]["host"]["tensorrt_version"] = OLD
    reasons = explain_mismatch(manifest, expected)
    assert f"backend_version changed: \"{OLD}\" -> \"{NEW}\"" in reasons
    assert not built_by_newer_runtime(_recorded(models, host, "10.99"), expected)


def test_a_vc_engine_of_another_major_is_a_miss_not_a_newer_builder(at, models):
    _, host = at(NEW)
    expected = expected_build_inputs(spec(models, version_compatible=True), host, "ab" * 32)
    manifest = _recorded(models, host, "11.4.0.106", version_compatible=True)
    reasons = explain_mismatch(manifest, expected)
    assert reasons == [f"backend_version changed: \"11.4.0.106\" -> \"{NEW}\""]
    assert not built_by_newer_runtime(manifest, expected)


def test_the_version_pinned_name_round_trips_and_points_back_at_the_shared_one(at, models):
    _, host = at(OLD)
    shared = EngineFilenameSchema.build(_vc(models), host)
    pinned = EngineFilenameSchema.version_pinned(shared, OLD)
    assert EngineFilenameSchema.parse(pinned).version_tag == f"{OLD}-vc"
    assert EngineFilenameSchema.shared_vc_name(pinned) == shared
    assert EngineFilenameSchema.shared_vc_name(shared) is None
    assert EngineFilenameSchema.shared_vc_name(EngineFilenameSchema.build(spec(models), host)) is None
    with pytest.raises(ValueError, match="not the shared version-compatible name"):
        EngineFilenameSchema.version_pinned(pinned, OLD)


def test_a_newer_builders_vc_plan_is_refused_at_load_on_an_older_runtime(at, models, tmp_path):
    from provisioning.backends.tensorrt import load_verified_engine
    from provisioning.errors import BackendError

    cache = tmp_path / "cache"
    at(NEW)
    engine = compile_one(cache, at(NEW)[1], _vc(models)).results[0].entry.path
    at(OLD)  # the host was downgraded, or the engine was copied to an older host
    with pytest.raises(BackendError) as info:
        load_verified_engine(engine)
    message = str(info.value)
    assert f"built by TensorRT {NEW}" in message and f"older runtime {OLD}" in message and "\n" not in message
    at(NEW)
    assert load_verified_engine(engine) is not None  # the runtime that built it (or a newer one) loads it
