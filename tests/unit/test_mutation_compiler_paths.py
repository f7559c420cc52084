"""EngineCompiler behaviour the full mutation run of compiler.py found unpinned (benchmarks/mutation.sh).

Each test fails on a user-visible change: the event times in events.jsonl, the manifest a
build writes, the scratch folder a backend gets, what happens to the file a backend hands
over, the miss and validate records, external weights in the reuse key, and what a fetch
from a real file:// remote records.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import onnx
import pytest

from provisioning import CompileOutcome, EngineCompiler, EngineCompileRequest, build_backbone_specs, load_config
from provisioning import compiler as compiler_module
from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.cache import read_events
from provisioning.errors import CacheError, ConfigError
from provisioning.host import HostCapabilities
from provisioning.manifest import read_manifest
from provisioning.remote import make_remote_cache
from provisioning.sidecar import is_temp_name, temp_owner_pid
from tests.conftest import CORPUS, DEFAULT_BACKBONES, write_corpus_yaml
from tests.unit.test_mutation_compiler import NoValidation, _run, _specs, logged  # noqa: F401

HOST = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2", "fma"))


class _Clock:
    """``time`` as the compiler module sees it, with a fixed wall clock (monotonic stays real)."""

    def __init__(self, now: float) -> None:
        self._now = now

    def time(self) -> float:
        return self._now

    def __getattr__(self, name):
        return getattr(time, name)


def test_event_times_are_utc_with_the_milliseconds_of_the_clock(corpus_dir, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # localtime 9 hours off UTC: an event in local time shows
    time.tzset()
    try:
        monkeypatch.setattr(compiler_module, "time", _Clock(1764590400.123))
        config, specs = _specs(corpus_dir)
        before = time.gmtime()
        _run(config, specs)
        after = time.gmtime()
    finally:
        monkeypatch.undo()
        time.tzset()
    (event,) = read_events(config.cache_dir)
    stamp, millis = event["time"][:-5], event["time"][-4:]
    assert millis == "123Z", event["time"]
    allowed = {time.strftime("%Y-%m-%dT%H:%M:%S", t) for t in (before, after)}
    assert stamp in allowed or before <= time.strptime(stamp, "%Y-%m-%dT%H:%M:%S") <= after, (stamp, allowed)


def test_a_build_records_its_manifest_and_duration_as_written(corpus_dir):
    class Timed(NoValidation):
        def compile_engine(self, spec, host, output):
            time.sleep(0.0567)
            super().compile_engine(spec, host, output)

    config, specs = _specs(corpus_dir)
    started = time.monotonic()
    result = _run(config, specs, Timed())
    elapsed = time.monotonic() - started
    on_disk = read_manifest(result.entry.path)
    assert result.entry.manifest == on_disk  # the result carries the manifest it published
    assert on_disk["model_name"] == "det"
    assert on_disk["build"]["onnx_path"] == str(specs[0].onnx_path)
    duration = on_disk["build"]["compile_duration_s"]
    assert isinstance(duration, float) and 0.05 <= duration <= elapsed
    assert duration == round(duration, 3) and duration == round(result.compile_duration_s, 3)
    assert round(duration * 1000) == pytest.approx(duration * 1000, abs=1e-6)  # three decimals, no more


class _Recording(NoValidation):
    """The real backend, recording the scratch folder it was given."""

    def __init__(self):
        super().__init__()
        self.scratch = None

    def compile_engine(self, spec, host, output):
        self.scratch = output.scratch_dir
        assert output.scratch_dir.is_dir()
        super().compile_engine(spec, host, output)


def test_the_backend_gets_a_private_scratch_folder_in_the_cache_that_gc_recognises(corpus_dir):
    config, specs = _specs(corpus_dir)
    backend = _Recording()
    result = _run(config, specs, backend)
    scratch = backend.scratch
    assert scratch.parent == config.cache_dir  # same file system: the engine is renamed, not copied
    assert is_temp_name(scratch.name) and temp_owner_pid(scratch.name) == os.getpid()  # gc and Ctrl-C clean it
    assert scratch.name.startswith(f".{result.entry.file_name}.{os.getpid()}.")
    assert not scratch.exists()  # removed after the build


def test_a_scratch_folder_that_cannot_be_made_is_one_cache_error_naming_the_backbone(corpus_dir, monkeypatch):
    config, specs = _specs(corpus_dir)
    config.cache_dir.mkdir(parents=True, exist_ok=True)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compiler_module.tempfile, "mkdtemp", full)
    with pytest.raises(CacheError) as caught:
        _run(config, specs)
    assert str(caught.value).startswith("backbone det: cannot write det.")
    assert "(No space left on device); free disk space" in str(caught.value)


def test_a_backend_that_removes_its_scratch_folder_still_publishes(corpus_dir):
    class Tidy(NoValidation):
        def compile_engine(self, spec, host, output):
            super().compile_engine(spec, host, output)
            shutil.rmtree(output.scratch_dir)

    config, specs = _specs(corpus_dir)
    result = _run(config, specs, Tidy())
    assert result.outcome is CompileOutcome.BUILT and result.entry.path.is_file()


def test_a_file_in_scratch_is_moved_into_place_and_a_file_elsewhere_is_copied(corpus_dir, tmp_path):
    seen = {}

    class Handing(NoValidation):
        def __init__(self, where):
            super().__init__()
            self.where = where

        def compile_engine(self, spec, host, output):
            folder = output.scratch_dir if self.where == "scratch" else tmp_path / "own"
            folder.mkdir(exist_ok=True)
            blob = folder / "engine.bin"
            blob.write_bytes(b"plan bytes " * 1000)
            seen[self.where] = (blob, os.stat(blob).st_ino)
            output.write(blob)

    config, specs = _specs(corpus_dir)
    moved = _run(config, specs, Handing("scratch"))
    assert os.stat(moved.entry.path).st_ino == seen["scratch"][1]  # renamed: no second copy of the bytes
    shutil.rmtree(config.cache_dir)
    copied = _run(config, specs, Handing("elsewhere"))
    blob, inode = seen["elsewhere"]
    assert blob.read_bytes() == b"plan bytes " * 1000  # the backend's own file is left where it was
    assert os.stat(copied.entry.path).st_ino != inode
    assert copied.entry.path.read_bytes() == blob.read_bytes()


def test_the_miss_and_validate_records_carry_their_fields(corpus_dir, logged):  # noqa: F811
    config, specs = _specs(corpus_dir)
    built = _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    _run(config, specs)
    (miss,) = [r for r in logged.records if getattr(r, "event", None) == "miss"]
    assert miss.getMessage() == f"miss det: {'; '.join(built.miss_reasons)}"
    assert (miss.model_name, miss.reasons) == ("det", list(built.miss_reasons))
    (validating,) = [r for r in logged.records if getattr(r, "event", None) == "validate"]
    assert validating.getMessage() == "validating det: no validation recorded for this engine"
    assert (validating.model_name, validating.reason) == ("det", "no validation recorded for this engine")


def test_two_reasons_are_joined_with_a_semicolon(corpus_dir, logged):  # noqa: F811
    from provisioning.manifest import manifest_path_for

    config, specs = _specs(corpus_dir)
    built = _run(config, specs)
    path = manifest_path_for(built.entry.path)
    document = json.loads(path.read_text())
    document["inputs"]["onnx_sha256"] = "0" * 64
    document["inputs"]["backend_version"] = "0.0.1"
    path.write_text(json.dumps(document))
    _run(config, specs)
    miss = [r for r in logged.records if getattr(r, "event", None) == "miss"][-1]
    assert len(miss.reasons) >= 2, miss.reasons
    assert miss.getMessage() == "miss det: " + "; ".join(miss.reasons)


def _external_copy(corpus_dir: Path) -> Path:
    model = onnx.load(str(CORPUS / "models" / "det.onnx"))
    target = corpus_dir / "models" / "det_ext.onnx"
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="det_ext.data", size_threshold=0)
    return target


def test_changed_external_weights_rebuild_the_engine(corpus_dir):
    _external_copy(corpus_dir)
    config, specs = _specs(corpus_dir, onnx="models/det_ext.onnx")
    assert specs[0].external_data, "the copy keeps its weights outside the .onnx"
    first = _run(config, specs)
    data = corpus_dir / "models" / "det_ext.data"
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0x01
    data.write_bytes(bytes(blob))
    second = _run(config, specs)
    assert second.outcome is CompileOutcome.BUILT, second.miss_reasons
    assert second.entry.inputs["onnx_sha256"] != first.entry.inputs["onnx_sha256"]


def test_an_unreadable_external_weights_file_is_named(corpus_dir):
    config, specs = _specs(corpus_dir)
    data = str(specs[0].onnx_path) + ".data"

    def unreadable(spec):
        raise PermissionError(13, "Permission denied", data)

    with pytest.raises(ConfigError) as caught:
        _run(config, specs, onnx_sha256=unreadable)
    assert str(caught.value) == f"backbone det: cannot read {data} (Permission denied)"


# --- a fetch from a real file:// remote, through the compiler ------------------------------------

def _host_config(tmp_path: Path, name: str, remote: Path, validate=None) -> tuple:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    backbone = {**DEFAULT_BACKBONES[0], "onnx": str(CORPUS / "models" / "det.onnx")}
    if validate is not None:
        backbone["validate"] = validate
    path = write_corpus_yaml(folder, [backbone], remote={
        "url": f"file://{remote}", "signing_key": {"env": "PROVISIONING_TEST_KEY", "id": "k1"}, "timeout_s": 3})
    config = load_config(path)
    return config, build_backbone_specs(config, "onnxruntime")


def _compile(config, specs, backend=None):
    """One backbone through an EngineCompiler with the config's real file:// remote."""
    request = EngineCompileRequest(backbones=specs, cache_dir=config.cache_dir, host=HOST)
    compiler = EngineCompiler(backend or OnnxRuntimeBackend(), remote=make_remote_cache(config))
    return compiler.compile_engines_for_corpus(request).results[0]


