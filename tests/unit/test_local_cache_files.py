"""The local cache's file rules one by one (issue 22 items 3, 4, 10, 32), with real files, FIFOs and processes.

The commands that reach these rules are exercised in tests/reliability/test_lock_links.py
and test_fifos.py; here each rule is pinned at its function, fast, so that a hand mutant of
one (benchmarks/hand_mutants/localfs.json) fails a test of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.cache import LOCK_DIR, check_lock_path, lock_held, read_events, safe_lock
from provisioning.errors import UnsafePathError
from provisioning.gc import plan_gc, scan_cache
from tests.conftest import REPO

NAME = "det.fp32.ort-1.23.2.x86_64-avx512-1a2b3c.0c4e7d21.engine"


def _run(code: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """``code`` in a child process, so that a call blocking on a FIFO fails the test instead of hanging it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"blocked for {timeout} s: {code!r}")


def _hold(lock: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom filelock import FileLock\n"
            "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture
def locks(tmp_path) -> Path:
    folder = tmp_path / "cache" / LOCK_DIR
    folder.mkdir(parents=True)
    return folder


# --- open_nofollow and the event log: a FIFO is refused at once ----------------------------------------

@pytest.mark.parametrize("call", ["hash_file", "Sha256Sidecar.read", "read_events"])
def test_reading_a_fifo_returns_at_once(tmp_path, call):
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    code = {
        "hash_file": "import sys\nfrom provisioning.sidecar import hash_file\n"
                     "try:\n    hash_file(sys.argv[1])\nexcept OSError as exc:\n    print('refused', exc.strerror)\n",
        "Sha256Sidecar.read": "import sys, pathlib, os\nfrom provisioning.sidecar import Sha256Sidecar\n"
                              "p = pathlib.Path(sys.argv[1])\nos.rename(p, str(p) + '.sha256')\n"
                              "print('refused' if Sha256Sidecar.read(p) is None else 'read')\n",
        "read_events": "import sys, pathlib\nfrom provisioning.cache import read_events\n"
                       "print('refused' if read_events(pathlib.Path(sys.argv[1]).parent) == [] else 'read')\n",
    }[call]
    result = _run(code, str(fifo))
    assert result.returncode == 0 and result.stdout.startswith("refused"), result.stdout + result.stderr


def test_a_regular_file_is_read_in_blocking_mode(tmp_path):
    from provisioning.sidecar import open_nofollow

    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = open_nofollow(path)
    try:
        assert os.get_blocking(fd)
    finally:
        os.close(fd)


def test_the_event_log_reads_a_regular_file(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"a": 1}\n{torn\n')
    assert read_events(tmp_path) == [{"a": 1}]


# --- the lock helpers ----------------------------------------------------------------------------------

def test_an_absent_lock_is_not_held_and_probing_creates_nothing(locks):
    lock = locks / (NAME + ".lock")
    assert lock_held(lock) is False and not os.path.lexists(lock)
    check_lock_path(lock)
    assert not os.path.lexists(lock)


def test_a_lock_held_by_a_live_process_is_held_until_it_ends(locks):
    lock = locks / (NAME + ".lock")
    holder = _hold(lock)
    try:
        assert lock_held(lock) is True
    finally:
        holder.kill()
        holder.wait()
    assert lock_held(lock) is False
    with safe_lock(lock, timeout=0):
        assert lock.is_file()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "folder-symlink"])
@pytest.mark.parametrize("helper", ["lock_held", "safe_lock", "check_lock_path"])
def test_a_planted_lock_path_is_refused_by_every_helper_and_nothing_outside_changes(tmp_path, locks, kind, helper):
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / (NAME + ".lock")
    precious.write_bytes(b"precious\n")
    lock = locks / (NAME + ".lock")
    if kind == "symlink":
        os.symlink(precious, lock)
    elif kind == "hardlink":
        os.link(precious, lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        os.rmdir(locks)
        os.symlink(outside, locks)
    what = {"symlink": "is a symlink", "hardlink": "has 2 hard links", "fifo": "is not a regular file",
            "folder-symlink": "lock folder"}[kind]
    with pytest.raises(UnsafePathError, match=what) as info:
        {"lock_held": lock_held, "safe_lock": safe_lock, "check_lock_path": check_lock_path}[helper](lock)
    assert "\n" not in str(info.value) and "remove it" in str(info.value)
    assert precious.read_bytes() == b"precious\n"


# --- gc ------------------------------------------------------------------------------------------------

def test_gc_refuses_a_symlinked_lock_folder_even_in_an_empty_cache(tmp_path):
    """Item 10: no engine, so no lock is ever probed; the scan itself refuses the link."""
    cache = tmp_path / "cache"
    cache.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, cache / LOCK_DIR)
    with pytest.raises(UnsafePathError, match="lock folder .* is a symlink"):
        scan_cache(cache)


def test_an_orphan_lock_taken_between_plan_and_execute_is_kept(locks):
    lock = locks / (NAME + ".lock")
    lock.write_bytes(b"")
    plan = plan_gc(scan_cache(locks.parent), current=[], host_keys=[])
    assert [(i.paths, i.reason) for i in plan.items] == [((lock,), "lock file of an engine that is gone")]
    holder = _hold(lock)  # a build of that engine starts now
    try:
        result = plan.execute()
    finally:
        holder.kill()
        holder.wait()
    assert result.deleted == () and lock.exists()
    assert result.skipped == (f"{lock.name}: a live process took this lock meanwhile; kept",)
    assert plan_gc(scan_cache(locks.parent), current=[], host_keys=[]).execute().deleted == (lock,)
    assert not lock.exists()


