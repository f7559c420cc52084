"""What mutation testing of provisioning/cache.py found unpinned (benchmarks/mutation.sh).

The reuse decision and its miss lines, where a host's engine lives when a newer TensorRT
built the shared version-compatible one, the cache folder's setup errors, the build lock,
and the event log (one JSON line per event, a planted symlink never followed).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from provisioning import BackboneSpec, EngineFilenameSchema, GpuInfo, HostCapabilities, Sha256Sidecar
from provisioning.cache import (
    BUILD_LOG_SUFFIX, COMMIT_SUFFIX, EVENTS_FILE, LOCK_DIR, append_event, check_entry, engine_lock,
    engine_path_for, ensure_cache_dir, entry_files, lock_is_held, lock_path_for, read_events,
    version_pinned_path,
)
from provisioning.compiler import expected_build_inputs
from provisioning.errors import CacheError, UnsafePathError
from provisioning.manifest import make_manifest, manifest_bytes, manifest_path_for
from provisioning.verify import record_path

ONNX_SHA = "ab" * 32
CPU = HostCapabilities("onnxruntime", "1.23.2", "x86_64", ("avx2", "fma"))
H200 = GpuInfo("NVIDIA H200", "GPU-1", (9, 0), "580.1", 0)


def _spec(**fields) -> BackboneSpec:
    return BackboneSpec(**{"model_name": "det", "onnx_path": Path("/models/det.onnx"), **fields})


def _publish(cache: Path, spec: BackboneSpec, host: HostCapabilities, payload: bytes = b"plan" * 256,
             edit=None, name: str | None = None) -> Path:
    ensure_cache_dir(cache)
    engine = cache / (name or EngineFilenameSchema.build(spec, host))
    inputs = expected_build_inputs(spec, host, ONNX_SHA)

    def manifest(sha256: str, size: int) -> dict[Path, bytes]:
        document = make_manifest(model_name=spec.model_name, engine_path=engine, sha256=sha256, size=size,
                                 inputs=inputs, onnx_path=spec.onnx_path, compile_duration_s=0.1)
        if edit is not None:
            edit(document)
        return {manifest_path_for(engine): manifest_bytes(document)}

    Sha256Sidecar.write_atomic_and_sidecar(engine, payload, before_commit=manifest)
    return engine


def _check(engine: Path, spec: BackboneSpec = None, host: HostCapabilities = CPU):
    return check_entry(engine, "det", expected_build_inputs(spec or _spec(), host, ONNX_SHA))


# --- the reuse decision ------------------------------------------------------------------------------

def test_a_hit_describes_the_verified_engine(tmp_path):
    engine = _publish(tmp_path, _spec(), CPU, b"p" * 3000)
    check = _check(engine)
    assert check.hit and check.reasons == ()
    entry = check.entry
    assert (entry.model_name, entry.path, entry.size, entry.file_name) == ("det", engine, 3000, engine.name)
    assert entry.sha256 == Sha256Sidecar.check(engine).sha256 and entry.sidecar_path == Sha256Sidecar.path_for(engine)
    assert entry.inputs == expected_build_inputs(_spec(), CPU, ONNX_SHA).as_dict()
    assert entry.manifest["engine"] == {"file_name": engine.name, "sha256": entry.sha256, "size": 3000}


def test_each_miss_says_why_word_for_word(tmp_path):
    engine = tmp_path / EngineFilenameSchema.build(_spec(), CPU)
    assert _check(engine).reasons == ("no engine in the cache",)
    real = _publish(tmp_path / "elsewhere", _spec(), CPU)
    tmp_path.joinpath(engine.name).symlink_to(real)
    assert _check(engine).reasons == (f"engine path {engine.name} is a symlink; refusing to follow it",)


def test_a_symlinked_manifest_is_named_as_such(tmp_path):
    engine = _publish(tmp_path, _spec(), CPU)
    manifest = manifest_path_for(engine)
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_bytes(manifest.read_bytes())
    manifest.unlink()
    manifest.symlink_to(elsewhere)
    assert _check(engine).reasons == (f"manifest {manifest.name} is a symlink; not followed",)


def test_a_fifo_manifest_is_named_as_such_and_not_read(tmp_path):
    engine = _publish(tmp_path, _spec(), CPU)
    manifest = manifest_path_for(engine)
    manifest.unlink()
    os.mkfifo(manifest)  # opening it for reading would wait for a writer
    assert _check(engine).reasons == (f"manifest {manifest.name} is not a regular file (a FIFO?); not read",)


def test_a_manifest_of_other_inputs_or_another_engine_is_a_miss(tmp_path):
    engine = _publish(tmp_path, _spec(), CPU)
    assert _check(engine, host=HostCapabilities("onnxruntime", "1.24.0", "x86_64", ("avx2", "fma"))).reasons == \
        ('host identity \'version_tag\' changed: "1.23.2" -> "1.24.0"', 'backend_version changed: "1.23.2" -> "1.24.0"')
    other = _publish(tmp_path / "b", _spec(), CPU, edit=lambda d: d["engine"].update(sha256="0" * 64))
    assert _check(other).reasons == ("manifest describes another engine (sha256 or name differs)",)
    renamed = _publish(tmp_path / "c", _spec(), CPU, edit=lambda d: d["engine"].update(file_name="x.engine"))
    assert _check(renamed).reasons == ("manifest describes another engine (sha256 or name differs)",)
    no_record = _publish(tmp_path / "d", _spec(), CPU, edit=lambda d: d.pop("engine"))
    assert _check(no_record).reasons == ("manifest describes another engine (sha256 or name differs)",)


def test_damaged_bytes_are_a_miss_with_the_sidecar_reason(tmp_path):
    engine = _publish(tmp_path, _spec(), CPU, b"p" * 3000)
    with open(engine, "r+b") as handle:
        handle.write(b"X")
    check = _check(engine)
    assert not check.hit and check.reasons == ("engine bytes do not match the sidecar (corrupt or truncated)",)


def test_a_given_verifier_replaces_the_sidecar_check(tmp_path):
    engine = _publish(tmp_path, _spec(), CPU)
    seen = []

    def verify(path):
        seen.append(path)
        return Sha256Sidecar.check(path)

    assert check_entry(engine, "det", expected_build_inputs(_spec(), CPU, ONNX_SHA), verify).hit
    assert seen == [engine]


# --- version-compatible TensorRT: where this host's engine lives -------------------------------------

def _trt(version: str) -> HostCapabilities:
    return HostCapabilities("tensorrt", version, "x86_64", (), H200)


def test_a_host_older_than_the_builder_of_the_shared_vc_engine_uses_its_pinned_name(tmp_path):
    spec = _spec(version_compatible=True)
    shared = _publish(tmp_path, spec, _trt("10.17.0.1"))  # a newer neighbour built the shared engine
    older = _trt("10.16.1.11")
    assert EngineFilenameSchema.build(spec, older) == shared.name  # one shared name for all of 10.x
    pinned = engine_path_for(tmp_path, spec, older)
    assert pinned == tmp_path / EngineFilenameSchema.version_pinned(shared.name, "10.16.1.11")
    inputs = expected_build_inputs(spec, older, ONNX_SHA)
    assert version_pinned_path(shared, inputs) == pinned
    # the newer host itself, and a host of the same release, use the shared name
    assert engine_path_for(tmp_path, spec, _trt("10.17.0.1")) == shared
    assert engine_path_for(tmp_path, spec, _trt("10.18.0.0")) == shared
    assert version_pinned_path(shared, expected_build_inputs(spec, _trt("10.18.0.0"), ONNX_SHA)) is None


def test_names_are_shared_only_for_version_compatible_tensorrt(tmp_path):
    plain = _spec()
    assert engine_path_for(tmp_path, plain, CPU) == tmp_path / EngineFilenameSchema.build(plain, CPU)
    not_vc = _publish(tmp_path, plain, _trt("10.17.0.1"))
    assert engine_path_for(tmp_path, plain, _trt("10.16.1.11")) == tmp_path / EngineFilenameSchema.build(
        plain, _trt("10.16.1.11"))
    assert not_vc.exists()


# --- entry files, cache folder, locks ----------------------------------------------------------------

def test_an_entry_is_unpublished_first_then_its_bytes_then_every_companion(tmp_path):
    engine = tmp_path / "det.engine"
    assert entry_files(engine) == (
        Sha256Sidecar.path_for(engine), engine, manifest_path_for(engine),
        tmp_path / ("det.engine" + BUILD_LOG_SUFFIX), tmp_path / ("det.engine" + COMMIT_SUFFIX), record_path(engine))


def test_cache_folder_errors_say_what_to_fix(tmp_path):
    ensure_cache_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / LOCK_DIR).is_dir()
    ensure_cache_dir(tmp_path / "a" / "b")  # again: fine
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CacheError, match=f"^cache folder {a_file} exists but is not a folder; set cache_dir to a "
                                         "folder$"):
        ensure_cache_dir(a_file)
    with pytest.raises(CacheError, match=f"^cannot create the cache folder {a_file / 'sub'} \\(Not a directory\\); "
                                         "make it writable or set cache_dir elsewhere$"):
        ensure_cache_dir(a_file / "sub")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / LOCK_DIR).symlink_to(tmp_path / "a")
    with pytest.raises(CacheError, match=f"^{linked / LOCK_DIR} is a symlink; remove it \\(the lock folder must be "
                                         "inside the cache\\)$"):
        ensure_cache_dir(linked)


def test_a_file_where_the_lock_folder_goes_is_named_not_the_cache_folder(tmp_path):
    (tmp_path / LOCK_DIR).write_text("")  # the cache folder itself is fine
    with pytest.raises(CacheError, match=f"^{tmp_path / LOCK_DIR} exists but is not a folder; remove it \\(the lock "
                                         "folder must be inside the cache\\)$"):
        ensure_cache_dir(tmp_path)


def test_a_planted_lock_symlink_is_refused_with_what_to_do(tmp_path):
    engine = _publish(tmp_path, _spec(), CPU)
    lock_path_for(engine).symlink_to(tmp_path / "elsewhere.lock")
    with pytest.raises(UnsafePathError, match=f"^lock file {lock_path_for(engine)} is a symlink \\(not followed; "
                                              "nothing in the cache creates one\\); remove it$"):
        engine_lock(engine)


def test_a_lock_is_held_only_while_a_builder_holds_it(tmp_path):
    engine = _publish(tmp_path, _spec(), CPU)
    assert lock_path_for(engine) == tmp_path / LOCK_DIR / (engine.name + ".lock")
    assert not lock_is_held(engine)  # no lock file yet
    lock = engine_lock(engine)
    with lock:
        assert lock_is_held(engine)
    assert not lock_is_held(engine) and lock_path_for(engine).exists()
    assert not lock_is_held(engine)  # asking does not leave it held


# --- the event log -----------------------------------------------------------------------------------

def test_events_are_one_sorted_json_line_each_and_read_back(tmp_path):
    append_event(tmp_path, {"outcome": "BUILT", "model_name": "det", "engine": tmp_path / "x.engine"})
    append_event(tmp_path, {"model_name": "cls", "outcome": "REUSED"})
    lines = (tmp_path / EVENTS_FILE).read_bytes().splitlines()
    assert lines[0] == json.dumps({"engine": str(tmp_path / "x.engine"), "model_name": "det",
                                   "outcome": "BUILT"}, sort_keys=True).encode()
    assert len(lines) == 2 and (tmp_path / EVENTS_FILE).read_bytes().endswith(b"\n")
    assert (tmp_path / EVENTS_FILE).stat().st_mode & 0o777 == 0o644 & ~_umask()
    assert [e["outcome"] for e in read_events(tmp_path)] == ["BUILT", "REUSED"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_torn_or_foreign_line_is_skipped_and_a_missing_log_is_empty(tmp_path):
    assert read_events(tmp_path) == []
    (tmp_path / EVENTS_FILE).write_bytes(b'{"outcome": "BUILT"}\n[1, 2]\n' + b"[" * 100000 + b'\n{"outcome": "REU')
    assert read_events(tmp_path) == [{"outcome": "BUILT"}]


def test_a_symlinked_event_log_is_never_followed_and_says_so(tmp_path, caplog):
    target = tmp_path / "target.txt"
    target.write_text("keep\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / EVENTS_FILE).symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="provisioning.cache"):
        append_event(cache, {"outcome": "BUILT"})
    assert target.read_text() == "keep\n"
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot append to {cache / EVENTS_FILE} (it is a symlink; not followed); event not recorded"]


def test_an_event_log_that_cannot_be_opened_is_a_warning_not_an_error(tmp_path, caplog):
    (tmp_path / EVENTS_FILE).mkdir()  # a folder in its place
    with caplog.at_level(logging.WARNING, logger="provisioning.cache"):
        append_event(tmp_path, {"outcome": "BUILT"})
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot append to {tmp_path / EVENTS_FILE} (Is a directory); event not recorded"]


def test_an_event_that_cannot_be_written_is_a_warning_not_an_error(tmp_path, caplog):
    import resource
    import signal

    append_event(tmp_path, {"outcome": "BUILT"})
    size = (tmp_path / EVENTS_FILE).stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full quota: the write fails with EFBIG
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))  # not one byte more
        with caplog.at_level(logging.WARNING, logger="provisioning.cache"):
            append_event(tmp_path, {"outcome": "REUSED", "model_name": "det"})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot append to {tmp_path / EVENTS_FILE} (File too large); event not recorded"]
    assert [e["outcome"] for e in read_events(tmp_path)] == ["BUILT"]


def test_a_cache_folder_that_cannot_be_written_into_says_so(tmp_path, monkeypatch):
    from provisioning import cache

    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # a read-only folder (as root, permissions would not stop us)
        if self.name == LOCK_DIR:
            raise PermissionError(13, "Permission denied")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(CacheError, match=f"^cannot write into the cache folder {tmp_path} \\(Permission denied\\); "
                                         "make it writable or set cache_dir elsewhere$"):
        ensure_cache_dir(tmp_path)
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    real_access = os.access
    monkeypatch.setattr(cache.os, "access",
                        lambda path, mode: False if mode & os.W_OK else real_access(path, mode))
    with pytest.raises(CacheError, match=f"^cache folder {tmp_path} is not writable; fix its permissions or set "
                                         "cache_dir elsewhere$"):
        ensure_cache_dir(tmp_path)


def test_an_empty_engine_is_an_entry_of_size_zero(tmp_path):
    check = _check(_publish(tmp_path, _spec(), CPU, b""))
    assert check.hit and check.entry.size == 0


def test_an_entry_of_an_unknown_backend_cannot_be_opened_and_says_to_rebuild(tmp_path):
    from provisioning.cache import EngineCacheEntry
    from provisioning.errors import BackendError

    entry = EngineCacheEntry("det", tmp_path / "det.engine", "0" * 64, 1, {"backend": "custom"}, {})
    with pytest.raises(BackendError, match="built by custom, which open_engine cannot load; rebuild it"):
        entry.open()


def test_an_event_after_a_torn_line_is_not_lost_with_it(tmp_path):
    from provisioning.cache import EVENTS_FILE, append_event, read_events

    append_event(tmp_path, {"outcome": "BUILT", "model_name": "det"})
    with open(tmp_path / EVENTS_FILE, "ab") as log:
        log.write(b'{"outcome": "REUSED", "mod')  # what a short write on a full disk leaves
    append_event(tmp_path, {"outcome": "BUILT", "model_name": "cls"})
    assert [e["model_name"] for e in read_events(tmp_path)] == ["det", "cls"]


def test_a_fifo_or_hard_linked_event_log_is_refused_with_what_to_do(tmp_path, caplog):
    fifo, linked = tmp_path / "fifo", tmp_path / "linked"
    fifo.mkdir()
    linked.mkdir()
    os.mkfifo(fifo / EVENTS_FILE)  # opened for writing, the event would vanish into the pipe
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep\n")
    os.link(outside, linked / EVENTS_FILE)  # a second name of a file outside the cache
    with caplog.at_level(logging.WARNING, logger="provisioning.cache"):
        append_event(fifo, {"outcome": "BUILT"})
        append_event(linked, {"outcome": "BUILT"})
    assert outside.read_bytes() == b"keep\n"
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot append to {fifo / EVENTS_FILE} (not a regular file; nothing in the cache makes one; remove it);"
        " event not recorded",
        f"cannot append to {linked / EVENTS_FILE} (it has 2 hard links; nothing in the cache makes one;"
        " remove it); event not recorded"]


def test_an_event_log_line_that_is_not_utf8_is_skipped_not_a_crash(tmp_path):
    (tmp_path / EVENTS_FILE).write_bytes(b'{"outcome": "BUILT"}\n\xff\xfe torn\n{"outcome": "REUSED"}\n')
    assert read_events(tmp_path) == [{"outcome": "BUILT"}, {"outcome": "REUSED"}]
