"""Mutation score of the modules that decide reuse and trust (run through benchmarks/mutation.sh).

    sh benchmarks/mutation.sh [--jobs N] [--from-head] [--keep] [--rerun-undetected] [MODULE ...]

MODULE is a path under provisioning/ (``sidecar.py``, ``doit/uptodate.py``); without one,
every module of :data:`MODULES` runs, in that order. Each module runs in its own copy of
the project under ``build/mutation/<module>/`` (the working tree's tracked and untracked
files, or ``--from-head``: ``provisioning/`` from the last commit, the tests and corpus from
the working tree, so new tests run before they are committed), with a generated ``setup.cfg`` that tells
mutmut to mutate only that module and to select only that module's fast tests. mutmut
copies the copy into ``mutants/`` and runs pytest in-process there, so only in-process
tests see a mutant: tests that run ``doit`` or a library call in a child process import
the package in that child, and the stats pass that maps tests to functions never sees
them (worse: a child that imports ``mutants/provisioning`` from another folder finds no
mutmut config and fails, so a test like tests/reliability/test_symlinks.py fails under
mutmut). Those are left out of the selections below.

Every mutant that no test detects is either classified equivalent in
``benchmarks/mutation-equivalent.txt`` (``<mutant name glob> <reason>``, one a line) or
counted against the score: score = detected / (all - equivalent), where detected is
killed, timed out or killed by a signal, and "no tests" (a function no selected test
calls) counts as not detected. ``--keep`` reuses the previous run's ``mutants/`` (mutmut
re-tests what changed); ``--rerun-undetected`` keeps it and tests the mutants the last run
did not detect again (after new tests); by default a module starts from scratch.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation-equivalent.txt"
PENDING_FILE = ROOT / "benchmarks" / "mutation-pending.txt"
MUTMUT_VERSION = "3.8.1"
COPIED = ("provisioning", "tests", "corpus", "docs", "pyproject.toml")

_SURVIVORS = "tests/unit/test_mutation_*.py"  # the tests written to kill survivors, for every module
# module -> the fast, in-process tests that exercise it (a glob expands in the copy)
MODULES: dict[str, tuple[str, ...]] = {
    "sidecar.py": ("tests/unit/test_sidecar.py", "tests/unit/test_verify.py", "tests/unit/test_compiler.py",
                   _SURVIVORS, "tests/reliability/test_publish_order.py"),
    # split from sidecar.py (issue 23): lock files, temporary names
    "locks.py": ("tests/unit/test_local_cache_files.py", "tests/unit/test_sidecar.py", "tests/unit/test_gc.py",
                 _SURVIVORS),
    "tempnames.py": ("tests/unit/test_sidecar.py", "tests/unit/test_local_cache_files.py", _SURVIVORS),
    "manifest.py": ("tests/unit/test_compiler.py", _SURVIVORS, "tests/unit/tensorrt/test_vc_reuse.py"),
    "schema.py": ("tests/unit/test_schema.py", "tests/unit/test_host.py", _SURVIVORS,
                  "tests/unit/tensorrt/test_vc_reuse.py"),
    "cache.py": ("tests/unit/test_compiler.py", "tests/unit/test_gc.py", _SURVIVORS,
                 "tests/unit/tensorrt/test_vc_reuse.py", "tests/reliability/test_publish_order.py"),
    "gc.py": ("tests/unit/test_gc.py", _SURVIVORS, "tests/unit/tensorrt/test_vc_reuse.py"),
    # verify.py was split (issue 23): the engine verifier, trusted-stat records, the cache index, ONNX digests
    "verify.py": ("tests/unit/test_verify.py", "tests/perf/test_index_and_prefetch.py"),
    "verify_stat.py": ("tests/unit/test_verify.py", "tests/serving/test_resolve_records.py", _SURVIVORS),
    "verify_index.py": ("tests/perf/test_index_and_prefetch.py", _SURVIVORS),
    "verify_sources.py": ("tests/perf/test_index_and_prefetch.py", "tests/perf/test_digest_reuse.py"),
    "doit/filedep.py": (_SURVIVORS,),
    # doit/tasks.py was split (issue 23) into the generator and its parts: the same tests for each
    **{f"doit/{name}.py": (_SURVIVORS, "tests/unit/tensorrt/test_vc_reuse.py", "tests/perf/test_index_and_prefetch.py",
                           "tests/perf/test_early_hashing.py", "tests/perf/test_signed_digest.py")
       for name in ("tasks", "action", "uptodate", "verifier", "runmode")},
    # tests/unit/tensorrt as a whole made a run ~0.2 mutants/s; the TensorRT build path is
    # pinned by the fake's own module, the compiler's policy by these
    "compiler.py": ("tests/unit/test_compiler.py", _SURVIVORS, "tests/unit/tensorrt/test_vc_reuse.py",
                    "tests/reliability/test_publish_order.py", "tests/perf/test_index_and_prefetch.py",
                    "tests/perf/test_signed_digest.py"),
    # test_security.py starts a moto S3 server per session (65 s a run): too slow per mutant
    "remote/signing.py": ("tests/remote/test_signing.py", "tests/remote/test_mutation_signing.py"),
    # test_roundtrip.py, test_faults.py (moto) too; test_mutation_cache.py drives RemoteCache on a file:// remote.
    # remote/cache.py was split (issue 23): fetch, commit lookup, commit-or-wait, publish, repair, run state
    **{f"remote/{name}.py": ("tests/remote/test_mutation_cache.py", "tests/remote/test_file_remote.py")
       for name in ("cache", "fetch", "commit_lookup", "commit_or_wait", "publish", "repair", "run_state")},
}
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
# mutmut's exit codes (mutmut.stats.status_by_exit_code, 3.8)
_STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
           35: "suspicious", 36: "timeout", 37: "caught by type check", -24: "timeout", 24: "timeout",
           152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault", None: "not checked"}


@dataclass
class Score:
    """One module's result."""

    module: str
    by_status: dict[str, list[str]] = field(default_factory=dict)
    equivalent: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.by_status.values())

    @property
    def detected(self) -> int:
        return sum(len(v) for k, v in self.by_status.items() if k in DETECTED)

    @property
    def undetected(self) -> list[str]:
        return sorted(n for k, v in self.by_status.items() if k not in DETECTED | {"skipped"} for n in v)

    @property
    def unexplained(self) -> list[str]:
        equivalent = {name for name, _ in self.equivalent}
        return [n for n in self.undetected if n not in equivalent]

    @property
    def score(self) -> float | None:
        base = self.total - len(self.equivalent) - len(self.by_status.get("skipped", []))
        return 100.0 * self.detected / base if base > 0 else None