def test_gc_keeps_locks_that_are_not_an_engines(locks):
    for name in ("timing-abc.lock", "gpu-GPU-1234.lock", "notes.txt", "timing-abc.lock.holder", NAME):
        (locks / name).write_bytes(b"")
    assert plan_gc(scan_cache(locks.parent), current=[], host_keys=[]).items == ()


def test_a_link_planted_at_a_lock_path_between_plan_and_execute_is_refused(tmp_path, locks):
    """The plan probed a regular lock file; at deletion gc opens the lock only through safe_lock again."""
    lock = locks / (NAME + ".lock")
    lock.write_bytes(b"")
    plan = plan_gc(scan_cache(locks.parent), current=[], host_keys=[])
    precious = tmp_path / "precious"
    precious.write_bytes(b"precious\n")
    lock.unlink()
    os.link(precious, lock)
    with pytest.raises(UnsafePathError, match="has 2 hard links"):
        plan.execute()
    assert precious.read_bytes() == b"precious\n" and lock.exists()


def test_a_lock_folder_that_is_a_file_is_no_lock_held(tmp_path):
    """Builds refuse such a cache (ensure_cache_dir); status and gc still read it without a traceback."""
    (tmp_path / LOCK_DIR).write_bytes(b"not a folder")
    assert lock_held(tmp_path / LOCK_DIR / (NAME + ".lock")) is False
    assert scan_cache(tmp_path).leftovers == ()


def test_the_tensorrt_timing_and_gpu_locks_refuse_a_link_too(tmp_path, locks):
    """backends/trt_cache.py opens its locks through safe_lock: a planted link is refused, never opened."""
    from provisioning.backends.trt_cache import device_lock, gpu_lock_path, save_timing_cache

    cache = locks.parent
    precious = tmp_path / "precious"
    precious.write_bytes(b"precious\n")
    timing = cache / "timing" / "sm90.cache"
    os.symlink(precious, locks / f"timing-{timing.name}.lock")
    said = save_timing_cache(object(), timing)  # the config is never reached
    assert said.startswith("not saved (lock file ") and "is a symlink" in said
    os.symlink(precious, gpu_lock_path(cache, "GPU-1234"))
    with pytest.raises(UnsafePathError, match="is a symlink"):
        with device_lock(cache, "GPU-1234", on_wait=lambda uuid: None):
            pass
    assert precious.read_bytes() == b"precious\n"


def _engine_entry(cache: Path, name: str = NAME) -> Path:
    from provisioning.sidecar import Sha256Sidecar

    engine = cache / name
    Sha256Sidecar.write_atomic_and_sidecar(engine, b"plan" * 100)
    return engine


def test_holder_records_and_temporary_files_of_builds_that_are_not_running_are_collected(locks):
    """A killed build leaves `.locks/<engine>.lock.holder` (and maybe the record's temporary file) behind."""
    from provisioning.lockwait import holder_path

    cache = locks.parent
    current = _engine_entry(cache)  # its build was killed: a holder record, the lock not held
    (locks / (NAME + ".lock")).write_bytes(b"")
    holder_path(current).write_text('{"pid": 4000000}')
    building = cache / NAME.replace("0c4e7d21", "11111111")  # a build in progress: lock held, holder written
    holder_path(building).write_text('{"pid": 1}')
    dead_temp = locks / f".{NAME}.lock.holder.4000000.0a1b2c3d.incomplete"
    live_temp = locks / f".{NAME}.lock.holder.{os.getpid()}.0a1b2c3d.incomplete"
    dead_temp.write_bytes(b"{")
    live_temp.write_bytes(b"{")
    holder = _hold(locks / (building.name + ".lock"))
    try:
        plan = plan_gc(scan_cache(cache), current=[NAME], host_keys=["x86_64-avx512-1a2b3c"])
        reasons = {item.paths[0].name: item.reason for item in plan.items}
        assert reasons == {holder_path(current).name: "lock holder record of a build that is not running",
                           dead_temp.name: "leftover temporary file (owner pid 4000000 is gone)"}
        plan.execute()
    finally:
        holder.kill()
        holder.wait()
    assert not holder_path(current).exists() and not dead_temp.exists()
    assert holder_path(building).exists() and live_temp.exists() and Path(str(current)).exists()


def test_a_holder_record_whose_lock_is_taken_between_plan_and_execute_is_kept(locks):
    from provisioning.lockwait import holder_path

    engine = locks.parent / NAME
    holder_path(engine).write_text('{"pid": 4000000}')
    plan = plan_gc(scan_cache(locks.parent), current=[], host_keys=[])
    assert [item.paths for item in plan.items] == [(holder_path(engine),)]
    holder = _hold(locks / (NAME + ".lock"))
    try:
        result = plan.execute()
    finally:
        holder.kill()
        holder.wait()
    assert result.deleted == () and holder_path(engine).exists()


def test_deleting_an_engine_removes_its_holder_record_and_lock_file(locks):
    from provisioning.lockwait import holder_path

    engine = _engine_entry(locks.parent)
    (locks / (NAME + ".lock")).write_bytes(b"")
    holder_path(engine).write_text('{"pid": 4000000}')
    plan = plan_gc(scan_cache(locks.parent), current=[], host_keys=["x86_64-avx512-1a2b3c"])
    (item,) = plan.items
    assert item.reason == "superseded build of this host" and holder_path(engine) in item.paths
    assert set(plan.execute().deleted) == set(item.paths) and os.listdir(locks) == []
