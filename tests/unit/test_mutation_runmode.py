"""``doit engines --config PATH``: which command lines give the engines tasks a config, called in-process.

Found by mutation testing (benchmarks/mutation.sh, doit/runmode.py): the tests of the option
(tests/unit/test_doit_hardening_parts.py, tests/integration/test_doit_hardening.py) are not in
the module's fast selection or run doit in a child process, so no mutant of
``runmode._task_option`` was seen. The option decides which corpus a run builds; here the
generator is given doit's command line (``sys.argv`` and ``__main__``) as doit leaves them.
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest

from provisioning import interrupt
from provisioning.doit import runmode, tasks
from provisioning.doit import verifier as shared_verifier
from tests.conftest import DEFAULT_BACKBONES, write_corpus_yaml


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch):
    monkeypatch.delenv("PROVISIONING_CONFIG", raising=False)
    monkeypatch.setattr(tasks, "_DEFAULT_TASKS", [])
    monkeypatch.setattr(shared_verifier, "_RUN_VERIFIER", {})
    monkeypatch.setattr(interrupt, "install", lambda: None)  # leave this test process's signals alone
    monkeypatch.setattr(tasks, "_command_runs_tasks", lambda: False)  # no background hashing in a test


def _started_as(monkeypatch, argv: list[str], main_spec: str | None = None) -> None:
    """doit's command line: ``sys.argv`` and the ``__main__`` module (``python -m doit``: its spec)."""
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name=main_spec) if main_spec else None
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", argv)


DOIT = "/venv/bin/doit"


@pytest.mark.parametrize(("argv", "main_spec", "value"), [
    ([DOIT, "engines", "--config", "a.yaml"], None, "a.yaml"),
    (["doit", "engines", "--config", "a.yaml"], None, "a.yaml"),
    ([DOIT, "engines:det", "--config=b.yaml"], None, "b.yaml"),
    ([DOIT, "engines:det", "--config=runs/n=2/corpus.yaml"], None, "runs/n=2/corpus.yaml"),  # "=" in the path
    ([DOIT, "-n", "2", "engines", "--config", "c.yaml"], None, "c.yaml"),
    ([DOIT, "run", "engines", "--config", "a.yaml", "--config", "d.yaml"], None, "d.yaml"),  # the last wins
    ([DOIT, "engines", "--config", "a.yaml", "--config=e.yaml"], None, "e.yaml"),
    ([DOIT, "engines", "--config=a.yaml", "--config", "f.yaml"], None, "f.yaml"),
    ([DOIT, "engines:det", "--config", "a.yaml", "engines:cls", "--config", "g.yaml"], None, "g.yaml"),
    ([DOIT, "engines", "--config", "a.yaml", "other", "--config", "h.yaml"], None, "a.yaml"),
    ([DOIT, "other", "--config", "a.yaml"], None, None),  # another task's option
    ([DOIT, "other", "--config=a.yaml"], None, None),
    ([DOIT, "engines", "other", "--config", "a.yaml"], None, None),
    ([DOIT, "other", "--config", "engines"], None, None),  # a value that looks like the task's name
    ([DOIT, "other", "--config", "engines", "--config", "x.yaml"], None, None),
    ([DOIT, "engines", "--config"], None, None),  # no value: doit says so itself
    ([DOIT, "other", "--config"], None, None),
    ([DOIT, "engines", "--other", "--config"], None, None),
    ([DOIT, "models", "--config", "a.yaml"], None, None),
    ([DOIT, "engines_export", "--config", "a.yaml"], None, None),
    ([DOIT, "enginesX:det", "--config", "a.yaml"], None, None),
    # before the first task name an option is doit's: here the value of --output-file
    ([DOIT, "--output-file", "--config=report.txt", "engines"], None, None),
    ([DOIT, "--output-file", "--config", "engines"], None, None),
    # python -m doit: argv[0] is doit's __main__.py, the spec says it is doit
    (["/usr/lib/python3/doit/__main__.py", "engines", "--config", "a.yaml"], "doit.__main__", "a.yaml"),
    (["/usr/lib/python3/doit/__main__.py", "engines", "--config", "a.yaml"], "other.__main__", None),
    # a library call, a test or a script: not doit's command line, whatever its arguments
    (["/venv/bin/pytest", "engines", "--config", "a.yaml"], None, None),
    (["serve.py", "engines", "--config", "a.yaml"], None, None),
    (["engines", "engines", "--config", "a.yaml"], None, None),
    (["doit.py", "engines", "--config", "a.yaml"], None, None),
    ([], None, None),  # an embedded interpreter
])
def test_the_config_option_belongs_to_the_engines_tasks_it_follows(monkeypatch, argv, main_spec, value):
    _started_as(monkeypatch, argv, main_spec)
    assert runmode._task_option("engines", "config") == value


def test_another_basename_and_another_option_name(monkeypatch):
    _started_as(monkeypatch, [DOIT, "models:det", "--profile", "p.yaml"])
    assert runmode._task_option("models", "profile") == "p.yaml"
    assert runmode._task_option("models", "config") is None
    assert runmode._task_option("engines", "profile") is None


# --- the generator: which corpus the tasks build ---------------------------------------------------------------

@pytest.fixture
def two_corpora(corpus_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """corpus/corpus.yaml (det, cls, emb) and alt/corpus.yaml (det only, its own cache)."""
    alt = tmp_path / "alt"
    shutil.copytree(corpus_dir / "models", alt / "models")
    write_corpus_yaml(alt, [dict(DEFAULT_BACKBONES[0])], cache_dir="alt-cache")
    return corpus_dir / "corpus.yaml", alt / "corpus.yaml"


@pytest.mark.parametrize("spelling", [["--config", "{}"], ["--config={}"]])
def test_doit_engines_config_path_builds_that_corpus(two_corpora, monkeypatch, spelling):
    default, alt = two_corpora
    monkeypatch.chdir(default.parent.parent)  # the default corpus/corpus.yaml is here too
    _started_as(monkeypatch, [DOIT, "engines", *[s.format(alt) for s in spelling]])
    group, *subtasks = list(tasks.engine_tasks())
    assert [t["name"] for t in subtasks] == ["det"]
    assert subtasks[0]["file_dep"][-1] == str(alt)
    assert str(alt.parent / "alt-cache") in subtasks[0]["targets"][0]
    # the option wins over the dodo's own engine_tasks(PATH)
    assert [t["file_dep"][-1] for t in list(tasks.engine_tasks(str(default)))[1:]] == [str(alt)]


def test_the_config_option_of_another_basename_leaves_these_tasks_alone(two_corpora, monkeypatch):
    default, alt = two_corpora
    monkeypatch.chdir(default.parent.parent)
    _started_as(monkeypatch, [DOIT, "engines", "--config", str(alt)])
    group, *subtasks = list(tasks.engine_tasks(basename="models"))
    assert [t["file_dep"][-1] for t in subtasks] == [str(default)] * 3
    _started_as(monkeypatch, [DOIT, "models:det", "--config", str(alt)])
    group, *subtasks = list(tasks.engine_tasks(basename="models"))
    assert group["basename"] == "models" and [t["file_dep"][-1] for t in subtasks] == [str(alt)]
