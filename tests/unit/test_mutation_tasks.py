"""The doit task generator, checker and action, called in-process (doit's child processes never see a mutant).

Found by mutation testing (benchmarks/mutation.sh): the integration tests run ``doit`` in a
child process, so nothing in-process pinned the task dicts doit is handed (a wrong
``file_dep`` or target makes doit skip a rebuild or clean the wrong file), the action's
one-line FAILED / INTERRUPTED reports, the no-GPU tasks or ``doit_config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from doit.exceptions import TaskFailed

from provisioning import interrupt
from provisioning.cache import entry_files, read_events
from provisioning.doit import action as doit_action
from provisioning.doit import tasks
from provisioning.doit import verifier as shared_verifier
from provisioning.doit.corpus import load_corpus
from provisioning.doit.filedep import Sha256FileChecker
from provisioning.errors import ConfigError, NoGpuError
from tests.conftest import DEFAULT_BACKBONES, LogRecords, write_corpus_yaml


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch):
    for name in ("PROVISIONING_CONFIG", tasks.DB_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tasks, "_DEFAULT_TASKS", [])
    monkeypatch.setattr(shared_verifier, "_RUN_VERIFIER", {})
    monkeypatch.setattr(interrupt, "install", lambda: None)


@pytest.fixture
def caplog():
    """The records of provisioning's loggers, whatever handlers and levels earlier tests left configured."""
    handler = LogRecords()
    loggers = [logging.getLogger(n) for n in ("provisioning", "provisioning.doit", "provisioning.compiler")]
    saved = [(lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
    loggers[0].addHandler(handler)
    for lg in loggers[1:]:
        if not lg.propagate:
            lg.addHandler(handler)
    handler.at_level = lambda *a, **k: _nothing()
    try:
        yield handler
    finally:
        for lg, (level, disabled) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.disabled = disabled


@contextlib.contextmanager
def _nothing():
    yield


def _tasks(corpus_yaml: Path, **kwargs) -> list[dict]:
    return list(tasks.engine_tasks(str(corpus_yaml), **kwargs))


# --- doit_config ------------------------------------------------------------------------------------------------

def test_doit_config_defaults_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tasks.doit_config()
    assert config == {"backend": "sqlite3", "dep_file": ".doit.db", "default_tasks": tasks._DEFAULT_TASKS,
                      "check_file_uptodate": Sha256FileChecker}
    assert config["default_tasks"] is tasks._DEFAULT_TASKS  # the list engine_tasks appends to later
    monkeypatch.setenv(tasks.DB_ENV, "state/run/db.sqlite")
    config = tasks.doit_config(verbosity=2)
    assert config["dep_file"] == "state/run/db.sqlite" and config["verbosity"] == 2
    assert (tmp_path / "state" / "run").is_dir()  # created: sqlite3 cannot create folders
    config = tasks.doit_config(dep_file=str(tmp_path / "other" / "x.db"))
    assert config["dep_file"] == str(tmp_path / "other" / "x.db") and (tmp_path / "other").is_dir()
    monkeypatch.setenv(tasks.DB_ENV, "")
    assert tasks.doit_config()["dep_file"] == ".doit.db"


def test_an_uncreatable_database_folder_is_one_line_and_exit_3(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit) as caught:
        tasks.doit_config(dep_file=str(tmp_path / "file" / "sub" / ".doit.db"))
    assert caught.value.code == 3
    assert capsys.readouterr().err == (
        f"ERROR: cannot create the doit database folder {tmp_path / 'file' / 'sub'} (Not a directory); "
        "create it, or point $PROVISIONING_DOIT_DB (or dep_file) at a writable folder\n")


# --- engine_tasks ----------------------------------------------------------------------------------------------

def test_engine_tasks_hand_doit_the_right_targets_file_deps_checker_and_action(corpus_dir, corpus_yaml):
    groups = _tasks(corpus_yaml)
    corpus = load_corpus(corpus_yaml)
    group, *subtasks = groups
    assert group == {"basename": "engines", "name": None, "params": [tasks.CONFIG_PARAM],
                     "doc": f"compile or reuse the engines of corpus.yaml (onnxruntime, cache {corpus.cache_dir}); "
                            "another config: doit engines --config PATH (or config=PATH)"}
    assert tasks.CONFIG_PARAM["long"] == "config" and tasks.CONFIG_PARAM["default"] == ""
    assert tasks._DEFAULT_TASKS == ["engines"]
    assert [t["name"] for t in subtasks] == ["det", "cls", "emb"]
    verifier = shared_verifier._RUN_VERIFIER[str(corpus.cache_dir)]
    for task, spec in zip(subtasks, corpus.specs):
        engine = corpus.engine_path(spec)
        (checker,) = task.pop("uptodate")
        assert isinstance(checker, tasks.EngineUpToDate) and checker.engine_path == engine
        assert checker.spec == spec and checker.host == corpus.host and checker.verifier is verifier
        (action,) = task.pop("actions")
        assert action == (tasks.compile_backbone, [spec, corpus.host, corpus.config], {})
        assert task == {
            "basename": "engines", "name": spec.model_name, "doc": f"{spec.model_name} -> {engine.name}",
            "file_dep": [str(p) for p in spec.source_files] + [str(corpus_yaml)],
            "targets": [str(engine)], "clean": [(tasks.clean_engine, [str(engine)])], "verbosity": 2,
            "params": [tasks.CONFIG_PARAM], "meta": {"engine": str(engine), "model_name": spec.model_name},
        }
    emb = subtasks[2]
    assert emb["file_dep"] == [str(corpus_dir / "models" / "emb.onnx"), str(corpus_dir / "models" / "emb.onnx.data"),
                               str(corpus_yaml)]  # external data: editing the weights rebuilds
    assert verifier._paths == [corpus.engine_path(s) for s in corpus.specs]
    assert verifier.mode == "full" and verifier._specs == corpus.specs and verifier._cache_dir == corpus.cache_dir


def test_a_backend_factory_and_another_basename_reach_the_tasks(corpus_yaml):
    def factory(name):
        raise AssertionError("not called while generating")

    group, first, *_ = _tasks(corpus_yaml, basename="models", backend_factory=factory)
    assert group["basename"] == "models" and first["basename"] == "models"
    assert first["actions"][0][2] == {"backend_factory": factory}
    _tasks(corpus_yaml, basename="models")
    assert tasks._DEFAULT_TASKS == ["models"]  # once, however often the dodo generates them


def test_validation_samples_are_a_file_dep_and_verify_stat_reaches_the_verifier(corpus_dir):
    np.savez(corpus_dir / "samples.npz", images=np.zeros((1, 1, 3, 32, 32), np.float32))
    path = write_corpus_yaml(corpus_dir, [{**DEFAULT_BACKBONES[0], "validate": {"inputs": "samples.npz"}}],
                             verify="stat")
    _, det = _tasks(path)
    assert det["file_dep"] == [str(corpus_dir / "models" / "det.onnx"), str(corpus_dir / "samples.npz"), str(path)]
    assert det["uptodate"][0].verifier.mode == "stat"


def test_an_export_adds_the_export_task_after_every_engine(corpus_yaml, tmp_path):
    generated = _tasks(corpus_yaml, export_triton=str(tmp_path / "triton"))
    assert generated[0]["task_dep"] == ["engines_export"]
    assert generated[-1]["basename"] == "engines_export" and len(generated) == 5
    assert "task_dep" not in _tasks(corpus_yaml)[0]


def test_a_bad_config_is_its_first_line_and_its_exit_code(corpus_dir, capsys):
    (corpus_dir / "corpus.yaml").write_text("backbones: 3\n")
    with pytest.raises(SystemExit) as caught:
        _tasks(corpus_dir / "corpus.yaml")
    assert caught.value.code == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1 and "backbones" in err


def test_without_a_gpu_the_tasks_are_listed_and_each_says_so(corpus_yaml, monkeypatch, capsys):
    def no_gpu(path):
        raise NoGpuError("no NVIDIA GPU visible\nsecond line")

    monkeypatch.setattr(tasks, "load_corpus", no_gpu)
    group, *subtasks = _tasks(corpus_yaml)
    assert group == {"basename": "engines", "name": None, "params": [tasks.CONFIG_PARAM],
                     "doc": "compile or reuse the engines of corpus.yaml (onnxruntime: no GPU visible here)"}
    assert [t["name"] for t in subtasks] == ["det", "cls", "emb"]
    assert subtasks[0] == {"basename": "engines", "name": "det", "doc": "det -> engine name unknown: no GPU visible",
                           "actions": [(tasks.no_gpu_action, ["no NVIDIA GPU visible", 69])], "uptodate": [False],
                           "verbosity": 2, "params": [tasks.CONFIG_PARAM], "meta": {"model_name": "det"}}
    corpus_yaml.write_text("backbones: 3\n")  # and a bad config still fails with its own line
    with pytest.raises(SystemExit) as caught:
        _tasks(corpus_yaml)
    assert caught.value.code == ConfigError.exit_code and "backbones" in capsys.readouterr().err


def test_the_no_gpu_action_exits_69_in_doits_process_and_fails_the_task_in_a_worker(monkeypatch, capsys):
    with pytest.raises(SystemExit) as caught:
        tasks.no_gpu_action("no GPU here", 69)
    assert caught.value.code == 69 and capsys.readouterr().err == "ERROR: no GPU here\n"
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    failed = tasks.no_gpu_action("no GPU here", 69)
    assert isinstance(failed, TaskFailed) and failed.message == "no GPU here" and failed.report is False
    assert capsys.readouterr().err == "ERROR: no GPU here\n"


# --- clean ------------------------------------------------------------------------------------------------------

def test_clean_removes_the_entry_and_dry_run_only_says_so(tmp_path, capsys):
    engine = tmp_path / "det.engine"
    files = entry_files(engine)
    for path in files[:2]:
        path.write_bytes(b"x")
    tasks.clean_engine(str(engine), dryrun=True)
    assert capsys.readouterr().out == "".join(f"would remove {p}\n" for p in files[:2])
    assert all(p.exists() for p in files[:2])
    tasks.clean_engine(str(engine))
    assert capsys.readouterr().out == "".join(f"removing {p}\n" for p in files[:2])
    assert not any(os.path.lexists(p) for p in files)


# --- the checker ----------------------------------------------------------------------------------------------

def _built(corpus_yaml: Path):
    _, det, *_ = _tasks(corpus_yaml)
    spec, host, config = det["actions"][0][1]
    result = tasks.compile_backbone(spec, host, config)
    assert result["outcome"] == "BUILT"
    return det, result


def test_the_action_returns_the_values_the_checker_needs(corpus_yaml):
    det, result = _built(corpus_yaml)
    engine = Path(det["targets"][0])
    assert set(result) == {"model_name", "outcome", "engine", "sha256", "onnx_sha256", "compile_duration_s"}
    assert result["model_name"] == "det" and result["engine"] == engine.name
    assert len(result["sha256"]) == 64 and len(result["onnx_sha256"]) == 64 and result["compile_duration_s"] > 0
    spec, host, config = det["actions"][0][1]
    again = tasks.compile_backbone(spec, host, config)
    assert again["outcome"] == "REUSED" and again["sha256"] == result["sha256"]
    assert again["onnx_sha256"] == result["onnx_sha256"] and again["compile_duration_s"] is None


def test_the_checker_vouches_only_for_its_own_engine_and_a_saved_digest(corpus_yaml):
    det, result = _built(corpus_yaml)
    checker = det["uptodate"][0]
    engine = Path(det["targets"][0])

    class Task:
        value_savers: list = []

    task = Task()
    checker.configure_task(task)
    assert [saver() for saver in task.value_savers] == [{tasks.CHECKER_VALUE: engine.name}]
    good = {tasks.CHECKER_VALUE: engine.name, tasks.ONNX_DIGEST_VALUE: result["onnx_sha256"]}
    assert checker(None, good) is True
    assert checker(None, dict(good, **{tasks.CHECKER_VALUE: "other.engine"})) is False
    assert checker(None, {tasks.CHECKER_VALUE: engine.name}) is False
    assert checker(None, dict(good, **{tasks.ONNX_DIGEST_VALUE: 7})) is False
    assert checker(None, dict(good, **{tasks.ONNX_DIGEST_VALUE: "0" * 64})) is False  # another ONNX
    assert repr(checker) == f"EngineUpToDate({engine.name!r})"


def test_the_checker_without_an_index_still_verifies(corpus_yaml):
    det, result = _built(corpus_yaml)
    checker = det["uptodate"][0]
    engine = Path(det["targets"][0])
    plain = tasks.EngineUpToDate(checker.spec, checker.host, str(engine))
    good = {tasks.CHECKER_VALUE: engine.name, tasks.ONNX_DIGEST_VALUE: result["onnx_sha256"]}
    assert plain(None, good) is True
    data = bytearray(engine.read_bytes())
    data[-1] ^= 1
    engine.write_bytes(bytes(data))
    assert plain(None, good) is False
    assert checker(None, good) is False


def test_a_checker_with_no_saved_values_starts_hashing_the_sources(corpus_yaml, monkeypatch):
    det, _ = _built(corpus_yaml)
    checker = det["uptodate"][0]
    started = []
    monkeypatch.setattr(checker.verifier, "prefetch_sources", lambda: started.append(True))
    assert checker(None, {}) is False and started == [True]


def test_the_shared_verifier_names_the_host_once_per_host_object(corpus_yaml):
    corpus = load_corpus(corpus_yaml)
    shared = tasks.SharedVerifier([], "full", corpus.specs, None)
    assert shared.index is None  # no cache folder: no index
    assert shared.host_text(corpus.host) == repr(corpus.host)
    other = dataclasses.replace(corpus.host, machine="riscv64")  # another host object: named again
    assert shared.host_text(other) == repr(other) != repr(corpus.host)
    assert shared.host_text(corpus.host) == repr(corpus.host)


# --- the action's reports -----------------------------------------------------------------------------------------

class _Failing:
    def __init__(self, exc):
        self.exc = exc

    def compile_engine(self, spec, host, output):
        raise self.exc


def _fail_with(corpus_yaml, exc, caplog, factory=None):
    _, det, *_ = _tasks(corpus_yaml)
    spec, host, config = det["actions"][0][1]
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        failed = tasks.compile_backbone(spec, host, config, factory or (lambda name: _Failing(exc)))
    assert isinstance(failed, TaskFailed) and failed.report is False
    return failed.message, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_failed_action_is_one_line_logged_once(corpus_yaml, caplog):
    message, logged = _fail_with(corpus_yaml, ConfigError("bad setting\ndetails"), caplog)
    assert message == "FAILED det: bad setting" and logged == ["FAILED det: bad setting"]  # the compiler's line
    message, logged = _fail_with(corpus_yaml, OSError(28, "No space left on device"), caplog)
    assert message == "FAILED det: [Errno 28] No space left on device"
    message, logged = _fail_with(corpus_yaml, RuntimeError("surprise"), caplog)
    assert message == "FAILED det: RuntimeError: surprise"


def test_a_failure_outside_the_compiler_is_logged_by_the_action(corpus_yaml, caplog):
    def factory(name):
        raise RuntimeError("")

    message, logged = _fail_with(corpus_yaml, None, caplog, factory)
    assert message == "FAILED det: RuntimeError" and logged == ["FAILED det: RuntimeError"]

    def factory2(name):
        raise ConfigError("no such backend\nmore")

    message, logged = _fail_with(corpus_yaml, None, caplog, factory2)
    assert message == "FAILED det: no such backend" and logged == ["FAILED det: no such backend"]

    def factory3(name):
        raise OSError("")

    message, logged = _fail_with(corpus_yaml, None, caplog, factory3)
    assert message == "FAILED det: OSError" and logged == ["FAILED det: OSError"]


def test_an_interrupted_action_records_one_event_and_one_line_and_exits_with_the_signal(corpus_yaml, caplog):
    _, det, *_ = _tasks(corpus_yaml)
    spec, host, config = det["actions"][0][1]
    cache = Path(config.cache_dir)
    cache.mkdir()

    def stopped(name):  # stopped before the build: the action records the event itself
        raise interrupt.Interrupted(signal.SIGTERM)

    with caplog.at_level(logging.ERROR), pytest.raises(interrupt.Interrupted) as caught:
        tasks.compile_backbone(spec, host, config, stopped)
    assert caught.value.code == 128 + signal.SIGTERM
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["INTERRUPTED det: stopped by SIGTERM; partial files removed"]
    (event,) = read_events(cache)
    assert event["outcome"] == "INTERRUPTED" and event["reason"] == "stopped by SIGTERM"
    assert event["error_class"] == "SIGTERM" and event["model_name"] == "det"
    assert event["engine"] == Path(det["targets"][0]).name
    assert event["host_key"] == host.identity_for(spec).host_key
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(interrupt.Interrupted) as caught:  # during the build
        tasks.compile_backbone(spec, host, config, lambda name: _Failing(KeyboardInterrupt()))
    assert caught.value.code == 128 + signal.SIGINT
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["INTERRUPTED det: stopped by SIGINT; partial files removed"]
    assert [e["outcome"] for e in read_events(cache)] == ["INTERRUPTED", "INTERRUPTED"]  # the compiler's, once
    assert read_events(cache)[-1]["error_class"] == "KeyboardInterrupt"
    assert [p.name for p in cache.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []


# --- found by the second round: the index, the remote, the logs -----------------------------------------------

def _one(corpus_dir: Path, **top) -> Path:
    return write_corpus_yaml(corpus_dir, [dict(DEFAULT_BACKBONES[0])], **top)


def _checker_and_values(path: Path):
    _, det = _tasks(path)
    spec, host, config = det["actions"][0][1]
    result = tasks.compile_backbone(spec, host, config)
    checker = det["uptodate"][0]
    return checker, {tasks.CHECKER_VALUE: Path(det["targets"][0]).name, tasks.ONNX_DIGEST_VALUE: result["onnx_sha256"]}


@pytest.fixture
def settled(monkeypatch):
    from provisioning import verify_stat

    monkeypatch.setattr(verify_stat, "_RACY_NS", 0)  # files the test just wrote count as settled


def test_an_indexed_engine_is_not_up_to_date_for_another_onnx(corpus_dir, settled):
    checker, values = _checker_and_values(_one(corpus_dir))
    assert checker(None, values) is True  # enters the index under today's key
    checker.verifier.index.save()
    fresh = tasks.EngineUpToDate(checker.spec, checker.host, checker.engine_path,
                                 tasks.SharedVerifier([checker.engine_path], "full", (checker.spec,),
                                                      checker.verifier._cache_dir))
    assert fresh(None, values) is True
    assert fresh(None, dict(values, **{tasks.ONNX_DIGEST_VALUE: "0" * 64})) is False  # the key includes the ONNX


def _fresh(checker, spec=None, mode="full"):
    """Another run's checker: a new SharedVerifier that loads the index the last one saved."""
    checker.verifier.index.save()
    shared = tasks.SharedVerifier([checker.engine_path], mode, (spec or checker.spec,), checker.verifier._cache_dir)
    return tasks.EngineUpToDate(spec or checker.spec, checker.host, checker.engine_path, shared)


def test_stat_mode_rechecks_an_indexed_engine_whose_bytes_changed(corpus_dir, settled):
    checker, values = _checker_and_values(_one(corpus_dir, verify="stat"))
    assert checker(None, values) is True
    assert _fresh(checker, mode="stat")(None, values) is True  # indexed, unchanged: trusted
    engine = checker.engine_path
    engine.write_bytes(engine.read_bytes() + b"tampered")  # size changes: not "unchanged"
    assert _fresh(checker, mode="stat")(None, values) is False


def test_an_indexed_engine_replaced_by_another_sealed_engine_is_not_up_to_date(corpus_dir, settled):
    from provisioning.sidecar import Sha256Sidecar

    checker, values = _checker_and_values(_one(corpus_dir))
    assert checker(None, values) is True
    fresh = _fresh(checker)
    Sha256Sidecar.write_atomic_and_sidecar(checker.engine_path, b"other engine bytes" * 100)  # verifies, not indexed
    assert fresh(None, values) is False


def test_validation_criteria_added_to_the_config_are_not_answered_from_the_index(corpus_dir, settled):
    checker, values = _checker_and_values(_one(corpus_dir))
    assert checker(None, values) is True
    fresh = _fresh(checker)
    _, det = _tasks(write_corpus_yaml(corpus_dir, [{**DEFAULT_BACKBONES[0], "validate": {"runs": 1}}]))
    validated = det["uptodate"][0]
    assert validated.engine_path == checker.engine_path  # the same engine: validation is not in its name
    fresh = tasks.EngineUpToDate(validated.spec, checker.host, checker.engine_path, fresh.verifier)
    assert fresh(None, values) is False  # never validated: the action must validate it


def test_the_checker_honours_validation_criteria_it_finds_met(corpus_dir):
    path = write_corpus_yaml(corpus_dir, [{**DEFAULT_BACKBONES[0], "validate": {"runs": 1}}])
    checker, values = _checker_and_values(path)
    assert checker(None, values) is True  # validated while building: up to date under the same criteria


def test_a_failing_checker_says_why_in_the_debug_log(corpus_yaml, caplog):
    _, det, *_ = _tasks(corpus_yaml)
    checker = det["uptodate"][0]

    class Broken:
        index = None

        def check(self, path):
            raise OSError("disk gone")

        def prefetch_sources(self):
            raise RuntimeError("boom")

    checker.verifier = Broken()
    with caplog.at_level(logging.DEBUG, logger="provisioning.doit"):
        assert checker(None, {}) is False
    assert [r.getMessage() for r in caplog.records if r.name == "provisioning.doit"] == [
        "uptodate check of det failed (boom); running the task"]


def test_a_surprise_in_the_action_keeps_its_traceback_in_the_debug_log(corpus_yaml, caplog):
    def factory(name):
        raise RuntimeError("surprise")

    _, det, *_ = _tasks(corpus_yaml)
    spec, host, config = det["actions"][0][1]
    with caplog.at_level(logging.DEBUG, logger="provisioning.doit"):
        tasks.compile_backbone(spec, host, config, factory)
    (debug,) = [r for r in caplog.records if r.levelno == logging.DEBUG and r.name == "provisioning.doit"]
    assert debug.getMessage() == "det failed" and debug.exc_info[0] is RuntimeError


def test_the_interrupted_line_carries_its_structured_fields_and_sweeps_own_temporaries(corpus_yaml, caplog):
    from provisioning.sidecar import TEMP_SUFFIX

    _, det, *_ = _tasks(corpus_yaml)
    spec, host, config = det["actions"][0][1]
    cache = Path(config.cache_dir)
    cache.mkdir()
    engine_name = Path(det["targets"][0]).name
    scratch = cache / f".{engine_name}.{os.getpid()}.abc{TEMP_SUFFIX}"
    scratch.mkdir()

    def stopped(name):
        raise interrupt.Interrupted(signal.SIGTERM)

    with caplog.at_level(logging.ERROR), pytest.raises(interrupt.Interrupted):
        tasks.compile_backbone(spec, host, config, stopped)
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (record.event, record.model_name, record.outcome, record.error_class) == (
        "result", "det", "INTERRUPTED", "SIGTERM")
    assert not scratch.exists()


def test_a_remote_cache_in_the_config_is_used_by_the_action(tmp_path, corpus_dir):
    import shutil

    remote = {"url": f"file://{tmp_path / 'remote'}", "timeout_s": 3, "lease_s": 2}
    (tmp_path / "remote").mkdir()
    first = _one(corpus_dir, remote=remote)
    _, det = _tasks(first)
    assert tasks.compile_backbone(*det["actions"][0][1])["outcome"] == "BUILT"
    other = tmp_path / "other"
    shutil.copytree(corpus_dir / "models", other / "models")
    second = _one(other, remote=remote)
    shared_verifier._RUN_VERIFIER.clear()
    _, det2 = _tasks(second)
    result = tasks.compile_backbone(*det2["actions"][0][1])
    assert result["outcome"] == "REUSED" and result["sha256"] == tasks.compile_backbone(*det["actions"][0][1])["sha256"]
    assert read_events(other / "cache")[-1]["source"] == "remote"  # fetched, not rebuilt


def test_a_worker_saves_the_index_after_its_action(corpus_dir, settled, monkeypatch):
    from provisioning.verify import CacheIndex

    path = _one(corpus_dir)
    _, det = _tasks(path)
    spec, host, config = det["actions"][0][1]
    monkeypatch.setattr(doit_action, "_in_worker", lambda: True)
    tasks._compile_backbone(spec, host, config, None)
    assert CacheIndex(Path(config.cache_dir)).onnx_sha256(spec.onnx_path, spec.source_files) is not None


def test_in_worker_is_true_only_in_a_child_process():
    import multiprocessing

    assert tasks._in_worker() is False
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(tasks._in_worker) is True


def test_the_shared_verifier_digest_is_the_onnx_digest_with_external_data(corpus_yaml):
    from provisioning.onnxinfo import onnx_digest

    corpus = load_corpus(corpus_yaml)
    shared = tasks.SharedVerifier([], "full", corpus.specs, None)
    for spec in corpus.specs:
        assert shared.onnx_sha256(spec) == onnx_digest(spec.onnx_path, spec.external_data)


def test_parallel_runs_are_told_from_task_names_and_spelled_options(monkeypatch):
    for argv, parallel in ((["doit", "--process", "3"], True), (["doit", "engines", "-n", "4"], True),
                           (["doit", "db22"], False), (["doit", "-n"], False), (["doit", "--process=2"], True)):
        monkeypatch.setattr(sys, "argv", argv)
        assert tasks._parallel_run() is parallel, argv


def test_a_dodo_without_a_config_argument_uses_corpus_corpus_yaml(corpus_dir, monkeypatch):
    monkeypatch.chdir(corpus_dir.parent)
    group, *subtasks = list(tasks.engine_tasks())
    assert [t["name"] for t in subtasks] == ["det", "cls", "emb"]
    assert subtasks[0]["file_dep"][-1] == str(corpus_dir / "corpus.yaml")


def test_the_export_task_depends_on_the_config(corpus_yaml, tmp_path):
    export = _tasks(corpus_yaml, export_triton=str(tmp_path / "triton"))[-1]
    assert export["file_dep"][-1] == str(corpus_yaml)


def test_a_dep_file_that_is_not_a_path_creates_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tasks.doit_config(dep_file=None)["dep_file"] is None
    assert list(tmp_path.iterdir()) == []


# --- found by the third round (after the split of issue 23): the key check, the long reason, spawned workers -------

def test_a_missing_signing_key_stops_the_generator_with_one_line_and_exit_2(corpus_dir, capsys):
    (corpus_dir / "remote").mkdir()
    remote = {"url": f"file://{corpus_dir / 'remote'}", "timeout_s": 3, "signing_key": {"file": "keys/engine.key"}}
    path = _one(corpus_dir, remote=remote)
    with pytest.raises(SystemExit) as stopped:
        _tasks(path)
    assert stopped.value.code == 2
    key = corpus_dir / "keys" / "engine.key"
    assert capsys.readouterr().err == (f"ERROR: {path}: field 'remote.signing_key': cannot read key file {key} "
                                       "(No such file or directory)\n")
    assert not (corpus_dir / "cache").exists()


def test_a_remote_that_is_off_or_absent_needs_no_key(corpus_dir):
    (corpus_dir / "remote").mkdir()
    remote = {"url": f"file://{corpus_dir / 'remote'}", "timeout_s": 3, "signing_key": {"file": "keys/engine.key"},
              "mode": "off"}
    assert [t["name"] for t in _tasks(_one(corpus_dir, remote=remote))] == [None, "det"]
    assert [t["name"] for t in _tasks(_one(corpus_dir))] == [None, "det"]


def test_a_long_failure_names_the_build_log_in_the_actions_line_too(corpus_yaml, caplog):
    """doit -r json shows the action's TaskFailed message: the compiler's short reason, not a second cut of its own."""
    errors = "; ".join(f"node n{i} (NoSuchOp): unsupported operator NoSuchOp{i} [INVALID_NODE]" for i in range(40))
    message, logged = _fail_with(corpus_yaml, ConfigError(errors), caplog)
    assert logged == [message], (logged, message)
    assert message.startswith("FAILED det: node n0 (NoSuchOp): unsupported operator NoSuchOp0 [INVALID_NODE] (and 39 more; "
                              "the whole text is in det.") and message.endswith(".build.log)"), message
    log_name = message.rsplit("the whole text is in ", 1)[1][:-1]
    assert errors in (corpus_yaml.parent / "cache" / log_name).read_text()


def test_a_worker_that_did_not_generate_the_tasks_builds(corpus_dir, settled, monkeypatch):
    """A spawn or forkserver ``doit -n`` worker has no shared verifier (the generator ran in doit's process only)."""
    path = _one(corpus_dir)
    _, det = _tasks(path)
    spec, host, config = det["actions"][0][1]
    shared_verifier._RUN_VERIFIER.clear()
    monkeypatch.setattr(doit_action, "_in_worker", lambda: True)
    result = tasks.compile_backbone(spec, host, config)
    assert not isinstance(result, TaskFailed) and result["outcome"] == "BUILT", result
