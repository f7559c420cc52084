"""Part 2, one build under contention: many `doit engines` on one cache build each engine once.

Each process has its own doit database (doit has no locking between databases); the
engine cache is shared. The count comes from ``events.jsonl``, which every process
appends to: exactly one BUILT per backbone, every other process REUSED.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter

from provisioning.cache import lock_is_held
from provisioning.sidecar import Sha256Sidecar

from tests.conftest import DOIT
from tests.reliability.conftest import (
    MODELS,
    Project,
    child_env,
    count,
    kill_group,
    make_project,
    record,
    unsound_entries,
    wait_for,
)
from tests.reliability.faulty_backend import BUILD_DELAY, PHASE_LOG

PROCESSES = 12


def _outcomes(project: Project) -> Counter:
    return Counter((e["model_name"], e["outcome"]) for e in project.events())


def test_many_processes_build_each_engine_exactly_once(tmp_path) -> None:
    rounds = count(1)
    for round_ in range(rounds):
        project = make_project(tmp_path / f"round{round_}")
        processes = [
            project.spawn_doit("engines", env={BUILD_DELAY: "0.3", "PROVISIONING_DOIT_DB": str(project.root / f"db{i}")})
            for i in range(PROCESSES)
        ]
        outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
        for process, output in zip(processes, outputs):
            assert process.returncode == 0, output
            assert "Traceback" not in output
        outcomes = _outcomes(project)
        for model in MODELS:
            assert outcomes[(model, "BUILT")] == 1, outcomes
            assert outcomes[(model, "REUSED")] == PROCESSES - 1, outcomes
        assert sum(outcomes.values()) == PROCESSES * len(MODELS), outcomes  # no FAILED
        assert all(Sha256Sidecar.verify(p) for p in project.canonical_engines())
        assert len(project.canonical_engines()) == len(MODELS)
        assert unsound_entries(project.cache) == [] and project.temp_leftovers() == []
    record("2 contention", f"{PROCESSES} concurrent `doit engines`, one cache", rounds,
           f"{rounds}/{rounds} rounds: each engine BUILT exactly once, {PROCESSES - 1} REUSED, "
           f"{rounds * PROCESSES}/{rounds * PROCESSES} processes exited 0, every engine verifies", True)


def test_a_killed_lock_holder_does_not_block_the_waiters(tmp_path) -> None:
    rounds = count(1)
    takeovers = []
    for round_ in range(rounds):
        project = make_project(tmp_path / f"round{round_}")
        holder = project.spawn_doit("engines", env={BUILD_DELAY: "300", PHASE_LOG: str(project.phase_log),
                                                    "PROVISIONING_DOIT_DB": str(project.root / "holder.db")})
        waiters = []
        try:
            assert wait_for(project.phase_log.exists), "the holder never started building"
            det = next(p for p in _expected_paths(project) if p.name.startswith("det."))
            assert lock_is_held(det)
            logs = [project.root / f"w{i}.out" for i in range(3)]
            waiters = [_spawn_logged(project, log, i) for i, log in enumerate(logs)]
            # each waiter has started det's task: doit printed its title, and the action is running
            assert wait_for(lambda: all(".  engines:det" in _text(log) for log in logs), timeout=120), \
                [_text(log) for log in logs]
            time.sleep(0.5)  # long enough for anything but the lock to have passed
            # ...and it is stuck in the lock: it has not logged the miss it logs once inside, nor
            # reached the backend (no phase line of its pid), while the holder keeps the lock
            assert lock_is_held(det) and holder.poll() is None
            for waiter, log in zip(waiters, logs):
                assert waiter.poll() is None, f"a waiter finished while det was locked: {_text(log)}"
                after_title = [line for line in _text(log).split(".  engines:det", 1)[1].splitlines()
                               if not line.startswith("waiting for det:")]  # the wait's own line (item 30)
                assert "miss det" not in _text(log) and "det" not in "\n".join(after_title), _text(log)
            assert _phase_pids(project) == {holder.pid}, project.phase_log.read_text()
            assert not det.exists()
            killed_at = time.monotonic()
            kill_group(holder)
            for waiter in waiters:
                waiter.wait(timeout=120)
            takeovers.append(time.monotonic() - killed_at)
            outputs = [_text(log) for log in logs]
        finally:
            kill_group(holder)
            for waiter in waiters:
                if waiter.poll() is None:
                    kill_group(waiter)
        for waiter, output in zip(waiters, outputs):
            assert waiter.returncode == 0, output
        outcomes = _outcomes(project)
        assert all(outcomes[(m, "BUILT")] == 1 for m in MODELS), outcomes
        assert holder.pid not in {e["pid"] for e in project.events()}
        assert all(Sha256Sidecar.verify(p) for p in project.canonical_engines())
        assert unsound_entries(project.cache) == []
    record("2 contention", "lock holder SIGKILLed mid-build, 3 waiters", rounds,
           f"{rounds}/{rounds}: a waiter took over and built each engine once; all waiters finished "
           f"in at most {max(takeovers):.1f} s after the kill", True)


def _spawn_logged(project: Project, log, index: int) -> subprocess.Popen:
    """A waiter: ``doit engines`` with its own database, output unbuffered into ``log``, phases logged."""
    with open(log, "wb") as out:
        return subprocess.Popen([DOIT, "engines"], cwd=project.root, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env=child_env({"PROVISIONING_DOIT_DB": str(project.root / f"w{index}.db"),
                                               "PYTHONUNBUFFERED": "1", PHASE_LOG: str(project.phase_log)}))


def _text(path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _phase_pids(project: Project) -> set[int]:
    return {int(line.split()[0]) for line in project.phase_log.read_text().splitlines() if line.strip()}


def _expected_paths(project: Project):
    """The canonical engine paths this project's config will produce on this host."""
    from provisioning.compose import build_compile_request, load_config
    from provisioning.schema import EngineFilenameSchema

    request = build_compile_request(load_config(project.config))
    return [project.cache / EngineFilenameSchema.build(s, request.host) for s in request.backbones]
