"""Sha256Sidecar: atomic publish, sha256sum compatibility, and refusal of anything damaged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioning import Sha256Sidecar
from provisioning.sidecar import hash_file, is_temp_name


def _publish(folder: Path, data: bytes, name: str = "m.engine") -> Path:
    path = folder / name
    Sha256Sidecar.write_atomic_and_sidecar(path, data)
    return path


def test_publish_writes_engine_and_sha256sum_compatible_sidecar(tmp_path):
    data = os.urandom(300_000)
    path = _publish(tmp_path, data)
    assert path.read_bytes() == data
    line = Sha256Sidecar.path_for(path).read_text()
    assert line == f"{hashlib.sha256(data).hexdigest()}  m.engine\n"
    assert Sha256Sidecar.verify(path)
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "m.engine.sha256"], cwd=tmp_path, capture_output=True, text=True)
        assert check.returncode == 0 and "m.engine: OK" in check.stdout
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]


def test_publish_from_a_file_path(tmp_path):
    source = tmp_path / "scratch.bin"
    source.write_bytes(b"plan" * 1000)
    sha, size = Sha256Sidecar.write_atomic_and_sidecar(tmp_path / "x.engine", source)
    assert size == 4000 and sha == hashlib.sha256(b"plan" * 1000).hexdigest()
    assert Sha256Sidecar.verify(tmp_path / "x.engine")


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:-1]),  # truncated
        lambda p: p.write_bytes(p.read_bytes() + b"\0"),  # appended
        lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]),  # flipped bit
        lambda p: Sha256Sidecar.path_for(p).unlink(),  # sidecar missing
        lambda p: Sha256Sidecar.path_for(p).write_text("not a digest\n"),  # sidecar malformed
        lambda p: p.unlink(),  # engine missing
        lambda p: Sha256Sidecar.path_for(p).write_text(
            Sha256Sidecar.path_for(p).read_text().replace("m.engine", "other.engine")
        ),  # sidecar names another file
    ],
    ids=["truncated", "appended", "bitflip", "no-sidecar", "bad-sidecar", "no-engine", "sidecar-other-file"],
)
def test_damaged_entries_do_not_verify(tmp_path, damage):
    path = _publish(tmp_path, os.urandom(10_000))
    damage(path)
    assert not Sha256Sidecar.verify(path)


def test_symlinked_engine_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    real = _publish(outside, b"payload", "m.engine")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "m.engine").symlink_to(real)
    shutil.copy(Sha256Sidecar.path_for(real), cache / "m.engine.sha256")
    check = Sha256Sidecar.check(cache / "m.engine")
    assert not check.ok and "symlink" in check.reason


def test_publish_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "m.engine").symlink_to(victim)
    (cache / "m.engine.sha256").symlink_to(victim)
    _publish(cache, b"new engine")
    assert victim.read_text() == "keep me"
    assert not (cache / "m.engine").is_symlink() and Sha256Sidecar.verify(cache / "m.engine")


def test_failed_companion_write_leaves_the_old_engine_verifying_and_no_temp_file(tmp_path):
    path = _publish(tmp_path, b"old engine")

    def before_commit(sha, size):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        Sha256Sidecar.write_atomic_and_sidecar(path, b"new engine", before_commit=before_commit)
    # nothing was renamed before every byte was written: the old engine is still published
    assert path.read_bytes() == b"old engine" and Sha256Sidecar.verify(path)
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]


def test_companions_are_published_before_the_sidecar(tmp_path):
    manifest = tmp_path / "m.engine.manifest.json"
    Sha256Sidecar.write_atomic_and_sidecar(tmp_path / "m.engine", b"engine",
                                           before_commit=lambda sha, size: {manifest: f"{sha} {size}".encode()})
    assert manifest.read_text().endswith(" 6") and Sha256Sidecar.verify(tmp_path / "m.engine")
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]


def test_move_renames_a_scratch_file_instead_of_copying(tmp_path):
    scratch = tmp_path / "scratch.plan"
    scratch.write_bytes(b"plan bytes")
    inode = scratch.stat().st_ino
    sha, size = Sha256Sidecar.write_atomic_and_sidecar(tmp_path / "m.engine", scratch, move=True)
    assert not scratch.exists() and (tmp_path / "m.engine").stat().st_ino == inode
    assert size == 10 and sha == hashlib.sha256(b"plan bytes").hexdigest()
    assert Sha256Sidecar.verify(tmp_path / "m.engine")


def test_hash_file_matches_hashlib_on_a_multi_chunk_file(tmp_path):
    data = os.urandom(9 * 1024 * 1024 + 17)
    (tmp_path / "big").write_bytes(data)
    assert hash_file(tmp_path / "big") == hashlib.sha256(data).hexdigest()
