"""Trusted-stat verification: fast when nothing changed, never fooled by a restored mtime."""

from __future__ import annotations

import os
import time
from pathlib import Path

from provisioning import Sha256Sidecar
from provisioning.verify import EngineVerifier, verify_engine


def _engine(tmp_path: Path, data: bytes = b"engine bytes " * 1000) -> Path:
    path = tmp_path / "m.engine"
    Sha256Sidecar.write_atomic_and_sidecar(path, data)
    return path


def test_stat_mode_trusts_an_unchanged_engine_after_one_full_check(tmp_path):
    path = _engine(tmp_path)
    first = verify_engine(path, "stat")
    assert first.ok and first.reason == "verified"
    second = verify_engine(path, "stat")
    assert second.ok and "trusted stat" in second.reason


def test_stat_mode_catches_a_byte_flip_that_restores_the_mtime(tmp_path):
    path = _engine(tmp_path)
    assert verify_engine(path, "stat").ok
    st = os.stat(path)
    time.sleep(0.01)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    with open(path, "r+b") as handle:  # same inode, same size
        handle.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # an attacker or a tool restores mtime
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_ctime_ns != st.st_ctime_ns
    result = verify_engine(path, "stat")
    assert not result.ok and "do not match" in result.reason


def test_stat_mode_rechecks_after_the_sidecar_changes(tmp_path):
    path = _engine(tmp_path)
    assert verify_engine(path, "stat").ok
    Sha256Sidecar.path_for(path).write_text("0" * 64 + "  m.engine\n")
    assert not verify_engine(path, "stat").ok


def test_full_mode_never_trusts_stat(tmp_path):
    path = _engine(tmp_path)
    assert verify_engine(path, "stat").ok
    assert verify_engine(path, "full").reason == "verified"


def test_verifier_prefetches_many_engines_in_parallel(tmp_path):
    paths = []
    for index in range(6):
        folder = tmp_path / str(index)
        folder.mkdir()
        paths.append(_engine(folder, os.urandom(200_000)))
    paths[3].write_bytes(b"corrupt")
    verifier = EngineVerifier("full", workers=2)
    verifier.prefetch(paths)
    results = [verifier.check(p) for p in paths]
    verifier.close()
    assert [r.ok for r in results] == [True, True, True, False, True, True]
