"""The real ``doit`` command on a tensorrt-rtx project (subprocesses, real builds, real files)."""

from __future__ import annotations

import yaml

from tests.conftest import DoitProject
from tests.integration.conftest import outcomes as _outcomes
from tests.integration.conftest import task_lines as _marks

MODELS = {"det", "cls", "emb"}


def _stamps(project: DoitProject) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in project.cache.glob("*.engine")}


def test_engines_builds_then_is_up_to_date_then_reuses_without_a_database(rtx_project: DoitProject) -> None:
    """BUILT, then '--' without running, then (database lost) REUSED with nothing compiled."""
    first = rtx_project.doit("engines")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _marks(first.stdout) == {m: "." for m in MODELS}
    assert _outcomes(rtx_project.events()) == {m: "BUILT" for m in MODELS}
    assert all(".trtrtx-" in e["engine"] and ".sm86-sm89-sm120." in e["engine"] for e in rtx_project.events())
    assert "Traceback" not in first.stderr
    stamps, count = _stamps(rtx_project), len(rtx_project.events())
    assert len(stamps) == 3

    second = rtx_project.doit("engines")
    assert second.returncode == 0, second.stderr
    assert _marks(second.stdout) == {m: "--" for m in MODELS}
    assert len(rtx_project.events()) == count  # no action ran

    for db in rtx_project.root.glob(".doit.db*"):
        db.unlink()
    third = rtx_project.doit("engines")
    assert third.returncode == 0, third.stderr
    assert _marks(third.stdout) == {m: "." for m in MODELS}
    new = rtx_project.events()[count:]
    assert _outcomes(new) == {m: "REUSED" for m in MODELS}
    assert all(e["compile_duration_s"] is None for e in new)
    assert "BUILT" not in third.stdout
    assert _stamps(rtx_project) == stamps


def test_doit_list_shows_the_engines_task(rtx_project: DoitProject) -> None:
    result = rtx_project.doit("list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("engines ") and "tensorrt-rtx" in result.stdout


def test_missing_compute_capabilities_without_a_gpu_is_one_error_line_exit_2(rtx, rtx_project: DoitProject) -> None:
    """No targets and no GPU to default to: exit 2, one ERROR line naming the field and the targets."""
    from provisioning.backends.tensorrt import compute_capability_targets

    document = yaml.safe_load(rtx_project.config.read_text())
    del document["compute_capabilities"]
    rtx_project.config.write_text(yaml.safe_dump(document, sort_keys=False))
    result = rtx_project.doit("engines")
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, result.stdout + result.stderr
    targets = compute_capability_targets()
    assert targets[0] == "sm75" and targets[-1] == "sm121"
    assert "field 'compute_capabilities'" in errors[0] and ", ".join(targets) in errors[0]
    assert "Traceback" not in result.stderr
    assert not list(rtx_project.cache.glob("*.engine"))


def test_status_key_and_gc_work_on_an_rtx_cache(rtx_project: DoitProject) -> None:
    """engines-status, engines-key and engines-gc see RTX engines like any other backend's."""
    import json

    assert rtx_project.doit("engines").returncode == 0
    status = rtx_project.doit("engines-status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    document = json.loads(status.stdout)
    assert document["backend"] == "tensorrt-rtx" and document["host_key"] == "sm86-sm89-sm120"
    assert {row["model_name"]: row["state"] for row in document["backbones"]} == {m: "fresh" for m in MODELS}
    key = rtx_project.doit("engines-key")
    assert key.returncode == 0 and "trtrtx-1.7.1.116-sm86-sm89-sm120" in key.stdout, key.stdout + key.stderr

    document = yaml.safe_load(rtx_project.config.read_text())
    document["compute_capabilities"] = ["sm89"]  # the fleet dropped two GPU types: the old plans are stale
    rtx_project.config.write_text(yaml.safe_dump(document, sort_keys=False))
    assert rtx_project.doit("engines").returncode == 0
    assert len(list(rtx_project.cache.glob("*.engine"))) == 6
    plan = rtx_project.doit("engines-gc")
    assert plan.returncode == 0 and "sm86-sm89-sm120" in plan.stdout, plan.stdout + plan.stderr
    assert len(list(rtx_project.cache.glob("*.engine"))) == 6  # a plan only
    applied = rtx_project.doit("engines-gc", "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    left = sorted(p.name for p in rtx_project.cache.glob("*.engine"))
    assert len(left) == 3 and all(".sm89." in name for name in left), left
