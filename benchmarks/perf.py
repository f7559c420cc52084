"""Performance figures of the engine cache (issues 6 and 15), each a ratio against a reference timed in the same run.

    .venv/bin/python benchmarks/perf.py            # every row (~10 GB written in a temp folder, 15-25 minutes on 2 cores)
    .venv/bin/python benchmarks/perf.py --quick    # small sizes: a smoke test of the script, the ratios mean little
    .venv/bin/python benchmarks/perf.py --scale    # also the 10 / 100 / 1,000 backbone sweep and docs/perf-scale.png

Workloads are generated with onnx.helper (nothing is downloaded) and engines are built by the
real ONNX Runtime backend through a real ``doit engines``:

- hash / verify-rss: ``hash_file`` on 1 GiB vs openssl; peak RSS of verifying it.
- cold / parallel / session / peer: 6 deep residual Conv/BatchNorm/Relu nets (CPU-bound builds):
  ``doit engines`` from nothing vs the sum of ``compile_duration_s``; ``doit -n 2`` vs ``doit -n 1``;
  ONNX Runtime sessions from the engines vs from the sources; a server's start on a warm cache
  (``resolve_engine`` + session, 3 models) vs OpenVINO's own compile cache on the same ONNX files.
- warm-full / floor / warm-nodb / nodb-checkout / cold-io: 20 backbones of ~100 MB each; a no-op
  ``doit engines``, one that lost doit's database (also with the ONNX files checked out anew), and
  the cold build, vs openssl over the same engines (or the compile times).
- warm-stat / resolve: 100 tiny backbones with ``verify: stat``; no-op and ``doit engines-path`` vs ``doit list``.
- scale-stat / scale-full / memory: 1,000 backbones of ~1 MB engines: no-op runs (stat, full) vs
  ``doit list`` and openssl, and the no-op's peak RSS growth.
- rtx-cold: the bundled corpus and silero-vad with ``backend: tensorrt-rtx`` (needs tensorrt_rtx).
- fetch: measured by ``benchmarks/fleet.py``, not here.

Every timing is the best of ``--repeat`` runs (the machine is shared: others' work only adds
time). A row whose dependency is missing prints "not run: <why>" and never counts as passing.
Every run's figures go to ``benchmarks/results/<date>-<machine>.json``; a ``--quick`` run's go
into its work folder, which is removed at the end like the workloads (``--keep`` keeps both),
so a smoke test leaves nothing behind. ``--workdir DIR`` is created when it does not exist.
Exit status 0 when every row that ran passed (always with --quick), 1 otherwise; 2 for a bad
``--workdir``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PYTHON = sys.executable
DOIT = str(Path(sys.executable).parent / "doit")
DODO = "from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n"
REPRO = ".venv/bin/python benchmarks/perf.py"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLOT = ROOT / "docs" / "perf-scale.png"


@dataclass(frozen=True)
class Sizes:
    """Workload sizes: the issue's (full) or a smoke test's (quick)."""

    warm_engines: int = 20
    warm_weight_side: int = 5120  # float32 side x side = 100 MiB per engine
    stat_backbones: int = 100
    cold_models: int = 6
    cold_blocks: int = 2500  # 10,000 nodes: ONNX Runtime's graph optimisation takes ~2 s per model here
    hash_mib: int = 1024
    scale_backbones: int = 1000
    scale_weight_side: int = 512  # float32 512 x 512 = 1 MiB per engine
    scale_points: tuple[int, ...] = (10, 100, 1000)
    peer_models: int = 3
    repeat: int = 7


QUICK = Sizes(warm_engines=3, warm_weight_side=1024, stat_backbones=12, cold_models=2, cold_blocks=150,
              hash_mib=64, scale_backbones=12, scale_weight_side=64, scale_points=(3, 6), peer_models=2,
              repeat=2)


@dataclass
class Row:
    """One line of the table: a measured ratio against its limit (or why it was not run)."""

    name: str
    what: str
    measured: float | None  # None: not run
    limit: float | None  # None: shown for context, not a target
    higher_is_better: bool
    detail: str
    floor: float | None = None  # what the hardware allows, where the target is out of its reach
    figures: dict = field(default_factory=dict)  # the absolute times behind the ratio (seconds, MB)

    @property
    def passed(self) -> bool | None:
        """True/False against the limit; None for context rows and rows not run."""
        if self.limit is None or self.measured is None:
            return None
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit


def not_run(name: str, what: str, why: str, limit: float | None = None, higher: bool = False) -> Row:
    """A row that could not be measured here: printed as such, never a pass."""
    return Row(name, what, None, limit, higher, f"not run: {why}")


def missing(module: str) -> str | None:
    """Why ``module`` cannot be used here, or None when it is importable."""
    try:
        return None if importlib.util.find_spec(module) is not None else f"{module} is not installed"
    except ModuleNotFoundError:
        return f"{module} is not installed"
    except (ImportError, ValueError) as exc:
        return f"{module} cannot be found ({exc})"


# --- workloads ----------------------------------------------------------------------------------

def _onnx():
    import numpy as np  # the harness may be heavy; the code it measures must not be
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return np, onnx, TensorProto, helper, numpy_helper


def make_matmul_model(path: Path, side: int, seed: int) -> None:
    """``y = x @ W`` with a random side x side float32 weight: the engine is about as big as W."""
    np, onnx, TensorProto, helper, numpy_helper = _onnx()
    weight = np.random.default_rng(seed).random((side, side), dtype=np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm", [x], [y],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def make_deep_model(path: Path, blocks: int, seed: int, channels: int = 8) -> None:
    """A residual stack of Conv -> BatchNormalization -> Relu -> Add blocks (4 nodes each)."""
    np, onnx, TensorProto, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    shape = [1, channels, 32, 32]
    nodes, inits, current = [], [], "x"
    for i in range(blocks):
        inits.append(numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.05)
                                             .astype(np.float32), f"w{i}"))
        for name, centre in (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)):
            values = np.abs(centre + rng.standard_normal(channels) * 0.01).astype(np.float32)
            inits.append(numpy_helper.from_array(values, f"{name}{i}"))
        out = "y" if i == blocks - 1 else f"a{i}"
        nodes += [
            helper.make_node("Conv", [current, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"c{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"]),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"]),
            helper.make_node("Add", [f"r{i}", current], [out]),
        ]
        current = out
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def make_project(root: Path, models: list[Path], verify: str = "full") -> Path:
    """A doit project: dodo.py plus corpus/corpus.yaml naming ``models`` (ONNX Runtime backend)."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (root / "dodo.py").write_text(DODO)
    lines = ["cache_dir: cache", "backend: onnxruntime", f"verify: {verify}", "backbones:"]
    lines += [f"  - model_name: {m.stem}\n    onnx: {m}" for m in models]
    (corpus / "corpus.yaml").write_text("\n".join(lines) + "\n")
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PROVISIONING_CONFIG", "PROVISIONING_DOIT_DB")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run(cmd: list[str], cwd: Path | None = None, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one command (a child process) and its result."""
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return elapsed, result


