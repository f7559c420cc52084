"""Issue 22 item 2: ``engines-export --triton`` never writes, retires or reads through a link below REPO.

Someone who can write the Triton repository points ``REPO/det`` (or a version folder,
``config.pbtxt``, the export's lock file, a file inside a version) at a folder or file
outside it. The real command refuses with one line (exit 2) and nothing outside changes,
``--keep 1`` included (before, it retired the outside folder's versions and overwrote its
config.pbtxt). A link swapped in after the checks changes nothing either: every write goes
through the model folder's open descriptor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioning.serving import triton_repo
from provisioning.serving.triton import ExportInputError, export_triton_repository, plan_triton_export
from provisioning.serving.triton_repo import execute_export

from tests.serving.conftest import complete_versions


def snapshot(folder: Path) -> list[tuple[str, str, bytes | str | None]]:
    """Every entry under ``folder`` (links not followed): name, kind, content or link target."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found.append((rel, "link", os.readlink(path)))
            elif path.is_dir():
                found.append((rel, "dir", None))
            else:
                found.append((rel, "file", path.read_bytes()))
    return sorted(found)


def outside_model(tmp_path: Path) -> Path:
    """An outside folder that looks like a model with versions 1, 2, 3 and a config.pbtxt."""
    folder = tmp_path / "outside-det"
    for version in (1, 2, 3):
        (folder / str(version)).mkdir(parents=True)
        (folder / str(version) / "model.onnx").write_bytes(f"someone else's model {version}\n".encode())
    (folder / "config.pbtxt").write_text('name: "someone-else"\n')
    return folder


def _refused(result: subprocess.CompletedProcess, link: Path) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stderr.startswith("ERROR: ") and result.stderr.count("\n") == 1, output
    assert f"{link} is a symlink" in result.stderr and "Traceback" not in output, output


def test_a_symlinked_model_folder_is_refused_and_the_outside_folder_untouched(ort_project, tmp_path):
    outside = outside_model(tmp_path)
    before = snapshot(outside)
    ort_project.repo.mkdir()
    os.symlink(outside, ort_project.repo / "det")
    result = ort_project.export("--keep", "1")
    _refused(result, ort_project.repo / "det")
    assert snapshot(outside) == before
    assert sorted(os.listdir(ort_project.repo)) == ["det"]  # all or nothing: no other model written either


@pytest.mark.parametrize("where", ["config.pbtxt", "version", "lock", "inside-a-version"])
def test_a_link_below_the_model_folder_is_refused(ort_project, tmp_path, where):
    outside = outside_model(tmp_path)
    before = snapshot(outside)
    assert ort_project.export().returncode == 0  # REPO/det/1 and config.pbtxt exist
    det = ort_project.repo / "det"
    link = {"config.pbtxt": det / "config.pbtxt", "version": det / "2", "lock": det / ".provisioning-export.lock",
            "inside-a-version": det / "1" / "notes.txt"}[where]
    target = {"config.pbtxt": outside / "config.pbtxt", "version": outside / "1",
              "lock": outside / "config.pbtxt", "inside-a-version": outside / "config.pbtxt"}[where]
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)
    result = ort_project.export("--keep", "1", "--force")
    _refused(result, link)
    assert snapshot(outside) == before


def test_a_model_folder_swapped_for_a_link_after_planning_is_refused(ort_project, tmp_path):
    """The writer opens REPO/<model> with O_NOFOLLOW itself: a plan made before the swap does not help."""
    outside = outside_model(tmp_path)
    before = snapshot(outside)
    corpus = ort_project.corpus_loaded()
    export_triton_repository(corpus, ort_project.repo, models=["det"])
    plan = plan_triton_export(corpus, ort_project.repo, models=["det"])
    det = ort_project.repo / "det"
    os.rename(det, ort_project.repo / "det.moved")
    os.symlink(outside, det)
    with pytest.raises(ExportInputError, match="is a symlink"):
        execute_export(plan, keep=1)
    assert snapshot(outside) == before


def test_a_swap_during_the_export_changes_nothing_outside(ort_project, tmp_path, monkeypatch):
    """Once the model folder is open, its name no longer matters: the export finishes in the folder it opened."""
    outside = outside_model(tmp_path)
    before = snapshot(outside)
    corpus = ort_project.corpus_loaded()
    export_triton_repository(corpus, ort_project.repo, models=["det"])
    det, moved = ort_project.repo / "det", ort_project.repo / "det.moved"
    original = triton_repo._clean_leftovers

    def swap_then_clean(folder):
        os.rename(det, moved)  # the attacker's move, after the checks, under the export's lock
        os.symlink(outside, det)
        return original(folder)

    shutil.copytree(det / "1", det / "2")  # work for the export: retire 1 (--keep 1), rewrite config.pbtxt
    (det / "config.pbtxt").write_text('name: "det"\nplatform: "onnxruntime_onnx"\n')
    monkeypatch.setattr(triton_repo, "_clean_leftovers", swap_then_clean)
    result = export_triton_repository(corpus, ort_project.repo, models=["det"], keep=1)
    assert any("retired version(s) 1" in line for line in result.lines), result.lines
    assert snapshot(outside) == before
    assert complete_versions(moved) == [2] and "input" in (moved / "config.pbtxt").read_text()


def test_a_fifo_at_config_pbtxt_is_refused_at_once(ort_project):
    (ort_project.repo / "det").mkdir(parents=True)
    os.mkfifo(ort_project.repo / "det" / "config.pbtxt")
    try:
        result = ort_project.doit("engines-export", "--triton", str(ort_project.repo), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("engines-export hung on a FIFO at config.pbtxt")
    assert result.returncode == 2 and "config.pbtxt is not a regular file" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
