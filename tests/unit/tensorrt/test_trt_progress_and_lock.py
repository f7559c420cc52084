"""Heartbeat lines from TensorRT's progress monitor, and one build per GPU across builders."""

from __future__ import annotations

import logging
import threading

from provisioning.backends.trt_logging import make_progress_monitor
from trt_helpers import H200, compile_one, gpu_host, spec


def test_progress_monitor_reports_nested_phase_and_step(world):
    seen = []
    monitor = make_progress_monitor(world.trt, lambda phase, detail: seen.append((phase, detail)))
    monitor.phase_start("Building engine", None, 2)
    monitor.phase_start("Tactic selection", "Building engine", 3)
    assert monitor.step_complete("Tactic selection", 1) is True  # True: TensorRT keeps building
    monitor.phase_finish("Tactic selection")
    assert ("Building engine > Tactic selection", "step 2/3") in seen
    assert seen[-1] == ("Building engine", "")


def test_progress_monitor_never_lets_a_report_error_reach_tensorrt(world):
    def broken(phase, detail):
        raise RuntimeError("heartbeat gone")

    monitor = make_progress_monitor(world.trt, broken)
    monitor.phase_start("Building engine", None, 1)
    assert monitor.step_complete("Building engine", 0) is True


def test_heartbeat_prints_tensorrt_phase_and_step_during_a_long_build(world, models, tmp_path, caplog):
    world.build_seconds = 0.6
    with caplog.at_level(logging.INFO, logger="provisioning.compiler"):
        compile_one(tmp_path / "cache", gpu_host(world), spec(models), heartbeat_s=0.05)
    beats = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "heartbeat"]
    assert any("building det: Building engine > Tactic selection (step " in b and "/3)" in b for b in beats), beats


def _two_builds(world, models, tmp_path, hosts):
    errors = []

    def run(name, host):
        try:
            compile_one(tmp_path / "cache", host, spec(models, name))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name, host)) for name, host in zip(("det", "cls"), hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return sorted(world.builds, key=lambda b: b["started"])


def test_device_lock_serialises_two_builds_on_one_gpu(world, models, tmp_path):
    world.build_seconds = 0.3
    host = gpu_host(world)
    first, second = _two_builds(world, models, tmp_path, [host, host])
    assert second["started"] >= first["finished"]  # the second waited for the GPU
    assert (tmp_path / "cache" / ".locks" / f"gpu-{H200}.lock").exists()


def test_builds_on_two_gpus_run_side_by_side(world, models, tmp_path, monkeypatch):
    import sys

    # Two GPUs are two processes in production (one GPU per process, CUDA device 0 each);
    # here two threads share one fake CUDA device, so its UUID cross-check is set aside.
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    barrier = threading.Barrier(2, timeout=10)
    world.on_build = lambda record: barrier.wait()  # passes only if both builds are inside at once
    hosts = [gpu_host(world), gpu_host(world, uuid="GPU-99999999-0000-0000-0000-000000000000")]
    first, second = _two_builds(world, models, tmp_path, hosts)
    assert second["started"] < first.get("finished", second["started"] + 1)
