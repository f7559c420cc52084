"""Rules a mutation audit found untested: each test here fails when its rule is broken.

- a TensorRT / TensorRT-RTX workspace change gives a new engine name and a miss;
- every field of the reuse key (schema version, host block, backend, its version) is compared;
- ``keep_foreign`` keeps other hosts' engines;
- GC takes an engine's lock before deleting it, and the size budget never evicts a locked engine;
- doit's checker answers "run the task" (False), never "up to date", when it fails inside;
- a manifest that cannot be decoded (nested too deeply for the JSON decoder) is a miss, not a crash.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from provisioning import BackboneSpec, EngineFilenameSchema, GpuInfo, HostCapabilities, Sha256Sidecar
from provisioning.cache import check_entry, ensure_cache_dir, entry_files
from provisioning.compiler import expected_build_inputs
from provisioning.doit import uptodate
from provisioning.doit.tasks import CHECKER_VALUE, ONNX_DIGEST_VALUE, EngineUpToDate
from provisioning.gc import plan_gc, scan_cache
from provisioning.manifest import (
    MANIFEST_SCHEMA_VERSION,
    explain_mismatch,
    make_manifest,
    manifest_bytes,
    manifest_path_for,
    read_manifest,
)
from tests.conftest import REPO

ONNX_SHA = "ab" * 32
H200 = GpuInfo("NVIDIA H200", "GPU-1", (9, 0), "580.1", 0)
TRT = HostCapabilities("tensorrt", "10.16.1.11", "x86_64", (), H200)
RTX = HostCapabilities("tensorrt-rtx", "1.7.1.116", "x86_64", (), None, ("sm86", "sm89", "sm120"))
CPU = HostCapabilities("onnxruntime", "1.23.2", "x86_64", ("avx2", "fma"))
FOREIGN_CPU = HostCapabilities("onnxruntime", "1.23.2", "aarch64", ("asimd",))


def _spec(**fields) -> BackboneSpec:
    return BackboneSpec(**{"model_name": "det", "onnx_path": Path("/models/det.onnx"), **fields})


def _publish(cache: Path, spec: BackboneSpec, host: HostCapabilities, payload: bytes = b"plan" * 256,
             edit=None) -> Path:
    """A sealed cache entry of ``spec`` built on ``host``; ``edit(manifest)`` alters the recorded manifest."""
    cache.mkdir(parents=True, exist_ok=True)
    engine = cache / EngineFilenameSchema.build(spec, host)
    inputs = expected_build_inputs(spec, host, ONNX_SHA)

    def manifest(sha256: str, size: int) -> dict[Path, bytes]:
        document = make_manifest(model_name=spec.model_name, engine_path=engine, sha256=sha256, size=size,
                                 inputs=inputs, onnx_path=spec.onnx_path, compile_duration_s=0.1)
        if edit is not None:
            edit(document)
        return {manifest_path_for(engine): manifest_bytes(document)}

    Sha256Sidecar.write_atomic_and_sidecar(engine, payload, before_commit=manifest)
    return engine


# --- 2. the workspace is part of a GPU engine's identity ----------------------------------------------------------

@pytest.mark.parametrize("host", [TRT, RTX], ids=["tensorrt", "tensorrt-rtx"])
def test_a_workspace_change_gives_a_new_name_and_a_miss_on_gpu_backends(host: HostCapabilities) -> None:
    small, large = _spec(workspace_mb=1024), _spec(workspace_mb=4096)
    assert EngineFilenameSchema.build(small, host) != EngineFilenameSchema.build(large, host)
    # the digest part of the name is what differs: the readable parts are the same
    assert EngineFilenameSchema.parse(EngineFilenameSchema.build(small, host)).settings_digest != \
        EngineFilenameSchema.parse(EngineFilenameSchema.build(large, host)).settings_digest
    recorded = {"schema_version": MANIFEST_SCHEMA_VERSION,
                "inputs": expected_build_inputs(large, host, ONNX_SHA).as_dict()}
    assert explain_mismatch(recorded, expected_build_inputs(small, host, ONNX_SHA)) == [
        "build setting 'workspace_mb' changed: 4096 -> 1024"]


def test_a_workspace_change_is_a_miss_under_the_old_name_too(tmp_path: Path) -> None:
    """An entry recorded with another workspace (a renamed or copied file) is not reused."""
    engine = _publish(tmp_path, _spec(workspace_mb=4096), TRT)
    smaller = expected_build_inputs(_spec(workspace_mb=2048), TRT, ONNX_SHA)
    check = check_entry(engine, "det", smaller)
    assert not check.hit and check.reasons == ("build setting 'workspace_mb' changed: 4096 -> 2048",)
    assert check_entry(engine, "det", expected_build_inputs(_spec(workspace_mb=4096), TRT, ONNX_SHA)).hit


def test_the_workspace_is_not_part_of_a_cpu_engines_identity() -> None:
    assert EngineFilenameSchema.build(_spec(workspace_mb=1024), CPU) == EngineFilenameSchema.build(_spec(), CPU)


# --- 5. every field of the reuse key is compared --------------------------------------------------------------------

def _set(path: tuple[str, ...], value):
    def edit(document: dict) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


KEY_FIELDS = [
    # (recorded field, the value recorded instead of today's, words the miss must contain)
    (("schema_version",), MANIFEST_SCHEMA_VERSION + 1, "manifest schema"),
    (("inputs", "onnx_sha256"), "cd" * 32, "ONNX bytes changed"),
    (("inputs", "build_settings", "precision"), "fp16", "build setting 'precision' changed"),
    (("inputs", "host", "host_key"), "aarch64-neon-0a0b0c", "host identity 'host_key' changed"),
    (("inputs", "host", "cpu_flags"), ["avx2"], "host identity 'cpu_flags' changed"),
    (("inputs", "host", "machine"), "aarch64", "host identity 'machine' changed"),
    (("inputs", "backend"), "tensorrt", "backend changed"),
    (("inputs", "backend_version"), "1.22.0", "backend_version changed"),
]


@pytest.mark.parametrize("field,value,words", KEY_FIELDS, ids=[".".join(f[0]) for f in KEY_FIELDS])
def test_a_reuse_key_field_that_differs_alone_is_a_miss_naming_it(tmp_path: Path, field, value, words) -> None:
    expected = expected_build_inputs(_spec(), CPU, ONNX_SHA)
    control = _publish(tmp_path / "control", _spec(), CPU)
    assert check_entry(control, "det", expected).hit  # the same entry, unedited, is reused

    engine = _publish(tmp_path / "edited", _spec(), CPU, edit=_set(field, value))
    recorded = read_manifest(engine)
    today = {"schema_version": MANIFEST_SCHEMA_VERSION, "inputs": expected.as_dict()}
    differs = [k for k in ("schema_version", "inputs") if recorded[k] != today[k]]
    assert differs == [field[0]]  # the premise: only that one field differs
    reasons = explain_mismatch(recorded, expected)
    assert len(reasons) == 1 and words in reasons[0], reasons
    check = check_entry(engine, "det", expected)
    assert not check.hit and check.reasons == tuple(reasons)


@pytest.mark.parametrize("host", [TRT, RTX], ids=["tensorrt", "tensorrt-rtx"])
@pytest.mark.parametrize("key", ["host_key", "version_tag", "backend"])
def test_a_gpu_host_block_that_differs_is_a_miss(host: HostCapabilities, key: str) -> None:
    expected = expected_build_inputs(_spec(), host, ONNX_SHA)
    recorded = {"schema_version": MANIFEST_SCHEMA_VERSION, "inputs": copy.deepcopy(expected.as_dict())}
    assert explain_mismatch(recorded, expected) == []
    recorded["inputs"]["host"][key] = "other"
    assert explain_mismatch(recorded, expected) == [f"host identity '{key}' changed: \"other\" -> "
                                                    f"\"{expected.as_dict()['host'][key]}\""]


def test_a_host_block_with_an_extra_or_missing_key_is_a_miss() -> None:
    expected = expected_build_inputs(_spec(), TRT, ONNX_SHA)
    recorded = {"schema_version": MANIFEST_SCHEMA_VERSION, "inputs": copy.deepcopy(expected.as_dict())}
    del recorded["inputs"]["host"]["gpu_name"]
    assert explain_mismatch(recorded, expected) == ["host identity 'gpu_name' changed: null -> \"NVIDIA H200\""]


# --- 3. keep_foreign ------------------------------------------------------------------------------------------------

def _gc_cache(cache: Path) -> dict[str, Path]:
    ensure_cache_dir(cache)
    return {
        "current": _publish(cache, _spec(), CPU),
        "superseded": _publish(cache, _spec(precision="fp16"), CPU),
        "foreign": _publish(cache, _spec(), FOREIGN_CPU),
        "foreign-old": _publish(cache, _spec(precision="fp16"), FOREIGN_CPU),
    }


def _planned(plan) -> set[Path]:
    return {item.engine.path for item in plan.items if item.engine is not None}


def test_keep_foreign_keeps_other_hosts_engines_and_still_collects_this_hosts_garbage(tmp_path: Path) -> None:
    engines = _gc_cache(tmp_path)
    mine = [CPU.identity().host_key]
    current = [engines["current"].name]
    everything = plan_gc(scan_cache(tmp_path), current=current, host_keys=mine)
    assert _planned(everything) == {engines["superseded"], engines["foreign"], engines["foreign-old"]}  # premise

    plan = plan_gc(scan_cache(tmp_path), current=current, host_keys=mine, keep_foreign=True)
    assert _planned(plan) == {engines["superseded"]}
    plan.execute()
    for name in ("current", "foreign", "foreign-old"):
        assert Sha256Sidecar.verify(engines[name]), name
    assert not any(p.exists() for p in entry_files(engines["superseded"]))


# --- 6. GC and the build lock ---------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys
from pathlib import Path
from provisioning.cache import engine_lock
lock = engine_lock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def lock_held_by_another_process(engine: Path) -> Iterator[None]:
    """Another process takes ``engine``'s build lock (as a builder does) until the block ends."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(engine)], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        yield
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_gc_takes_the_lock_before_deleting_and_skips_an_engine_locked_since_the_plan(tmp_path: Path) -> None:
    engines = _gc_cache(tmp_path)
    plan = plan_gc(scan_cache(tmp_path), current=[engines["current"].name], host_keys=[CPU.identity().host_key])
    assert engines["superseded"] in _planned(plan) and not plan.kept_locked  # planned while nobody held it
    with lock_held_by_another_process(engines["superseded"]):  # a build starts between the plan and --apply
        result = plan.execute()
    assert Sha256Sidecar.verify(engines["superseded"])
    assert all(p.exists() for p in entry_files(engines["superseded"])[:3])
    assert result.skipped == (f"{engines['superseded'].name}: a live process holds its lock; kept",)
    assert engines["foreign"] not in [p for p in result.deleted if p.exists()]
    assert not engines["foreign"].exists() and not engines["foreign-old"].exists()  # the others did go


