"""``engine_tasks(export_triton=REPO)``: the real ``doit engines`` keeps a Triton repository current."""

from __future__ import annotations

from tests.serving.conftest import ExportProject, complete_versions, edit_onnx, model_config

DODO = """from provisioning.doit import DOIT_CONFIG, engine_tasks  # noqa: F401


def task_engines():
    yield from engine_tasks(export_triton="triton")
"""


def test_doit_engines_exports_after_building_and_only_when_an_engine_changed(corpus_dir):
    project = ExportProject(corpus_dir.parent)
    (project.root / "dodo.py").write_text(DODO)
    first = project.doit("engines")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.index("BUILT  emb") < first.stdout.index(".  engines_export")
    assert model_config(project.repo / "det" / "config.pbtxt").platform == "onnxruntime_onnx"
    again = project.doit("engines")
    assert again.returncode == 0 and "-- engines_export" in again.stdout, again.stdout
    edit_onnx(project.corpus / "models" / "det.onnx", "v2")
    third = project.doit("engines")
    assert third.returncode == 0 and "det: version 2" in third.stdout and "cls: unchanged" in third.stdout, third.stdout
    assert complete_versions(project.repo / "det") == [1, 2] and complete_versions(project.repo / "cls") == [1]
