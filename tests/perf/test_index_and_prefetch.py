"""Round two of the warm path: the cache index, hashing ahead of the actions, and the build's threads.

Each shortcut is checked against the change it must not miss: a rewritten sidecar or
manifest, other inputs, a corrupt engine, an edited ONNX, a file changed within the
racy-clean window.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from pathlib import Path

import pytest

from provisioning import onnxinfo, verify, verify_stat
from provisioning.doit import tasks, uptodate
from provisioning.doit import verifier as shared_verifier
from provisioning.doit.corpus import load_corpus
from provisioning.manifest import manifest_path_for
from provisioning.onnxinfo import known_sha256, onnx_digest
from provisioning.sidecar import Sha256Sidecar, hash_file
from provisioning.verify import CacheIndex, EngineVerifier, entry_signatures

from tests.conftest import DEFAULT_BACKBONES, write_corpus_yaml


@pytest.fixture
def settled(monkeypatch):
    """Files written by the test count as settled (the racy-clean window is 2 s)."""
    monkeypatch.setattr(verify_stat, "_RACY_NS", 0)


def _entry(cache: Path, name: str = "m.fp32.x.engine", blob: bytes = b"engine" * 1000) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    engine = cache / name
    Sha256Sidecar.write_atomic_and_sidecar(engine, blob, before_commit=lambda s, n: {manifest_path_for(engine): b"{}"})
    return engine


def _rewrite(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_an_indexed_entry_holds_until_its_sidecar_manifest_or_key_changes(tmp_path, settled):
    engine = _entry(tmp_path / "cache")
    sha = hash_file(engine)
    index = CacheIndex(engine.parent)
    index.remember_engine(engine, "k1", sha, entry_signatures(engine))
    index.save()
    fresh = CacheIndex(engine.parent)  # another run: one file read
    assert fresh.engine(engine, "k1") == (sha, True)
    assert fresh.engine(engine, "k2") is None  # other inputs, settings or host
    os.utime(engine)  # the engine's stat changed: its bytes must be hashed, the rest still holds
    assert fresh.engine(engine, "k1") == (sha, False)
    _rewrite(manifest_path_for(engine), b'{"x": 1}')
    assert fresh.engine(engine, "k1") is None
    index.remember_engine(engine, "k1", sha, entry_signatures(engine))
    index.save()
    _rewrite(Sha256Sidecar.path_for(engine), Sha256Sidecar.format_line("0" * 64, engine.name).encode())
    assert CacheIndex(engine.parent).engine(engine, "k1") is None


def test_files_changed_in_the_last_two_seconds_or_while_checked_are_not_indexed(tmp_path):
    engine = _entry(tmp_path / "cache")
    index = CacheIndex(engine.parent)
    index.remember_engine(engine, "k", hash_file(engine), entry_signatures(engine))  # written just now
    assert not index.dirty
    before = entry_signatures(engine)
    os.utime(engine, ns=(0, 0))
    verify_stat._RACY_NS = 0
    try:
        index.remember_engine(engine, "k", hash_file(engine), before)  # changed since `before`
        assert not index.dirty
    finally:
        verify_stat._RACY_NS = 2_000_000_000


def test_a_malformed_or_planted_index_is_no_index(tmp_path, settled):
    engine = _entry(tmp_path / "cache")
    folder = engine.parent / verify.VERIFIED_DIR
    folder.mkdir()
    (folder / verify.INDEX_NAME).write_text("[1, 2")
    assert CacheIndex(engine.parent).engine(engine, "k") is None
    (folder / verify.INDEX_NAME).unlink()
    folder.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder.symlink_to(elsewhere)
    index = CacheIndex(engine.parent)
    index.remember_engine(engine, "k", hash_file(engine), entry_signatures(engine))
    index.save()
    assert list(elsewhere.iterdir()) == []  # never written through a planted link


def test_an_indexed_onnx_digest_is_the_reuse_keys_and_dies_with_any_change(tmp_path, settled):
    model = tmp_path / "m.onnx"
    extra = tmp_path / "m.weights"
    model.write_bytes(b"graph" * 100)
    extra.write_bytes(b"weights" * 100)
    files = (model, extra)
    hashed = EngineVerifier().source_hashes(model, files)
    digest = verify.combine_onnx_digest(model, hashed)
    assert digest == onnx_digest(model, (extra,))
    assert verify.combine_onnx_digest(model, hashed[:1]) == onnx_digest(model)
    index = CacheIndex(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    index.remember_onnx(model, hashed, digest)
    index.save()
    assert CacheIndex(tmp_path / "cache").onnx_sha256(model, files) == digest
    assert CacheIndex(tmp_path / "cache").onnx_sha256(model, (model,)) is None  # other external data
    _rewrite(extra, b"Weights" * 100)
    assert CacheIndex(tmp_path / "cache").onnx_sha256(model, files) is None


def test_prefetched_onnx_hashes_are_used_by_the_action_and_handed_to_doits_file_check(tmp_path, settled):
    model = tmp_path / "m.onnx"
    model.write_bytes(os.urandom(1 << 20))
    verifier = EngineVerifier()
    verifier.prefetch_sources([(model, (model,))])
    hashed = verifier.source_hashes(model, (model,))
    assert hashed[0][2] == hash_file(model)
    verify.note_known_digests(hashed)
    assert known_sha256(model) == hash_file(model)  # doit's post-task digest reads nothing again


def _corpus(corpus_dir: Path, verify_mode: str = "full"):
    write_corpus_yaml(corpus_dir, DEFAULT_BACKBONES[:1], verify=verify_mode)
    corpus = load_corpus(corpus_dir / "corpus.yaml")
    (spec,) = corpus.specs
    return corpus, spec


def _build(corpus, spec) -> dict:
    result = tasks._compile_backbone(spec, corpus.host, corpus.config, None)
    assert result["outcome"] in ("BUILT", "REUSED"), result
    return {tasks.CHECKER_VALUE: corpus.engine_path(spec).name, tasks.ONNX_DIGEST_VALUE: result["onnx_sha256"]}


def _checker(corpus, spec, mode: str = "full") -> tasks.EngineUpToDate:
    shared = tasks.SharedVerifier([corpus.engine_path(spec)], mode, corpus.specs, corpus.cache_dir)
    return tasks.EngineUpToDate(spec, corpus.host, corpus.engine_path(spec), shared)


def test_the_checker_answers_from_the_index_without_reading_the_manifest_but_still_hashes(
        corpus_dir, settled, monkeypatch):
    corpus, spec = _corpus(corpus_dir)
    values = _build(corpus, spec)
    first = _checker(corpus, spec)
    assert first(None, values) is True  # the slow path enters the entry
    first.verifier.index.save()

    def no_manifest(*args, **kwargs):
        raise AssertionError("check_entry (manifest read) called for an indexed entry")

    monkeypatch.setattr(uptodate, "check_entry", no_manifest)
    assert _checker(corpus, spec)(None, values) is True
    engine = corpus.engine_path(spec)
    st = os.stat(engine)
    with open(engine, "r+b") as handle:  # a byte flip that keeps size and mtime: full mode hashes
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(engine, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _checker(corpus, spec)(None, values) is False
    other = dict(values, **{tasks.ONNX_DIGEST_VALUE: "0" * 64})  # other inputs: not from the index
    monkeypatch.undo()
    assert _checker(corpus, spec)(None, other) is False


def test_stat_mode_trusts_an_indexed_unchanged_entry_without_hashing(corpus_dir, settled, monkeypatch):
    corpus, spec = _corpus(corpus_dir, "stat")
    values = _build(corpus, spec)
    first = _checker(corpus, spec, "stat")
    assert first(None, values) is True
    first.verifier.index.save()
    monkeypatch.setattr(verify, "verify_engine", lambda *a, **k: pytest.fail("hashed an indexed engine"))
    assert _checker(corpus, spec, "stat")(None, values) is True


def test_with_doits_database_lost_the_action_reuses_the_checkers_hashes(corpus_dir, settled, monkeypatch):
    corpus, spec = _corpus(corpus_dir)
    _build(corpus, spec)
    checker = _checker(corpus, spec)
    shared_verifier._RUN_VERIFIER[str(corpus.cache_dir)] = checker.verifier
    calls = []
    real = verify._hash_files
    monkeypatch.setattr(verify, "_hash_files", lambda files, guard=None: calls.append(threading.current_thread().name)
                        or real(files, guard))
    monkeypatch.setattr(onnxinfo, "_hash_and_remember", lambda path: pytest.fail("the action hashed the ONNX again"))
    try:
        assert checker(None, {}) is False  # no saved values: the action will run, hashing starts now
        result = tasks._compile_backbone(spec, corpus.host, corpus.config, None)
    finally:
        shared_verifier._RUN_VERIFIER.clear()
    assert result["outcome"] == "REUSED"
    assert len(calls) == 1  # hashed once: ahead on a verifier thread (or by the action, had it not started)
    checker.verifier.index.save()
    calls.clear()
    assert checker.verifier.onnx_sha256(spec) == result["onnx_sha256"]
    assert tasks.SharedVerifier([], "full", corpus.specs, corpus.cache_dir).onnx_sha256(spec) == result["onnx_sha256"]
    assert calls == []  # the next run that lost its database reads the digest from the index


def test_under_n_the_main_process_does_not_hash_onnx_files_for_the_workers(monkeypatch):
    for argv, parallel in ((["doit", "-n", "2"], True), (["doit", "-n2", "engines"], True),
                           (["doit", "--process=4"], True), (["doit", "-n", "1"], False), (["doit"], False)):
        monkeypatch.setattr(sys, "argv", argv)
        assert tasks._parallel_run() is parallel, argv
    monkeypatch.setattr(sys, "argv", ["doit", "-n", "2"])
    shared = tasks.SharedVerifier([], "full", (), None)
    shared.prefetch_sources()
    assert shared._verifier is None


def test_doit_finds_the_checkers_magic_arguments_without_resolving_call():
    checker = tasks.EngineUpToDate(None, None, Path("/x.engine"))
    assert list(inspect.signature(checker).parameters) == ["task", "values"]
    assert "__signature__" in vars(tasks.EngineUpToDate)


def test_publishing_writes_the_engine_back_in_a_thread_while_it_is_hashed(corpus_dir, monkeypatch):
    corpus, spec = _corpus(corpus_dir)
    flushed = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: flushed.append(threading.current_thread().name) or real(fd))
    assert tasks._compile_backbone(spec, corpus.host, corpus.config, None)["outcome"] == "BUILT"
    assert "engine-flush" in flushed


def test_a_build_session_uses_one_thread_unless_told_otherwise(monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    from provisioning.backends.onnxruntime import THREADS_ENV, build_session_threads

    options = ort.SessionOptions()
    assert build_session_threads(options) == 1 and options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert build_session_threads(options) == 3 and options.intra_op_num_threads == 3
    monkeypatch.setenv(THREADS_ENV, "many")
    assert build_session_threads(options) == 1
