"""EngineCompiler paths no in-process test reached: revalidation, write errors, heartbeats, the result lines.

Found by mutation testing (benchmarks/mutation.sh): ``_revalidate``, ``_write_error`` and
``_flushing`` had no test at all; each test here fails when a user-visible line, event or
decision of the compiler changes.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time

import pytest

from provisioning import CompileOutcome, EngineCompiler, EngineCompileRequest, build_backbone_specs, load_config
from provisioning import compiler as compiler_module
from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.cache import read_events
from provisioning.compiler import LOGGED_MARK
from provisioning.errors import BackendError, CacheError, ValidationFailed
from provisioning.host import HostCapabilities
from provisioning.manifest import read_manifest
from provisioning.qualification import validation_of
from provisioning.sidecar import Sha256Sidecar
from tests.conftest import DEFAULT_BACKBONES, recording, write_corpus_yaml

HOST = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2", "fma"))


@pytest.fixture
def logged():
    """The compiler's records, whatever handlers and levels earlier tests left configured."""
    with recording("provisioning.compiler") as handler:
        yield handler


def _specs(corpus_dir, **det):
    path = write_corpus_yaml(corpus_dir, [{**DEFAULT_BACKBONES[0], **det}])
    config = load_config(path)
    return config, build_backbone_specs(config, "onnxruntime")


def _run(config, specs, backend=None, **kwargs):
    request = EngineCompileRequest(backbones=specs, cache_dir=config.cache_dir, host=HOST)
    return EngineCompiler(backend or OnnxRuntimeBackend(), **kwargs).compile_engines_for_corpus(request).results[0]


class NoValidation:
    """The real backend without validate_engine (a backend that validates only while building)."""

    def __init__(self):
        self.inner = OnnxRuntimeBackend()
        self.calls = 0

    def compile_engine(self, spec, host, output):
        self.calls += 1
        self.inner.compile_engine(spec, host, output)


class FailsValidation(NoValidation):
    def __init__(self, exc):
        super().__init__()
        self.exc = exc

    def validate_engine(self, spec, host, engine):
        raise self.exc


def test_a_cached_engine_is_validated_in_place_when_criteria_are_added(corpus_dir, logged):
    config, specs = _specs(corpus_dir)
    built = _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    result = _run(config, specs)
    assert result.outcome is CompileOutcome.REUSED and result.entry.path == built.entry.path
    assert result.miss_reasons == ("no validation recorded for this engine",)
    assert "validating det: no validation recorded for this engine" in logged.at_least()
    manifest = read_manifest(result.entry.path)
    assert validation_of(manifest)["passed"] is True and result.entry.manifest == manifest
    event = read_events(config.cache_dir)[-1]
    assert event["outcome"] == "REUSED" and event["validation"] == validation_of(manifest)
    assert event["miss_reasons"] == ["no validation recorded for this engine"] and event["source"] == "local"
    again = _run(config, specs)  # validated now: a plain reuse
    assert again.outcome is CompileOutcome.REUSED and again.miss_reasons == ()


def test_a_backend_that_validates_only_while_building_rebuilds_and_says_why(corpus_dir, logged):
    config, specs = _specs(corpus_dir)
    _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    backend = NoValidation()
    result = _run(config, specs, backend)
    assert result.outcome is CompileOutcome.BUILT and backend.calls == 1
    assert result.miss_reasons == ("no validation recorded for this engine; this backend validates only while building",)
    assert "miss det: no validation recorded for this engine; this backend validates only while building" \
        in logged.at_least()
    assert validation_of(read_manifest(result.entry.path))["passed"] is True


def test_a_cached_engine_failing_new_criteria_is_rebuilt_with_the_failure_as_reason(corpus_dir):
    config, specs = _specs(corpus_dir)
    _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    backend = FailsValidation(ValidationFailed("backbone det: latency 9 ms over 1 ms; the engine was not published\nx"))
    result = _run(config, specs, backend)
    assert result.outcome is CompileOutcome.BUILT and backend.calls == 1
    assert result.miss_reasons == ("cached engine failed latency 9 ms over 1 ms",)


