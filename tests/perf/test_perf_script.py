"""The benchmark script keeps working: ``benchmarks/perf.py --quick`` runs every comparison.

A smoke test of the script only (the ratios of a quick run mean little). The benchmark-only
dependencies (openvino, matplotlib) must not be needed: without them their rows say
"not run" and never count as passing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "perf.py"
MEASURED = {"hash", "verify-rss", "cold", "parallel", "session", "warm-full", "floor", "warm-nodb", "nodb-checkout",
            "cold-io", "warm-stat", "resolve", "scale-stat", "scale-full", "memory"}
NEVER_HERE = {"fetch"}  # fleet.py measures fetch
# --quick runs the TensorRT-RTX builds too (0.1-0.4 s each) where tensorrt_rtx and silero-vad are installed
RTX_HERE = all(importlib.util.find_spec(m) is not None for m in ("tensorrt_rtx", "silero_vad"))
MEASURED |= {"rtx-cold"} if RTX_HERE else set()
NEVER_HERE |= set() if RTX_HERE else {"rtx-cold"}

# Runs the script with openvino and matplotlib unimportable, as on a machine without the bench extra.
WITHOUT_BENCH_EXTRA = """
import importlib.abc, runpy, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openvino", "matplotlib"):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, Blocked())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _rows(stdout: str) -> dict[str, str]:
    stdout = stdout.split("\nscale (seconds")[0]  # the main table only, not the sweep's
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| (\S+)\s+\|\s+(\S+) \|", stdout, re.M)
            if m.group(1) not in ("target",) and not m.group(1).startswith("-")}


def test_quick_run_prints_every_row_with_a_ratio_the_command_the_load_and_a_json(tmp_path):
    temp = tmp_path / "tmp"  # $TMPDIR: a quick run leaves nothing there
    temp.mkdir()
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, "-c", WITHOUT_BENCH_EXTRA, str(SCRIPT), "--quick", "--scale", "--keep",
                             "--workdir", str(work)], capture_output=True, text=True, timeout=400,
                            env={**os.environ, "TMPDIR": str(temp)})
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout)
    assert set(rows) == MEASURED | NEVER_HERE | {"peer"}
    assert all(float(rows[name]) > 0 for name in MEASURED)
    for name in NEVER_HERE | {"peer"}:  # never a number, never a pass
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"| {name} "))
        assert "| not run |" in line and "not run: " in line and "yes" not in line.split("|")[4]
    assert "openvino is not installed" in result.stdout
    assert "scale picture: not run: matplotlib is not installed" in result.stdout
    assert "command: .venv/bin/python benchmarks/perf.py --quick --scale" in result.stdout
    assert re.search(r"load average \(1/5/15 min\) [0-9.]+ [0-9.]+ [0-9.]+ at start", result.stdout)
    assert "best of" in result.stdout
    cold_io = next(line for line in result.stdout.splitlines() if line.startswith("| cold-io "))
    assert re.search(r"floor [0-9.]+ = cold `doit list` [0-9.]+ s", cold_io), cold_io  # a target it may miss
    # the disk's own writeback rate is measured: an engine is durable before BUILT is printed
    assert re.search(r"hashed once on 1 core \([0-9]+ MB/s\); written back at [0-9]+ MB/s \(fsync\)", cold_io), cold_io
    saved = Path(re.search(r"^results: (\S+)", result.stdout, re.M).group(1))
    assert saved.parent.parent == work  # --quick: in the work folder (kept by --keep), never in $TMPDIR
    document = json.loads(saved.read_text())
    shutil.rmtree(saved.parent)
    assert {r["name"] for r in document["rows"]} == set(rows)
    assert all(r["passed"] is None for r in document["rows"] if r["name"] in NEVER_HERE | {"peer"})
    assert [p["backbones"] for p in document["scale"]] == [3, 6, 12]
    assert list(work.iterdir()) == []
    # nothing of the script's in $TMPDIR (.ses: ONNX Runtime 1.32's own telemetry session file)
    assert [p.name for p in temp.iterdir() if p.name != ".ses"] == []
