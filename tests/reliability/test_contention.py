"""Part 2, one build under contention: many `doit engines` on one cache build each engine once.

Each process has its own doit database (doit has no locking between databases); the
engine cache is shared. The count comes from ``events.jsonl``, which every process
appends to: exactly one BUILT per backbone, every other process REUSED.
"""

from __future__ import annotations

import time
from collections import Counter

from provisioning.cache import lock_is_held
from provisioning.sidecar import Sha256Sidecar

from tests.reliability.conftest import (
    MODELS,
    Project,
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
            waiters = [project.spawn_doit("engines", env={"PROVISIONING_DOIT_DB": str(project.root / f"w{i}.db")})
                       for i in range(3)]
            time.sleep(1.5)  # let them load their tasks and block on det's lock
            assert all(w.poll() is None for w in waiters), "a waiter finished while det was locked"
            assert not det.exists()
            killed_at = time.monotonic()
            kill_group(holder)
            outputs = [w.communicate(timeout=120)[0].decode() for w in waiters]
            takeovers.append(time.monotonic() - killed_at)
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


def _expected_paths(project: Project):
    """The canonical engine paths this project's config will produce on this host."""
    from provisioning.compose import build_compile_request, load_config
    from provisioning.schema import EngineFilenameSchema

    request = build_compile_request(load_config(project.config))
    return [project.cache / EngineFilenameSchema.build(s, request.host) for s in request.backbones]