def load_equivalent(path: Path = EQUIVALENT_FILE) -> list[tuple[str, str]]:
    """(mutant-name glob, reason) pairs; every line must give a reason."""
    pairs = []
    if not path.is_file():
        return pairs
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition(" ")
        if not reason.strip():
            sys.exit(f"{path}:{number}: '{pattern}' has no reason; write why the mutant is equivalent")
        pairs.append((pattern, reason.strip()))
    return pairs


def prepare_copy(module: str, from_head: bool, keep: bool) -> Path:
    """A private copy of the project for one module's run, with mutmut's setup.cfg."""
    slug = module.replace("/", "-").removesuffix(".py")
    where = WORK / slug
    if where.exists() and not keep:
        shutil.rmtree(where)
    where.mkdir(parents=True, exist_ok=True)
    for name in COPIED:  # the copy is refreshed; mutants/ (mutmut's own state) stays with --keep
        target = where / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    # --from-head: the package under test from the last commit (others may be editing it), the
    # tests and corpus from the working tree (new tests are run before they are committed)
    from_tree = [n for n in COPIED if n != "provisioning"] if from_head else list(COPIED)
    if from_head:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "provisioning"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    if from_tree:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z", "--",
                                 *from_tree], check=True, capture_output=True).stdout.decode().split("\0")
        for rel in filter(None, listed):
            source = ROOT / rel
            if source.is_file():
                (where / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, where / rel)
    tests = []
    for selection in MODULES[module]:
        matches = sorted(str(p.relative_to(where)) for p in where.glob(selection)) if "*" in selection else \
            [selection] if (where / selection).exists() else []
        tests.extend(m for m in matches if m not in tests)
    (where / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = provisioning\n"
        f"only_mutate = provisioning/{module}\n"
        "also_copy =\n    corpus\n    docs\n"
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -q\n"
        "pytest_add_cli_args_test_selection =\n" + "".join(f"    {t}\n" for t in tests) +
        "use_git_change_detection = false\n"
    )
    return where


def read_results(where: Path, module: str) -> dict[str, list[str]]:
    """Mutant names by status, from mutmut's ``mutants/provisioning/<module>.meta``."""
    meta = where / "mutants" / "provisioning" / (module + ".meta")
    data = json.loads(meta.read_text())
    by_status: dict[str, list[str]] = {}
    for name, code in data.get("exit_code_by_key", {}).items():
        by_status.setdefault(_STATUS.get(code, "suspicious"), []).append(name)
    return by_status


