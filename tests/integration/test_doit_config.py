"""Choosing the corpus, rejecting a bad one in one line, and a light warm path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import write_corpus_yaml
from tests.integration.conftest import Project, clean_env, task_lines


def test_config_var_and_environment_choose_another_corpus(project: Project) -> None:
    alt = write_corpus_yaml(project.root, [{"model_name": "det", "onnx": "corpus/models/det.onnx"}],
                            cache_dir="alt-cache")
    result = project.doit("engines", "config=corpus.yaml")
    assert result.returncode == 0, result.stderr
    assert task_lines(result.stdout) == {"det": "."}
    assert len(list((project.root / "alt-cache").glob("det.*.engine"))) == 1
    assert not project.cache.exists()  # the default corpus was not touched
    by_env = project.doit("engines", env={"PROVISIONING_CONFIG": str(alt)})
    assert task_lines(by_env.stdout) == {"det": "--"}
    default = project.doit("list", "--all")
    assert {line.split()[0] for line in default.stdout.splitlines()} >= {"engines:det", "engines:cls", "engines:emb"}


def _break_precision(project: Project) -> str:
    document = yaml.safe_load(project.config.read_text())
    document["backbones"][0]["precision"] = "fp77"
    project.config.write_text(yaml.safe_dump(document))
    return "backbone det: field 'precision': unknown value 'fp77'"


def _break_onnx_path(project: Project) -> str:
    (project.corpus / "models" / "cls.onnx").unlink()
    return "backbone cls: field 'onnx'"


def _break_input_name(project: Project) -> str:
    document = yaml.safe_load(project.config.read_text())
    document["backbones"][1]["inputs"] = {"nope": [1, 64]}
    project.config.write_text(yaml.safe_dump(document))
    return "backbone cls: field 'inputs.nope': the ONNX has no input 'nope'"


@pytest.mark.parametrize("breakage", [_break_precision, _break_onnx_path, _break_input_name])
def test_bad_config_is_one_line_and_a_nonzero_exit_before_any_task(project: Project, breakage) -> None:
    expected = breakage(project)
    result = project.doit("engines")
    assert result.returncode == 2  # ConfigError's exit code
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"ERROR: {project.config}: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert task_lines(result.stdout) == {}
    assert not list(project.cache.glob("*.engine")) if project.cache.exists() else True


def test_missing_config_says_how_to_choose_one(project: Project) -> None:
    result = project.doit("engines", "config=nowhere.yaml")
    assert result.returncode == 2
    assert result.stderr == f"ERROR: {project.root / 'nowhere.yaml'}: config file not found; " \
                            "pass config=PATH or set PROVISIONING_CONFIG\n"


def test_warm_run_imports_neither_onnx_runtime_nor_onnx(built: Project) -> None:
    # the ONNX inspection records are written once the cache folder exists (after the first run)
    assert built.doit("engines").returncode == 0
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "doit", "engines"], cwd=built.root,
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert task_lines(result.stdout) == {"det": "--", "cls": "--", "emb": "--"}
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in ("onnxruntime", "onnx", "numpy")}, sorted(imported)[:20]
