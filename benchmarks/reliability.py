"""Rerun the reliability suite with larger counts and print the README's Reliability table.

    .venv/bin/python benchmarks/reliability.py            # scale 4: 120 kills per kind, ...
    .venv/bin/python benchmarks/reliability.py --scale 10

The suite (tests/reliability/) reads $RELIABILITY_SCALE for its counts and appends one JSON
line per scenario to $RELIABILITY_REPORT; this script sets both, runs pytest, and turns the
lines into a Markdown table headed by the date, the machine and the command. It exits with
pytest's status: a failing scenario is reported as failing, never as a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    """CPU model, cores, OS and the versions that matter for the figures."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for package in ("onnxruntime", "doit", "filelock"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"{model}, {cores} cores available, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, {', '.join(versions)}")


def table(records: list[dict]) -> str:
    lines = ["| Part | Scenario | Runs | Observed | Result |", "| --- | --- | ---: | --- | --- |"]
    for r in sorted(records, key=lambda r: r["part"]):  # stable: scenarios of a part keep their order
        lines.append(f"| {r['part']} | {r['scenario']} | {r['tried']} | {r['observed']} | "
                     f"{'pass' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=4.0, help="multiplier for the suite's counts (default 4)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k crash)")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider", *args.pytest_args]
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "figures.jsonl"
        env = {**os.environ, "RELIABILITY_SCALE": str(args.scale), "RELIABILITY_REPORT": str(report)}
        started = time.monotonic()
        result = subprocess.run(command, cwd=REPO, env=env)
        elapsed = time.monotonic() - started
        records = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    shown = " ".join(["RELIABILITY_SCALE=" + str(args.scale), ".venv/bin/python", "benchmarks/reliability.py",
                      *(["--scale", str(args.scale)] if args.scale != 4.0 else []),
                      *map(shlex.quote, args.pytest_args)])
    print()
    print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
    print(f"Machine: {machine()}  ")
    print(f"Command: `{shown.split(' ', 1)[1]}` (pytest exit {result.returncode}, {elapsed:.0f} s)")
    print()
    print(table(records) if records else "(no figures recorded)")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
