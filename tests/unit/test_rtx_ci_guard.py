"""Tests that need the real tensorrt_rtx are skipped without it, and fail under CI=true.

Each file is run by a real pytest in a child process in which ``tensorrt_rtx`` does not
import (a plugin puts ``None`` in ``sys.modules`` first, as Python does for a blocked
module): without CI the tests are skipped; with ``CI=true`` every one of them fails, so a
broken CI install cannot leave the real-builder tests silently unrun (issue 22 item 22).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUARDED = [
    "tests/unit/tensorrt/test_fake_parity.py",
    "tests/remote/test_rtx_fleet.py",
    "tests/serving/test_triton_gpu.py::test_tensorrt_rtx_plans_are_refused",
    "tests/rtx/test_rtx_defects.py",
]


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    """Every guarded target in one child pytest, tensorrt_rtx blocked; ``-rfEs`` lists each outcome."""
    (tmp_path / "block_rtx.py").write_text("import sys\nsys.modules['tensorrt_rtx'] = None  # as if not installed\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "block_rtx", "-p", "no:cacheprovider",
                           "-o", "addopts=", *GUARDED], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _counts(output: str) -> dict[str, int]:
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    counts = {kind.rstrip("s"): int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    return counts


def test_without_tensorrt_rtx_the_tests_are_skipped_outside_ci(tmp_path):
    done = _run(tmp_path, ci=None)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    counts = _counts(done.stdout)
    assert set(counts) == {"skipped"} and counts["skipped"] >= len(GUARDED), done.stdout[-3000:]
    assert "tensorrt_rtx is not importable" in done.stdout


def test_without_tensorrt_rtx_every_guarded_test_fails_under_ci(tmp_path):
    done = _run(tmp_path, ci="true")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    counts = _counts(done.stdout)
    assert set(counts) <= {"failed", "error"} and sum(counts.values()) >= len(GUARDED), done.stdout[-3000:]
    failing = [line for line in done.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    for target in GUARDED:
        assert any(line.split()[1].startswith(target) for line in failing), (target, failing)
    assert all("CI=true and tensorrt_rtx is not importable" in line for line in failing), failing