def test_a_fetched_engine_is_reused_and_its_event_says_from_where(tmp_path, monkeypatch, logged):  # noqa: F811
    monkeypatch.setenv("PROVISIONING_TEST_KEY", "a shared secret for this test only")
    remote = tmp_path / "bucket"
    built = _compile(*_host_config(tmp_path, "a", remote))
    config, specs = _host_config(tmp_path, "b", remote)
    fetched = _compile(config, specs)
    assert fetched.outcome is CompileOutcome.REUSED and fetched.source == "remote"
    assert fetched.entry.sha256 == built.entry.sha256 and fetched.model_name == "det"
    assert fetched.miss_reasons == ("no engine in the cache",)
    (event,) = read_events(config.cache_dir)
    assert event["model_name"] == "det" and event["engine"] == fetched.entry.file_name
    assert event["source"] == "remote" and event["outcome"] == "REUSED"
    assert event["host_key"] == HOST.identity_for(specs[0]).host_key
    assert event["fetch_bytes"] == built.entry.size
    assert event["fetch_key_id"] == "k1"
    seconds = event["fetch_seconds"]
    assert isinstance(seconds, float) and 0 <= seconds < 30 and seconds == round(seconds, 3)
    assert event["miss_reasons"] == ["no engine in the cache"]


def test_a_remote_entry_that_does_not_verify_names_the_backbone_it_builds(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROVISIONING_TEST_KEY", "a shared secret for this test only")
    remote = tmp_path / "bucket"
    _compile(*_host_config(tmp_path, "a", remote))
    (record,) = list(remote.rglob("commit/k1"))
    record.write_bytes(record.read_bytes().replace(b"k1", b"k2", 1)[:-3] + b"xx\n")
    config, specs = _host_config(tmp_path, "b", remote)
    with caplog.at_level(logging.WARNING, logger="provisioning"):
        result = _compile(config, specs)
    assert result.outcome is CompileOutcome.BUILT
    discards = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "remote_discard"]
    assert discards and all(line.endswith("; building det locally") for line in discards), discards


