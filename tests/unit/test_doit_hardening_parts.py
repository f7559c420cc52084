"""In-process tests of issue 22's newcomer fixes (mutation-visible): short FAILED reasons, the
build-lock holder record, and the task option ``--config`` read from doit's command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioning import failtext, lockwait
from provisioning.doit import runmode


# --- failtext ----------------------------------------------------------------------------------------------------

def test_a_reason_that_fits_is_kept_as_it_is():
    text = "backbone det: x; y " + "z" * (failtext.MAX_REASON - 19)
    assert len(text) == failtext.MAX_REASON and not failtext.is_long(text)
    assert failtext.short_reason(text, "det.build.log") == text
    assert failtext.short_reason("") == ""


def test_a_long_reason_keeps_its_first_error_and_counts_the_others():
    errors = [f"node n{i} (Op): unsupported [INVALID_NODE]" for i in range(40)]
    text = "backbone det: could not parse det.onnx: " + "; ".join(errors)
    assert failtext.is_long(text)
    assert failtext.short_reason(text, "det.build.log") == (
        f"backbone det: could not parse det.onnx: {errors[0]} (and 39 more; the whole text is in det.build.log)")
    assert failtext.short_reason(text).endswith("(and 39 more; the rest is not shown)")


def test_a_long_single_error_is_cut_and_a_second_line_is_pointed_to():
    text = "e" * (failtext.MAX_REASON + 1)
    assert failtext.short_reason(text, "x.log") == "e" * (failtext.MAX_REASON - 3) + "... (the whole text is in x.log)"
    assert not failtext.is_long("first\nsecond") and not failtext.is_long("")
    assert failtext.short_reason("first; a\nsecond", "x.log") == "first; a"  # the first line, as always
    assert failtext.short_reason("a; " + text + "\nsecond", "x.log") == "a (and 1 more; the whole text is in x.log)"


def test_the_build_log_keeps_its_text_and_gets_the_whole_failure(tmp_path: Path):
    log = failtext.build_log_for(tmp_path, "det.engine")
    assert log == tmp_path / "det.engine.build.log"
    log.write_text("builder said things")
    assert failtext.append_to_build_log(log, "FAILED det: BackendError", "a; b\nc\n")
    assert log.read_text() == "builder said things\n# FAILED det: BackendError\na; b\nc\n"


def test_the_build_log_is_replaced_not_written_through_a_link_or_a_fifo(tmp_path: Path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    link = tmp_path / "det.engine.build.log"
    link.symlink_to(outside)
    assert failtext.append_to_build_log(link, "FAILED det: X", "whole")
    assert outside.read_text() == "precious" and not link.is_symlink()
    assert link.read_text() == "# FAILED det: X\nwhole\n"
    fifo = tmp_path / "fifo.build.log"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert failtext.append_to_build_log(fifo, "FAILED det: X", "whole")  # never blocks on the FIFO
    assert time.monotonic() - started < 5 and fifo.read_text() == "# FAILED det: X\nwhole\n"
    assert not failtext.append_to_build_log(tmp_path / "missing" / "x.log", "h", "t")


# --- lockwait ----------------------------------------------------------------------------------------------------

def _engine(tmp_path: Path) -> Path:
    (tmp_path / ".locks").mkdir()
    return tmp_path / "det.fp32.ort-1.32.0.x86_64-avx512-9a44e4.94483059.engine"


def test_the_holder_record_names_this_process_and_goes_with_the_lock(tmp_path: Path):
    from provisioning.cache import engine_lock

    engine = _engine(tmp_path)
    with lockwait.build_lock(engine_lock(engine), engine, "det", 0):
        holder = lockwait.read_holder(engine)
        assert holder["pid"] == os.getpid() and abs(holder["since"] - time.time()) < 5
        assert lockwait.holder_path(engine).name == engine.name + ".lock.holder"
    assert not lockwait.holder_path(engine).exists()
    assert [p.name for p in (tmp_path / ".locks").iterdir()] in ([engine.name + ".lock"], [])


@pytest.mark.parametrize("content", [b"not json", b"[1]", b'{"pid": "1", "since": 1, "host": "h"}',
                                     b'{"pid": true, "since": 1, "host": "h"}', b'{"pid": 0, "since": 1, "host": "h"}',
                                     b'{"pid": 1, "since": 1e30, "host": "h"}', b'{"pid": 1, "since": 1, "host": 3}',
                                     b'{"pid": 1, "since": "1", "host": "h"}'])
def test_a_planted_or_broken_holder_record_is_no_holder(tmp_path: Path, content: bytes):
    engine = _engine(tmp_path)
    lockwait.holder_path(engine).write_bytes(content)
    assert lockwait.read_holder(engine) is None
    assert lockwait.holder_text(None) == "holder unknown"


def test_a_record_of_a_dead_process_a_huge_one_or_a_fifo_is_no_holder(tmp_path: Path):
    import socket

    engine = _engine(tmp_path)
    path = lockwait.holder_path(engine)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "since": time.time(), "host": socket.gethostname()}
    path.write_text(json.dumps(record))
    assert lockwait.read_holder(engine) is None
    path.write_text(json.dumps({**record, "host": "another-host"}))  # another host's pid cannot be checked here
    assert lockwait.read_holder(engine)["host"] == "another-host"
    path.write_text(json.dumps({**record, "pid": os.getpid(), "pad": "x" * 5000}))
    assert lockwait.read_holder(engine) is None
    path.unlink()
    os.mkfifo(path)
    assert lockwait.read_holder(engine) is None  # never blocks


def test_the_holder_text_says_pid_host_time_and_age():
    holder = {"pid": 42, "host": "gpu-3\x1b[31m", "since": 1_700_000_000.0}
    assert lockwait.holder_text(holder, now=1_700_000_002.4) == "pid 42 on gpu-3?[31m, since 22:13:20 UTC, 2 s ago"


def test_a_holder_record_is_written_through_a_rename_never_through_a_planted_link(tmp_path: Path):
    engine = _engine(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("precious")
    lockwait.holder_path(engine).symlink_to(outside)
    lockwait.write_holder(engine)
    assert outside.read_text() == "precious" and not lockwait.holder_path(engine).is_symlink()
    assert lockwait.read_holder(engine)["pid"] == os.getpid()
    lockwait.clear_holder(engine)
    lockwait.clear_holder(engine)  # twice: nothing to remove is fine
    assert sorted(p.name for p in (tmp_path / ".locks").iterdir()) == []


# --- the --config task option --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "value"), [
    (["doit", "engines", "--config", "a.yaml"], "a.yaml"),
    (["doit", "engines:det", "--config=b.yaml"], "b.yaml"),
    (["doit", "-n", "2", "engines", "--config", "c.yaml"], "c.yaml"),
    (["doit", "run", "engines", "--config", "a.yaml", "--config", "d.yaml"], "d.yaml"),
    (["doit", "other", "--config", "a.yaml"], None),  # another task's option
    (["doit", "engines", "other", "--config", "a.yaml"], None),
    (["doit", "other", "--config", "engines"], None),  # a value that looks like the task's name
    (["doit", "engines", "--config"], None),
    (["doit", "models", "--config", "a.yaml"], None),
    (["doit", "engines_export", "--config", "a.yaml"], None),
])
def test_the_config_option_belongs_to_the_engines_tasks_it_follows(monkeypatch, argv, value):
    monkeypatch.setattr(sys, "argv", argv)
    assert runmode._task_option("engines", "config") == value


def test_the_config_option_is_read_only_on_doits_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "engines", "--config", "a.yaml"])
    assert runmode._task_option("engines", "config") is None
    main = type(sys)("__main__")
    main.__spec__ = type("Spec", (), {"name": "doit.__main__"})()
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/x/__main__.py", "engines", "--config", "a.yaml"])
    assert runmode._task_option("engines", "config") == "a.yaml"
