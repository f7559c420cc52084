"""Rules of the publish primitives that survived mutation testing (benchmarks/mutation.sh, sidecar.py).

- a temporary name carries the writer's pid and is recognised as one (GC and the interrupt sweep rely on it);
- a temporary name already taken (a planted file or link) is skipped, never opened; when every try collides the
  error says what is there;
- a short write is completed; a Path payload is copied unless the caller asks to move it, and its size is counted
  over every chunk;
- a published engine is readable by others but not executable (mode 0644 under umask 022);
- a failed rename leaves no temporary file behind.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from provisioning import sidecar, tempnames
from provisioning.errors import UnsafePathError
from provisioning.sidecar import (
    TEMP_SUFFIX,
    Sha256Sidecar,
    atomic_write_bytes,
    create_temp,
    is_temp_name,
    temp_owner_pid,
    temp_path_for,
    write_all,
    write_temp,
)

NAME = "det.fp32.ort-1.0.x86_64-avx2-0a0b0c.0123abcd.engine"


def test_a_temporary_name_is_hidden_carries_the_pid_and_a_random_token(tmp_path):
    tmp = temp_path_for(tmp_path / NAME)
    assert tmp.parent == tmp_path
    assert re.fullmatch(rf"\.{re.escape(NAME)}\.{os.getpid()}\.[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}", tmp.name)
    assert temp_path_for(tmp_path / NAME) != tmp  # random: two writers never share one
    assert is_temp_name(tmp.name) and temp_owner_pid(tmp.name) == os.getpid()


def test_the_temporary_name_of_the_longest_engine_name_fits_a_file_name(tmp_path):
    longest = "m" * (200 - len(".engine")) + ".engine"
    assert len(temp_path_for(tmp_path / longest).name.encode()) <= 255


@pytest.mark.parametrize("name, pid", [
    (f".{NAME}.4242.0a1b2c3d{TEMP_SUFFIX}", 4242),
    (f".{NAME}.notapid.0a1b2c3d{TEMP_SUFFIX}", None),
    (f".x.{TEMP_SUFFIX}", None),
])
def test_the_owner_pid_is_read_back_from_a_temporary_name(name, pid):
    assert is_temp_name(name)
    assert temp_owner_pid(name) == pid


@pytest.mark.parametrize("name", [NAME, f"{NAME}{TEMP_SUFFIX}", f".{NAME}", f".{NAME}.sha256"])
def test_other_names_are_not_temporary(name):
    assert not is_temp_name(name)


def _predictable_tokens(monkeypatch, *tokens: str) -> None:
    queue = list(tokens)
    monkeypatch.setattr(tempnames.secrets, "token_hex", lambda n: queue.pop(0) if len(queue) > 1 else queue[0])


@pytest.mark.parametrize("plant", ["file", "symlink"])
def test_a_planted_temporary_name_is_skipped_and_left_untouched(tmp_path, monkeypatch, plant):
    dest = tmp_path / NAME
    _predictable_tokens(monkeypatch, "aaaaaaaa", "bbbbbbbb")
    planted = tmp_path / f".{NAME}.{os.getpid()}.aaaaaaaa{TEMP_SUFFIX}"
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    if plant == "file":
        planted.write_bytes(b"planted")
    else:
        planted.symlink_to(target)
    fd, tmp = create_temp(dest)
    try:
        os.write(fd, b"new bytes")
    finally:
        os.close(fd)
    assert tmp.name == f".{NAME}.{os.getpid()}.bbbbbbbb{TEMP_SUFFIX}"
    assert target.read_bytes() == b"precious"
    assert planted.is_symlink() if plant == "symlink" else planted.read_bytes() == b"planted"


@pytest.mark.parametrize("plant, words", [("file", "already exists as a file"), ("symlink", "already exists as a symlink")])
def test_when_every_try_collides_the_error_names_what_is_there(tmp_path, monkeypatch, plant, words):
    _predictable_tokens(monkeypatch, "aaaaaaaa")
    planted = tmp_path / f".{NAME}.{os.getpid()}.aaaaaaaa{TEMP_SUFFIX}"
    if plant == "file":
        planted.write_bytes(b"planted")
    else:
        planted.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnsafePathError) as caught:
        create_temp(tmp_path / NAME)
    message = str(caught.value)
    assert words in message and str(planted) in message and message.endswith("not followed; remove it")


def test_a_short_write_is_completed(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(sidecar.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        write_all(fd, memoryview(b"0123456789abcdef"))
    finally:
        os.close(fd)
    assert path.read_bytes() == b"0123456789abcdef"


def test_a_path_payload_is_copied_unless_the_caller_moves_it(tmp_path):
    source = tmp_path / "built.plan"
    source.write_bytes(b"plan" * 1000)
    tmp, _, size = write_temp(tmp_path / NAME, source)
    assert source.read_bytes() == b"plan" * 1000 and tmp.read_bytes() == b"plan" * 1000 and size == 4000
    Sha256Sidecar.write_atomic_and_sidecar(tmp_path / NAME, source)
    assert source.is_file() and Sha256Sidecar.verify(tmp_path / NAME)
    os.unlink(tmp)


def test_the_size_of_a_copied_payload_counts_every_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(sidecar, "CHUNK_BYTES", 1000)
    source = tmp_path / "built.plan"
    source.write_bytes(os.urandom(4500))
    tmp, digest, size = write_temp(tmp_path / NAME, source)
    assert size == 4500 and tmp.read_bytes() == source.read_bytes()
    sha256, size = Sha256Sidecar.write_atomic_and_sidecar(tmp_path / NAME, source)
    assert size == 4500 and sha256 == digest
    os.unlink(tmp)


def test_a_published_engine_is_readable_by_all_and_executable_by_none(tmp_path):
    previous = os.umask(0o022)
    try:
        Sha256Sidecar.write_atomic_and_sidecar(tmp_path / NAME, b"plan" * 10)
        atomic_write_bytes(tmp_path / "other", b"x")
    finally:
        os.umask(previous)
    for path in (tmp_path / NAME, tmp_path / "other"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sidecar.os, "replace", refuse)
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "record", b"data")
    assert os.listdir(tmp_path) == []


# --- what a failed verification says: the reason is the "miss" line a user reads -------------------------------------

def _published(tmp_path: Path) -> Path:
    engine = tmp_path / NAME
    Sha256Sidecar.write_atomic_and_sidecar(engine, b"plan" * 100)
    return engine


def _sidecar_symlink(engine: Path) -> None:
    side = Sha256Sidecar.path_for(engine)
    real = side.with_name("real.sha256")
    os.replace(side, real)
    side.symlink_to(real)


def _engine_symlink(engine: Path) -> None:
    real = engine.with_name("real.engine")
    os.replace(engine, real)
    engine.symlink_to(real)


def _unreadable(engine: Path) -> None:
    os.unlink(engine)
    engine.mkdir()  # not a regular file: unreadable, neither missing nor a link


DAMAGE = [
    ("sidecar-symlink", _sidecar_symlink, f"sidecar {NAME}.sha256 is a symlink; not followed"),
    ("sidecar-missing", lambda e: os.unlink(Sha256Sidecar.path_for(e)), "sidecar missing"),
    ("sidecar-malformed", lambda e: Sha256Sidecar.path_for(e).write_text("not a sidecar\n"), "sidecar malformed"),
    ("sidecar-other-file", lambda e: Sha256Sidecar.path_for(e).write_text("ab" * 32 + "  other.engine\n"),
     "sidecar names another file (other.engine)"),
    ("engine-missing", lambda e: os.unlink(e), "engine missing"),
    ("engine-symlink", _engine_symlink, "engine path is a symlink; not followed"),
    ("engine-unreadable", _unreadable, "engine unreadable (not a regular file)"),
    ("engine-corrupt", lambda e: e.write_bytes(b"PLAN" * 100),
     "engine bytes do not match the sidecar (corrupt or truncated)"),
]


@pytest.mark.parametrize("damage, reason", [(d[1], d[2]) for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_damaged_entry_does_not_verify_and_says_why(tmp_path, damage, reason):
    engine = _published(tmp_path)
    damage(engine)
    check = Sha256Sidecar.check(engine)
    assert check.ok is False and check.reason == reason
    assert Sha256Sidecar.verify(engine) is False


def test_an_intact_entry_verifies_with_its_digest_and_size(tmp_path):
    engine = _published(tmp_path)
    check = Sha256Sidecar.check(engine)
    assert check.ok is True and check.reason == "verified"
    assert check.sha256 == Sha256Sidecar.read(engine).sha256 and check.size == 400
    assert Sha256Sidecar.verify(engine) is True


def test_the_verified_size_counts_every_chunk_of_a_large_engine(tmp_path, monkeypatch):
    engine = _published(tmp_path)  # 400 bytes
    monkeypatch.setattr(sidecar, "CHUNK_BYTES", 64)
    check = Sha256Sidecar.check(engine)
    assert check.ok is True and check.size == 400


# --- FIFOs and other non-files where a file belongs (issue 22) -----------------------------------------

def test_is_regular_or_gone_is_false_only_for_a_fifo_or_a_folder(tmp_path):
    from provisioning.sidecar import is_regular_or_gone

    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    assert is_regular_or_gone(tmp_path / "gone") and is_regular_or_gone(tmp_path / "file")
    assert is_regular_or_gone(tmp_path / "link")
    assert not is_regular_or_gone(tmp_path / "fifo") and not is_regular_or_gone(tmp_path)


def test_open_nofollow_refuses_a_fifo_at_once_with_eisdir_and_the_path(tmp_path):
    import errno
    import signal

    from provisioning.sidecar import open_nofollow

    fifo = tmp_path / "engine.plan"
    os.mkfifo(fifo)

    def _hung(*_):
        raise TimeoutError("open_nofollow waited for a writer on a FIFO")

    old = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(5)
    try:
        with pytest.raises(IsADirectoryError) as caught:
            open_nofollow(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert (caught.value.errno, caught.value.strerror, caught.value.filename) == (
        errno.EISDIR, "not a regular file", str(fifo))


def test_a_fifo_sidecar_is_named_as_such_and_not_read(tmp_path):
    engine = tmp_path / "det.plan"
    Sha256Sidecar.write_atomic_and_sidecar(engine, b"plan")
    sidecar_path = Sha256Sidecar.path_for(engine)
    sidecar_path.unlink()
    os.mkfifo(sidecar_path)
    check = Sha256Sidecar.check(engine)
    assert (check.ok, check.reason) == (False, f"sidecar {sidecar_path.name} is not a regular file (a FIFO?); not read")


def test_a_mismatch_carries_the_digest_and_size_of_the_bytes_found(tmp_path):
    import hashlib

    engine = tmp_path / "det.plan"
    Sha256Sidecar.write_atomic_and_sidecar(engine, b"plan")
    engine.write_bytes(b"other bytes")
    check = Sha256Sidecar.check(engine)
    assert (check.ok, check.reason, check.sha256, check.size) == (
        False, "engine bytes do not match the sidecar (corrupt or truncated)",
        hashlib.sha256(b"other bytes").hexdigest(), 11)
