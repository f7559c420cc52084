"""What mutation testing of provisioning/gc.py found unpinned in its lock handling (issue 22).

The lock files in ``.locks/`` of engines that are gone and the ``.lock.holder`` records of
builds that are not running are collected, in-process (mutmut counts no subprocess test):
which entries of ``.locks`` are listed and as what, which are never touched (a held lock,
another kind of lock, the lock of an engine still in the cache), that a lock taken between
the plan and its execution is kept, and that a symlinked ``.locks`` is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from provisioning import Sha256Sidecar
from provisioning import gc
from provisioning.cache import LOCK_DIR, ensure_cache_dir, lock_path_for
from provisioning.errors import UnsafePathError
from provisioning.gc import GcItem, GcPlan, LeftoverFile, plan_gc, scan_cache
from provisioning.lockwait import holder_path

HOST = "sm90-h200"
DEAD_PID = 4_000_000  # above any pid_max: never a live process


def _name(digest: str) -> str:
    return f"det.fp16.trt-10.16.1.11.{HOST}.{digest}.engine"


def _engine(cache: Path, digest: str) -> Path:
    engine = cache / _name(digest)
    ensure_cache_dir(cache)
    Sha256Sidecar.write_atomic_and_sidecar(engine, b"plan" * 100)
    return engine


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"L" * size)
    return path


@pytest.fixture
def builder():
    """A live process (the owner of a temporary file in ``.locks``)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


