"""A dead endpoint under ``doit engines`` (issue 22 item 24): it costs ``timeout_s`` once per run.

Real doit in a subprocess, three backbones that all miss, an S3 endpoint on a loopback
port that accepts connections and never answers (a black-holed route). doit builds a
RemoteCache per task; the run's state (remote.run_state) carries the verdict from the
first task that timed out to the others. Under ``doit -n 2`` each worker process pays
once (docs/fleet.md says so).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CORPUS, DEFAULT_BACKBONES, write_corpus_yaml

from .conftest import LOOPBACK, S3_ENV

DOIT = str(Path(sys.executable).parent / "doit")
DODO = "from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n"
TIMEOUT_S = 3
OFF = "remote cache off for the rest of this run"


def _project(root: Path, remote: dict | None) -> Path:
    (root / "corpus").mkdir(parents=True)
    shutil.copytree(CORPUS / "models", root / "corpus" / "models")
    top = {"remote": remote} if remote is not None else {}
    write_corpus_yaml(root / "corpus", [dict(b) for b in DEFAULT_BACKBONES], **top)
    (root / "dodo.py").write_text(DODO)
    return root


def _doit(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("PROVISIONING_CONFIG", "PROVISIONING_DOIT_DB")}
    env.update(S3_ENV)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE"):
        env.pop(key, None)
    started = time.monotonic()
    result = subprocess.run([DOIT, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - started


@pytest.fixture
def black_hole():
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(64)
        yield f"http://{LOOPBACK}:{sock.getsockname()[1]}"


def _remote(endpoint: str) -> dict:
    return {"url": "s3://engines/fleet", "endpoint_url": endpoint, "timeout_s": TIMEOUT_S, "lease_s": 2}


def test_a_dead_endpoint_costs_timeout_once_per_doit_run(tmp_path, black_hole):
    baseline, local_s = _doit(_project(tmp_path / "local", None), "engines")
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    result, remote_s = _doit(_project(tmp_path / "fleet", _remote(black_hole)), "engines")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    off = [line for line in output.splitlines() if OFF in line]
    assert len(off) == 1, "\n".join(off)  # one warning for the run, not one per backbone that missed
    assert f"no progress for timeout_s {TIMEOUT_S:g} s" in off[0]
    assert [line.split()[1] for line in output.splitlines() if line.startswith("BUILT ")] == ["det", "cls", "emb"]
    # the remote cost the run one timeout_s (three before: 3 x 3 s), whatever this machine's build speed
    assert remote_s - local_s < 2 * TIMEOUT_S, f"remote cost {remote_s - local_s:.1f} s with timeout_s {TIMEOUT_S}"


def test_under_doit_n_2_each_worker_pays_once(tmp_path, black_hole):
    result, _ = _doit(_project(tmp_path / "fleet", _remote(black_hole)), "-n", "2", "engines")
    assert result.returncode == 0, result.stdout + result.stderr
    off = [line for line in (result.stdout + result.stderr).splitlines() if OFF in line]
    assert 1 <= len(off) <= 2, "\n".join(off)
