"""Part 1, crash safety: SIGKILL at random moments of builds never publishes a partial engine.

One cache is reused across all kills: each run alternates every ONNX file between two
versions, so every backbone is rebuilt at the same canonical path over an older engine,
and a kill can land in the backend, inside the engine/manifest/sidecar writes, or
between them (the faulty backend throttles writes so each window is wide enough).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from provisioning.manifest import read_manifest
from provisioning.sidecar import Sha256Sidecar

from tests.reliability.conftest import (
    MODELS,
    Project,
    count,
    engine_fingerprint,
    kill_group,
    record,
    unsound_entries,
    wait_for,
)
from tests.reliability.faulty_backend import BUILD_DELAY, PHASE_LOG, WRITE_DELAY, main as library_main

SLOW = {BUILD_DELAY: "0.08", WRITE_DELAY: "0.002"}
# The kill lands at a random moment within one slow run of the three backbones (startup
# excluded). The window is measured on this machine with one undisturbed run, not assumed:
# a fixed window missed most runs on a fast machine and outlasted them on a slow one.


def _variants(project: Project) -> list[dict[str, bytes]]:
    """Two versions of every ONNX file (the second differs only in its doc string)."""
    import onnx

    first, second = {}, {}
    for model in MODELS:
        path = project.corpus / "models" / f"{model}.onnx"
        first[model] = path.read_bytes()
        proto = onnx.load_model_from_string(first[model])
        proto.doc_string = "version two"
        second[model] = proto.SerializeToString()
    return [first, second]


def _install(project: Project, variant: dict[str, bytes]) -> None:
    for model, data in variant.items():
        (project.corpus / "models" / f"{model}.onnx").write_bytes(data)


def _engines_by_model(project: Project) -> dict[str, Path]:
    found = {p.name.split(".")[0]: p for p in project.canonical_engines()}
    assert set(found) == set(MODELS), found
    return found


def _published(project: Project, variant: dict[str, bytes]) -> dict[str, tuple]:
    """The fingerprint of each published engine, after checking it is committed for ``variant``."""
    import hashlib

    fingerprints = {}
    for model, engine in _engines_by_model(project).items():
        check = Sha256Sidecar.check(engine)
        assert check.ok, f"{engine.name}: {check.reason}"
        manifest = read_manifest(engine)
        assert manifest["engine"]["sha256"] == check.sha256
        if model != "emb":  # emb's digest also covers its external data file
            assert manifest["inputs"]["onnx_sha256"] == hashlib.sha256(variant[model]).hexdigest()
        fingerprints[model] = engine_fingerprint(engine)
    return fingerprints


def _last_phase(project: Project) -> str:
    try:
        lines = project.phase_log.read_text().splitlines()
    except FileNotFoundError:
        return "before the first build"
    if not lines:
        return "before the first build"
    _, model, phase = lines[-1].split()
    return {"compile": "in the backend", "publish": "inside the publish protocol",
            "published": "between two backbones"}[phase]


def _start_slow_run(project: Project, spawn):
    """Start one slow run and return once its first build has begun (its first phase line)."""
    project.phase_log.unlink(missing_ok=True)
    process = spawn({**SLOW, PHASE_LOG: str(project.phase_log)})
    if not wait_for(lambda: project.phase_log.exists() or process.poll() is not None, timeout=120) \
            or not project.phase_log.exists():
        kill_group(process)
        raise AssertionError(f"the build never started: {process.stdout.read().decode(errors='replace')}")
    return process


def _measure_slow_run(project: Project, spawn, variant: dict[str, bytes]) -> float:
    """Seconds an undisturbed slow run of every backbone takes, from its first build to its exit."""
    _install(project, variant)
    process = _start_slow_run(project, spawn)
    started = time.monotonic()
    output = process.communicate(timeout=300)[0].decode(errors="replace")
    duration = time.monotonic() - started
    assert process.returncode == 0, output
    assert project.phase_log.read_text().count(" published\n") == len(MODELS), "the measured run built everything"
    return duration


def _kill_loop(project: Project, spawn, recover, runs: int, seed: int) -> tuple[Counter, int, int]:
    """Kill ``runs`` builds at random moments; after each, check the cache and recover."""
    variants = _variants(project)
    references = []
    for variant in variants:  # reference builds: the only complete engine bytes there are
        _install(project, variant)
        recover()
        references.append(_published(project, variant))
    complete = {m: {r[m] for r in references} for m in MODELS}
    assert all(len(v) == 2 for v in complete.values()), "each ONNX version must give another engine"
    window = _measure_slow_run(project, spawn, variants[0])  # the cache now holds variant 0
    assert _published(project, variants[0]) == references[0]
    rng = random.Random(seed)
    landed: Counter = Counter()
    uncommitted = 0
    for run in range(runs):
        index = (run + 1) % 2  # starts with the variant the cache does not hold: every run rebuilds
        _install(project, variants[index])
        process = _start_slow_run(project, spawn)
        delay = rng.uniform(0, window)
        time.sleep(delay)
        finished = process.poll() is not None
        kill_group(process)
        if finished:  # this run was shorter than the window: later kills aim within the shorter time
            window = min(window, delay)
        landed["after the run had finished" if finished else _last_phase(project)] += 1
        problems = unsound_entries(project.cache, complete)
        assert problems == [], f"run {run}: {problems}"
        uncommitted += sum(not Sha256Sidecar.path_for(p).exists() for p in project.canonical_engines())
        recover()
        assert _published(project, variants[index]) == references[index], f"run {run}"
    return landed, uncommitted, len(project.temp_leftovers())


def _gc_leftovers(project: Project) -> int:
    """``doit engines-gc --apply`` must remove every leftover of the killed runs, and nothing else."""
    leftovers = project.temp_leftovers()
    result = project.doit("engines-gc", "--apply")
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.temp_leftovers() == []
    for leftover in leftovers:
        assert leftover.name in result.stdout
    assert all(Sha256Sidecar.verify(p) for p in project.canonical_engines())
    return len(leftovers)


def _figure(runs: int, landed: Counter, uncommitted: int, cleaned: int) -> str:
    late = landed.pop("after the run had finished", 0)
    where = ", ".join(f"{n} {k}" for k, n in sorted(landed.items(), key=lambda item: -item[1]))
    return (f"{runs - late} kills during the run ({where}), {late} just after it; {runs}/{runs} next runs "
            f"published every engine correctly, 0 partial or unverified engines ever committed; "
            f"{uncommitted} renamed-but-unsealed engines treated as absent; {cleaned} leftovers removed by "
            "`engines-gc --apply`")


def test_sigkill_during_doit_engines(project: Project) -> None:
    runs = count(30)

    def recover() -> None:
        result = project.doit("engines")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr

    landed, uncommitted, _ = _kill_loop(project, lambda env: project.spawn_doit("engines", env=env), recover,
                                        runs, seed=1)
    cleaned = _gc_leftovers(project)
    assert sum(landed.values()) == runs
    assert runs - landed["after the run had finished"] >= runs * 2 // 3, landed  # most kills hit a build
    record("1 crash safety", "SIGKILL at a random moment of `doit engines`", runs,
           _figure(runs, landed, uncommitted, cleaned), True)


def test_sigkill_during_the_library_call(project: Project) -> None:
    runs = count(30)

    def recover() -> None:
        assert library_main([str(project.config)]) == 0

    landed, uncommitted, _ = _kill_loop(project, lambda env: project.spawn_library(env), recover, runs, seed=2)
    cleaned = _gc_leftovers(project)
    assert runs - landed["after the run had finished"] >= runs * 2 // 3, landed
    record("1 crash safety", "SIGKILL at a random moment of the library call", runs,
           _figure(runs, landed, uncommitted, cleaned), True)


def test_leftovers_of_a_live_builder_are_kept_by_gc(project: Project) -> None:
    """GC must not delete the temporary files of a build still running (its pid is alive)."""
    project.phase_log.unlink(missing_ok=True)
    process = project.spawn_doit("engines", env={BUILD_DELAY: "30", PHASE_LOG: str(project.phase_log)})
    try:
        assert wait_for(project.phase_log.exists)
        assert wait_for(lambda: project.temp_leftovers() != [])
        scratch = project.temp_leftovers()
        result = project.doit("engines-gc", "--apply")
        assert result.returncode == 0, result.stderr
        assert all(p.exists() for p in scratch), result.stdout
    finally:
        kill_group(process)
