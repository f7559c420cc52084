"""Integration fixtures: a throw-away doit project around a copy of the example corpus.

Layout (the defaults a user gets)::

    tmp_path/                 the project: dodo.py, .doit.db
      corpus/corpus.yaml      backend onnxruntime, cache_dir ./cache
      corpus/models/*.onnx
      corpus/cache/           the engine cache
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provisioning.manifest import manifest_path_for
from provisioning.schema import EngineFilenameSchema
from provisioning.sidecar import Sha256Sidecar
from tests.conftest import DOIT, DoitProject  # noqa: F401 - DOIT is re-exported to the tests

DODO = "from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n"
FOREIGN_HOST_KEY = "x86_64-avx2-f00d00"


class Project(DoitProject):
    """A doit project folder with helpers to run doit in it."""

    def engines(self) -> dict[str, list[Path]]:
        """This cache's canonical engines by model name."""
        found: dict[str, list[Path]] = {}
        for path in sorted(self.cache.glob("*.engine")):
            found.setdefault(EngineFilenameSchema.parse(path.name).model_name, []).append(path)
        return found

    def engine(self, model_name: str) -> Path:
        """The single engine of ``model_name`` in the cache."""
        paths = self.engines()[model_name]
        assert len(paths) == 1, paths
        return paths[0]

    def status_json(self, *args: str) -> dict:
        result = self.doit("engines-status", "--json", *args)
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a test's own doit children get (see :meth:`DoitProject.env`)."""
    return DoitProject(Path(".")).env(extra)


def task_lines(stdout: str) -> dict[str, str]:
    """``{'det': '.', 'cls': '--'}`` from doit's console reporter."""
    marks = {}
    for line in stdout.splitlines():
        for mark in (".  ", "-- "):
            if line.startswith(mark + "engines:"):
                marks[line[len(mark) + len("engines:"):].strip()] = mark.strip()
    return marks


def outcomes(events: list[dict]) -> dict[str, str]:
    return {e["model_name"]: e["outcome"] for e in events}


def make_foreign_copy(engine: Path, host_key: str = FOREIGN_HOST_KEY) -> Path:
    """Copy a cache entry as if another host had built it (its key in name, sidecar, manifest)."""
    parsed = EngineFilenameSchema.parse(engine.name)
    name = EngineFilenameSchema.compose(parsed.__class__(**{**parsed.__dict__, "host_key": host_key}))
    target = engine.with_name(name)
    shutil.copyfile(engine, target)
    sha = Sha256Sidecar.read(engine).sha256
    Sha256Sidecar.path_for(target).write_text(Sha256Sidecar.format_line(sha, name))
    manifest = json.loads(manifest_path_for(engine).read_text())
    manifest["engine"]["file_name"] = name
    manifest["inputs"]["host"]["host_key"] = host_key
    manifest_path_for(target).write_text(json.dumps(manifest))
    return target


def edit_onnx(path: Path, note: str = "edited") -> None:
    """Change an ONNX file's bytes, keeping it a valid model with the same graph."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    model.doc_string = note
    onnx.save_model(model, str(path))


@pytest.fixture
def project(corpus_dir: Path) -> Project:
    """tmp_path with dodo.py and the corpus in corpus/ (the default config path)."""
    root = corpus_dir.parent
    (root / "dodo.py").write_text(DODO)
    return Project(root)


@pytest.fixture
def built(project: Project) -> Project:
    """The project after one successful ``doit engines``."""
    result = project.doit("engines")
    assert result.returncode == 0, result.stdout + result.stderr
    return project
