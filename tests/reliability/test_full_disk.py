"""Part 4, full disk: a write that fails mid-engine fails the run clearly and keeps the old engine.

The faulty backend lowers RLIMIT_FSIZE (SIGXFSZ ignored, so write() returns EFBIG as a full
disk returns ENOSPC) in the building process right before the engine is published. The
backbone's ONNX was edited first, so a previously published engine sits at the same path.
"""

from __future__ import annotations

from provisioning.sidecar import Sha256Sidecar

from tests.reliability.conftest import Project, count, record, unsound_entries
from tests.reliability.faulty_backend import FSIZE_AT_PUBLISH


def _limit_inside(engine_size: int) -> str:
    """An RLIMIT_FSIZE that stops the write in the middle of an engine of this size (not before, not after)."""
    assert engine_size >= 2, engine_size
    return str(engine_size // 2)


def _edit_det(project: Project, note: str) -> None:
    import onnx

    path = project.corpus / "models" / "det.onnx"
    model = onnx.load_model(str(path))
    model.doc_string = note
    onnx.save_model(model, str(path))


def _check_failed_run(project: Project, output: str, old_bytes: bytes) -> None:
    lines = [line for line in output.splitlines() if "det" in line and ("FAILED" in line or "ERROR" in line)]
    assert lines, output
    assert "cannot write det." in lines[0] and "free disk space" in lines[0], lines[0]
    assert "Traceback" not in output, output
    det = next(p for p in project.canonical_engines() if p.name.startswith("det."))
    assert det.read_bytes() == old_bytes and Sha256Sidecar.verify(det)  # the previous engine is intact
    assert project.temp_leftovers() == []
    assert unsound_entries(project.cache) == []


def test_full_disk_during_publish(project: Project) -> None:
    runs = count(3)
    assert project.doit("engines").returncode == 0
    det = next(p for p in project.canonical_engines() if p.name.startswith("det."))
    old = det.read_bytes()
    # the edits change only det's doc string, so each new engine is about as large as this one
    limit = _limit_inside(len(old))
    for run in range(runs):
        _edit_det(project, f"edit {run}")
        result = project.doit("engines", env={FSIZE_AT_PUBLISH: limit})
        assert result.returncode == 1, result.stdout + result.stderr
        _check_failed_run(project, result.stdout + result.stderr, old)
        library = project.spawn_library(env={FSIZE_AT_PUBLISH: limit})
        output = library.communicate(timeout=120)[0].decode()
        assert library.returncode != 0, output
        assert output.count("\n") <= 2 and output.strip().splitlines()[-1].startswith("ERROR: "), output
        _check_failed_run(project, output, old)
    result = project.doit("engines")  # space again: the edit is built
    assert result.returncode == 0 and "BUILT  det" in result.stdout, result.stdout + result.stderr
    assert det.read_bytes() != old and Sha256Sidecar.verify(det)
    record("4 full disk", "write fails mid-engine (RLIMIT_FSIZE, doit and library)", 2 * runs,
           f"{2 * runs}/{2 * runs} failed with one 'cannot write ... free disk space' line; previous engine intact "
           "and verifying; 0 temporary files left", True)