def run_module(module: str, jobs: int, from_head: bool, keep: bool, equivalent: list[tuple[str, str]],
               rerun: bool = False) -> Score:
    """Run mutmut over one module and score it (``rerun``: only the previous run's undetected mutants again)."""
    score = Score(module)
    started = time.monotonic()
    names: list[str] = []
    if rerun:
        previous = WORK / module.replace("/", "-").removesuffix(".py")
        try:
            old = read_results(previous, module)
        except (OSError, ValueError):
            old = {}
        names = sorted(n for status, group in old.items() if status not in DETECTED | {"skipped"} for n in group)
        keep = True
    where = prepare_copy(module, from_head, keep)
    log = where / "mutmut.log"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *names],
                              cwd=where, stdout=out, stderr=subprocess.STDOUT, env=env)
    score.seconds = time.monotonic() - started
    try:
        score.by_status = read_results(where, module)
    except (OSError, ValueError) as exc:
        score.error = f"no results ({exc}); see {log}"
        return score
    if rerun:  # mutmut regenerates the mutants of a re-copied module: the others keep the last run's verdict
        again = set(names)
        status_of = {n: st for st, group in old.items() for n in group if n not in again}
        status_of.update({n: st for st, group in score.by_status.items() for n in group if n in again})
        merged: dict[str, list[str]] = {}
        for name, status in status_of.items():
            merged.setdefault(status, []).append(name)
        score.by_status = merged
        meta = where / "mutants" / "provisioning" / (module + ".meta")
        data = json.loads(meta.read_text())
        code = {v: k for k, v in reversed(list(_STATUS.items()))}
        data["exit_code_by_key"] = {n: code[st] for st, g in merged.items() for n in g}
        meta.write_text(json.dumps(data))  # the merged verdicts are the next --rerun-undetected's start
    if done.returncode != 0:
        score.error = f"mutmut exited {done.returncode}; see {log}"
    undetected = set(score.undetected)
    for name in undetected:
        reason = next((r for pattern, r in equivalent if fnmatch.fnmatchcase(name, pattern)), None)
        if reason is not None:
            score.equivalent.append((name, reason))
    return score


def print_table(scores: list[Score], pending: dict[str, str]) -> None:
    """The per-module table (Markdown, as docs/testing.md shows it)."""
    print("| module | mutants | killed | survived | no tests | equivalent | score | time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in scores:
        if s.module in pending and not s.by_status:
            print(f"| `{s.module}` | | | | | | pending: {pending[s.module]} | |")
            continue
        survived = len([n for n in s.by_status.get("survived", []) + s.by_status.get("suspicious", [])
                        + s.by_status.get("not checked", [])])
        value = "n/a" if s.score is None else f"{s.score:.1f}%"
        print(f"| `{s.module}` | {s.total} | {s.detected} | {survived} | {len(s.by_status.get('no tests', []))} "
              f"| {len(s.equivalent)} | {value} | {s.seconds / 60:.1f} min |")


def load_pending() -> dict[str, str]:
    """Modules not scored on purpose (``<module> <reason>``), skipped unless named on the command line."""
    pending = {}
    if PENDING_FILE.is_file():
        for line in PENDING_FILE.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                module, _, reason = line.strip().partition(" ")
                pending[module] = reason.strip()
    return pending


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules under provisioning/ (default: all)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")),
                        help="mutmut children (default 2, or $MUTATION_JOBS)")
    parser.add_argument("--from-head", action="store_true", help="mutate provisioning/ as in the last commit (tests from the working tree)")
    parser.add_argument("--keep", action="store_true", help="reuse the previous run's mutants/ and results")
    parser.add_argument("--rerun-undetected", action="store_true",
                        help="keep the previous results and test only its undetected mutants again (after new tests)")
    parser.add_argument("--include-pending", action="store_true",
                        help="also run the modules benchmarks/mutation-pending.txt lists")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; choose from {', '.join(MODULES)}")
    pending = load_pending()
    modules = args.modules or [m for m in MODULES if args.include_pending or m not in pending]
    equivalent = load_equivalent()
    scores = []
    started = time.strftime("%Y-%m-%d %H:%M")
    for module in modules:
        print(f"mutation: {module} ...", file=sys.stderr, flush=True)
        score = run_module(module, args.jobs, args.from_head, args.keep, equivalent, args.rerun_undetected)
        scores.append(score)
        if score.error:
            print(f"mutation: {module}: {score.error}", file=sys.stderr)
    skipped = [Score(m) for m in MODULES if m not in modules and m in pending and not args.modules]
    print(f"\nmutation score, {started}, mutmut {MUTMUT_VERSION}, {args.jobs} children\n")
    print_table(scores + skipped, pending)
    for s in scores:
        if s.unexplained:
            listing = WORK / (s.module.replace("/", "-").removesuffix(".py")) / "undetected.txt"
            listing.write_text("".join(f"{name}\n" for name in s.unexplained))
            print(f"\n{s.module}: {len(s.unexplained)} undetected, not classified equivalent (all in {listing}; "
                  f"see one with: cd {listing.parent} && {sys.executable} -m mutmut show NAME):")
            for name in s.unexplained[:20]:
                print(f"  {name}")
            if len(s.unexplained) > 20:
                print(f"  ... and {len(s.unexplained) - 20} more")
    return 1 if any(s.error for s in scores) else 0


if __name__ == "__main__":
    sys.exit(main())
