"""Issue 22 items 3, 10, 11 and 32: lock files, the lock folder and the event log are never followed.

Someone who can write the cache folder plants a symlink, a hard link or a FIFO where a lock
file, the ``.locks`` folder or ``events.jsonl`` belongs, pointing at a file outside the cache.
Every command (a build, ``engines-status``, ``engines-gc`` with and without ``--apply``)
refuses with one line that names the path and says to remove it, and the outside file stays
byte-identical. GC also removes the lock files of the engines it deletes (and of engines
deleted by hand), never one a live process holds, and ``--json`` lists only existing paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.cache import LOCK_DIR, entry_files, lock_path_for
from provisioning.schema import EngineFilenameSchema
from provisioning.sidecar import Sha256Sidecar
from tests.reliability.conftest import Project, child_env, make_project, record

PRECIOUS = b"precious outside file\n"
COMMANDS = {
    "gc-dry-run": ("engines-gc",),
    "gc-apply": ("engines-gc", "--apply"),
    "status": ("engines-status",),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = make_project(tmp_path_factory.mktemp("locklinks") / "proj")
    assert project.doit("engines").returncode == 0
    return project


def _copy(built: Project, tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    shutil.copytree(built.root, root, symlinks=True)
    return Project(root)


def _det(project: Project) -> Path:
    return next(p for p in project.canonical_engines() if p.name.startswith("det."))


def _outside(tmp_path: Path, name: str = "precious.txt") -> Path:
    folder = tmp_path / "outside"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(PRECIOUS)
    return path


def _plant(kind: str, at: Path, outside: Path) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(at):
        os.unlink(at)
    if kind == "symlink":
        os.symlink(outside, at)
    elif kind == "hardlink":
        os.link(outside, at)
    else:
        os.mkfifo(at)


def _foreign_copy(engine: Path) -> Path:
    """The entry of ``engine`` under another host key (what engines-gc deletes): engine, sidecar, manifest."""
    parsed = EngineFilenameSchema.parse(engine.name)
    name = engine.name.replace(parsed.host_key, "x86_64-otherisa-0badc0")
    foreign = engine.with_name(name)
    shutil.copyfile(engine, foreign)
    Sha256Sidecar.path_for(foreign).write_text(Sha256Sidecar.format_line(Sha256Sidecar.read(engine).sha256, name))
    shutil.copyfile(engine.with_name(engine.name + ".manifest.json"), foreign.with_name(name + ".manifest.json"))
    return foreign


def _one_line_refusal(result: subprocess.CompletedProcess, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 5, output  # CacheError
    assert "Traceback" not in output, output
    line = result.stderr.strip()
    assert line.count("\n") == 0 and all(f in line for f in fragments) and "remove it" in line, output


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_link_or_fifo_at_a_lock_path_is_refused_and_never_opened(built, tmp_path, kind, command):
    project = _copy(built, tmp_path)
    outside = _outside(tmp_path)
    det = _det(project)
    _foreign_copy(det)  # something for --apply to delete
    _plant(kind, lock_path_for(det), outside)
    result = project.doit(*COMMANDS[command], timeout=90)
    what = {"symlink": "is a symlink", "hardlink": "has 2 hard links", "fifo": "is not a regular file"}[kind]
    _one_line_refusal(result, f"lock file {lock_path_for(det)}", what)
    assert outside.read_bytes() == PRECIOUS and os.stat(outside).st_nlink == (2 if kind == "hardlink" else 1)
    record("7 cache attacks", f"{kind} at a lock path, {command}", 1,
           "refused with one line naming the lock file; outside file untouched", True)


@pytest.mark.parametrize("kind", ["hardlink", "fifo"])
def test_a_build_refuses_a_hard_link_or_fifo_at_its_lock_path(built, tmp_path, kind):
    """The symlink case is tests/reliability/test_symlinks.py; the build's lock is the same helper."""
    project = _copy(built, tmp_path)
    outside = _outside(tmp_path)
    det = _det(project)
    _plant(kind, lock_path_for(det), outside)
    Sha256Sidecar.path_for(det).unlink()  # force a build, which needs the lock
    result = project.doit("engines", timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert f"FAILED det: lock file {lock_path_for(det)}" in output and "remove it" in output, output
    assert outside.read_bytes() == PRECIOUS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_symlinked_lock_folder_is_refused_by_gc_and_status(built, tmp_path, command):
    """Item 10: builds refuse a symlinked .locks (ensure_cache_dir); GC and status do too."""
    project = _copy(built, tmp_path)
    det = _det(project)
    _foreign_copy(det)
    outside = tmp_path / "outside-locks"
    shutil.copytree(project.cache / LOCK_DIR, outside)
    (outside / lock_path_for(det).name).write_bytes(PRECIOUS)
    before = sorted((p.name, p.read_bytes()) for p in outside.iterdir())
    shutil.rmtree(project.cache / LOCK_DIR)
    os.symlink(outside, project.cache / LOCK_DIR)
    result = project.doit(*COMMANDS[command], timeout=90)
    _one_line_refusal(result, f"lock folder {project.cache / LOCK_DIR} is a symlink")
    assert sorted((p.name, p.read_bytes()) for p in outside.iterdir()) == before
    record("7 cache attacks", f"symlinked .locks folder, {command}", 1, "refused with one line; nothing in the "
           "linked folder created, truncated or removed", True)


@pytest.mark.parametrize("kind", ["hardlink", "fifo"])
def test_the_event_log_is_never_appended_through_a_hard_link_or_a_fifo(built, tmp_path, kind):
    """Item 11 (the symlink case is in test_symlinks.py)."""
    project = _copy(built, tmp_path)
    outside = _outside(tmp_path, "events.jsonl")
    _plant(kind, project.cache / "events.jsonl", outside)
    (project.root / ".doit.db").unlink()  # the actions run (and log) again
    result = project.doit("engines", timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    why = "it has 2 hard links" if kind == "hardlink" else "not a regular file"
    assert f"cannot append to {project.cache / 'events.jsonl'} ({why}" in output, output
    assert outside.read_bytes() == PRECIOUS
    record("7 cache attacks", f"{kind} at the event log", 1, "not appended through; a warning names it", True)


def _hold(lock: Path) -> subprocess.Popen:
    """A live process holding ``lock`` (as a builder does) until it is killed."""
    code = ("import sys, time\nfrom filelock import FileLock\n"
            "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], env=child_env(), stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_gc_removes_the_lock_files_of_deleted_engines_but_not_a_held_one(built, tmp_path):
    """Item 32: `.locks/` kept the lock files of every engine ever deleted."""
    project = _copy(built, tmp_path)
    det = _det(project)
    foreign = _foreign_copy(det)
    lock_path_for(foreign).write_bytes(b"")  # its builder's lock file (a build elsewhere made it)
    cls = next(p for p in project.canonical_engines() if p.name.startswith("cls."))
    for path in entry_files(cls):  # deleted by hand: its lock file stays behind
        path.unlink(missing_ok=True)
    gone = project.cache / LOCK_DIR / ("emb.fp32.ort-1.0.0.x86_64-otherisa-0badc0.12345678.engine.lock")
    gone.write_bytes(b"")
    building = project.cache / LOCK_DIR / ("emb.fp32.ort-1.0.0.x86_64-otherisa-0badc0.87654321.engine.lock")
    other_lock = project.cache / LOCK_DIR / "timing-something.lock"  # not an engine's lock: never touched
    other_lock.write_bytes(b"")
    holder = _hold(building)  # a build in progress: its engine does not exist yet
    try:
        dry = project.doit("engines-gc", "--json", timeout=90)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        plan = json.loads(dry.stdout)
        listed = [Path(p) for item in plan["items"] for p in item["paths"]]
        assert listed and all(os.path.lexists(p) for p in listed), listed  # only what exists
        assert {lock_path_for(cls), gone, lock_path_for(foreign), foreign} <= set(listed)
        assert building not in listed and other_lock not in listed and lock_path_for(det) not in listed
        applied = project.doit("engines-gc", "--apply", timeout=90)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "lock file of an engine that is gone" in applied.stdout
    finally:
        holder.kill()
        holder.wait()
    assert not any(os.path.lexists(p) for p in (lock_path_for(cls), gone, lock_path_for(foreign), foreign))
    assert building.exists() and other_lock.exists() and lock_path_for(det).exists()
    assert Sha256Sidecar.verify(det)
    again = json.loads(project.doit("engines-gc", "--json", timeout=90).stdout)
    assert [item for item in again["items"] if item["reason"] != "lock file of an engine that is gone"] == []
    assert [Path(p) for item in again["items"] for p in item["paths"]] == [building]  # released: now collectable
    record("32 small", "lock files of deleted engines", 1, "removed by engines-gc --apply; a held one kept", True)


def test_json_lists_only_existing_paths_of_an_engine(built, tmp_path):
    """Item 32: an engine without a build log, commit record or .verified record listed them anyway."""
    project = _copy(built, tmp_path)
    foreign = _foreign_copy(_det(project))
    result = project.doit("engines-gc", "--json", timeout=90)
    (item,) = [i for i in json.loads(result.stdout)["items"] if foreign.name in i["paths"][0]]
    assert item["paths"] == [str(Sha256Sidecar.path_for(foreign)), str(foreign),
                             str(foreign.with_name(foreign.name + ".manifest.json"))]
    assert all(os.path.lexists(p) for p in item["paths"])
