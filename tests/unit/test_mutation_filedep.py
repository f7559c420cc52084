"""doit's ``file_dep`` check (Sha256FileChecker): an edited ONNX is always seen, an untouched one never re-read.

Found by mutation testing (benchmarks/mutation.sh): nothing tested this checker in-process.
doit asks it, for every ``file_dep`` of every task, whether the file changed since the state
saved after the last success; a wrong "unchanged" would keep a stale engine up to date.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from provisioning.doit import filedep, tasks
from provisioning.doit.filedep import Sha256FileChecker
from provisioning.onnxinfo import _KNOWN_DIGESTS, stat_signature


def _file(tmp_path: Path, content: bytes = b"onnx bytes " * 100, mtime: float = 1_600_000_000.0) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return path


def _state(path: Path) -> tuple[float, int, str]:
    return os.path.getmtime(path), path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_saved_state_is_mtime_size_and_the_sha256_of_the_content(tmp_path):
    path = _file(tmp_path)
    assert Sha256FileChecker().get_state(str(path), None) == _state(path)


def test_no_new_state_is_saved_while_the_mtime_is_unchanged(tmp_path):
    path = _file(tmp_path)
    state = _state(path)
    assert Sha256FileChecker().get_state(str(path), state) is None
    os.utime(path, (1_700_000_000, 1_700_000_000))  # touched: a new state (same content, new mtime)
    assert Sha256FileChecker().get_state(str(path), state) == _state(path)


def test_an_unchanged_file_is_not_modified_and_not_read(tmp_path, monkeypatch):
    path = _file(tmp_path)
    state = _state(path)
    monkeypatch.setattr(filedep, "hash_file", lambda p: pytest.fail("read although the mtime is unchanged"))
    checker = Sha256FileChecker()
    assert checker.check_modified(str(path), checker.info(str(path)), state) is False


def test_a_touched_file_with_the_same_bytes_is_not_modified(tmp_path):
    path = _file(tmp_path)
    state = _state(path)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    checker = Sha256FileChecker()
    assert checker.check_modified(str(path), checker.info(str(path)), state) is False


def test_an_edit_of_the_same_size_is_modified(tmp_path):
    path = _file(tmp_path, b"a" * 100)
    state = _state(path)
    _file(tmp_path, b"b" * 100, mtime=1_700_000_000.0)
    checker = Sha256FileChecker()
    assert checker.check_modified(str(path), checker.info(str(path)), state) is True


def test_an_edit_of_another_size_is_modified_without_reading_it(tmp_path, monkeypatch):
    path = _file(tmp_path, b"a" * 100)
    state = _state(path)
    _file(tmp_path, b"a" * 101, mtime=1_700_000_000.0)
    monkeypatch.setattr(filedep, "hash_file", lambda p: pytest.fail("read although the size differs"))
    checker = Sha256FileChecker()
    assert checker.check_modified(str(path), checker.info(str(path)), state) is True


@pytest.mark.parametrize("state", [None, "abc", (1.0, 2), [1.0, 2, "x", 4]], ids=["none", "text", "short", "long"])
def test_a_state_another_checker_wrote_counts_as_modified(tmp_path, state):
    path = _file(tmp_path)
    checker = Sha256FileChecker()
    assert checker.check_modified(str(path), checker.info(str(path)), state) is True


def test_the_digest_the_action_computed_is_used_when_the_file_is_unchanged_since(tmp_path, monkeypatch):
    path = _file(tmp_path, b"a" * 100)
    state = _state(path)
    _file(tmp_path, b"b" * 100, mtime=1_700_000_000.0)
    signature = stat_signature(os.stat(path, follow_symlinks=False))
    monkeypatch.setitem(_KNOWN_DIGESTS, os.path.abspath(path), (signature, state[2]))  # "the action hashed it"
    monkeypatch.setattr(filedep, "hash_file", lambda p: pytest.fail("read although the action's digest is known"))
    checker = Sha256FileChecker()
    assert checker.check_modified(str(path), checker.info(str(path)), state) is False
    assert checker.get_state(str(path), None)[2] == state[2]


def test_exists_info_and_the_error_type_doit_catches(tmp_path):
    path = _file(tmp_path)
    checker = Sha256FileChecker()
    assert checker.exists(str(path)) is True and checker.exists(str(tmp_path / "gone.onnx")) is False
    assert checker.info(str(path)).st_size == path.stat().st_size
    assert Sha256FileChecker.CheckerError is OSError
    with pytest.raises(OSError):
        checker.info(str(tmp_path / "gone.onnx"))


def test_doit_config_uses_this_checker_and_an_sqlite_database(tmp_path, monkeypatch):
    monkeypatch.setenv(tasks.DB_ENV, str(tmp_path / "state" / "db"))
    config = tasks.doit_config()
    assert config["check_file_uptodate"] is Sha256FileChecker
    assert config["backend"] == "sqlite3" and config["dep_file"] == str(tmp_path / "state" / "db")
    assert (tmp_path / "state").is_dir()  # created: sqlite3 cannot create folders
    assert config["default_tasks"] is tasks._DEFAULT_TASKS
    monkeypatch.delenv(tasks.DB_ENV)
    assert tasks.doit_config(verbosity=2)["dep_file"] == tasks.DEFAULT_DB
    assert tasks.doit_config(verbosity=2)["verbosity"] == 2