def test_the_size_budget_never_evicts_a_locked_engine_and_says_so(tmp_path: Path) -> None:
    engines = _gc_cache(tmp_path)
    mine, current = [CPU.identity().host_key], [engines["current"].name]
    with lock_held_by_another_process(engines["current"]):
        plan = plan_gc(scan_cache(tmp_path), current=current, host_keys=mine, max_size=0)
        assert engines["current"] not in _planned(plan)
        assert f"{engines['current'].name}: kept over the size budget, locked by a live process" in plan.notes
        assert any("budget cannot be met" in note for note in plan.notes)
        result = plan.execute()
    assert result.skipped == () and Sha256Sidecar.verify(engines["current"])
    # without the lock the same budget evicts it (the rule, not the budget, kept it)
    unlocked = plan_gc(scan_cache(tmp_path), current=current, host_keys=mine, max_size=0)
    assert engines["current"] in _planned(unlocked)


# --- 4. the doit checker never says "up to date" after a failure inside it ------------------------------------------

def _checker_case(tmp_path: Path, host: HostCapabilities = CPU) -> tuple[EngineUpToDate, dict]:
    engine = _publish(tmp_path, _spec(), CPU)
    values = {CHECKER_VALUE: engine.name, ONNX_DIGEST_VALUE: ONNX_SHA}
    return EngineUpToDate(_spec(), host, engine), values