def test_a_heartbeat_before_any_progress_says_starting(corpus_dir, logged):  # noqa: F811
    class Quiet(NoValidation):
        def compile_engine(self, spec, host, output):
            time.sleep(0.35)
            super().compile_engine(spec, host, output)

    config, specs = _specs(corpus_dir)
    _run(config, specs, Quiet(), heartbeat_s=0.1)
    beats = [r for r in logged.records if getattr(r, "event", None) == "heartbeat"]
    assert beats and beats[0].getMessage() == "building det: starting, 0 s elapsed"
    assert beats[0].phase == "starting"


def test_the_default_heartbeat_interval_is_the_documented_five_seconds(corpus_dir, monkeypatch):
    intervals = []

    class Recorded(compiler_module._Heartbeat):
        def __init__(self, model_name, interval_s):
            intervals.append(interval_s)
            super().__init__(model_name, interval_s)

    monkeypatch.setattr(compiler_module, "_Heartbeat", Recorded)
    config, specs = _specs(corpus_dir)
    _run(config, specs)  # a compiler made without heartbeat_s
    assert intervals == [5.0]
    docs = (Path(__file__).resolve().parents[2] / "docs" / "doit.md").read_text()
    assert "every 5 s" in docs


def test_a_validated_engine_is_reused_without_taking_the_build_lock(corpus_dir, monkeypatch):
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    _run(config, specs)
    taken = []
    real = compiler_module.engine_lock

    def spy(path):
        taken.append(path)
        return real(path)

    monkeypatch.setattr(compiler_module, "engine_lock", spy)
    result = _run(config, specs)
    assert result.outcome is CompileOutcome.REUSED
    assert taken == []  # a reuse never waits on (or blocks) a builder of the same engine


