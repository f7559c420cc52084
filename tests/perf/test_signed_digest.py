"""The digest a build records (and a remote upload signs) comes from bytes this process hashed: in-process.

The doit run in a child is tests/integration/test_planted_records.py; these run the action
in this process, so that mutmut's in-process runs see them too, and pin the cost: a cold
build through the run's shared verifier hashes each ONNX once, never a second time for
the signed digest.
"""

from __future__ import annotations

import json
import os
import threading

import pytest

from provisioning import onnxinfo, verify, verify_stat
from provisioning.doit import tasks
from provisioning.doit import verifier as shared_verifier
from provisioning.doit.corpus import load_corpus
from provisioning.manifest import manifest_path_for
from provisioning.sidecar import hash_file, stat_signature
from provisioning.verify import INDEX_NAME, VERIFIED_DIR

from tests.conftest import DEFAULT_BACKBONES, write_corpus_yaml


@pytest.fixture
def run(corpus_dir, monkeypatch):
    """det's corpus, a run's SharedVerifier registered for the action, and a counter of ONNX hashes."""
    monkeypatch.setattr(verify_stat, "_RACY_NS", 0)
    write_corpus_yaml(corpus_dir, DEFAULT_BACKBONES[:1])
    corpus = load_corpus(corpus_dir / "corpus.yaml")
    (spec,) = corpus.specs
    shared = tasks.SharedVerifier([corpus.engine_path(spec)], "full", corpus.specs, corpus.cache_dir)
    monkeypatch.setitem(shared_verifier._RUN_VERIFIER, str(corpus.cache_dir), shared)
    calls: list[str] = []
    real = verify._hash_files
    monkeypatch.setattr(verify, "_hash_files", lambda files, guard=None: calls.append(threading.current_thread().name)
                        or real(files, guard))
    monkeypatch.setattr(onnxinfo, "_hash_and_remember", lambda path: pytest.fail("the compiler hashed the ONNX itself"))
    return corpus, spec, shared, calls


def test_a_cold_build_hashes_each_onnx_once_for_the_key_and_the_signed_digest(run):
    corpus, spec, shared, calls = run
    result = tasks._compile_backbone(spec, corpus.host, corpus.config, None)
    assert result["outcome"] == "BUILT"
    assert result["onnx_sha256"] == hash_file(spec.onnx_path)
    assert len(calls) == 1  # the reuse key's hash served the signed digest too
    assert shared.hashed_onnx_sha256(spec) == result["onnx_sha256"] and len(calls) == 1


def test_a_planted_index_digest_is_replaced_by_the_hashed_one_past_a_miss(run):
    corpus, spec, shared, calls = run
    model = os.path.abspath(spec.onnx_path)
    planted = "1" * 64
    folder = corpus.cache_dir / VERIFIED_DIR
    folder.mkdir(parents=True)
    (folder / INDEX_NAME).write_text(json.dumps({"engines": {}, "onnx": {
        model: {"files": [[model, stat_signature(os.lstat(model)), planted]], "sha256": planted}}}))
    assert shared.onnx_sha256(spec) == planted  # the index answers the reuse key (local reuse only)
    assert calls == []
    result = tasks._compile_backbone(spec, corpus.host, corpus.config, None)
    real = hash_file(spec.onnx_path)  # det has no external data: its digest is the file's
    assert result["outcome"] == "BUILT" and result["onnx_sha256"] == real != planted
    manifest = json.loads(manifest_path_for(corpus.engine_path(spec)).read_text())
    assert manifest["inputs"]["onnx_sha256"] == real
    assert len(calls) == 1  # hashed once, past the miss
    assert shared.onnx_sha256(spec) == real  # and the lying index entry was replaced in this run