def test_validation_that_cannot_run_fails_the_backbone_without_a_rebuild(corpus_dir, logged):
    config, specs = _specs(corpus_dir)
    built = _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 1})
    backend = FailsValidation(RuntimeError("onnxruntime session failed\ndetails"))
    with pytest.raises(RuntimeError) as caught:
        _run(config, specs, backend)
    assert backend.calls == 0 and getattr(caught.value, LOGGED_MARK) is True
    assert "FAILED det: onnxruntime session failed" in logged.at_least(logging.ERROR)
    event = read_events(config.cache_dir)[-1]
    assert (event["outcome"], event["error_class"], event["engine"], event["reason"]) == (
        "FAILED", "RuntimeError", built.entry.file_name, "onnxruntime session failed")
    assert event["miss_reasons"] == ["no validation recorded for this engine"] and event["source"] == "local"
    assert event["compile_duration_s"] is None and event["pid"] == os.getpid()


def test_a_validation_record_that_cannot_be_written_is_one_cache_error(corpus_dir, monkeypatch):
    config, specs = _specs(corpus_dir)
    built = _run(config, specs)
    config, specs = _specs(corpus_dir, validate={"runs": 1})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compiler_module, "record_validation", full)
    with pytest.raises(CacheError) as caught:
        _run(config, specs)
    assert str(caught.value) == (
        f"backbone det: cannot write {built.entry.file_name} into {built.entry.path.parent} "
        "(No space left on device); free disk space or raise the file size limit, then run again")


