"""The benchmark script keeps working: ``benchmarks/perf.py --quick`` runs every comparison."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "perf.py"


def test_quick_run_prints_every_row_of_the_table_with_a_ratio_and_the_command(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\S+)\s+\|\s+([0-9.]+) \|", result.stdout, re.M)}
    assert set(rows) == {"hash", "memory", "cold", "session", "warm-full", "floor", "warm-nodb", "cold-io",
                         "warm-stat", "path"}
    assert all(value > 0 for name, value in rows.items() if name != "memory")
    assert "command: .venv/bin/python benchmarks/perf.py --quick" in result.stdout
    assert list(tmp_path.iterdir()) == []  # the workloads are cleaned up
