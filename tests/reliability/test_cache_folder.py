"""Part 5: read-only, missing or odd cache folders, and an ONNX file that vanishes mid-run.

Root ignores permission bits, so a read-only cache is a read-only bind mount in a private
mount namespace (``unshare -m``); where the machine does not allow that, those tests are
skipped with the reason, never reported as passing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provisioning.sidecar import Sha256Sidecar

from tests.reliability.conftest import (
    DOIT,
    MODELS,
    Project,
    child_env,
    make_project,
    record,
    unsound_entries,
    wait_for,
)
from tests.reliability.faulty_backend import BUILD_DELAY, PHASE_LOG

_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'


def _read_only(folder: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``folder`` mounted read-only for that process only."""
    return subprocess.run(["unshare", "-m", "sh", "-c", _READ_ONLY, "sh", str(folder), *argv], cwd=cwd,
                          env=child_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def read_only_mounts(tmp_path_factory) -> None:
    probe = tmp_path_factory.mktemp("ro-probe")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot make a read-only folder that root cannot write")
    result = _read_only(probe, "sh", "-c", 'touch "$0/x"', str(probe), cwd=probe)
    if result.returncode != 1 or "Read-only file system" not in result.stderr:
        pytest.skip(f"read-only bind mounts are not allowed here ({(result.stderr or 'no error').strip()[:120]})")


def _lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_read_only_cache_serves_its_verified_engines(project: Project, read_only_mounts) -> None:
    assert project.doit("engines").returncode == 0
    (project.root / ".doit.db").unlink()  # a CI job: the cache restored read-only, no doit database
    before = {p: p.read_bytes() for p in project.cache.iterdir() if p.is_file()}
    result = _read_only(project.cache, DOIT, "engines", cwd=project.root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(f"REUSED {m}" in result.stdout for m in MODELS), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert {p: p.read_bytes() for p in project.cache.iterdir() if p.is_file()} == before
    record("5 cache folder", "read-only cache (bind mount) with valid engines", 1,
           "every engine REUSED, nothing written", True)


def test_read_only_cache_that_must_build_fails_in_one_line(project: Project, read_only_mounts) -> None:
    project.cache.mkdir()
    result = _read_only(project.cache, DOIT, "engines", cwd=project.root)
    assert result.returncode == 1
    failed = [line for line in _lines(result) if line.startswith("FAILED det")]
    assert failed and "cannot write into the cache folder" in failed[0] and "Read-only file system" in failed[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert list(project.cache.iterdir()) == []
    record("5 cache folder", "read-only empty cache", 1, "one 'cannot write into the cache folder' line, exit 1, "
           "nothing written", True)


def test_a_file_where_the_cache_folder_should_be(project: Project) -> None:
    project.cache.write_bytes(b"not a folder\n")
    result = project.doit("engines")
    assert result.returncode == 1
    assert any("exists but is not a folder" in line for line in _lines(result)), result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert project.cache.read_bytes() == b"not a folder\n"
    record("5 cache folder", "a file in place of the cache folder", 1, "one 'exists but is not a folder' line, "
           "exit 1, the file untouched", True)


def test_missing_cache_folder_is_created(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", cache_dir="deep/new/cache")
    result = project.doit("engines")
    assert result.returncode == 0, result.stdout + result.stderr
    engines = list((project.corpus / "deep/new/cache").glob("*.engine"))
    assert len(engines) == len(MODELS) and all(Sha256Sidecar.verify(p) for p in engines)


def test_spaces_and_non_ascii_in_every_path(tmp_path: Path) -> None:
    project = make_project(tmp_path / "my projects" / "Ünïcødé 引擎", cache_dir="cache dir/ñandú ☃")
    cache = project.corpus / "cache dir" / "ñandú ☃"
    result = project.doit("engines")
    assert result.returncode == 0, result.stdout + result.stderr
    engines = sorted(cache.glob("*.engine"))
    assert len(engines) == len(MODELS) and all(Sha256Sidecar.verify(p) for p in engines)
    again = project.doit("engines")
    assert all(f"-- engines:{m}" in again.stdout for m in MODELS), again.stdout
    status = project.doit("engines-status")
    assert status.returncode == 0, status.stdout + status.stderr
    gc = project.doit("engines-gc", "--apply")
    assert gc.returncode == 0 and all(p.exists() for p in engines), gc.stdout + gc.stderr
    record("5 cache folder", "spaces and non-ASCII in project, config and cache paths", 1,
           "built, then up to date; status and gc work; nothing deleted", True)


def test_onnx_vanishing_while_doit_runs(project: Project) -> None:
    """det.onnx is deleted while det is in the backend, cls.onnx before its task starts."""
    process = project.spawn_doit("engines", env={BUILD_DELAY: "1", PHASE_LOG: str(project.phase_log)})
    assert wait_for(project.phase_log.exists)
    (project.corpus / "models" / "det.onnx").unlink()
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 1, output
    failed = [line for line in output.splitlines() if line.startswith("FAILED det")]
    assert failed and "det.onnx" in failed[0] and "File doesn't exist" in failed[0], output
    assert "Traceback" not in output
    assert project.canonical_engines() == [] and project.temp_leftovers() == []
    assert unsound_entries(project.cache) == []


def test_onnx_vanishing_before_the_library_reaches_it(project: Project) -> None:
    process = project.spawn_library(env={BUILD_DELAY: "1", PHASE_LOG: str(project.phase_log)})
    assert wait_for(project.phase_log.exists)
    (project.corpus / "models" / "cls.onnx").unlink()  # det is building; cls comes next
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 2, output
    assert output.strip().splitlines() == [output.strip().splitlines()[0]], output
    assert "backbone cls: ONNX input" in output and "disappeared" in output, output
    names = [p.name.split(".")[0] for p in project.canonical_engines()]
    assert names == ["det"] and Sha256Sidecar.verify(project.canonical_engines()[0])
    assert project.temp_leftovers() == [] and unsound_entries(project.cache) == []
    record("5 cache folder", "an ONNX file deleted between config load and build (doit and library)", 2,
           "one line naming the file, non-zero exit, no partial engine, no temporary file", True)
