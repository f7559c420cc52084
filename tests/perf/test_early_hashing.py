"""With ``verify: full``, a doit run starts hashing the engines at task generation; other commands never do.

The hashing overlaps doit's own start (building its tasks, opening its database) instead of
following it. ``doit list``, ``doit info``, ``doit clean`` and the engines-* commands generate
the same tasks and must not pay for it, nor must a library call or a test in-process.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from provisioning.doit import tasks
from provisioning.doit import verifier as shared_verifier

from tests.conftest import DoitProject

# A dodo that says, once doit has consumed the task generator (before any check runs),
# whether this run's engines are already being hashed.
DODO = '''
from provisioning.doit import DOIT_CONFIG, engine_tasks
from provisioning.doit import verifier as shared_verifier

def task_engines():
    yield from engine_tasks()
    started = any(v.hashing for v in shared_verifier._RUN_VERIFIER.values())
    print("GENERATED hashing=" + ("yes" if started else "no"), flush=True)
'''


@pytest.fixture
def built(corpus_dir: Path) -> DoitProject:
    project = DoitProject(corpus_dir.parent)
    (project.root / "dodo.py").write_text(DODO)
    done = project.doit("engines")
    assert done.returncode == 0, done.stdout + done.stderr
    return project


def _hashing_at_generation(project: DoitProject, *args: str) -> str:
    done = project.doit(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("GENERATED ")]
    assert lines, done.stdout + done.stderr
    return lines[0].split("=", 1)[1]


def test_a_run_hashes_from_task_generation_and_listing_commands_never_do(built: DoitProject):
    assert _hashing_at_generation(built, "engines") == "yes"
    assert _hashing_at_generation(built) == "yes"  # plain `doit`: the default tasks
    assert _hashing_at_generation(built, "run", "engines:det") == "yes"
    assert _hashing_at_generation(built, "-n", "2", "engines") == "yes"
    for command in (["list"], ["info", "engines:det"], ["clean", "--dry-run", "engines"], ["forget", "engines:det"]):
        assert _hashing_at_generation(built, *command) == "no", command


def test_verify_stat_answers_from_the_index_and_starts_nothing_at_generation(built: DoitProject):
    config = built.config.read_text()
    built.config.write_text(config + "verify: stat\n")
    assert _hashing_at_generation(built, "engines") == "no"


@pytest.mark.parametrize(("argv", "main_spec", "runs"), [
    (["/venv/bin/doit"], None, True),
    (["/venv/bin/doit", "engines"], None, True),
    (["/venv/bin/doit", "run", "engines"], None, True),
    (["/venv/bin/doit", "-n", "4"], None, True),
    (["/venv/bin/doit", "list"], None, False),
    (["/venv/bin/doit", "info", "engines:det"], None, False),
    (["/venv/bin/doit", "clean"], None, False),
    (["/venv/bin/doit", "strace", "engines:det"], None, False),
    (["/venv/bin/doit", "engines-status"], None, False),
    (["/venv/bin/doit", "engines-path", "det"], None, False),
    (["/usr/lib/python3/doit/__main__.py", "engines"], "doit.__main__", True),  # python -m doit
    (["/usr/lib/python3/doit/__main__.py", "list"], "doit.__main__", False),
    (["/venv/bin/pytest", "tests"], None, False),  # in-process: not doit's command line
    (["serve.py", "engines"], None, False),
    ([], None, False),  # an embedded interpreter
])
def test_which_command_lines_run_tasks(monkeypatch, argv, main_spec, runs):
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name=main_spec) if main_spec else None
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert tasks._command_runs_tasks() is runs


@pytest.mark.parametrize(("verify", "runs", "hashing"), [("full", True, True), ("stat", True, False),
                                                          ("full", False, False)])
def test_engine_tasks_starts_hashing_only_for_a_full_verify_run(corpus_dir: Path, monkeypatch, verify, runs,
                                                                  hashing):
    """In-process: the generator itself decides (doit's command line stands in through the monkeypatch)."""
    config = corpus_dir / "corpus.yaml"
    config.write_text(config.read_text() + f"verify: {verify}\n")
    monkeypatch.setattr(tasks, "_command_runs_tasks", lambda: runs)
    monkeypatch.setattr(tasks.interrupt, "install", lambda: None)  # leave this test process's signals alone
    monkeypatch.setattr(shared_verifier, "_RUN_VERIFIER", {})
    generated = list(tasks.engine_tasks(config))
    assert [t["name"] for t in generated][1:] == ["det", "cls", "emb"]
    (verifier,) = shared_verifier._RUN_VERIFIER.values()
    assert verifier.hashing is hashing
    assert verifier.mode == verify
