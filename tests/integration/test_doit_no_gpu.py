"""backend: tensorrt without a usable GPU: a fast, distinct failure that says how to get one."""

from __future__ import annotations

import time

import yaml

EXIT_NO_GPU = 69


def test_tensorrt_without_a_gpu_stops_fast_with_its_own_exit_code(project):
    started = time.monotonic()
    assert project.doit("list").returncode == 0  # the baseline: doit's start-up with this project, on this machine
    baseline = time.monotonic() - started
    document = yaml.safe_load(project.config.read_text())
    document["backend"] = "tensorrt"
    project.config.write_text(yaml.safe_dump(document))
    started = time.monotonic()
    result = project.doit("engines", env={"CUDA_VISIBLE_DEVICES": ""})
    # fast: about a start-up, never a wait for a GPU (a ratio, so that a loaded machine does not fail it)
    assert time.monotonic() - started < max(10.0, 4 * baseline), baseline
    assert result.returncode == EXIT_NO_GPU, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: no GPU"), result.stderr
    assert "GPU host" in lines[0] and "mounted volume" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not project.cache.exists() or not any(project.cache.iterdir())