def test_a_revalidated_engine_reports_its_backbone_engine_and_host(corpus_dir):
    config, specs = _specs(corpus_dir)
    _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    result = _run(config, specs)
    assert result.outcome is CompileOutcome.REUSED and result.model_name == "det"
    event = read_events(config.cache_dir)[-1]
    assert (event["model_name"], event["engine"], event["outcome"]) == ("det", result.entry.file_name, "REUSED")
    assert event["host_key"] == HOST.identity_for(specs[0]).host_key


def test_changed_criteria_are_the_reason_a_validated_engine_is_validated_again(corpus_dir, logged):  # noqa: F811
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 2})
    result = _run(config, specs)
    assert result.outcome is CompileOutcome.REUSED
    assert result.miss_reasons == ("validation criteria changed since it was validated",)
    (validating,) = [r for r in logged.records if getattr(r, "event", None) == "validate"]
    assert validating.reason == "validation criteria changed since it was validated"


class _HostRecording(OnnxRuntimeBackend):
    """The real backend, recording the host each validation was asked for (or failing it)."""

    def __init__(self, fail: BaseException | None = None):
        super().__init__()
        self.hosts = []
        self.fail = fail

    def validate_engine(self, spec, host, engine):
        self.hosts.append(host)
        if self.fail is not None:
            raise self.fail
        return super().validate_engine(spec, host, engine)


def test_a_fetched_engine_is_validated_here_under_todays_criteria(tmp_path, monkeypatch, logged):  # noqa: F811
    monkeypatch.setenv("PROVISIONING_TEST_KEY", "a shared secret for this test only")
    remote = tmp_path / "bucket"
    built = _compile(*_host_config(tmp_path, "a", remote))
    config, specs = _host_config(tmp_path, "b", remote, validate={"runs": 1})
    backend = _HostRecording()
    fetched = _compile(config, specs, backend)
    assert fetched.outcome is CompileOutcome.REUSED and fetched.source == "remote", fetched
    assert fetched.entry.sha256 == built.entry.sha256 and backend.hosts == [HOST]
    assert read_manifest(fetched.entry.path)["build"]["notes"]["validated"] is True
    # a third host with the same criteria finds the validation record already there: no second run
    config, specs = _host_config(tmp_path, "c", remote, validate={"runs": 1})
    third = _HostRecording()
    again = _compile(config, specs, third)
    assert again.outcome is CompileOutcome.REUSED and again.source == "remote"
    assert third.hosts in ([], [HOST])  # [] when the validated manifest was what got shared


def test_a_fetched_engine_failing_todays_criteria_is_built_here(tmp_path, monkeypatch):
    from provisioning.errors import ValidationFailed

    monkeypatch.setenv("PROVISIONING_TEST_KEY", "a shared secret for this test only")
    remote = tmp_path / "bucket"
    _compile(*_host_config(tmp_path, "a", remote))
    config, specs = _host_config(tmp_path, "b", remote, validate={"runs": 1})
    backend = _HostRecording(ValidationFailed("backbone det: validation failed (max abs diff 1.0 > atol 0.001)"))
    result = _compile(config, specs, backend)
    assert result.outcome is CompileOutcome.BUILT
    assert result.miss_reasons == ("no engine in the cache",)