class _Listing(list):
    """What os.scandir returns, in a chosen order (usable in a with statement, as os.walk does)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _scandir_in_order(monkeypatch, first: list[str]) -> None:
    """List ``first`` (in that order) before everything else: skipping one of them must not end the scan."""
    real = os.scandir

    def scandir(path="."):
        with real(path) as entries:
            listed = list(entries)
        rank = {name: i for i, name in enumerate(first)}
        return _Listing(sorted(listed, key=lambda e: (rank.get(e.name, len(first)), e.name)))

    monkeypatch.setattr(gc.os, "scandir", scandir)


def test_the_lock_folder_lists_locks_of_gone_engines_holder_records_and_dead_temp_files(tmp_path, builder,
                                                                                         monkeypatch):
    present = _engine(tmp_path, "11111111")
    locks = tmp_path / LOCK_DIR
    own_lock = _file(lock_path_for(present), 3)  # the lock of an engine in the cache: not garbage
    own_holder = _file(holder_path(present), 7)  # a killed build's record of an engine in the cache
    gone_lock = _file(locks / (_name("22222222") + ".lock"), 5)
    gone_holder = _file(locks / (_name("22222222") + ".lock.holder"), 11)
    held = _file(locks / (_name("33333333") + ".lock"), 2)  # a build of an engine not published yet
    held_holder = _file(locks / (_name("33333333") + ".lock.holder"), 13)
    other_lock = _file(locks / "timing-cache.lock", 4)  # another kind of lock: never touched
    readme = _file(locks / "README", 6)
    dead_temp = _file(locks / f".{gone_lock.name}.{DEAD_PID}.aaaaaaaa.incomplete", 17)
    live_temp = _file(locks / f".{gone_lock.name}.{builder.pid}.bbbbbbbb.incomplete", 19)
    _scandir_in_order(monkeypatch, [readme.name, other_lock.name, own_lock.name, dead_temp.name, live_temp.name])
    build = FileLock(str(held), timeout=0)
    build.acquire()
    try:
        scan = scan_cache(tmp_path)
    finally:
        build.release()
    assert list(scan.leftovers) == sorted([
        LeftoverFile(own_holder, 7, "holder", owner_alive=False),
        LeftoverFile(gone_lock, 5, "lock", owner_alive=False),
        LeftoverFile(gone_holder, 11, "holder", owner_alive=False),
        LeftoverFile(held, 2, "lock", owner_alive=True),
        LeftoverFile(held_holder, 13, "holder", owner_alive=True),
        LeftoverFile(dead_temp, 17, "temp", DEAD_PID, False),
        LeftoverFile(live_temp, 19, "temp", builder.pid, True),
    ], key=lambda f: f.path.name)
    plan = plan_gc(scan, current=[present.name], host_keys=[HOST])
    assert sorted(plan.items, key=lambda i: i.paths[0].name) == sorted([
        GcItem((own_holder,), 7, "lock holder record of a build that is not running", holder=True),
        GcItem((gone_lock,), 5, "lock file of an engine that is gone", lock=True),
        GcItem((gone_holder,), 11, "lock holder record of a build that is not running", holder=True),
        GcItem((dead_temp,), 17, f"leftover temporary file (owner pid {DEAD_PID} is gone)"),
    ], key=lambda i: i.paths[0].name)
    result = plan.execute()
    assert sorted(result.deleted) == sorted([own_holder, gone_lock, gone_holder, dead_temp])
    assert result.bytes_freed == 7 + 5 + 11 + 17 and result.skipped == ()
    for kept in (own_lock, held, held_holder, other_lock, readme, live_temp):
        assert kept.exists(), kept
    assert Sha256Sidecar.verify(present)


def test_the_holder_record_of_an_engine_being_deleted_goes_with_the_engine_not_twice(tmp_path):
    superseded = _engine(tmp_path, "22222222")
    current = _engine(tmp_path, "11111111")
    record = _file(holder_path(superseded), 9)
    current_record = _file(holder_path(current), 8)
    plan = plan_gc(scan_cache(tmp_path), current=[current.name], host_keys=[HOST])
    (engine_item, holder_item) = sorted(plan.items, key=lambda i: i.engine is None)
    assert engine_item.engine.path == superseded and record in engine_item.paths
    assert holder_item == GcItem((current_record,), 8, "lock holder record of a build that is not running",
                                 holder=True)
    assert plan.execute().skipped == () and not record.exists() and not current_record.exists()


def test_a_lock_or_holder_taken_between_plan_and_execution_is_kept_and_the_rest_still_goes(tmp_path):
    locks = tmp_path / LOCK_DIR
    taken = _file(locks / (_name("22222222") + ".lock"), 5)
    taken_holder = _file(locks / (_name("33333333") + ".lock.holder"), 6)
    its_lock = _file(locks / (_name("33333333") + ".lock"), 0)
    free = _file(locks / (_name("44444444") + ".lock"), 7)
    free_holder = _file(locks / (_name("55555555") + ".lock.holder"), 8)
    temp = _file(tmp_path / f".{_name('66666666')}.{DEAD_PID}.aaaaaaaa.incomplete", 9)
    plan = GcPlan(tmp_path, (
        GcItem((taken,), 5, "lock file of an engine that is gone", lock=True),
        GcItem((taken_holder,), 6, "lock holder record of a build that is not running", holder=True),
        GcItem((free,), 7, "lock file of an engine that is gone", lock=True),
        GcItem((free_holder,), 8, "lock holder record of a build that is not running", holder=True),
        GcItem((temp,), 9, "leftover temporary file"),
    ))
    first, second = FileLock(str(taken), timeout=0), FileLock(str(its_lock), timeout=0)
    first.acquire()
    second.acquire()
    try:
        result = plan.execute()
    finally:
        first.release()
        second.release()
    assert result.skipped == (f"{taken.name}: a live process took this lock meanwhile; kept",
                              f"{taken_holder.name}: a build took its lock meanwhile; kept")
    assert result.deleted == (free, free_holder, temp) and result.bytes_freed == 7 + 8 + 9
    assert taken.exists() and taken_holder.exists() and its_lock.exists()
    assert not free.exists() and not free_holder.exists() and not temp.exists()


def test_a_symlinked_lock_folder_is_refused_and_a_file_there_is_no_lock_folder(tmp_path):
    outside = tmp_path / "outside"
    _file(outside / (_name("22222222") + ".lock"), 5)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / LOCK_DIR).symlink_to(outside)
    with pytest.raises(UnsafePathError) as caught:
        scan_cache(cache)
    assert str(caught.value) == (f"lock folder {cache / LOCK_DIR} is a symlink (not followed; nothing in the cache "
                                 "creates one); remove it (the lock folder must be inside the cache)")
    (cache / LOCK_DIR).unlink()
    (cache / LOCK_DIR).write_bytes(b"not a folder")
    assert scan_cache(cache).leftovers == ()
