"""The action's ONNX digest is reused by the file_dep check only while the file is unchanged."""

from __future__ import annotations

import hashlib
import os
import time

from provisioning import onnxinfo
from provisioning.onnxinfo import known_sha256, onnx_digest


def test_a_digest_is_reused_until_the_file_changes_even_with_its_mtime_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(onnxinfo, "_RACY_NS", 0)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"weights" * 1000)
    time.sleep(0.01)
    digest = onnx_digest(path)
    assert known_sha256(path) == digest == hashlib.sha256(path.read_bytes()).hexdigest()
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(b"W")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert known_sha256(path) is None


def test_a_file_written_just_now_is_not_remembered(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"fresh")
    onnx_digest(path)
    assert known_sha256(path) is None  # it may still change within the same mtime tick
