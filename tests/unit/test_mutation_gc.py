"""What mutation testing of provisioning/gc.py found unpinned (benchmarks/mutation.sh).

What `engines-gc` would delete and why (its lines), what it keeps (a live builder's
temporary file, a symlink planted under an engine's name, whatever is outside the cache),
the size budget's least-recently-used order and its notes, and `--max-size` parsing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning import Sha256Sidecar
from provisioning import gc
from provisioning.cache import LOCK_DIR, engine_lock, ensure_cache_dir, entry_files
from provisioning.gc import parse_size, plan_gc, scan_cache
from provisioning.manifest import manifest_path_for

HOST = "sm90-h200"
DEAD_PID = 4_000_000  # above any pid_max: never a live process


def _engine_name(digest: str, host: str = HOST) -> str:
    return f"det.fp16.trt-10.16.1.11.{host}.{digest}.engine"


def _engine(cache: Path, digest: str, payload: bytes = b"plan" * 100, host: str = HOST, age: float = 0) -> Path:
    engine = cache / _engine_name(digest, host)
    ensure_cache_dir(cache)
    Sha256Sidecar.write_atomic_and_sidecar(engine, payload,
                                           before_commit=lambda s, n: {manifest_path_for(engine): b"{}"})
    if age:
        when = 1_700_000_000 - age
        os.utime(engine, (when, when))
    return engine


def _on_disk(engine: Path) -> int:
    return sum(p.stat().st_size for p in entry_files(engine) if p.exists())


def _existing(engine: Path) -> tuple[Path, ...]:
    return tuple(p for p in entry_files(engine) if p.exists())  # --json lists only paths that exist


def _temp(cache: Path, pid: int | str, token: str = "0a1b2c3d", data: bytes = b"partial") -> Path:
    path = cache / f".{_engine_name('0badc0de')}.{pid}.{token}.incomplete"
    path.write_bytes(data)
    return path


def _reasons(plan) -> dict[str, str]:
    return {(item.engine.path if item.engine is not None else item.paths[0]).name: item.reason for item in plan.items}


# --- leftovers ---------------------------------------------------------------------------------------

def test_leftovers_are_listed_in_name_order_with_their_owner_and_size(tmp_path, builder):
    dead = _temp(tmp_path, DEAD_PID, "aaaaaaaa", b"x" * 10)
    live = _temp(tmp_path, builder.pid, "bbbbbbbb")  # a live build is still writing it
    also_dead = _temp(tmp_path, DEAD_PID, "cccccccc", b"y" * 5)
    no_pid = tmp_path / ".stray.incomplete"
    no_pid.write_bytes(b"z" * 3)
    pid_zero = _temp(tmp_path, 0, "dddddddd", b"w")
    orphan = tmp_path / (_engine_name("0badc0de") + ".sha256")
    orphan.write_text("0" * 64 + "  x.engine\n")
    plan = plan_gc(scan_cache(tmp_path), current=[], host_keys=[HOST])
    assert [(item.paths, item.size, item.reason) for item in plan.items] == sorted([
        ((dead,), 10, f"leftover temporary file (owner pid {DEAD_PID} is gone)"),
        ((also_dead,), 5, f"leftover temporary file (owner pid {DEAD_PID} is gone)"),
        ((no_pid,), 3, "leftover temporary file (no owner pid)"),
        ((pid_zero,), 1, "leftover temporary file (owner pid 0 is gone)"),
        ((orphan,), orphan.stat().st_size, "orphan: its engine is gone"),
    ], key=lambda row: row[0][0].name)
    assert live not in {p for item in plan.items for p in item.paths}
    assert plan.cache_dir == tmp_path and plan.bytes_before == scan_cache(tmp_path).total_bytes
    freed = 10 + 5 + 3 + 1 + orphan.stat().st_size
    result = plan.execute()
    assert live.exists() and not any(p.exists() for p in (dead, also_dead, no_pid, pid_zero, orphan))
    assert sorted(result.deleted) == sorted([dead, also_dead, no_pid, pid_zero, orphan])
    assert result.bytes_freed == plan.bytes_freed == freed


@pytest.fixture
def builder():
    """A live process of another build (its temporary files are in use); it dies on any signal."""
    process = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                "for s in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:\n"
                                "    try: signal.signal(s, signal.SIG_DFL)\n"
                                "    except (OSError, ValueError): pass\n"
                                "time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_a_temporary_file_of_a_live_builder_is_kept_and_the_builder_left_alone(tmp_path, builder):
    temp = _temp(tmp_path, builder.pid)
    plan = plan_gc(scan_cache(tmp_path), current=[], host_keys=[HOST])
    assert plan.items == () and temp.exists()
    with pytest.raises(subprocess.TimeoutExpired):  # GC only asks whether the owner exists; it never signals it
        builder.wait(timeout=1)


def test_owners_that_exist_are_kept_even_as_pid_1_or_another_users_process(tmp_path, monkeypatch):
    real_kill = os.kill

    def kill(pid, sig):  # pid 1 (a builder that is a container's init) and a process of another user
        if pid == 1:
            return None
        if pid == 77777:
            raise PermissionError(1, "Operation not permitted")
        return real_kill(pid, sig)

    monkeypatch.setattr(gc.os, "kill", kill)
    init, other_user = _temp(tmp_path, 1, "aaaaaaaa"), _temp(tmp_path, 77777, "bbbbbbbb")
    scan = scan_cache(tmp_path)
    assert [(f.owner_pid, f.owner_alive) for f in scan.leftovers] == [(1, True), (77777, True)]
    assert plan_gc(scan, current=[], host_keys=[HOST]).items == ()
    assert init.exists() and other_user.exists()


def test_a_scratch_folder_is_sized_by_its_files_and_removed_whole(tmp_path):
    scratch = tmp_path / f".{_engine_name('0badc0de')}.{DEAD_PID}.0a1b2c3d.incomplete"
    (scratch / "deep").mkdir(parents=True)
    (scratch / "a.bin").write_bytes(b"a" * 100)
    (scratch / "deep" / "b.bin").write_bytes(b"b" * 20)
    plan = plan_gc(scan_cache(tmp_path), current=[], host_keys=[HOST])
    assert [(item.paths, item.size) for item in plan.items] == [((scratch,), 120)]
    assert plan.execute().deleted == (scratch,) and not scratch.exists()


def test_a_temporary_name_that_is_a_symlink_is_removed_as_a_link_and_never_followed(tmp_path):
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder" / "keep.bin").write_bytes(b"k" * 1000)
    (outside / "file.bin").write_bytes(b"f" * 500)
    cache = tmp_path / "cache"
    cache.mkdir()
    to_folder = cache / f".{_engine_name('0badc0de')}.{DEAD_PID}.aaaaaaaa.incomplete"
    to_file = cache / f".{_engine_name('0badc0de')}.{DEAD_PID}.bbbbbbbb.incomplete"
    to_folder.symlink_to(outside / "folder")
    to_file.symlink_to(outside / "file.bin")
    plan = plan_gc(scan_cache(cache), current=[], host_keys=[HOST])
    assert [(item.paths[0], item.size) for item in plan.items] == [
        (to_folder, os.lstat(to_folder).st_size), (to_file, os.lstat(to_file).st_size)]  # the links, not targets
    plan.execute()
    assert not os.path.lexists(to_folder) and not os.path.lexists(to_file)
    assert (outside / "folder" / "keep.bin").read_bytes() == b"k" * 1000 and (outside / "file.bin").exists()


def test_a_file_already_gone_at_deletion_is_not_reported_deleted(tmp_path):
    temp = _temp(tmp_path, DEAD_PID)
    plan = plan_gc(scan_cache(tmp_path), current=[], host_keys=[HOST])
    temp.unlink()  # another engines-gc got there first
    assert plan.execute().deleted == ()


# --- engines -----------------------------------------------------------------------------------------

def test_engines_are_collected_with_all_their_files_and_the_right_reason(tmp_path):
    current = _engine(tmp_path, "11111111")
    superseded = _engine(tmp_path, "22222222")
    foreign = _engine(tmp_path, "33333333", host="sm86")
    planted = tmp_path / _engine_name("44444444")
    planted.symlink_to(current)  # a symlink under an engine's name is not ours: never touched
    (tmp_path / "notes.engine").write_bytes(b"not a canonical name")
    plan = plan_gc(scan_cache(tmp_path), current=[current.name], host_keys=[HOST])
    assert _reasons(plan) == {superseded.name: "superseded build of this host",
                              foreign.name: "engine of another host (sm86)"}
    assert {item.paths for item in plan.items} == {_existing(superseded), _existing(foreign)}  # issue 22 item 32
    assert plan.bytes_freed == _on_disk(superseded) + _on_disk(foreign)
    result = plan.execute()
    assert result.bytes_freed == plan.bytes_freed and plan.bytes_after == plan.bytes_before - plan.bytes_freed
    assert os.path.islink(planted) and (tmp_path / "notes.engine").exists() and Sha256Sidecar.verify(current)


def test_an_engine_is_sized_by_the_files_it_has(tmp_path):
    engine = _engine(tmp_path, "11111111", b"p" * 1000)  # no build log, no commit record, no .verified
    (scan,) = scan_cache(tmp_path).engines
    assert scan.size == _on_disk(engine) and scan.size < 1000 + 64 + 200 + 100


def test_an_engine_locked_by_a_builder_is_kept_and_listed(tmp_path):
    superseded = _engine(tmp_path, "22222222")
    other = _engine(tmp_path, "33333333")
    lock = engine_lock(superseded)
    lock.acquire()
    try:
        plan = plan_gc(scan_cache(tmp_path), current=[], host_keys=[HOST])
    finally:
        lock.release()
    assert [e.path for e in plan.kept_locked] == [superseded]
    assert _reasons(plan) == {other.name: "superseded build of this host"}


def test_a_missing_cache_folder_is_an_empty_cache_of_that_folder(tmp_path):
    scan = scan_cache(tmp_path / "nothing-yet")
    assert scan.cache_dir == tmp_path / "nothing-yet" and scan.engines == () and scan.leftovers == ()


# --- the size budget ---------------------------------------------------------------------------------

def _aged(cache: Path) -> list[Path]:
    """Four current engines of one size; by name order a, b, c, d, by age (oldest first) c, a, d, b."""
    ages = {"aaaaaaaa": 300, "bbbbbbbb": 100, "cccccccc": 400, "dddddddd": 200}
    return [_engine(cache, digest, age=age) for digest, age in ages.items()]


def test_the_budget_evicts_least_recently_used_first_and_stops_as_soon_as_the_cache_fits(tmp_path):
    a, b, c, d = _aged(tmp_path)
    size = _on_disk(a)
    names = [e.name for e in (a, b, c, d)]
    plan = plan_gc(scan_cache(tmp_path), current=names, host_keys=[HOST], max_size=2 * size)  # fits exactly
    assert [item.engine.path for item in plan.items] == [c, a]
    assert [item.paths for item in plan.items] == [_existing(c), _existing(a)]  # what --json lists
    assert {item.reason for item in plan.items} == {"over the size budget (least recently used)"}
    assert plan.notes == () and plan.bytes_after == 2 * size
    assert plan_gc(scan_cache(tmp_path), current=names, host_keys=[HOST], max_size=4 * size).items == ()


def test_a_locked_engine_counts_against_the_budget_and_the_next_oldest_goes_instead(tmp_path):
    a, b, c, d = _aged(tmp_path)
    size = _on_disk(a)
    names = [e.name for e in (a, b, c, d)]
    lock = engine_lock(c)  # the oldest, locked by a build
    lock.acquire()
    try:
        plan = plan_gc(scan_cache(tmp_path), current=names, host_keys=[HOST], max_size=2 * size)
    finally:
        lock.release()
    assert [item.engine.path for item in plan.items] == [a, d]
    assert plan.notes == (f"{c.name}: kept over the size budget, locked by a live process",)


def test_a_locked_superseded_engine_counts_against_the_budget(tmp_path):
    a, b, c, d = _aged(tmp_path)
    old = _engine(tmp_path, "eeeeeeee")
    size = _on_disk(a)
    lock = engine_lock(old)
    lock.acquire()
    try:
        plan = plan_gc(scan_cache(tmp_path), current=[e.name for e in (a, b, c, d)], host_keys=[HOST],
                       max_size=3 * size)
    finally:
        lock.release()
    assert [item.engine.path for item in plan.items] == [c, a] and [e.path for e in plan.kept_locked] == [old]


def test_a_budget_that_files_in_use_prevent_is_reported(tmp_path, builder):
    engine = _engine(tmp_path, "11111111")
    live = _temp(tmp_path, builder.pid, data=b"L" * 50)  # in use: kept
    plan = plan_gc(scan_cache(tmp_path), current=[engine.name], host_keys=[HOST], max_size=10)
    assert [item.engine.path for item in plan.items] == [engine]
    assert plan.notes == ("the budget cannot be met without deleting locked engines or files in use",)
    fits = plan_gc(scan_cache(tmp_path), current=[engine.name], host_keys=[HOST], max_size=live.stat().st_size)
    assert fits.notes == ()  # exactly at the budget once the engine goes


# --- --max-size --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [("1048576", 1048576), ("500M", 500 * 1024**2), ("2g", 2 * 1024**3),
                                         (" 1.5 GiB ", int(1.5 * 1024**3)), ("10kb", 10240), ("1T", 1024**4),
                                         (4096, 4096)])
def test_sizes_are_read_in_binary_units(text, size):
    assert parse_size(text) == size


def test_an_unreadable_size_says_which_forms_are_accepted():
    with pytest.raises(ValueError, match=r"^size 'lots' not understood; use bytes or a number with K, M, G or T "
                                         r"\(e\.g\. 500M, 2G\)$"):
        parse_size("lots")


def test_the_lock_folder_is_not_garbage(tmp_path):
    engine = _engine(tmp_path, "11111111")
    with engine_lock(engine):
        pass
    assert (tmp_path / LOCK_DIR).is_dir()
    assert scan_cache(tmp_path).leftovers == ()
