"""Part 7, cache-folder attacks: symlinks planted at cache paths are never written or read through.

The links point at files outside the cache that would pass every check if followed (a
copy of the genuine engine, sidecar or manifest): following one would make the tool
report a reuse. Instead it must say the path is a symlink, build at a real file, and leave
the outside file byte-identical.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.cache import lock_path_for
from provisioning.compiler import EngineCompiler
from provisioning.compose import build_compile_request, load_config
from provisioning.errors import UnsafePathError
from provisioning.manifest import manifest_path_for
from provisioning.sidecar import Sha256Sidecar

from tests.reliability.conftest import MODELS, Project, make_project, record, unsound_entries

PLANTED = {
    "engine": lambda e: e,
    "sidecar": Sha256Sidecar.path_for,
    "manifest": manifest_path_for,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = make_project(tmp_path_factory.mktemp("symlinks") / "proj")
    assert project.doit("engines").returncode == 0
    return project


def _fresh_copy(built: Project, tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    shutil.copytree(built.root, root, symlinks=True)
    return Project(root)


def _plant(path: Path, outside: Path) -> bytes:
    """Move ``path``'s genuine content outside the cache and link it back; return the bytes."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, outside)
    path.unlink()
    os.symlink(outside, path)
    return outside.read_bytes()


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_symlink_at_an_entry_path_is_refused_and_replaced(built: Project, tmp_path: Path, kind: str) -> None:
    project = _fresh_copy(built, tmp_path)
    det = next(p for p in project.canonical_engines() if p.name.startswith("det."))
    outside = tmp_path / "outside" / kind
    genuine = _plant(PLANTED[kind](det), outside)
    result = project.doit("engines")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"miss det: {kind}" in output and "symlink" in output, output
    assert "BUILT  det" in output and "REUSED det" not in output, output
    assert outside.read_bytes() == genuine and not outside.is_symlink()
    planted = PLANTED[kind](det)
    assert not planted.is_symlink() and planted.is_file()
    assert Sha256Sidecar.verify(det) and unsound_entries(project.cache) == []
    record("7 cache attacks", f"symlink at the {kind} path (to a valid copy outside)", 1,
           "refused with 'symlink' in the miss line, rebuilt at a real file, outside file untouched", True)


def test_symlink_at_the_lock_path_is_refused_with_a_fix(built: Project, tmp_path: Path) -> None:
    project = _fresh_copy(built, tmp_path)
    det = next(p for p in project.canonical_engines() if p.name.startswith("det."))
    outside = tmp_path / "outside" / "lock"
    outside.parent.mkdir()
    outside.write_bytes(b"not a lock\n")
    lock = lock_path_for(det)
    lock.unlink(missing_ok=True)
    os.symlink(outside, lock)
    Sha256Sidecar.path_for(det).unlink()  # force a build, which needs the lock
    result = project.doit("engines")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAILED det: lock file" in output and "is a symlink" in output and "remove it" in output, output
    assert "Traceback" not in output
    assert outside.read_bytes() == b"not a lock\n"
    record("7 cache attacks", "symlink at the lock path", 1,
           "build refused with one line naming the link and the fix; outside file untouched", True)


def test_symlink_at_the_event_log_is_not_followed(built: Project, tmp_path: Path) -> None:
    project = _fresh_copy(built, tmp_path)
    outside = tmp_path / "outside" / "events.jsonl"
    genuine = _plant(project.cache / "events.jsonl", outside)
    (project.root / ".doit.db").unlink()  # the actions run (and log) again
    result = project.doit("engines")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "events.jsonl (it is a symlink; not followed)" in output, output
    assert outside.read_bytes() == genuine
    record("7 cache attacks", "symlink at the event log", 1, "not appended through; a warning names the link", True)


def test_symlink_at_a_temporary_path_is_never_written_through(tmp_path: Path, monkeypatch) -> None:
    """Temporary names are random; a test that knows the token plants links at every one the build will use."""
    project = make_project(tmp_path / "proj")
    request = build_compile_request(load_config(project.config))
    compiler = EngineCompiler(OnnxRuntimeBackend(), heartbeat_s=0)
    compiler.compile_engines_for_corpus(request)
    engines = {p.name.split(".")[0]: p for p in project.canonical_engines()}
    genuine = {m: p.read_bytes() for m, p in engines.items()}
    Sha256Sidecar.path_for(engines["det"]).unlink()  # det must be rebuilt
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.setattr("provisioning.tempnames.secrets.token_hex", lambda n: "0badc0de")
    for target in (engines["det"], manifest_path_for(engines["det"]), Sha256Sidecar.path_for(engines["det"])):
        victim = outside / target.name
        victim.write_bytes(b"victim\n")
        os.symlink(victim, target.with_name(f".{target.name}.{os.getpid()}.0badc0de.incomplete"))
    with pytest.raises(UnsafePathError, match="exists as a symlink") as info:
        compiler.compile_engines_for_corpus(request)
    assert "\n" not in str(info.value) and "remove it" in str(info.value)
    assert all(p.read_bytes() == b"victim\n" for p in outside.iterdir())
    assert engines["det"].read_bytes() == genuine["det"]  # the old engine was not touched either
    assert all(Sha256Sidecar.verify(engines[m]) for m in MODELS if m != "det")
    record("7 cache attacks", "symlinks at the temporary paths (token known)", 1,
           "refused with one line naming the link; nothing written through it; old engine untouched", True)



def test_symlinked_inspection_folder_is_not_written_through(tmp_path: Path) -> None:
    """ONNX inspection records live in cache/.inspect; a link there must not carry writes outside."""
    project = make_project(tmp_path / "proj")
    project.cache.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, project.cache / ".inspect")
    result = project.doit("engines")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ".inspect is a symlink; not followed" in result.stdout + result.stderr, result.stdout + result.stderr
    assert list(outside.iterdir()) == []
    assert all(Sha256Sidecar.verify(p) for p in project.canonical_engines())
    record("7 cache attacks", "symlinked .inspect folder", 1, "nothing written through it; a warning names the "
           "link; engines built", True)
