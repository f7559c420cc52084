"""Issue 22 item 4: a FIFO planted anywhere in the cache never hangs a command.

Every file the product reads from the cache folder is opened non-blocking, required to be a
regular file, and only then read: a FIFO where the engine, its sidecar, its manifest, its
remote commit record, a ``.verified`` record or index, or an ``.inspect`` record belongs is
one miss reason (then a rebuild at a real file) or ``EngineNotReadyError``. The commands run
as real processes under a timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.manifest import manifest_path_for
from provisioning.schema import COMMIT_SUFFIX
from provisioning.sidecar import Sha256Sidecar
from provisioning.verify import INDEX_NAME, VERIFIED_DIR, record_path
from tests.reliability.conftest import Project, child_env, make_project, record, unsound_entries

TIMEOUT_S = float(os.environ.get("FIFO_TEST_TIMEOUT_S", 90))  # a hang is a failure, not a stuck suite

PLACES = {
    "engine": lambda e: e,
    "sidecar": Sha256Sidecar.path_for,
    "manifest": manifest_path_for,
    "commit": lambda e: e.with_name(e.name + COMMIT_SUFFIX),
    "verified-record": record_path,
    "verified-index": lambda e: e.parent / VERIFIED_DIR / INDEX_NAME,
    "inspect-record": None,  # every record in .inspect/ (found after the first build)
}


MISS = {
    "engine": "engine unreadable (not a regular file)",
    "sidecar": "sidecar det.",  # ... .engine.sha256 is not a regular file (a FIFO?); not read
    "manifest": "manifest det.",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = make_project(tmp_path_factory.mktemp("fifos") / "proj", verify="stat")
    assert project.doit("engines").returncode == 0
    return project


def _copy(built: Project, tmp_path: Path) -> Project:
    """A copy of the built project, run once where it is (records are keyed by the ONNX files' paths)."""
    root = tmp_path / "proj"
    shutil.copytree(built.root, root, symlinks=True)
    project = Project(root)
    assert project.doit("engines", timeout=TIMEOUT_S).returncode == 0
    (root / ".doit.db").unlink(missing_ok=True)  # every task's up-to-date check reads the cache again
    return project


def _plant_fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.mkfifo(path)


def _det(project: Project) -> Path:
    return next(p for p in project.canonical_engines() if p.name.startswith("det."))


def _targets(project: Project, place: str) -> list[Path]:
    if place == "inspect-record":
        found = sorted((project.cache / ".inspect").glob("*.json"))
        assert found, "the first build leaves .inspect records"
        return found
    return [PLACES[place](_det(project))]


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_fifo_in_the_cache_is_a_miss_reason_or_ignored_never_a_hang(built: Project, tmp_path: Path,
                                                                      place: str) -> None:
    project = _copy(built, tmp_path)
    targets = _targets(project, place)
    for target in targets:
        _plant_fifo(target)
    try:
        result = project.doit("engines", timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"doit engines hung on a FIFO at the {place} path")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output, output
    det = _det(project)
    if place in ("engine", "sidecar", "manifest"):  # the entry itself: one miss reason, then a real file
        assert f"miss det: {MISS[place]}" in output and "BUILT  det" in output, output
        if place != "engine":
            assert "is not a regular file (a FIFO?); not read" in output, output
        for target in targets:
            assert not os.path.islink(target) and Path(target).is_file()
    assert Sha256Sidecar.verify(det) and unsound_entries(project.cache) == []
    for command in (("engines-status",), ("engines-status", "--verify-signatures"), ("engines-gc",)):
        try:
            other = project.doit(*command, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"doit {command[0]} hung on a FIFO at the {place} path")
        assert "Traceback" not in other.stdout + other.stderr, other.stdout + other.stderr
    record("7 cache attacks", f"FIFO at the {place} path", 1, "no hang: a miss reason or ignored", True)


@pytest.mark.parametrize("place", ["engine", "sidecar", "manifest", "verified-record"])
def test_resolve_engine_with_a_fifo_in_the_entry_answers_at_once(built: Project, tmp_path: Path, place: str) -> None:
    """The serving side (resolve_engine, build=False): EngineNotReadyError or the verified entry, never a hang."""
    project = _copy(built, tmp_path)
    for target in _targets(project, place):
        _plant_fifo(target)
    code = ("import sys\n"
            "from provisioning.errors import EngineNotReadyError\n"
            "from provisioning.serving import resolve_engine\n"
            "try:\n"
            "    entry = resolve_engine(sys.argv[1], 'det', build=False)\n"
            "except EngineNotReadyError as exc:\n"
            "    print('NOT READY', str(exc).splitlines()[0]); sys.exit(3)\n"
            "print('READY', entry.path.name)\n")
    try:
        result = subprocess.run([sys.executable, "-c", code, str(project.config)], cwd=project.root,
                                env=child_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"resolve_engine hung on a FIFO at the {place} path")
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    if place in ("engine", "sidecar", "manifest"):
        assert result.returncode == 3 and output.startswith("NOT READY"), output
    else:  # a record beside a valid entry: ignored, the entry verifies by its bytes
        assert result.returncode == 0 and output.startswith("READY"), output
