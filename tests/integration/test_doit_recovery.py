"""Crash recovery and process-pool safety of ``doit engines`` (real processes and signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from provisioning.sidecar import Sha256Sidecar, is_temp_name

from tests.integration.conftest import DOIT, Project, clean_env, outcomes, task_lines

# A backend that announces itself, leaves scratch work behind, then takes its time before
# handing over to the real ONNX Runtime backend: long enough to be killed mid-build.
SLOW_BACKEND = '''
import os, time
from provisioning.backends.onnxruntime import OnnxRuntimeBackend

class SlowBackend:
    def compile_engine(self, spec, host, output):
        (output.scratch_dir / "partial.bin").write_bytes(b"half an engine" * 1000)
        with open(os.environ["SLOW_MARKER"], "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(float(os.environ.get("SLOW_SECONDS", "60")))
        OnnxRuntimeBackend().compile_engine(spec, host, output)

def make_slow_backend(name):
    return SlowBackend()
'''
SLOW_DODO = '''
from provisioning.doit import DOIT_CONFIG, engine_tasks
from slow_backend import make_slow_backend

def task_engines():
    yield from engine_tasks(backend_factory=make_slow_backend)
'''


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigkill_mid_build_leaves_no_partial_target_and_the_next_run_recovers(project: Project) -> None:
    slow = project.root / "slow"
    slow.mkdir()
    (slow / "slow_backend.py").write_text(SLOW_BACKEND)
    (slow / "dodo.py").write_text(SLOW_DODO)
    marker, log = project.root / "building", project.root / "slow.log"
    env = clean_env({"SLOW_MARKER": str(marker), "PROVISIONING_CONFIG": str(project.config),
                     "PROVISIONING_DOIT_DB": str(project.root / ".doit.db")})
    with open(log, "w") as out:
        process = subprocess.Popen([DOIT, "engines:det"], cwd=slow, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # the heartbeat reaches the console without a terminal (every 5 s)
            _wait_for(lambda: "building det:" in log.read_text(), 30, "a heartbeat line")
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert marker.exists()
    assert list(project.cache.glob("det*.engine")) == []  # no partial target for doit to trust
    leftovers = [p for p in project.cache.iterdir() if is_temp_name(p.name)]
    assert leftovers, "the killed build should have left its scratch folder"

    plan = project.doit("engines-gc", "--json")
    planned = json.loads(plan.stdout)["items"]
    scratch = [i for i in planned if os.path.basename(os.path.dirname(i["paths"][0])) != ".locks"]
    assert {os.path.basename(i["paths"][0]) for i in scratch} == {p.name for p in leftovers}
    assert all("owner pid" in i["reason"] for i in scratch)
    # and the killed build's lock file and holder record in .locks, now that no process holds them
    locks = sorted(os.path.basename(i["paths"][0]) for i in planned if i not in scratch)
    assert all(name.startswith("det.") and ".engine.lock" in name for name in locks), locks

    result = project.doit("engines")  # the normal dodo and the real backend recover
    assert result.returncode == 0, result.stdout + result.stderr
    assert task_lines(result.stdout)["det"] == "."
    assert outcomes(project.events()) == {"det": "BUILT", "cls": "BUILT", "emb": "BUILT"}
    assert Sha256Sidecar.verify(project.engine("det"))
    applied = project.doit("engines-gc", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert not any(is_temp_name(p.name) for p in project.cache.iterdir())


SPAWN_LAUNCHER = (
    "import multiprocessing, sys\n"
    "multiprocessing.set_start_method('spawn')\n"
    "from doit.cmd_base import DodoTaskLoader\n"
    "from doit.doit_cmd import DoitMain\n"
    "sys.exit(DoitMain(DodoTaskLoader()).run(sys.argv[1:]))\n"
)


def test_process_pool_under_spawn_start_method(project: Project) -> None:
    """macOS, Windows and Python 3.14 spawn workers: every task must pickle."""
    result = subprocess.run([sys.executable, "-c", SPAWN_LAUNCHER, "-n", "2", "engines"], cwd=project.root,
                            env=clean_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcomes(project.events()) == {"det": "BUILT", "cls": "BUILT", "emb": "BUILT"}
    assert all(Sha256Sidecar.verify(p) for paths in project.engines().values() for p in paths)
