"""``benchmarks/perf.py --quick`` leaves nothing behind, runs rtx-cold, and takes a --workdir that does not exist yet.

Issue 22 item 32: a quick run left its JSON in $TMPDIR (its docstring said the work folder),
skipped rtx-cold "because RTX builds take minutes" (they take 0.1-0.4 s each), and
``--workdir DIR`` for a folder not yet made ended in a traceback. One real quick run of the
rtx comparison (about 7 s) in a child process with a private $TMPDIR.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rtx_guard import require_rtx

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "perf.py"


def _perf(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "rtx", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp)})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("perf-quick")
    temp = root / "tmp"
    temp.mkdir()
    workdir = root / "not" / "yet"  # does not exist
    done = _perf(temp, "--workdir", str(workdir))
    return done, temp, workdir


def test_a_workdir_that_does_not_exist_yet_is_created(quick_run):
    done, _, workdir = quick_run
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert workdir.is_dir() and list(workdir.iterdir()) == []  # made, used, the work folder removed


def test_a_quick_run_leaves_no_json_in_tmpdir_or_anywhere(quick_run):
    done, temp, _ = quick_run
    # nothing of the script's in $TMPDIR (.ses would be ONNX Runtime 1.32's own telemetry session file)
    assert [p.name for p in temp.iterdir() if p.name != ".ses"] == []
    line = re.search(r"^results: (\S+) \(a --quick run: removed with the work folder; --keep keeps it\)$",
                     done.stdout, re.M)
    assert line is not None, done.stdout
    assert not Path(line.group(1)).exists()


def test_a_quick_run_builds_rtx_cold(quick_run):
    require_rtx()  # skipped without tensorrt_rtx, failed under CI=true
    done, _, _ = quick_run
    row = next(l for l in done.stdout.splitlines() if l.startswith("| rtx-cold "))
    assert "not run" not in row and re.match(r"\| rtx-cold\s+\|\s+[0-9.]+ \|", row), row
    assert "4 models for" in row


def test_a_workdir_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("in the way")
    done = _perf(tmp_path, "--workdir", str(tmp_path / "file" / "sub"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("perf.py: error: --workdir ")
    assert "cannot create it" in done.stderr
