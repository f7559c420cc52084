"""resolve_engine and open_engine against a cache someone else can write (issue 22 items 12 and 19).

Real ONNX Runtime engines built by the real compiler; the attacks are real files: bytes
swapped at the engine's path after it was resolved, a ``.verified`` stat record planted
over corrupted bytes, a swap between the hash and ONNX Runtime's read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from provisioning import EngineNotReadyError, load_config
from provisioning.backends import open as opening
from provisioning.errors import BackendError
from provisioning.serving.resolve import open_engine, resolve_engine
from provisioning.sidecar import Sha256Sidecar, stat_signature
from provisioning.verify import record_path
from tests.conftest import write_corpus_yaml


@pytest.fixture
def engines(corpus_dir):
    """det and cls built: (config path, det's entry, a copy of cls's engine: other valid ONNX Runtime bytes)."""
    path = write_corpus_yaml(corpus_dir, [
        {"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"},
        {"model_name": "cls", "onnx": "models/cls.onnx", "precision": "fp32",
         "inputs": {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}},
    ])
    det = resolve_engine(path, "det", build=True)
    cls = resolve_engine(path, "cls", build=True)
    other = corpus_dir / "other.engine"
    shutil.copyfile(cls.path, other)
    return path, det, other


def _swap(engine: Path, replacement: Path) -> None:
    """Put other bytes at the engine's path (a new file renamed over it: a new inode)."""
    staged = engine.with_name(engine.name + ".planted")
    shutil.copyfile(replacement, staged)
    os.replace(staged, engine)


def _inputs(session) -> list[str]:
    return [i.name for i in session.get_inputs()]


def test_open_engine_hashes_the_bytes_it_opens(engines):
    """A mutant of open_engine without its re-hash opens other bytes than the resolved ones."""
    _, det, other = engines
    expected = _inputs(open_engine(det))
    _swap(det.path, other)
    with pytest.raises(BackendError, match="bytes do not match the resolved SHA-256"):
        open_engine(det)
    import onnxruntime

    assert _inputs(onnxruntime.InferenceSession(str(det.path))) != expected  # other bytes that would open fine


def test_open_engine_above_the_protobuf_limit_hashes_too(engines, monkeypatch):
    _, det, other = engines
    monkeypatch.setattr(opening, "_PROTOBUF_LIMIT", 0)  # every engine takes the large-file path
    assert _inputs(open_engine(det))
    _swap(det.path, other)
    with pytest.raises(BackendError, match="changed since it was resolved"):
        open_engine(det)


def test_a_large_engine_swapped_after_its_hash_is_not_what_onnx_runtime_reads(engines, monkeypatch):
    """Issue 22 item 12: between the hash and ONNX Runtime's read, the cache folder is swapped for another.

    Renaming a folder above the engine leaves the hashed file untouched (same inode, same
    ctime), so only opening the hashed descriptor itself keeps the other bytes out.
    """
    import onnxruntime

    _, det, other = engines
    expected = _inputs(open_engine(det))
    monkeypatch.setattr(opening, "_PROTOBUF_LIMIT", 0)
    real = onnxruntime.InferenceSession
    swapped = []

    def swap_then_open(source, *args, **kwargs):
        if not swapped:  # the attacker's move, after open_engine hashed the engine
            cache = det.path.parent
            cache.rename(cache.with_name("cache.moved"))
            cache.mkdir()
            shutil.copyfile(other, det.path)
            swapped.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", swap_then_open)
    session = open_engine(det)
    assert swapped and det.path.read_bytes() == other.read_bytes()
    assert _inputs(session) == expected  # the hashed file, not the one now at its path


def test_a_large_engine_written_in_place_while_opened_is_refused(engines, monkeypatch):
    import onnxruntime

    _, det, _ = engines
    monkeypatch.setattr(opening, "_PROTOBUF_LIMIT", 0)
    real = onnxruntime.InferenceSession

    def write_then_open(source, *args, **kwargs):
        data = det.path.read_bytes()
        with open(det.path, "r+b") as handle:  # the same bytes written again: a write all the same
            handle.write(data)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", write_then_open)
    with pytest.raises(BackendError, match="changed while it was opened"):
        open_engine(det)


def test_resolve_under_verify_full_hashes_even_over_a_planted_stat_record(engines):
    """A mutant of resolve_engine that always trusts stat returns corrupted bytes; full mode hashes."""
    path, det, _ = engines
    data = bytearray(det.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(det.path, "r+b") as handle:  # same size, same inode
        handle.write(data)
    record = record_path(det.path)
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps({"signature": stat_signature(os.lstat(det.path)),
                                  "sha256": Sha256Sidecar.read(det.path).sha256}))
    assert load_config(path).verify == "full"
    with pytest.raises(EngineNotReadyError, match="corrupt"):
        resolve_engine(path, "det")
    stat_config = write_corpus_yaml(path.parent, [{"model_name": "det", "onnx": "models/det.onnx",
                                                   "precision": "fp32"}], verify="stat")
    assert resolve_engine(stat_config, "det").path == det.path  # verify: stat trusts the record, as documented