def doit(project: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """``doit engines`` (or ``args``) in ``project``."""
    return run([DOIT, *(args or ("engines",))], cwd=project)


def _assert_noop(result: subprocess.CompletedProcess, count: int) -> None:
    """A warm run must have found every engine up to date (nothing compiled, nothing reused by action)."""
    uptodate = [line for line in result.stdout.splitlines() if line.startswith("-- engines:")]
    if len(uptodate) != count:
        raise RuntimeError(f"expected {count} up-to-date tasks, got:\n{result.stdout}\n{result.stderr}")


def engines_in(project: Path) -> list[Path]:
    return sorted((project / "corpus" / "cache").glob("*.engine"))


def interleaved(a, b, repeat: int) -> tuple[float, float]:
    """Best wall times of two commands run alternately.

    The machine is shared: others' work only ever adds time, so the best of several runs is
    the closest to what the hardware does, and alternating exposes both to the same noise.
    """
    times_a, times_b = [], []
    for _ in range(repeat):
        times_a.append(a())
        times_b.append(b())
    return min(times_a), min(times_b)


# --- helpers -----------------------------------------------------------------------------------

def peak_rss(cmd: list[str], cwd: Path | None = None) -> float:
    """Peak RSS (MB) of one command, read by a tiny parent that waits for it (ru_maxrss of that child)."""
    script = ("import json, os, resource, subprocess, sys\n"
              "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
              "print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))\n")
    _, result = run([PYTHON, "-c", script, *cmd], cwd=cwd)
    return json.loads(result.stdout)


def fresh(project: Path) -> None:
    """Back to nothing: no cache folder, no doit database."""
    shutil.rmtree(project / "corpus" / "cache", ignore_errors=True)
    for db in project.glob(".doit.db*"):
        db.unlink()


def set_verify(project: Path, mode: str) -> None:
    config = project / "corpus" / "corpus.yaml"
    config.write_text(re.sub(r"^verify: \w+$", f"verify: {mode}", config.read_text(), flags=re.M))


def settle() -> None:
    """Let files age past the 2 s racy-clean window the cache index waits for."""
    time.sleep(2.2)


def openssl(files: list[str]) -> float:
    return run(["openssl", "dgst", "-sha256", *files])[0]


def hash_rate(files: list[str]) -> float:
    """Bytes per second of hash_file on one core (page cache warm), for the floors."""
    from provisioning.sidecar import hash_file

    started = time.perf_counter()
    for path in files:
        hash_file(path)
    return sum(os.path.getsize(p) for p in files) / (time.perf_counter() - started)


def writeback_rate(folder: Path, size: int = 100 << 20) -> float:
    """Bytes per second this disk makes durable: the fsync of a freshly written file, timed alone.

    A cold build's publish pays exactly this for each engine the backend wrote (the engine
    must be on disk before BUILT is reported); the write into the page cache itself is part
    of the backend's compile time, so only the fsync is timed. Best of two, in ``folder``.
    """
    block = os.urandom(1 << 20)
    best = None
    for attempt in range(2):
        path = folder / f".writeback-{attempt}.bin"
        with open(path, "wb") as handle:
            for _ in range(size >> 20):
                handle.write(block)
            handle.flush()
            started = time.perf_counter()
            os.fsync(handle.fileno())
            elapsed = time.perf_counter() - started
        path.unlink()
        best = elapsed if best is None else min(best, elapsed)
    return size / max(best, 1e-6)


def cores() -> int:
    return len(os.sched_getaffinity(0))


# --- the comparisons ----------------------------------------------------------------------------

def bench_warm_full(work: Path, sizes: Sizes) -> list[Row]:
    models = work / "warm-full-models"
    models.mkdir()
    paths = [models / f"big{i:02d}.onnx" for i in range(sizes.warm_engines)]
    for i, path in enumerate(paths):
        make_matmul_model(path, sizes.warm_weight_side, seed=i)
    project = make_project(work / "warm-full", paths)
    # cold-io's floor: what a cold run pays besides the compiles whatever it does: start-up with
    # every ONNX inspected (no cache yet: this is also a cold `doit list`) and one SHA-256 pass
    # over the engines it publishes (one stream: a file's digest is sequential)
    list_cold = min(doit(project, "list")[0] for _ in range(2))
    colds = []
    for attempt in range(2):  # cold-io: best of two cold builds
        if attempt:
            fresh(project)
        elapsed, _ = doit(project)
        colds.append((elapsed / _compile_seconds(project), elapsed, _compile_seconds(project)))
    cold_ratio, cold_s, compile_s = min(colds)
    settle()
    _, result = doit(project)  # first warm run: pages cached, database settled, index written
    _assert_noop(result, len(paths))
    engines = [str(p) for p in engines_in(project)]
    sources = [str(p) for p in paths]
    total_mb = sum(os.path.getsize(p) for p in engines) / 1e6
    onnx_mb = sum(os.path.getsize(p) for p in sources) / 1e6

    def warm() -> float:
        elapsed, result = doit(project)
        _assert_noop(result, len(paths))
        return elapsed

    reference, measured = interleaved(lambda: openssl(engines), warm, sizes.repeat)
    listing = min(doit(project, "list")[0] for _ in range(sizes.repeat))
    _without_database(project)  # the first run after a loss enters the ONNX digests in the index
    nodb_ref, lost_db = interleaved(lambda: openssl(engines), lambda: _without_database(project),
                                    max(2, sizes.repeat // 2))
    checkout = min(_without_database(project, new_checkout=True) for _ in range(2))
    python = min(run([PYTHON, "-c", "pass"])[0] for _ in range(sizes.repeat))
    rate = hash_rate(engines[:4])
    floor_nodb = (listing + total_mb * 1e6 / (cores() * rate)) / nodb_ref
    floor_checkout = (listing + (total_mb + onnx_mb) * 1e6 / (cores() * rate)) / nodb_ref
    durable = writeback_rate(project, size=max(4, min(100, int(total_mb / len(engines)))) << 20)  # one engine's size
    # after the backend returns, the publish hashes the engine (1 core); the write-back overlaps the
    # backend's own write and that hash, so the disk's rate (shown) bounds it only when slower than both
    floor_cold = (list_cold + compile_s + total_mb * 1e6 / rate) / compile_s
    return [
        Row("warm-full", f"no-op `doit engines`, {len(engines)} engines, {total_mb:.0f} MB / openssl dgst -sha256",
            measured / reference, 0.75, False, f"doit {measured:.2f} s, openssl {reference:.2f} s",
            figures={"doit_s": measured, "openssl_s": reference}),
        Row("floor", "`doit list` on the same dodo.py (startup + task generation) / the same openssl",
            listing / reference, None, False, f"doit list {listing:.3f} s, python -c pass {python:.3f} s",
            figures={"doit_list_s": listing, "python_s": python}),
        Row("warm-nodb", "`doit engines` with the doit database lost (every action runs and reports REUSED) "
            "/ the same openssl", lost_db / nodb_ref, 0.75, False,
            f"doit {lost_db:.2f} s, openssl {nodb_ref:.2f} s; engines hashed ahead on {cores()} cores, "
            f"unchanged ONNX digests from the cache index; floor {floor_nodb:.2f} = doit list + "
            f"{total_mb:.0f} MB on {cores()} cores", floor=floor_nodb,
            figures={"doit_s": lost_db, "openssl_s": nodb_ref}),
        Row("nodb-checkout", "the same, ONNX files checked out anew (CI: new inodes, every ONNX hashed too) "
            "/ the same openssl", checkout / nodb_ref, None, False,
            f"doit {checkout:.2f} s; floor {floor_checkout:.2f} = doit list + {total_mb + onnx_mb:.0f} MB "
            f"on {cores()} cores", floor=floor_checkout, figures={"doit_s": checkout}),
        Row("cold-io", f"cold build of those {len(engines)} engines ({total_mb / len(engines):.0f} MB each) "
            "/ sum of compile_duration_s", cold_ratio, 1.25, False,
            f"doit {cold_s:.2f} s, compiles {compile_s:.2f} s (best of 2); floor {floor_cold:.2f} = cold "
            f"`doit list` {list_cold:.2f} s (start-up, every ONNX inspected) + compiles + {total_mb:.0f} MB "
            f"hashed once on 1 core ({rate / 1e6:.0f} MB/s); written back at {durable / 1e6:.0f} MB/s (fsync) "
            "while ONNX Runtime writes and the hash runs",
            floor=floor_cold,
            figures={"doit_s": cold_s, "compile_s": compile_s, "doit_list_cold_s": list_cold,
                     "writeback_mb_s": durable / 1e6, "hash_mb_s": rate / 1e6}),
    ]


def _without_database(project: Path, new_checkout: bool = False) -> float:
    """A run after the doit database was lost: every task's action runs, reusing its engine.

    ``new_checkout`` also replaces every ONNX by a copy (new inode and ctime, same bytes), as
    a fresh CI checkout with a restored cache folder has them.
    """
    for db in project.glob(".doit.db*"):
        db.unlink()
    if new_checkout:
        for line in (project / "corpus" / "corpus.yaml").read_text().splitlines():
            if line.strip().startswith("onnx: "):
                source = Path(line.split("onnx: ", 1)[1])
                shutil.copy2(source, source.with_suffix(".tmp"))
                os.replace(source.with_suffix(".tmp"), source)
        settle()
    elapsed, result = doit(project)
    if result.stdout.count("REUSED") != len(engines_in(project)) or "BUILT" in result.stdout:
        raise RuntimeError(f"expected every engine REUSED:\n{result.stdout}\n{result.stderr}")
    return elapsed


def bench_warm_stat(work: Path, sizes: Sizes) -> list[Row]:
    models = work / "warm-stat-models"
    models.mkdir()
    paths = [models / f"tiny{i:03d}.onnx" for i in range(sizes.stat_backbones)]
    for i, path in enumerate(paths):
        make_matmul_model(path, 8, seed=i)
    project = make_project(work / "warm-stat", paths, verify="stat")
    doit(project)
    settle()
    _, result = doit(project)  # the first warm run records the stat signatures and the index
    _assert_noop(result, len(paths))

    def warm() -> float:
        elapsed, result = doit(project)
        _assert_noop(result, len(paths))
        return elapsed

    reference, measured = interleaved(lambda: doit(project, "list")[0], warm, sizes.repeat)

    def path() -> float:
        elapsed, result = doit(project, "engines-path", "tiny000")
        if result.returncode != 0 or not result.stdout.strip().endswith(".engine"):
            raise RuntimeError(f"engines-path failed:\n{result.stdout}\n{result.stderr}")
        return elapsed

    listing, resolved = interleaved(lambda: doit(project, "list")[0], path, sizes.repeat)
    return [
        Row("warm-stat", f"no-op `doit engines`, {len(paths)} backbones, verify: stat / `doit list`",
            measured / reference, 3.0, False, f"doit engines {measured:.2f} s, doit list {reference:.2f} s",
            figures={"doit_s": measured, "doit_list_s": reference}),
        Row("resolve", f"`doit engines-path MODEL` ({len(paths)} backbones, verify: stat) / `doit list`",
            resolved / listing, 1.5, False, f"engines-path {resolved:.3f} s, doit list {listing:.3f} s",
            figures={"engines_path_s": resolved, "doit_list_s": listing}),
    ]


def _compile_seconds(project: Path) -> float:
    """The backend's own compile times, as the compiler recorded them in events.jsonl."""
    lines = (project / "corpus" / "cache" / "events.jsonl").read_text().splitlines()
    return sum(e["compile_duration_s"] for e in map(json.loads, lines) if e.get("outcome") == "BUILT")


def bench_cold(work: Path, sizes: Sizes) -> list[Row]:
    models = work / "cold-models"
    models.mkdir()
    paths = [models / f"deep{i}.onnx" for i in range(sizes.cold_models)]
    for i, path in enumerate(paths):
        make_deep_model(path, sizes.cold_blocks, seed=i)
    project = make_project(work / "cold", paths)
    ratios, serial, parallel, overlap = [], [], [], []
    for _ in range(max(1, sizes.repeat // 3)):  # serial and -n 2 alternately, from nothing each time
        fresh(project)
        elapsed, _ = doit(project)
        compile_s = _compile_seconds(project)
        ratios.append((elapsed / compile_s, elapsed, compile_s))
        serial.append(elapsed)
        fresh(project)
        elapsed, _ = doit(project, "-n", "2", "engines")
        parallel.append(elapsed)
        overlap.append(_compile_seconds(project) / elapsed)  # the run's own builds / its wall time
    ratio, elapsed, compile_s = min(ratios)
    one, two = min(serial), min(parallel)
    floor = min(2, cores()) / 1.0
    from_engine, from_source = _session_seconds(project, paths, sizes.repeat)
    rows = [
        Row("cold", f"`doit engines` from nothing, {len(paths)} models x {sizes.cold_blocks * 4} nodes "
            "/ sum of compile_duration_s", ratio, 1.10, False,
            f"doit {elapsed:.2f} s, compiles {compile_s:.2f} s", figures={"doit_s": elapsed, "compile_s": compile_s}),
        Row("parallel", f"speed-up of `doit -n 2 engines` over `doit -n 1`, cold, {len(paths)} CPU-bound models",
            one / two, 1.7, True, f"-n 1 {one:.2f} s, -n 2 {two:.2f} s; one ONNX Runtime thread per build; "
            f"at most {floor:.0f}x on {cores()} cores; the -n 2 runs did {max(overlap):.2f} s of builds per "
            "second of wall time (their own compile_duration_s sum / their time)", floor=floor,
            figures={"n1_s": one, "n2_s": two, "n2_builds_per_s": max(overlap)}),
        Row("session", f"ONNX Runtime session from the engines (open_engine) / from the source ONNX, "
            f"{len(paths)} cold-build models", from_engine / from_source, None, False,
            f"engines {from_engine * 1000:.0f} ms, sources {from_source * 1000:.0f} ms: the start-up time "
            "the CPU backend saves"),
    ]
    rows.append(bench_peer(project, paths[: sizes.peer_models], work, sizes))
    return rows


def _session_seconds(project: Path, sources: list[Path], repeat: int) -> tuple[float, float]:
    """Best total time to open every engine through open_engine, and every source ONNX by default."""
    import onnxruntime as ort

    from provisioning import resolve_engine

    config = project / "corpus" / "corpus.yaml"
    entries = [resolve_engine(config, p.stem) for p in sources]

    def engines() -> float:
        started = time.perf_counter()
        for entry in entries:
            entry.open()
        return time.perf_counter() - started

    def originals() -> float:
        started = time.perf_counter()
        for path in sources:
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return time.perf_counter() - started

    return interleaved(engines, originals, repeat)


_READY_OURS = """
import json, sys, time
started = time.perf_counter()
from provisioning import resolve_engine
for name in sys.argv[2:]:
    resolve_engine(sys.argv[1], name).open()
print(json.dumps(time.perf_counter() - started))
"""

_READY_OPENVINO = """
import json, sys, time
started = time.perf_counter()
import openvino
core = openvino.Core()
for path in sys.argv[2:]:
    core.compile_model(path, "CPU", {"CACHE_DIR": sys.argv[1]})
print(json.dumps(time.perf_counter() - started))
"""


def bench_peer(project: Path, models: list[Path], work: Path, sizes: Sizes) -> Row:
    """A server's start on a warm cache: ours (SHA-256 checked) vs OpenVINO's compile cache (not checked)."""
    what = f"server start on a warm cache, {len(models)} models: resolve_engine + ONNX Runtime session / " \
           "OpenVINO compile_model with CACHE_DIR"
    why = missing("openvino")
    if why is not None:
        return not_run("peer", what, f"{why} (benchmark-only dependency: pip install openvino)", 1.0)
    config = str(project / "corpus" / "corpus.yaml")
    cache = work / "openvino-cache"
    cache.mkdir(exist_ok=True)
    paths = [str(p) for p in models]

    def ours() -> float:
        return json.loads(run([PYTHON, "-c", _READY_OURS, config, *[p.stem for p in models]])[1].stdout)

    def theirs() -> float:
        return json.loads(run([PYTHON, "-c", _READY_OPENVINO, str(cache), *paths])[1].stdout)

    theirs()  # fills OpenVINO's cache (its cold start)
    a, b = interleaved(ours, theirs, sizes.repeat)
    return Row("peer", what, a / b, 1.0, False,
               f"ours {a * 1000:.0f} ms (SHA-256 verified), OpenVINO {b * 1000:.0f} ms (not verified); both "
               "timed in a fresh process from before the first import to the last ready model",
               figures={"ours_s": a, "openvino_s": b})


def bench_scale(work: Path, sizes: Sizes) -> tuple[list[Row], dict]:
    """1,000 backbones of ~1 MB engines: no-op stat and full runs, memory; the points of one size."""
    point = scale_point(work, sizes.scale_backbones, sizes, keep_rss=True)
    n = sizes.scale_backbones
    rows = [
        Row("scale-stat", f"no-op `doit engines`, {n} backbones, verify: stat / bare `doit list`",
            point["stat_s"] / point["list_s"], 1.5, False,
            f"doit engines {point['stat_s']:.2f} s, doit list {point['list_s']:.2f} s",
            figures={k: point[k] for k in ("stat_s", "list_s")}),
        Row("scale-full", f"no-op `doit engines`, {n} engines of {point['engine_mb']:.1f} MB, full verify "
            "/ openssl over the same files", point["full_s"] / point["openssl_s"], 1.0, False,
            f"doit engines {point['full_s']:.2f} s, openssl {point['openssl_s']:.2f} s; floor "
            f"{point['full_floor']:.2f} = doit list + the bytes on {cores()} cores",
            floor=point["full_floor"], figures={k: point[k] for k in ("full_s", "openssl_s", "list_s")}),
        Row("memory", f"peak RSS growth of a no-op `doit engines` over {n} backbones (MB, absolute)",
            point["rss_growth_mb"], 100.0, False,
            f"peak {point['rss_mb']:.0f} MB - `python -c pass` {point['rss_base_mb']:.0f} MB (ru_maxrss)",
            figures={k: point[k] for k in ("rss_mb", "rss_base_mb")}),
    ]
    return rows, point


def scale_point(work: Path, n: int, sizes: Sizes, keep_rss: bool = False) -> dict:
    """Cold, no-op stat, no-op full, doit list and openssl at ``n`` backbones of ~1 MB engines."""
    models = work / f"scale-{n}-models"
    models.mkdir()
    paths = [models / f"s{i:04d}.onnx" for i in range(n)]
    for i, path in enumerate(paths):
        make_matmul_model(path, sizes.scale_weight_side, seed=i)
    project = make_project(work / f"scale-{n}", paths)
    cold_s, _ = doit(project)
    compile_s = _compile_seconds(project)
    settle()
    _, result = doit(project)  # writes the index
    _assert_noop(result, n)
    engines = [str(p) for p in engines_in(project)]
    repeat = max(2, sizes.repeat // 2)

    def noop() -> float:
        elapsed, result = doit(project)
        _assert_noop(result, n)
        return elapsed

    openssl_s, full_s = interleaved(lambda: openssl(engines), noop, repeat)
    set_verify(project, "stat")  # the config is a file_dep: one run re-runs every action (REUSED)
    doit(project)
    settle()
    _assert_noop(doit(project)[1], n)
    list_s, stat_s = interleaved(lambda: doit(project, "list")[0], noop, repeat)
    point = {"backbones": n, "cold_s": cold_s, "compile_s": compile_s, "full_s": full_s, "stat_s": stat_s,
             "list_s": list_s, "openssl_s": openssl_s,
             "engine_mb": sum(os.path.getsize(p) for p in engines) / 1e6 / n}
    point["full_floor"] = (list_s + point["engine_mb"] * n * 1e6 / (cores() * hash_rate(engines[:50]))) / openssl_s
    if keep_rss:
        rss = min(peak_rss([DOIT, "engines"], cwd=project) for _ in range(2))
        base = min(peak_rss([PYTHON, "-c", "pass"]) for _ in range(2))
        point.update(rss_mb=rss, rss_base_mb=base, rss_growth_mb=rss - base)
    shutil.rmtree(project, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    return point


RTX_TARGETS = ["sm86", "sm89"]
_VAD_INPUTS = {"input": {"min": [1, 512], "opt": [2, 512], "max": [4, 512]},
               "state": {"min": [2, 1, 128], "opt": [2, 2, 128], "max": [2, 4, 128]}}


def bench_rtx_cold(work: Path) -> Row:
    what = "cold `doit engines`, backend tensorrt-rtx, the bundled corpus + silero-vad / sum of compile_duration_s"
    for module in ("tensorrt_rtx", "silero_vad"):
        why = missing(module)
        if why is not None:
            return not_run("rtx-cold", what, f"{why} (pip install -e '.[test]')", 1.10)
    vad = Path(importlib.util.find_spec("silero_vad").submodule_search_locations[0]) / "data" / \
        "silero_vad_op18_ifless.onnx"
    project = work / "rtx"
    (project / "corpus").mkdir(parents=True)
    shutil.copytree(ROOT / "corpus" / "models", project / "corpus" / "models")
    (project / "dodo.py").write_text(DODO)
    backbones = [
        {"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"},
        {"model_name": "cls", "onnx": "models/cls.onnx", "precision": "fp32",
         "inputs": {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}},
        {"model_name": "emb", "onnx": "models/emb.onnx", "precision": "fp16"},
        {"model_name": "vad", "onnx": str(vad), "precision": "fp32", "inputs": _VAD_INPUTS},
    ]
    config = {"cache_dir": "cache", "backend": "tensorrt-rtx", "workspace_mb": 256,
              "compute_capabilities": RTX_TARGETS, "backbones": backbones}
    (project / "corpus" / "corpus.yaml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    # the floor: a cold `doit list` (start-up, host probe, every ONNX inspected: no cache yet) + the compiles
    list_cold = min(doit(project, "list")[0] for _ in range(3))
    # below any design: the interpreter starting and importing doit, before a dodo is read
    bare = min(run([PYTHON, "-c", "import doit.doit_cmd"])[0] for _ in range(3))
    elapsed, _ = doit(project)
    compile_s = _compile_seconds(project)
    floor = (list_cold + compile_s) / compile_s
    return Row("rtx-cold", what, elapsed / compile_s, 1.10, False,
               f"doit {elapsed:.2f} s, compiles {compile_s:.2f} s, 4 models for {', '.join(RTX_TARGETS)}; "
               f"floor {floor:.2f} = cold `doit list` {list_cold:.2f} s + compiles; start-up floor "
               f"{(bare + compile_s) / compile_s:.2f} = python + import doit {bare:.2f} s + compiles", floor=floor,
               figures={"doit_s": elapsed, "compile_s": compile_s, "doit_list_cold_s": list_cold,
                        "python_import_doit_s": bare})


def fetch_row() -> Row:
    return not_run("fetch", "remote fetch of a 1 GiB engine / plain s3fs get_file of the same object",
                   "measured by benchmarks/fleet.py (its fetch row), not by this script", 1.1)


def _big_file(work: Path, mib: int) -> Path:
    path = work / "big.engine"
    block = os.urandom(4 << 20)
    with open(path, "wb") as handle:
        for _ in range(mib // 4):
            handle.write(block)
    return path


_HASH_CHILD = """
import json, sys, time
from provisioning.sidecar import hash_file
best = min((lambda t: (hash_file(sys.argv[1]), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(int(sys.argv[2])))
print(json.dumps(best))
"""

_MEMORY_CHILD = """
import json, sys
from pathlib import Path
from provisioning.verify import EngineVerifier
def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
baseline = kib("VmRSS")
verifier = EngineVerifier("full")
verifier.prefetch([Path(sys.argv[1])])
assert verifier.check(Path(sys.argv[1])).ok
verifier.close()
print(json.dumps((kib("VmHWM") - baseline) / 1024))
"""


def bench_hash(big: Path, sizes: Sizes) -> Row:
    with open(big, "rb") as handle:  # page cache warm for both
        while handle.read(8 << 20):
            pass
    reference = min(openssl([str(big)]) for _ in range(sizes.repeat))
    _, result = run([PYTHON, "-c", _HASH_CHILD, str(big), str(sizes.repeat)])
    ours = json.loads(result.stdout)
    return Row("hash", f"hash_file throughput on {sizes.hash_mib} MiB / openssl dgst -sha256 (single stream)",
               reference / ours, 0.95, True, f"hash_file {ours:.3f} s, openssl {reference:.3f} s",
               figures={"hash_file_s": ours, "openssl_s": reference})


def bench_memory(big: Path, sizes: Sizes) -> Row:
    from provisioning.sidecar import Sha256Sidecar, hash_file

    Sha256Sidecar.path_for(big).write_text(Sha256Sidecar.format_line(hash_file(big), big.name))
    _, result = run([PYTHON, "-c", _MEMORY_CHILD, str(big)])
    grown = json.loads(result.stdout)
    return Row("verify-rss", f"peak RSS growth verifying a {sizes.hash_mib} MiB engine (MB, absolute)",
               grown, 64.0, False, "VmHWM after - VmRSS before, same process")


# --- the report ---------------------------------------------------------------------------------

def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {cores()} cores"


def machine_slug() -> str:
    return re.sub(r"[^a-z0-9]+", "-", machine().lower()).strip("-")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def table(rows: list[Row], command: str, started: str, load_before: str) -> str:
    lines = [f"date {started}; machine {machine()}; load average (1/5/15 min) {load_before} at start, "
             f"{load()} at end",
             f"command: {command}",
             "timings: best of N runs each (N = --repeat unless the row says otherwise)", "",
             f"| {'target':<13} | {'measured':>8} | {'limit':>7} | {'pass':<7} | what (detail) |",
             f"|{'-' * 15}|{'-' * 10}|{'-' * 9}|{'-' * 9}|---------------|"]
    for row in rows:
        limit = "info" if row.limit is None else f"{'>=' if row.higher_is_better else '<='} {row.limit:g}"
        verdict = {True: "yes", False: "NO", None: "-"}[row.passed]
        if row.measured is None:
            verdict = "not run"
        measured = "-" if row.measured is None else f"{row.measured:.3f}"
        floor = "" if row.floor is None or row.passed is not False else " [target beyond this machine's floor]" \
            if (row.floor < row.limit if row.higher_is_better else row.floor > row.limit) else ""
        lines.append(f"| {row.name:<13} | {measured:>8} | {limit:>7} | {verdict:<7} | "
                     f"{row.what} ({row.detail}){floor} |")
    return "\n".join(lines)


def write_results(rows: list[Row], scale: list[dict], command: str, started: str, load_before: str,
                  quick: bool, work: Path) -> Path:
    """benchmarks/results/<date>-<machine>.json (a --quick run: in the work folder ``work``, never committed)."""
    document = {"date": started, "machine": machine(), "cores": cores(), "load_start": load_before,
                "load_end": load(), "command": command, "timing": "best of N", "quick": quick,
                "rows": [{**asdict(r), "passed": r.passed} for r in rows], "scale": scale}
    folder = RESULTS if not quick else work
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y-%m-%d-%H%M', time.gmtime())}-{machine_slug()}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def plot(points: list[dict], target: Path) -> str:
    """The log-log scale picture; the reason when matplotlib is missing."""
    why = missing("matplotlib")
    if why is not None:
        return f"not run: {why} (benchmark-only dependency: pip install matplotlib)"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [p["backbones"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for key, label, style in (("cold_s", "cold `doit engines`", "o-"), ("full_s", "no-op, verify: full", "s-"),
                              ("stat_s", "no-op, verify: stat", "^-"), ("compile_s", "sum of compile_duration_s", "o:"),
                              ("list_s", "reference: bare `doit list`", "k--"),
                              ("openssl_s", "reference: openssl over the engines", "k:")):
        ax.plot(n, [p[key] for p in points], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("backbones (~1 MB engines each)")
    ax.set_ylabel("wall time, s (best of N)")
    ax.set_title(f"benchmarks/perf.py --scale: {machine()}, load {load().split()[0]}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
    return f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}"


BENCHES = ("hash", "memory", "cold", "warm-full", "warm-stat", "scale", "rtx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workloads (a smoke test)")
    parser.add_argument("--scale", action="store_true", help="also the 10/100/1,000 backbone sweep and its plot")
    parser.add_argument("--only", action="append", choices=BENCHES, help="run only these comparisons")
    parser.add_argument("--repeat", type=int, help="timings per comparison (the best is kept)")
    parser.add_argument("--workdir", help="parent folder for the workloads, created if missing "
                        "(default: the system temp folder)")
    parser.add_argument("--plot", help=f"where --scale writes its picture (default {PLOT.relative_to(ROOT)}; "
                        "with --quick: the work folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workloads folder")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.repeat:
        sizes = Sizes(**{**sizes.__dict__, "repeat": args.repeat})
    quick = args.quick
    chosen = args.only or list(BENCHES)
    started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load()
    if args.workdir:
        try:
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--workdir {args.workdir}: cannot create it ({exc.strerror or exc}); "
                         "give a folder that exists or can be created")
    work = Path(tempfile.mkdtemp(prefix="provisioning-perf.", dir=args.workdir))
    rows: list[Row] = []
    points: list[dict] = []
    picture = ""
    try:
        if {"hash", "memory"} & set(chosen):
            big = _big_file(work, sizes.hash_mib)
            if "hash" in chosen:
                rows.append(bench_hash(big, sizes))
            if "memory" in chosen:
                rows.append(bench_memory(big, sizes))
            big.unlink()
        if "cold" in chosen:
            rows.extend(bench_cold(work, sizes))
        if "warm-full" in chosen:
            rows.extend(bench_warm_full(work, sizes))
        if "warm-stat" in chosen:
            rows.extend(bench_warm_stat(work, sizes))
        if "scale" in chosen:
            scale_rows, point = bench_scale(work, sizes)
            rows.extend(scale_rows)
            if args.scale:
                points = [scale_point(work, n, sizes) for n in sizes.scale_points if n != point["backbones"]]
                points = sorted(points + [point], key=lambda p: p["backbones"])
                target = Path(args.plot) if args.plot else (work / "perf-scale.png" if quick else PLOT)
                picture = plot(points, target)
        if "rtx" in chosen:
            rows.append(bench_rtx_cold(work))  # the 4 RTX builds take 0.1-0.4 s each: --quick runs it too
        rows.append(fetch_row())
        command = " ".join([REPRO, *(argv if argv is not None else sys.argv[1:])])
        print(table(rows, command, started, load_before))
        if points:
            print("\nscale (seconds, best of N):")
            keys = ("backbones", "cold_s", "compile_s", "full_s", "stat_s", "list_s", "openssl_s")
            print("| " + " | ".join(keys) + " |")
            for p in points:
                print("| " + " | ".join(f"{p[k]:.3f}" if isinstance(p[k], float) else str(p[k]) for k in keys) + " |")
        if picture:
            print(f"\nscale picture: {picture}")
        results = write_results(rows, points, command, started, load_before, quick, work)
        kept = not quick or args.keep or (args.plot and Path(args.plot).is_relative_to(work))
        print(f"\nresults: {results}" + ("" if kept else " (a --quick run: removed with the work folder; "
                                                         "--keep keeps it)"))
    finally:
        if args.keep:
            print(f"workloads kept in {work}", file=sys.stderr)
        elif not args.plot or not Path(args.plot).is_relative_to(work):
            shutil.rmtree(work, ignore_errors=True)
    return 0 if quick or all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
