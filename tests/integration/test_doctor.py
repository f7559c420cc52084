"""``doit engines-doctor``: a table of checks with fixes, exit 0 unless one fails; the real cache is untouched."""

from __future__ import annotations

import json
import os

import yaml

STATES = {"ok", "warn", "fail"}


def _listing(folder) -> list[tuple[str, int, int]]:
    if not folder.exists():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _configure(project, **changes) -> None:
    document = yaml.safe_load(project.config.read_text())
    document.update(changes)
    project.config.write_text(yaml.safe_dump(document))


def _doctor_json(project, env=None) -> tuple[int, dict]:
    result = project.doit("engines-doctor", "--json", env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_onnxruntime_config_is_all_ok_and_the_cache_is_untouched(built):
    before = _listing(built.cache)
    result = built.doit("engines-doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _listing(built.cache) == before
    rows = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()[:-1] if not
            line.lstrip().startswith("fix:")}
    assert rows["trial"] == "ok" and rows["locks"] == "ok" and set(rows.values()) <= {"ok", "warn"}, result.stdout
    assert "fail" not in rows.values()


def test_json_shape(project):
    code, document = _doctor_json(project)
    assert code == 0 and document["ok"] is True
    assert document["config"] == str(project.config)
    names = [c["name"] for c in document["checks"]]
    for wanted in ("config", "backend", "versions", "gpu", "cache folder", "free space", "locks", "file system",
                   "trial build"):
        assert wanted in names, names
    for check in document["checks"]:
        assert set(check) == {"name", "state", "detail", "fix"} and check["state"] in STATES
        assert bool(check["fix"]) == (check["state"] != "ok"), check
    assert not project.cache.exists()  # a cache folder that is missing stays missing


def test_tensorrt_rtx_builds_a_trial_plan_without_a_gpu(project):
    _configure(project, backend="tensorrt-rtx", compute_capabilities=["sm89"])
    code, document = _doctor_json(project, env={"CUDA_VISIBLE_DEVICES": ""})
    checks = {c["name"]: c for c in document["checks"]}
    assert code == 0, document
    assert checks["trial build"]["state"] == "ok" and "sm89" in checks["trial build"]["detail"], checks
    assert checks["gpu"]["state"] == "ok" and "does not need one" in checks["gpu"]["detail"]


def test_tensorrt_without_a_gpu_fails_with_a_fix(project):
    _configure(project, backend="tensorrt")
    code, document = _doctor_json(project, env={"CUDA_VISIBLE_DEVICES": ""})
    checks = {c["name"]: c for c in document["checks"]}
    assert code == 1 and document["ok"] is False
    assert checks["gpu"]["state"] == "fail" and "GPU host" in checks["gpu"]["fix"], checks["gpu"]
    assert "trial build" not in checks  # nothing to build with


def test_a_bad_config_fails_in_one_row(project):
    project.config.write_text("backend: [\n")
    code, document = _doctor_json(project)
    assert code == 1 and [c["name"] for c in document["checks"]] == ["config"]
    assert os.path.basename(str(project.config)) in document["checks"][0]["detail"]
