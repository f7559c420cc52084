"""A killed export leaves only complete versions; the next export cleans up and completes.

Two ways: a forked export that dies (``os._exit``) at every file-system call in turn, and
the real ``doit engines-export`` SIGKILLed at random moments while exporting a large engine.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from provisioning.serving.triton import export_triton_repository
from tests.conftest import DOIT
from tests.serving.conftest import (ExportProject, build_engines, complete_versions, edit_onnx, hidden_leftovers,
                                    model_config)

FS_CALLS = ("open", "mkdir", "link", "rename", "replace", "fsync", "write", "unlink", "rmdir")
CRASHED = 77


def check_repository(repo) -> dict[str, list[int]]:
    """Every integer version complete and verifying, every config.pbtxt valid, leftovers hidden."""
    versions = {}
    hidden_leftovers(repo)
    for model in sorted(p for p in repo.iterdir() if p.is_dir()):
        versions[model.name] = complete_versions(model)
        if (model / "config.pbtxt").exists():
            model_config(model / "config.pbtxt")
    return versions


def _die_at(n: int) -> None:
    """From now on, the n-th call of any FS_CALLS function ends the process at once."""
    count = [0]
    for name in FS_CALLS:
        original = getattr(os, name)

        def wrapped(*args, _original=original, **kwargs):
            count[0] += 1
            if count[0] == n:
                os._exit(CRASHED)
            return _original(*args, **kwargs)

        setattr(os, name, wrapped)


@pytest.mark.parametrize("link", [True, False], ids=["link", "copy"])
def test_a_crash_at_any_file_system_call_leaves_complete_versions(ort_project, link):
    corpus = ort_project.corpus_loaded()
    base = ort_project.root / "base"
    for note in ("one", "two"):  # versions 1 and 2, then a third engine to export with keep=2
        edit_onnx(ort_project.corpus / "models" / "det.onnx", note)
        corpus = build_engines(ort_project.config)
        export_triton_repository(corpus, base, models=["det"])
    edit_onnx(ort_project.corpus / "models" / "det.onnx", "three")
    corpus = build_engines(ort_project.config)
    crashes = 0
    for n in range(1, 400):
        work = ort_project.root / f"work{n}"
        shutil.copytree(base, work)
        pid = os.fork()
        if pid == 0:  # the child: export, dying at the n-th file-system call
            try:
                _die_at(n)
                export_triton_repository(corpus, work, models=["det"], keep=2, link=link)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), status
        after_crash = check_repository(work)
        assert after_crash["det"] in ([1, 2], [1, 2, 3], [2, 3]), (n, after_crash)
        export_triton_repository(corpus, work, models=["det"], keep=2, link=link)
        assert check_repository(work) == {"det": [2, 3]} and hidden_leftovers(work) == [], n
        config = model_config(work / "det" / "config.pbtxt")
        assert config.platform == "onnxruntime_onnx"
        shutil.rmtree(work)
        if os.WEXITSTATUS(status) == 0:
            break  # n is past the export's last call: every call has been a crash point
        crashes += 1
    print(f"{crashes} crash points")
    assert crashes > 15, crashes


def _big_model(path, seed: int) -> None:
    """x[1, 2048] @ W[2048, 4096]: a 32 MiB engine, so that a kill can land while it is written."""
    weights = np.random.default_rng(seed).standard_normal((2048, 4096)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
                              [numpy_helper.from_array(weights, "w")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_sigkill_of_the_real_command_at_random_moments(tmp_path):
    project = ExportProject(tmp_path)
    configs = []
    for seed in (1, 2):  # two caches whose engines differ: every run has a new version to write
        folder = tmp_path / f"corpus{seed}"
        folder.mkdir()
        _big_model(folder / "big.onnx", seed)
        (folder / "corpus.yaml").write_text(yaml.safe_dump({
            "cache_dir": "cache", "backend": "onnxruntime",
            "backbones": [{"model_name": "big", "onnx": "big.onnx", "precision": "fp32"}]}))
        build_engines(folder / "corpus.yaml")
        configs.append(str(folder / "corpus.yaml"))

    def start(config):
        return subprocess.Popen([DOIT, "engines-export", "--config", config, "--triton", str(project.repo),
                                 "--copy", "--keep", "3"], cwd=tmp_path, env=project.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    began = time.monotonic()
    first = start(configs[0])
    assert first.wait(60) == 0, first.stderr.read()
    duration = time.monotonic() - began
    rng = random.Random(12)
    interrupted = 0
    for round_ in range(6):
        process = start(configs[(round_ + 1) % 2])
        time.sleep(rng.uniform(0.4, 1.0) * duration)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        interrupted += process.returncode == -signal.SIGKILL
        leftovers = hidden_leftovers(project.repo)
        check_repository(project.repo)
        if leftovers:
            print(f"kill {round_}: left {leftovers}")
    final = start(configs[0])
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    assert hidden_leftovers(project.repo) == []
    assert check_repository(project.repo)["big"]
    print(f"{interrupted} of 6 runs killed before finishing (one run takes {duration:.2f} s)")
