"""Hand-written mutants of the trust rules: does deleting a rule, or one side of it, fail a test?

mutmut changes operators and constants; it cannot delete a statement or drop one side of
an ``and``, and that is where an untested rule hides (issue 22: six survived the whole
suite). Each mutant is written by hand in ``benchmarks/hand_mutants/<area>.json``::

    {"id": "fifo-regular-check", "rule": "a FIFO in the cache is refused, not opened",
     "file": "provisioning/sidecar.py", "find": "<exact text, unique in the file>",
     "replace": "<the mutated text>", "tests": ["tests/reliability/test_fifo.py::test_x"]}

First the runner runs every test the mutants name once, on an unmutated copy: a test that
fails there would call every mutant it guards "killed", so such mutants are reported as
"error (baseline)" instead. Then, for each mutant, it copies the project into a private folder, applies the one edit,
runs the mutant's tests there (PYTHONPATH puts the copy first, so doit subprocesses and
entry points load the mutated package too) and calls it killed when pytest fails. A mutant
whose ``find`` text is not exactly once in the file is reported as stale (the rule moved:
fix the mutant), never as killed.

    .venv/bin/python benchmarks/hand_mutants.py [--area localfs] [--id ID] [--jobs 2] [--json OUT]

Exit 0 when every mutant is killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS_DIR = ROOT / "benchmarks" / "hand_mutants"
COPIED = ("provisioning", "tests", "corpus", "docs", "examples", "benchmarks", "dodo.py", "pyproject.toml", "README.md")
TEST_TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    area: str
    id: str
    rule: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]


def load_mutants(directory: Path = MUTANTS_DIR) -> list[Mutant]:
    """Every mutant of every area file, in file then list order; a malformed entry is a one-line error."""
    mutants = []
    for path in sorted(directory.glob("*.json")):
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: not readable JSON ({exc}); fix the file")
        for index, entry in enumerate(entries):
            missing = [k for k in ("id", "rule", "file", "find", "replace", "tests") if k not in entry]
            if missing or not entry.get("tests"):
                raise SystemExit(f"{path} entry {index}: missing {', '.join(missing) or 'tests'}; "
                                 "each mutant needs id, rule, file, find, replace and at least one test")
            mutants.append(Mutant(path.stem, entry["id"], entry["rule"], entry["file"], entry["find"],
                                  entry["replace"], tuple(entry["tests"])))
    return mutants


def _copy_project(where: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "build", "results", "*.egg-info")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, where / name, ignore=ignore, symlinks=True)
        elif source.exists():
            shutil.copy2(source, where / name)


def run_mutant(mutant: Mutant) -> dict:
    """Apply one mutant in a private copy and run its tests; the verdict as a dict."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"hand-mutant-{mutant.id}-") as tmp:
        where = Path(tmp)
        _copy_project(where)
        target = where / mutant.file
        text = target.read_text(encoding="utf-8") if target.exists() else ""
        count = text.count(mutant.find)
        if count != 1:
            return {"area": mutant.area, "id": mutant.id, "rule": mutant.rule, "verdict": "stale",
                    "detail": f"find text occurs {count} times in {mutant.file}", "seconds": 0.0}
        target.write_text(text.replace(mutant.find, mutant.replace), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(where), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("PYTEST_ADDOPTS", None)
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
                                 cwd=where, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
            code = run.returncode
            tail = (run.stdout + run.stderr).strip().splitlines()[-1:] or [""]
        except subprocess.TimeoutExpired:
            code, tail = -1, [f"timed out after {TEST_TIMEOUT_S} s (counted as killed: the suite did not pass)"]
    if code == 0:
        verdict = "survived"
    elif code in (1, -1):
        verdict = "killed"
    else:  # 2 interrupted/collection error, 4 usage, 5 no tests: the tests did not run as written
        verdict = "error"
    return {"area": mutant.area, "id": mutant.id, "rule": mutant.rule, "verdict": verdict, "detail": tail[0][:200],
            "seconds": round(time.monotonic() - started, 1)}


def baseline_failures(mutants: list[Mutant]) -> set[str]:
    """The named tests that fail without any mutant (they prove nothing about a mutant)."""
    tests = sorted({t for m in mutants for t in m.tests})
    with tempfile.TemporaryDirectory(prefix="hand-mutant-baseline-") as tmp:
        where = Path(tmp)
        _copy_project(where)
        env = {**os.environ, "PYTHONPATH": str(where), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("PYTEST_ADDOPTS", None)
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *tests],
                             cwd=where, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S * 2)
    failed = set()
    for line in run.stdout.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            failed.add(line.split()[1].split(" - ")[0])
    if run.returncode not in (0, 1) and not failed:
        raise SystemExit(f"the baseline run of the mutants' tests could not run (pytest exit {run.returncode}): "
                         f"{(run.stdout + run.stderr).strip().splitlines()[-1:]}")
    return failed


def _guarded_by(test: str, failed: set[str]) -> bool:
    return any(f == test or f.startswith(test + "::") or f.startswith(test + "[") for f in failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--area", action="append", help="only this area file (repeatable)")
    parser.add_argument("--id", action="append", help="only this mutant id (repeatable)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the verdicts here")
    args = parser.parse_args(argv)
    mutants = [m for m in load_mutants() if (not args.area or m.area in args.area) and (not args.id or m.id in args.id)]
    if not mutants:
        print("no mutants selected", file=sys.stderr)
        return 1
    print(f"{len(mutants)} hand-written mutants, {args.jobs} at a time; first their tests, unmutated", flush=True)
    failed = baseline_failures(mutants)
    for test in sorted(failed):
        print(f"baseline FAILS without a mutant: {test}", flush=True)
    results = [{"area": m.area, "id": m.id, "rule": m.rule, "verdict": "error", "detail": "baseline: its tests "
                "fail without the mutant", "seconds": 0.0} for m in mutants if any(_guarded_by(t, failed) for t in m.tests)]
    runnable = [m for m in mutants if not any(_guarded_by(t, failed) for t in m.tests)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for result in pool.map(run_mutant, runnable):
            results.append(result)
            print(f"{result['verdict']:9} {result['area']}/{result['id']} ({result['seconds']} s): {result['rule']}"
                  + ("" if result["verdict"] == "killed" else f" [{result['detail']}]"), flush=True)
    killed = sum(r["verdict"] == "killed" for r in results)
    by_area: dict[str, list[int]] = {}
    for r in results:
        by_area.setdefault(r["area"], [0, 0])
        by_area[r["area"]][0] += r["verdict"] == "killed"
        by_area[r["area"]][1] += 1
    print("\n| area | killed | mutants |\n|---|---|---|")
    for area, (k, n) in sorted(by_area.items()):
        print(f"| {area} | {k} | {n} |")
    print(f"| all | {killed} | {len(results)} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
