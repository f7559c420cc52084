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


class _DurabilityLog:
    """Every os.fsync and os.replace this process makes, through the real calls (issue 22 item 17).

    An fsync records the inode it made durable and that file's size then; a replace records
    the inode it renamed into place and its size. A temporary file is durable before its
    rename when an fsync of the same inode at the same size came first.
    """

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, tuple[int, int], int, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            st = os.fstat(fd)
            self.events.append(("fsync", (st.st_dev, st.st_ino), st.st_size, ""))
            return real_fsync(fd)

        def replace(src, dst, **kwargs):
            st = os.lstat(src) if not kwargs else os.stat(src, dir_fd=kwargs.get("src_dir_fd"), follow_symlinks=False)
            self.events.append(("replace", (st.st_dev, st.st_ino), st.st_size, os.fspath(dst)))
            return real_replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def unsynced_renames(self) -> list[str]:
        """Destinations whose file was renamed into place without an fsync of its final bytes first."""
        missing = []
        for index, (kind, inode, size, dest) in enumerate(self.events):
            if kind == "replace" and ("fsync", inode, size, "") not in self.events[:index]:
                missing.append(Path(dest).name)
        return missing

    def folder_synced_after_last_rename(self, folder: Path) -> bool:
        st = os.stat(folder)
        last = max(i for i, e in enumerate(self.events) if e[0] == "replace")
        return any(e[0] == "fsync" and e[1] == (st.st_dev, st.st_ino) for e in self.events[last + 1:])


@pytest.mark.parametrize("payload", ["bytes", "path-copy", "path-move"])
def test_every_temporary_file_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch, payload):
    engine = tmp_path / "m.engine"
    source = tmp_path / "scratch.bin"
    source.write_bytes(b"plan" * 50_000)
    data = {"bytes": b"plan" * 50_000, "path-copy": source, "path-move": source}[payload]
    durability = _DurabilityLog(monkeypatch)
    Sha256Sidecar.write_atomic_and_sidecar(engine, data, move=payload == "path-move",
                                           before_commit=lambda s, n: {tmp_path / "m.engine.manifest.json": b"{}"})
    renamed = [Path(e[3]).name for e in durability.events if e[0] == "replace"]
    assert renamed == ["m.engine", "m.engine.manifest.json", "m.engine.sha256"]
    assert durability.unsynced_renames() == []
    assert durability.folder_synced_after_last_rename(tmp_path)
    assert Sha256Sidecar.verify(engine)


def test_atomic_write_bytes_fsyncs_before_it_renames(tmp_path, monkeypatch):
    from provisioning.sidecar import atomic_write_bytes

    target = tmp_path / "record.json"
    target.write_bytes(b"old")
    durability = _DurabilityLog(monkeypatch)
    atomic_write_bytes(target, b"new contents\n" * 1000)
    assert [e[0] for e in durability.events] == ["fsync", "replace"] and durability.unsynced_renames() == []
    assert target.read_bytes() == b"new contents\n" * 1000
