"""resolve_engine(release=..., model=...): the engine a release pins for this host, from a pulled cache."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from provisioning import resolve_engine
from provisioning.errors import EngineNotReadyError
from provisioning.release.pull import pull_release
from provisioning.release.serving_config import load_serving_config
from tests.conftest import CORPUS
from tests.release.pull_fixtures import H100, file_kit, ort, serving_host, trt


@pytest.fixture
def pulled(tmp_path):
    """A release with a real ONNX Runtime engine (det) and an H100 plan (cls), pulled on a CPU host."""
    kit = file_kit(tmp_path)
    kit.add("det", ort("det"), data=(CORPUS / "models" / "det.onnx").read_bytes())
    kit.add("cls", trt("cls", H100, "10.16.1.11"))
    release = kit.write(tmp_path / "engines.release.json")
    serving = kit.serving_yaml(tmp_path / "serving", allow_cpu_fallback=True)
    report = pull_release(release, load_serving_config(serving), host=serving_host(None, onnxruntime="1.23.2"))
    assert [line.state for line in report.lines] == ["NO-VARIANT", "PULLED"]
    return kit, release, serving


def test_resolve_from_a_release_returns_the_pulled_engine_and_it_opens(pulled):
    kit, release, serving = pulled
    entry = resolve_engine(release=release, model="det", serving_config=serving)
    assert entry.path.name == kit.variants["det"][0].engine and entry.sha256 == kit.variants["det"][0].sha256
    session = entry.open()
    assert session.run(None, {"images": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 4, 32, 32)


def test_resolve_says_what_to_run_when_the_engine_is_not_pulled_or_damaged(pulled, monkeypatch):
    kit, release, serving = pulled
    monkeypatch.setenv("PROVISIONING_SERVING_CONFIG", str(serving))
    with pytest.raises(EngineNotReadyError, match="NO-VARIANT cls: .*no GPU"):
        resolve_engine(release=release, model="cls")
    entry = resolve_engine(release=release, model="det")
    entry.path.write_bytes(b"\0" + entry.path.read_bytes()[1:])
    with pytest.raises(EngineNotReadyError, match="not the release's verified bytes .*doit engines-pull") as caught:
        resolve_engine(release=release, model="det")
    assert "\n" not in str(caught.value)


def test_resolving_from_a_release_imports_no_heavy_library(pulled):
    kit, release, serving = pulled
    code = ("import sys, provisioning\n"
            "e = provisioning.resolve_engine(release=sys.argv[1], model='det', serving_config=sys.argv[2])\n"
            "print([m for m in ('onnx', 'onnxruntime', 'tensorrt', 'tensorrt_rtx') if m in sys.modules], e.path.name)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, "-c", code, str(release), str(serving)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", kit.variants["det"][0].engine]
