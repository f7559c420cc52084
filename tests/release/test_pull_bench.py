"""The release benchmark keeps working: ``benchmarks/release_perf.py --quick`` measures both pull rows.

A smoke test of the script (4 engines of 4 MB; the ratios of a quick run mean little).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "release_perf.py"


def test_release_perf_quick_measures_pull_and_pull_warm(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^(?:ok  |FAIL) (\S+)\s+([0-9.]+) \(<= ([0-9.]+)\)", done.stdout, re.MULTILINE)
    assert [(name, limit) for name, _, limit in rows] == [("pull", "1.1"), ("pull-warm", "0.75")]
    figures = Path(re.search(r"^figures: (.+)$", done.stdout, re.MULTILINE).group(1))
    document = json.loads(figures.read_text())
    assert document["quick"] is True and [r["name"] for r in document["rows"]] == ["pull", "pull-warm"]
    assert all(r["figures"]["pull_s"] > 0 for r in document["rows"])
    figures.unlink()