def test_validation_that_cannot_run_on_a_fetched_engine_fails_with_a_remote_event(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISIONING_TEST_KEY", "a shared secret for this test only")
    remote = tmp_path / "bucket"
    _compile(*_host_config(tmp_path, "a", remote))
    config, specs = _host_config(tmp_path, "b", remote, validate={"runs": 1})
    with pytest.raises(RuntimeError, match="no inference session here"):
        _compile(config, specs, _HostRecording(RuntimeError("no inference session here")))
    (event,) = read_events(config.cache_dir)
    assert (event["outcome"], event["source"], event["error_class"]) == ("FAILED", "remote", "RuntimeError")
    assert event["host_key"] == HOST.identity_for(specs[0]).host_key


def test_local_revalidation_asks_the_backend_for_this_host_and_a_failure_names_it(corpus_dir):
    config, specs = _specs(corpus_dir)
    _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    backend = _HostRecording()
    assert _run(config, specs, backend).outcome is CompileOutcome.REUSED
    assert backend.hosts == [HOST]
    config, specs = _specs(corpus_dir, validate={"runs": 2})
    with pytest.raises(RuntimeError, match="no inference session here"):
        _run(config, specs, _HostRecording(RuntimeError("no inference session here")))
    event = read_events(config.cache_dir)[-1]
    assert (event["outcome"], event["source"], event["model_name"]) == ("FAILED", "local", "det")
    assert event["host_key"] == HOST.identity_for(specs[0]).host_key


def test_an_engine_validated_by_another_process_meanwhile_is_not_validated_again(corpus_dir):
    """The first look (hashed ahead) says stale; under the lock the entry checks out, validated: reuse it."""
    from provisioning.sidecar import Verification

    config, specs = _specs(corpus_dir, validate={"runs": 1})
    _run(config, specs)
    backend = _HostRecording()
    stale = lambda path: Verification(False, "engine changed while it was hashed")  # noqa: E731
    result = _run(config, specs, backend, verify=stale)
    assert result.outcome is CompileOutcome.REUSED
    assert backend.hosts == []  # its validation record already covers today's criteria


# --- issue 22: the lock-wait line, the FAILED heading in the build log, heartbeat rounding -------------

def test_a_build_waiting_on_the_lock_says_for_which_backbone_and_beats_at_its_interval(corpus_dir, logged):  # noqa: F811
    import threading

    from provisioning.cache import engine_lock

    config, specs = _specs(corpus_dir)
    engine = _run(config, specs).entry.path
    engine.unlink()  # a miss: the next run builds, under the lock
    held, done = threading.Event(), threading.Event()

    def holder():  # another builder (a lock object of its own, as another process has)
        lock = engine_lock(engine)
        with lock:
            held.set()
            done.wait(10)
            deadline = time.monotonic() + 3  # held until the waiter has beaten once (or 3 s)
            while time.monotonic() < deadline and not any(
                    getattr(r, "phase", None) == "waiting for the build lock" for r in list(logged.records)):
                time.sleep(0.02)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    try:
        done.set()
        result = _run(config, specs, heartbeat_s=0.1)
    finally:
        done.set()
        thread.join()
    assert result.outcome is CompileOutcome.BUILT
    waits = [r for r in logged.records if getattr(r, "event", None) in ("lock_wait", "heartbeat")]
    lines = [r.getMessage() for r in waits]
    assert lines[0] == "waiting for det: another build holds its lock (holder unknown)"
    assert waits[0].model_name == "det"
    assert "building det: waiting for the build lock, 0 s elapsed" in lines[1:]  # every 0.1 s, not every 5 s


def test_a_long_failure_is_written_under_its_heading_and_only_a_written_log_is_named(corpus_dir, logged):  # noqa: F811
    from provisioning.failtext import MAX_REASON, build_log_for

    class Fails(NoValidation):
        def compile_engine(self, spec, host, output):
            raise RuntimeError("x" * (MAX_REASON + 20) + "\nthe rest")

    config, specs = _specs(corpus_dir)
    name = _run(config, specs).entry.file_name
    (config.cache_dir / name).unlink()
    log_path = build_log_for(config.cache_dir, name)
    with pytest.raises(RuntimeError):
        _run(config, specs, Fails())
    assert log_path.read_text().startswith("# FAILED det: RuntimeError\n" + "x" * (MAX_REASON + 20) + "\nthe rest\n")
    assert read_events(config.cache_dir)[-1]["reason"].endswith(f"(the whole text is in {log_path.name})")
    log_path.unlink()
    log_path.mkdir()  # the log cannot be written: the reason must not point at it
    with pytest.raises(RuntimeError):
        _run(config, specs, Fails())
    assert read_events(config.cache_dir)[-1]["reason"].endswith("(the rest is not shown)")


def test_a_heartbeat_gives_its_elapsed_seconds_to_one_decimal(logged):  # noqa: F811
    beat = compiler_module._Heartbeat("det", 0.05)
    beat.started -= 1.234  # hundredths that one-decimal rounding drops
    with beat:
        time.sleep(0.13)
    values = [r.elapsed_s for r in logged.records if getattr(r, "event", None) == "heartbeat"]
    assert values and all(v == round(v, 1) for v in values), values