def test_the_checker_says_up_to_date_for_an_intact_entry(tmp_path: Path) -> None:
    checker, values = _checker_case(tmp_path)
    assert checker(None, values) is True  # the control of the tests below


def test_a_checker_whose_entry_check_raises_says_run_the_task(tmp_path: Path, monkeypatch) -> None:
    checker, values = _checker_case(tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("surprise inside check_entry")

    monkeypatch.setattr(uptodate, "check_entry", boom)
    assert checker(None, values) is False


def test_a_checker_whose_verifier_raises_says_run_the_task(tmp_path: Path) -> None:
    checker, values = _checker_case(tmp_path)

    class BrokenVerifier:
        def check(self, path):
            raise OSError(5, "Input/output error", str(path))

    checker.verifier = BrokenVerifier()
    assert checker(None, values) is False


def test_a_checker_whose_host_cannot_be_identified_says_run_the_task(tmp_path: Path) -> None:
    no_gpu = HostCapabilities("tensorrt", "10.16.1.11", "x86_64", (), None)  # identity_for raises HostProbeError
    checker, values = _checker_case(tmp_path, host=no_gpu)
    assert checker(None, values) is False


# --- a manifest the JSON decoder cannot take (defect found while writing these tests) -------------------------------

def test_a_manifest_nested_too_deeply_to_decode_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    engine = _publish(tmp_path, _spec(), CPU)
    manifest_path_for(engine).write_text("[" * 100_000 + "]" * 100_000)  # 200 KB: under the size cap
    assert read_manifest(engine) is None
    check = check_entry(engine, "det", expected_build_inputs(_spec(), CPU, ONNX_SHA))
    assert not check.hit and check.reasons == ("manifest missing or unreadable",)


def test_records_nested_too_deeply_are_ignored_not_a_crash(tmp_path):
    """A hostile .verified record, .inspect record or events.jsonl line is no record (RecursionError caught)."""
    from provisioning.cache import EVENTS_FILE, read_events
    from provisioning.onnxinfo import INSPECT_DIR, _record_path, cached_inspection
    from provisioning.verify import record_path, verify_engine

    bomb = b"[" * 200_000 + b"]" * 200_000
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    record_path(engine).parent.mkdir()
    record_path(engine).write_bytes(bomb)
    assert verify_engine(engine, "stat").ok is False  # no sidecar: not trusted, and no crash
    (tmp_path / EVENTS_FILE).write_bytes(bomb + b"\n" + b'{"outcome": "BUILT"}\n')
    assert read_events(tmp_path) == [{"outcome": "BUILT"}]
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    (tmp_path / INSPECT_DIR).mkdir()
    _record_path(tmp_path, model).write_bytes(bomb)
    assert cached_inspection(model, tmp_path) is None
