"""``doit engines-status``, ``engines-gc`` and ``engines-key`` through the real doit command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from filelock import FileLock

from provisioning.cache import lock_path_for
from provisioning.manifest import manifest_path_for
from provisioning.sidecar import Sha256Sidecar

from tests.integration.conftest import DOIT, Project, clean_env, edit_onnx, make_foreign_copy, task_lines


def _entry_size(engine) -> int:
    return sum(p.stat().st_size for p in (engine, Sha256Sidecar.path_for(engine), manifest_path_for(engine)))


def _change_cls_profile(project: Project) -> None:
    document = yaml.safe_load(project.config.read_text())
    document["backbones"][1]["inputs"]["features"]["max"] = [16, 64]
    project.config.write_text(yaml.safe_dump(document, sort_keys=False))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_names_each_state_with_the_input_that_changed(project: Project) -> None:
    before = project.doit("engines-status", "--json")
    assert before.returncode == 1  # something to build
    assert {r["state"] for r in json.loads(before.stdout)["backbones"]} == {"missing"}
    assert project.doit("engines").returncode == 0
    fresh = project.status_json()
    rows = {r["model_name"]: r for r in fresh["backbones"]}
    assert {r["state"] for r in rows.values()} == {"fresh"} and fresh["totals"]["fresh"] == 3
    # engine, sidecar, manifest (and trusted-stat records); lock files are not entry files
    entry_files = [p for p in project.cache.rglob("*.engine*") if p.is_file() and p.parent.name != ".locks"]
    assert fresh["totals"]["cache_files"] == len(entry_files)
    det = project.engine("det")
    assert rows["det"]["path"] == str(det) and rows["det"]["size"] == _entry_size(det)
    assert rows["det"]["host_key"] in det.name and rows["det"]["host_key"] == fresh["host_key"]
    assert project.doit("engines-status").returncode == 0

    old_cls = project.engine("cls")
    edit_onnx(project.corpus / "models" / "det.onnx")
    _change_cls_profile(project)
    foreign = make_foreign_copy(project.engine("emb"))
    text = project.doit("engines-status")
    assert text.returncode == 1
    document = project.status_json()
    rows = {r["model_name"]: r for r in document["backbones"]}
    assert rows["det"]["state"] == "stale" and "ONNX bytes changed" in rows["det"]["reason"]
    assert rows["cls"]["state"] == "stale" and "build setting 'inputs' changed" in rows["cls"]["reason"]
    assert rows["emb"]["state"] == "fresh"
    assert [(r["model_name"], r["path"]) for r in document["foreign"]] == [("emb", str(foreign))]
    # the other host's engine and the cls build of yesterday's settings
    assert document["totals"]["gc_reclaimable_bytes"] == _entry_size(foreign) + _entry_size(old_cls)
    assert "why: ONNX bytes changed" in text.stdout and "foreign" in text.stdout


def test_commands_work_in_a_folder_without_dodo(built: Project, tmp_path_factory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = subprocess.run([DOIT, "engines-status", "--config", str(built.config)], cwd=elsewhere,
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 fresh" in result.stdout


def test_gc_plans_then_deletes_only_garbage_and_never_a_locked_engine(built: Project) -> None:
    old_cls = built.engine("cls")
    _change_cls_profile(built)
    assert built.doit("engines").returncode == 0  # old_cls is now a superseded build of this host
    det, emb = built.engine("det"), built.engine("emb")
    foreign = make_foreign_copy(det)
    locked = make_foreign_copy(emb, host_key="aarch64-neon-0a0b0c")
    dead_temp = built.cache / f".{det.name}.{_dead_pid()}.0badf00d.incomplete"
    dead_temp.write_bytes(b"x" * 100)
    live_temp = built.cache / f".{emb.name}.{os.getpid()}.1234abcd.incomplete"
    live_temp.write_bytes(b"y" * 50)
    orphan = built.cache / "ghost.fp32.ort-1.0.x86_64-avx2-000000.12345678.engine.sha256"
    orphan.write_text("0" * 64 + "  ghost\n")
    garbage = {old_cls.name: _entry_size(old_cls), foreign.name: _entry_size(foreign),
               dead_temp.name: 100, orphan.name: orphan.stat().st_size}

    with FileLock(str(lock_path_for(locked))):  # a live process (this test) holds the lock
        plan = json.loads(built.doit("engines-gc", "--json").stdout)
        assert {os.path.basename(i["paths"][1] if len(i["paths"]) > 1 else i["paths"][0]): i["size"]
                for i in plan["items"]} == garbage
        assert plan["bytes_freed"] == sum(garbage.values()) and not plan["applied"]
        assert plan["kept_locked"] == [str(locked)]
        assert old_cls.exists() and foreign.exists() and dead_temp.exists()  # a plan deletes nothing
        dry = built.doit("engines-gc")
        assert "dry run" in dry.stdout and "would free" in dry.stdout and "superseded" in dry.stdout

        applied = built.doit("engines-gc", "--apply")
        assert applied.returncode == 0, applied.stderr
    assert "freed" in applied.stdout
    for gone in (old_cls, Sha256Sidecar.path_for(old_cls), manifest_path_for(old_cls), foreign, dead_temp, orphan):
        assert not os.path.lexists(gone), gone
    assert locked.exists() and live_temp.exists()
    assert task_lines(built.doit("engines").stdout) == {"det": "--", "cls": "--", "emb": "--"}


def test_gc_max_size_evicts_least_recently_used_first(built: Project) -> None:
    engines = {m: built.engine(m) for m in ("det", "cls", "emb")}
    for age, model in enumerate(("det", "cls", "emb")):  # det is the least recently used
        os.utime(engines[model], (1_000_000 + age * 1000,) * 2)
    budget = _entry_size(engines["cls"]) + _entry_size(engines["emb"])
    plan = json.loads(built.doit("engines-gc", "--max-size", str(budget), "--json").stdout)
    assert [(i["paths"][1], i["reason"]) for i in plan["items"]] == [
        (str(engines["det"]), "over the size budget (least recently used)")]
    assert built.doit("engines-gc", "--max-size", str(budget), "--apply").returncode == 0
    assert not engines["det"].exists() and engines["cls"].exists() and engines["emb"].exists()
    rebuilt = built.doit("engines")
    assert task_lines(rebuilt.stdout) == {"det": ".", "cls": "--", "emb": "--"}


def test_gc_rejects_an_unreadable_size_in_one_line(built: Project) -> None:
    result = built.doit("engines-gc", "--max-size", "lots")
    assert result.returncode == 2
    assert result.stderr.startswith("ERROR: engines-gc: --max-size: size 'lots' not understood")
    assert result.stderr.count("\n") == 1


def test_cache_key_is_stable_and_changes_with_any_input(project: Project) -> None:
    def key() -> str:
        result = project.doit("engines-key")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("\n") == 1
        return result.stdout.strip()

    first = key()
    prefix = project.doit("engines-key", "--prefix").stdout.strip()
    assert first.startswith(prefix) and prefix.startswith("engines-ort-")
    assert project.doit("engines").returncode == 0
    assert key() == first  # building does not change the inputs
    project.config.write_text("# a comment changes no input\n" + project.config.read_text())
    assert key() == first
    edit_onnx(project.corpus / "models" / "emb.onnx")
    after_onnx = key()
    assert after_onnx != first and after_onnx.startswith(prefix)
    _change_cls_profile(project)
    assert key() not in (first, after_onnx)


def test_commands_report_a_bad_config_in_one_line(project: Project) -> None:
    for command in ("engines-status", "engines-gc", "engines-key"):
        result = project.doit(command, "config=missing.yaml")
        assert result.returncode == 2, command
        assert result.stderr == f"ERROR: {project.root / 'missing.yaml'}: config file not found; " \
                                "pass config=PATH or set PROVISIONING_CONFIG\n"


def test_gc_keep_foreign_apply_keeps_other_hosts_engines_of_a_shared_folder(built: Project) -> None:
    old_cls = built.engine("cls")
    _change_cls_profile(built)
    assert built.doit("engines").returncode == 0  # old_cls: a superseded build of this host
    foreign = [make_foreign_copy(built.engine("det")), make_foreign_copy(built.engine("emb"), "aarch64-neon-0a0b0c")]
    applied = built.doit("engines-gc", "--keep-foreign", "--apply")
    assert applied.returncode == 0, applied.stderr
    for engine in foreign:
        assert Sha256Sidecar.verify(engine) and manifest_path_for(engine).exists(), applied.stdout
        assert engine.name not in applied.stdout
    assert not old_cls.exists() and old_cls.name in applied.stdout  # this host's garbage still goes
    plain = built.doit("engines-gc", "--apply")  # the control: without the flag they are garbage
    assert plain.returncode == 0 and not any(e.exists() for e in foreign), plain.stdout


HOLD_LOCK = ("import sys; from pathlib import Path; from provisioning.cache import engine_lock; "
             "lock = engine_lock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); sys.stdin.read()")


def test_gc_budget_with_apply_skips_an_engine_a_builder_holds_and_says_so(built: Project) -> None:
    det = built.engine("det")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(det)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert holder.stdout.readline().strip() == "held"  # another process builds det right now
        applied = built.doit("engines-gc", "--max-size", "0", "--apply")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert applied.returncode == 0, applied.stderr
    assert Sha256Sidecar.verify(det)
    assert f"{det.name}: kept over the size budget, locked by a live process" in applied.stdout
    assert set(built.engines()) == {"det"}, applied.stdout  # the unlocked engines went