def test_a_full_disk_while_building_is_one_cache_error(corpus_dir, monkeypatch):
    config, specs = _specs(corpus_dir)
    real = Sha256Sidecar.write_atomic_and_sidecar

    def too_large(*args, **kwargs):
        raise OSError(27, "File too large")

    monkeypatch.setattr(Sha256Sidecar, "write_atomic_and_sidecar", too_large)
    with pytest.raises(CacheError) as caught:
        _run(config, specs)
    message = str(caught.value)
    assert re.fullmatch(r"backbone det: cannot write det\.\S+\.engine into \S+ \(File too large\); free disk space "
                        r"or raise the file size limit, then run again", message), message
    assert str(config.cache_dir) in message
    monkeypatch.setattr(Sha256Sidecar, "write_atomic_and_sidecar", real)

    def no_scratch(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", no_scratch)
    with pytest.raises(CacheError, match=r"\(No space left on device\); free disk space"):
        _run(config, specs)


def test_a_backend_that_writes_nothing_fails_with_one_line(corpus_dir, logged):
    class Silent:
        def compile_engine(self, spec, host, output):
            pass

    config, specs = _specs(corpus_dir)
    with pytest.raises(BackendError) as caught:
        _run(config, specs, Silent())
    assert str(caught.value) == "backbone det: the backend returned without writing an engine"
    assert logged.at_least(logging.ERROR) == ["FAILED det: backbone det: the backend returned without writing an engine"]
    event = read_events(config.cache_dir)[-1]
    assert event["outcome"] == "FAILED" and event["error_class"] == "BackendError"
    assert event["miss_reasons"] == ["no engine in the cache"] and event["source"] == "local"
    assert event["model_name"] == "det" and event["engine"].startswith("det.") and event["host_key"]
    assert event["reason"] == "backbone det: the backend returned without writing an engine"
    (record,) = [r for r in logged.records if r.levelno >= logging.ERROR]
    assert (record.event, record.model_name, record.outcome, record.error_class) == (
        "result", "det", "FAILED", "BackendError")

    class Mute:
        def compile_engine(self, spec, host, output):
            raise RuntimeError()

    with pytest.raises(RuntimeError):
        _run(config, specs, Mute())
    assert read_events(config.cache_dir)[-1]["reason"] == "RuntimeError"  # no message: the class names it
    assert not list(config.cache_dir.glob(".*tmp*"))  # the scratch folder is removed


def test_heartbeats_name_the_phase_and_detail_while_a_build_runs(corpus_dir, logged):
    class Slow(NoValidation):
        def compile_engine(self, spec, host, output):
            output.progress("parsing", "det.onnx")
            time.sleep(0.35)
            output.progress("building")
            time.sleep(0.35)
            super().compile_engine(spec, host, output)

    config, specs = _specs(corpus_dir)
    _run(config, specs, Slow(), heartbeat_s=0.1)
    beats = [r for r in logged.records if getattr(r, "event", None) == "heartbeat"]
    lines = [r.getMessage() for r in beats]
    assert "building det: parsing (det.onnx), 0 s elapsed" in lines
    assert any(re.fullmatch(r"building det: building, [01] s elapsed", line) for line in lines), lines
    assert all(r.model_name == "det" and r.levelno == logging.INFO for r in beats)
    assert {r.phase for r in beats} >= {"parsing", "building"}
    assert all(0 < r.elapsed_s < 5 and r.elapsed_s == round(r.elapsed_s, 1) for r in beats)
    assert beats[0].elapsed_s < 0.9  # the first beat comes after one interval (0.1 s)
    count = len(beats)
    time.sleep(0.3)
    assert len([r for r in logged.records if getattr(r, "event", None) == "heartbeat"]) == count  # stopped


def test_no_heartbeat_thread_when_the_interval_is_zero(corpus_dir, logged):
    config, specs = _specs(corpus_dir)
    _run(config, specs, heartbeat_s=0)
    assert not [r for r in logged.records if getattr(r, "event", None) == "heartbeat"]


def test_the_result_lines_and_events(corpus_dir, logged):
    config, specs = _specs(corpus_dir)
    built = _run(config, specs)
    reused = _run(config, specs)
    built_line, reused_line = [r for r in logged.records if getattr(r, "event", None) == "result"]
    assert re.fullmatch(rf"BUILT  det  \d+\.\d s  {re.escape(built.entry.file_name)}", built_line.getMessage())
    assert reused_line.getMessage() == f"REUSED det  {reused.entry.file_name}"
    assert (reused_line.outcome, reused_line.engine, reused_line.compile_duration_s, reused_line.model_name) == (
        "REUSED", reused.entry.file_name, None, "det")
    assert (built_line.outcome, built_line.compile_duration_s) == ("BUILT", built.compile_duration_s)
    first, second = read_events(config.cache_dir)
    for event in (first, second):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
        assert event["pid"] == os.getpid() and event["model_name"] == "det" and event["error_class"] is None
        assert event["host_key"] == HOST.identity_for(specs[0]).host_key
    assert first["outcome"] == "BUILT" and first["compile_duration_s"] == round(built.compile_duration_s, 3)
    assert first["miss_reasons"] == list(built.miss_reasons) and first["miss_reasons"]
    assert second["outcome"] == "REUSED" and second["compile_duration_s"] is None and second["miss_reasons"] == []
    assert "validation" not in second


def test_an_onnx_that_cannot_be_read_is_one_config_error(corpus_dir, monkeypatch):
    from provisioning.errors import ConfigError

    config, specs = _specs(corpus_dir)

    def unreadable(spec):
        raise PermissionError(13, "Permission denied", str(spec.onnx_path))

    with pytest.raises(ConfigError) as caught:
        _run(config, specs, onnx_sha256=unreadable)
    assert str(caught.value) == f"backbone det: cannot read {specs[0].onnx_path} (Permission denied)"

    def gone(spec):
        raise FileNotFoundError(2, "No such file or directory", str(spec.onnx_path) + ".data")

    with pytest.raises(ConfigError) as caught:
        _run(config, specs, onnx_sha256=gone)
    assert str(caught.value) == (f"backbone det: ONNX input {specs[0].onnx_path}.data disappeared; "
                                 "restore it or fix the 'onnx' path")


def test_the_engine_hasher_is_one_thread_per_process():
    first = compiler_module._process_hasher()
    assert compiler_module._process_hasher() is first
    assert EngineCompiler._hasher() is first
    assert first._max_workers == 1
