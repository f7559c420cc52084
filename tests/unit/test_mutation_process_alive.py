"""A pid read from the cache folder may be anything: no reader of one ends in a traceback.

gc reads a temporary file's owner from its name, the lock wait reads a holder's pid from
``.locks/<engine>.lock.holder``; both are written by whoever can write the cache folder.
A pid too large for the kernel made ``os.kill`` raise OverflowError in both (a traceback
from ``engines-gc``, and from a build waiting on the lock).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from provisioning.cache import LOCK_DIR
from provisioning.gc import plan_gc, scan_cache
from provisioning.lockwait import holder_path, read_holder
from provisioning.tempnames import process_alive

HUGE = 10 ** 20


@pytest.mark.parametrize("pid, alive", [(None, False), (0, False), (-4, False), (HUGE, False),
                                        (os.getpid(), True)])
def test_process_alive_answers_for_any_pid(pid, alive) -> None:
    assert process_alive(pid) is alive


def test_a_process_of_another_user_is_alive(monkeypatch) -> None:
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert process_alive(4242) is True


def test_gc_collects_a_temporary_name_with_a_pid_too_large_for_the_kernel(tmp_path: Path) -> None:
    planted = tmp_path / f".det.engine.{HUGE}.abcd1234.incomplete"
    planted.write_bytes(b"x")
    scan = scan_cache(tmp_path)
    assert [(f.path, f.owner_pid, f.owner_alive) for f in scan.leftovers] == [(planted, HUGE, False)]
    assert [item.paths for item in plan_gc(scan, current=[], host_keys=[]).items] == [(planted,)]


def test_a_holder_record_with_a_pid_too_large_for_the_kernel_is_no_holder(tmp_path: Path) -> None:
    engine = tmp_path / "det.engine"
    (tmp_path / LOCK_DIR).mkdir()
    record = {"pid": HUGE, "since": time.time() - 5, "host": socket.gethostname()[:64]}
    holder_path(engine).write_text(json.dumps(record))
    assert read_holder(engine) is None
