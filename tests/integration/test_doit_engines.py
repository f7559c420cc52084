"""``doit engines`` end to end: the real doit command, real ONNX Runtime builds, real files."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import yaml

from provisioning.manifest import manifest_path_for
from provisioning.sidecar import Sha256Sidecar

from tests.integration.conftest import DOIT, FOREIGN_HOST_KEY, clean_env, Project, edit_onnx, make_foreign_copy, outcomes, task_lines

MODELS = {"det", "cls", "emb"}


def _stamps(project: Project) -> dict[str, tuple[int, int]]:
    return {name: (p[0].stat().st_ino, p[0].stat().st_mtime_ns) for name, p in project.engines().items()}


def test_first_run_builds_every_backbone_and_prints_one_line_each(project: Project) -> None:
    result = project.doit("engines")
    assert result.returncode == 0, result.stdout + result.stderr
    assert task_lines(result.stdout) == {m: "." for m in MODELS}
    for model in MODELS:
        engine = project.engine(model)
        assert f"BUILT  {model}" in result.stdout and engine.name in result.stdout
        assert Sha256Sidecar.verify(engine)
    assert outcomes(project.events()) == {m: "BUILT" for m in MODELS}
    assert "Traceback" not in result.stderr


def test_second_run_is_up_to_date_without_calling_the_backend(built: Project) -> None:
    events, stamps = len(built.events()), _stamps(built)
    result = built.doit("engines")
    assert result.returncode == 0, result.stderr
    assert task_lines(result.stdout) == {m: "--" for m in MODELS}
    assert "BUILT" not in result.stdout and "REUSED" not in result.stdout
    assert len(built.events()) == events  # no action ran: the compiler appends one event per action
    assert _stamps(built) == stamps


def test_lost_database_with_restored_cache_reuses_without_compiling(built: Project) -> None:
    stamps = _stamps(built)
    (built.root / ".doit.db").unlink()
    before = len(built.events())
    result = built.doit("engines")
    assert result.returncode == 0, result.stderr
    assert task_lines(result.stdout) == {m: "." for m in MODELS}
    new = built.events()[before:]
    assert outcomes(new) == {m: "REUSED" for m in MODELS}
    assert all(e["compile_duration_s"] is None for e in new)
    assert _stamps(built) == stamps  # the engines were not rewritten
    assert task_lines(built.doit("engines").stdout) == {m: "--" for m in MODELS}


def test_foreign_host_engines_are_ignored_and_rebuilt_at_this_hosts_paths(built: Project) -> None:
    foreign = []
    for model in MODELS:
        own = built.engine(model)
        foreign.append(make_foreign_copy(own))
        for path in (own, Sha256Sidecar.path_for(own), manifest_path_for(own)):
            path.unlink()
    (built.root / ".doit.db").unlink()  # a CI job: cache restored from elsewhere, no database
    result = built.doit("engines")
    assert result.returncode == 0, result.stderr
    assert outcomes(built.events()[-3:]) == {m: "BUILT" for m in MODELS}
    for model in MODELS:
        paths = built.engines()[model]
        own = [p for p in paths if FOREIGN_HOST_KEY not in p.name]
        assert len(own) == 1 and Sha256Sidecar.verify(own[0])
    assert all(p.exists() and Sha256Sidecar.verify(p) for p in foreign)  # left alone for their host


def test_editing_one_onnx_rebuilds_only_that_backbone(built: Project) -> None:
    old = built.engine("det")
    edit_onnx(built.corpus / "models" / "det.onnx")
    before = len(built.events())
    result = built.doit("engines")
    assert result.returncode == 0, result.stderr
    assert task_lines(result.stdout) == {"det": ".", "cls": "--", "emb": "--"}
    assert outcomes(built.events()[before:]) == {"det": "BUILT"}
    assert "ONNX bytes changed" in result.stdout  # the miss is explained
    assert built.engine("det") == old  # same settings and host: same path, new bytes
    assert Sha256Sidecar.verify(old)


def test_config_edit_rebuilds_only_the_backbones_whose_settings_changed(built: Project) -> None:
    document = yaml.safe_load(built.config.read_text())
    document["backbones"][1]["inputs"]["features"]["max"] = [16, 64]  # cls
    built.config.write_text(yaml.safe_dump(document, sort_keys=False))
    before = len(built.events())
    result = built.doit("engines")
    assert result.returncode == 0, result.stderr
    assert outcomes(built.events()[before:]) == {"det": "REUSED", "cls": "BUILT", "emb": "REUSED"}
    assert len(built.engines()["cls"]) == 2  # the old build stays until engines-gc
    assert task_lines(built.doit("engines").stdout) == {m: "--" for m in MODELS}


def test_corrupt_truncated_or_unsealed_engines_are_rebuilt(built: Project) -> None:
    det, cls, emb = (built.engine(m) for m in ("det", "cls", "emb"))
    data = bytearray(det.read_bytes())
    data[len(data) // 2] ^= 0xFF
    det.write_bytes(bytes(data))  # same size: only the SHA-256 can tell
    with open(cls, "r+b") as handle:
        handle.truncate(cls.stat().st_size // 2)
    Sha256Sidecar.path_for(emb).unlink()
    states = {row["model_name"]: row["state"] for row in built.status_json()["backbones"]}
    assert states == {"det": "corrupt", "cls": "corrupt", "emb": "corrupt"}
    before = len(built.events())
    result = built.doit("engines")
    assert result.returncode == 0, result.stderr
    assert task_lines(result.stdout) == {m: "." for m in MODELS}
    assert outcomes(built.events()[before:]) == {m: "BUILT" for m in MODELS}
    assert all(Sha256Sidecar.verify(p) for p in (det, cls, emb))


def test_a_failing_backbone_is_one_line_and_exit_1_without_a_target(project: Project) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save_model(helper.make_model(graph), str(project.corpus / "models" / "bad.onnx"))
    document = yaml.safe_load(project.config.read_text())
    document["backbones"] = [{"model_name": "bad", "onnx": "models/bad.onnx"}]
    project.config.write_text(yaml.safe_dump(document))
    result = project.doit("engines")
    assert result.returncode == 1
    assert "FAILED bad: backbone bad: ONNX Runtime could not load bad.onnx" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert list(project.cache.glob("*.engine")) == []
    assert project.events()[-1]["outcome"] == "FAILED"


def test_parallel_run_with_four_processes(project: Project) -> None:
    process = subprocess.Popen([DOIT, "-n", "4", "engines"], cwd=project.root, env=clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert outcomes(project.events()) == {m: "BUILT" for m in MODELS}
    assert process.pid not in {e["pid"] for e in project.events()}  # built in worker processes
    again = project.doit("-n", "4", "engines")
    assert task_lines(again.stdout) == {m: "--" for m in MODELS}


def test_clean_removes_this_hosts_engines_and_nothing_else(built: Project) -> None:
    foreign = make_foreign_copy(built.engine("det"))
    own = [p for paths in built.engines().values() for p in paths if p != foreign]
    result = built.doit("clean", "engines")
    assert result.returncode == 0, result.stderr
    for engine in own:
        assert not any(os.path.lexists(p) for p in (engine, Sha256Sidecar.path_for(engine), manifest_path_for(engine)))
    assert foreign.exists() and Sha256Sidecar.path_for(foreign).exists()
    assert (built.cache / "events.jsonl").exists()
    assert (built.corpus / "models" / "det.onnx").exists()


def test_database_is_sqlite_and_its_location_can_be_moved(project: Project) -> None:
    db = project.root / "ci-state" / "engines.db"
    db.parent.mkdir()
    result = project.doit("engines", env={"PROVISIONING_DOIT_DB": str(db)})
    assert result.returncode == 0, result.stderr
    assert not (project.root / ".doit.db").exists()
    assert db.read_bytes().startswith(b"SQLite format 3")
    with sqlite3.connect(db) as connection:
        assert connection.execute("select count(*) from doit").fetchone()[0] >= 3
    again = project.doit("engines", env={"PROVISIONING_DOIT_DB": str(db)})
    assert task_lines(again.stdout) == {m: "--" for m in MODELS}


def test_a_checker_that_fails_inside_runs_the_task_instead_of_calling_it_up_to_date(built: Project) -> None:
    """EngineUpToDate catches its own surprises; the answer must then be "run the task", never "--"."""
    (built.root / "dodo.py").write_text(
        "from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n"
        "import provisioning.doit.uptodate as _uptodate\n\n\n"
        "def _broken_check_entry(*args, **kwargs):\n"
        "    raise RuntimeError('surprise inside the checker')\n\n\n"
        "_uptodate.check_entry = _broken_check_entry  # the checker's entry check only; the action has its own\n"
    )
    result = built.doit("engines")
    assert result.returncode == 0, result.stdout + result.stderr
    assert task_lines(result.stdout) == {m: "." for m in MODELS}, result.stdout
    assert all(f"REUSED {m}" in " ".join(result.stdout.split()) for m in MODELS), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
