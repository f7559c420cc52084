"""resolve_engine and engines-path: a server finds this host's verified engine without knowing its name.

Real ONNX Runtime engines built through the real compiler, real files, the real ``doit``
command in subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from provisioning import (CompileOutcome, ConfigError, EngineNotReadyError, build_compile_request,
                          build_engine_compiler, load_config, resolve_engine)
from provisioning.sidecar import Sha256Sidecar
from tests.conftest import PYTHON, DoitProject

DODO = "from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n"


@pytest.fixture
def built(corpus_yaml):
    """The corpus built once with ONNX Runtime; returns the config path."""
    config = load_config(corpus_yaml)
    build_engine_compiler(config).compile_engines_for_corpus(build_compile_request(config))
    return corpus_yaml


def test_fresh_engine_is_returned_verified_and_opens_ready_to_run(built):
    entry = resolve_engine(built, "det")
    assert entry.path.is_file() and entry.path.is_absolute()
    assert Sha256Sidecar.read(entry.path).sha256 == entry.sha256
    session = entry.open()
    feed = {"images": np.zeros((1, 3, 32, 32), np.float32)}
    assert session.run(None, feed)[0].shape == (1, 4, 32, 32)
    assert resolve_engine(load_config(built), "det").path == entry.path  # a loaded config works too


def test_the_warm_path_imports_no_heavy_library(built):
    code = ("import sys, provisioning; e = provisioning.resolve_engine(sys.argv[1], 'cls'); "
            "print([m for m in ('onnx', 'onnxruntime', 'numpy', 'tensorrt', 'tensorrt_rtx') if m in sys.modules])")
    done = subprocess.run([PYTHON, "-c", code, str(built)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_stale_and_corrupt_each_say_which_and_the_fix(corpus_yaml, built):
    entry = resolve_engine(built, "det")
    raw = entry.path.read_bytes()
    entry.path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EngineNotReadyError) as caught:
        resolve_engine(built, "det")
    message = str(caught.value)
    assert "is corrupt" in message and "doit engines:det" in message and "\n" not in message
    entry.path.write_bytes(raw)
    assert resolve_engine(built, "det").sha256 == entry.sha256

    manifest = json.loads((entry.path.parent / (entry.path.name + ".manifest.json")).read_text())
    manifest["inputs"]["onnx_sha256"] = "0" * 64  # as if built from another ONNX under this name
    (entry.path.parent / (entry.path.name + ".manifest.json")).write_text(json.dumps(manifest))
    with pytest.raises(EngineNotReadyError, match="is stale .*ONNX bytes changed"):
        resolve_engine(built, "det")

    for path in entry.path.parent.glob("cls.*"):
        path.unlink()
    with pytest.raises(EngineNotReadyError, match="is missing .*no engine in the cache.*doit engines:cls"):
        resolve_engine(built, "cls")
    with pytest.raises(ConfigError, match="no backbone 'nope' .*det, cls, emb"):
        resolve_engine(built, "nope")


def test_build_true_compiles_what_is_missing_then_reuses(corpus_yaml):
    entry = resolve_engine(corpus_yaml, "cls", build=True)
    assert entry.path.is_file()
    assert sorted(p.name.split(".")[0] for p in entry.path.parent.glob("*.engine")) == ["cls"]  # only that one
    again = resolve_engine(corpus_yaml, "cls", build=True)
    assert again.path == entry.path and again.sha256 == entry.sha256
    events = [json.loads(line) for line in (entry.path.parent / "events.jsonl").read_text().splitlines()]
    assert [e["outcome"] for e in events] == [CompileOutcome.BUILT.value]  # the second call found it fresh


def test_engines_path_prints_the_path_or_the_manifest_with_status_exit_codes(corpus_dir, built):
    project = DoitProject(corpus_dir.parent)
    (project.root / "dodo.py").write_text(DODO)
    entry = resolve_engine(built, "det")
    done = project.doit("engines-path", "det")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(entry.path)
    as_json = project.doit("engines-path", "det", "--json")
    document = json.loads(as_json.stdout)
    assert document["path"] == str(entry.path) and document["engine"]["sha256"] == entry.sha256
    entry.path.write_bytes(b"garbage")
    broken = project.doit("engines-path", "det")
    assert broken.returncode == 1 and broken.stdout == ""
    assert broken.stderr.startswith("ERROR: backbone det: ") and "corrupt" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1
    unknown = project.doit("engines-path", "nope")
    assert unknown.returncode == 2 and "no backbone 'nope'" in unknown.stderr
    usage = project.doit("engines-path")
    assert usage.returncode == 2 and "exactly one backbone name" in usage.stderr
    assert "Traceback" not in broken.stderr + unknown.stderr + usage.stderr


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("the suite runs on Linux")
