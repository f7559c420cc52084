"""Issue 14: what a newcomer meets first, through the real ``doit`` command.

A missing database folder, another basename, which config wins, a regenerated corpus, a
machine without the GPU a config asks for, one line per failure, why a settings change
rebuilds, the small ones, and a full disk while ONNX Runtime writes its optimised model.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import yaml

from provisioning.cache import engine_lock
from tests.conftest import CORPUS, DOIT, write_corpus_yaml
from tests.integration.conftest import clean_env

EXIT_NO_GPU = 69


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _set_backend(project, backend: str) -> None:
    document = yaml.safe_load(project.config.read_text())
    document["backend"] = backend
    project.config.write_text(yaml.safe_dump(document))


# 1. the database folder
def test_a_missing_database_folder_is_created(project):
    (project.root / "dodo.py").write_text(
        "from provisioning.doit import doit_config, task_engines  # noqa: F401\n"
        "DOIT_CONFIG = doit_config(dep_file='state/doit.db')\n")
    result = project.doit("engines:det")
    assert result.returncode == 0, _output(result)
    assert (project.root / "state" / "doit.db").is_file()
    (project.root / "dodo.py").write_text("from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n")
    result = project.doit("engines:det", env={"PROVISIONING_DOIT_DB": "build/engines/.doit.db"})
    assert result.returncode == 0, _output(result)
    assert (project.root / "build" / "engines" / ".doit.db").is_file()


# 2. default tasks follow the basename
def test_plain_doit_runs_the_groups_engine_tasks_generated(project):
    (project.root / "dodo.py").write_text(
        "from provisioning.doit import doit_config, engine_tasks\n"
        "DOIT_CONFIG = doit_config()\n"
        "def task_models():\n"
        "    yield from engine_tasks(basename='models')\n")
    result = project.doit()
    assert result.returncode == 0, _output(result)
    assert ".  models:det" in result.stdout and "Invalid parameter" not in _output(result)


# 3. one precedence: command line > environment > the dodo's argument > corpus/corpus.yaml
def test_config_precedence_is_the_same_for_tasks_and_commands(project):
    for name in ("dodo", "env", "cli"):
        write_corpus_yaml(project.corpus, [{"model_name": name, "onnx": "models/det.onnx"}])
        project.config.rename(project.corpus / f"{name}.yaml")
    (project.root / "dodo.py").write_text(
        "from provisioning.doit import DOIT_CONFIG, engine_tasks  # noqa: F401\n"
        "def task_engines():\n"
        "    yield from engine_tasks('corpus/dodo.yaml')\n")
    env = {"PROVISIONING_CONFIG": "corpus/env.yaml"}
    assert "engines:dodo" in project.doit("list", "--all").stdout
    assert "engines:env" in project.doit("list", "--all", env=env).stdout
    assert "engines:cli" in project.doit("list", "--all", "config=corpus/cli.yaml", env=env).stdout
    status = project.doit("engines-status", "--config", "corpus/cli.yaml", env=env)
    assert status.stdout.splitlines()[0] == f"config {project.corpus / 'cli.yaml'} (from --config)", status.stdout
    status = project.doit("engines-status", env=env)
    assert status.stdout.splitlines()[0].endswith("env.yaml (from $PROVISIONING_CONFIG)"), status.stdout


def test_commands_find_the_default_config_next_to_a_dodo_given_with_f(project, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for args in (("engines-status", "-f", str(project.root / "dodo.py")),
                 ("-f", str(project.root / "dodo.py"), "engines-status")):
        result = subprocess.run([DOIT, *args], cwd=outside, env=clean_env(), capture_output=True, text=True)
        assert result.returncode == 1, _output(result)  # everything missing, nothing wrong
        assert result.stdout.splitlines()[0] == f"config {project.config} (from the default)", result.stdout


# 4. the example corpus regenerates byte for byte
def test_make_corpus_writes_the_same_bytes_every_time(tmp_path):
    target = tmp_path / "models"
    script = str(CORPUS / "make_corpus.py")
    for _ in range(2):
        subprocess.run([sys.executable, script, str(target)], check=True, capture_output=True)
    for committed in sorted((CORPUS / "models").iterdir()):
        assert (target / committed.name).read_bytes() == committed.read_bytes(), committed.name


# 5. no GPU: listing and planning work; the first action that needs the GPU says so
def test_without_a_gpu_tasks_list_and_gc_plans(project):
    _set_backend(project, "tensorrt")
    env = {"CUDA_VISIBLE_DEVICES": ""}
    listed = project.doit("list", "--all", env=env)
    assert listed.returncode == 0, _output(listed)
    assert "engines:det" in listed.stdout and "no GPU" in listed.stdout
    gc = project.doit("engines-gc", env=env)
    assert gc.returncode == 0 and "no engine is judged" in gc.stdout, _output(gc)
    run = project.doit("engines", env=env)
    assert run.returncode == EXIT_NO_GPU, _output(run)
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("ERROR: no GPU"), run.stderr


# 7. a failure is one line
def test_a_failure_is_said_once(project):
    import onnx

    model = onnx.load_model(str(project.corpus / "models" / "det.onnx"))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save_model(model, str(project.corpus / "models" / "det.onnx"))
    result = project.doit("engines:det")
    assert result.returncode == 1, _output(result)
    assert _output(result).count("FAILED det") == 1, _output(result)
    assert "TaskFailed" not in _output(result) and "" not in result.stdout.splitlines(), _output(result)
    failed = project.events()[-1]  # 9: the FAILED event has the fields of the others
    assert failed["outcome"] == "FAILED" and failed["source"] == "local"
    assert failed["miss_reasons"] == ["no engine in the cache"]


# 8. a settings change says which setting changed
def test_a_changed_setting_is_named_in_the_miss_line(built):
    document = yaml.safe_load(built.config.read_text())
    document["backbones"][1]["inputs"]["features"]["max"] = [16, 64]
    built.config.write_text(yaml.safe_dump(document))
    result = built.doit("engines:cls")
    assert result.returncode == 0, _output(result)
    miss = next(line for line in result.stdout.splitlines() if line.startswith("miss cls:"))
    assert miss.startswith("miss cls: build setting 'inputs' changed: ") and "(cached: cls." in miss, miss


# 9. the small ones
def test_gc_names_the_locked_engine_it_kept_over_the_budget(built):
    det = built.engine("det")
    with engine_lock(det):
        result = built.doit("engines-gc", "--max-size", "1")
    assert result.returncode == 0, _output(result)
    assert f"{det.name}: kept over the size budget, locked by a live process" in result.stdout, result.stdout


def test_status_json_with_a_bad_config_prints_json(project):
    result = project.doit("engines-status", "--json", "--config", "missing.yaml")
    assert result.returncode == 2, _output(result)
    assert "config file not found" in json.loads(result.stdout)["error"]


def test_small_wording(project):
    write_corpus_yaml(project.corpus, [{"model_name": "det", "onnx": "models/det.onnx"}])
    assert "total: 1 backbone (" in project.doit("engines-status").stdout
    assert "config=PATH" in project.doit("help", "engines").stdout


# 10. a full disk while ONNX Runtime writes its optimised model is the disk's fault
def test_a_write_failure_of_onnx_runtime_is_not_blamed_on_the_model(project):
    write_corpus_yaml(project.corpus, [{"model_name": "det", "onnx": "models/det.onnx"}])

    def small_files() -> None:  # det's optimised model is larger: its write stops in the middle
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))

    # the json database stays small; sqlite's would hit the limit itself
    result = subprocess.run([DOIT, "--backend", "json", "engines"], cwd=project.root, env=clean_env(),
                            capture_output=True, text=True, preexec_fn=small_files, timeout=120)
    assert result.returncode == 1, _output(result)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED det")]
    assert len(failed) == 1, _output(result)
    assert "cannot write" in failed[0] and "free disk space" in failed[0] and "could not load" not in failed[0]
    assert "Traceback" not in _output(result)
