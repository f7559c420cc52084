"""Fleet figures: compiles and time-to-ready with and without the shared remote cache.

    .venv/bin/python benchmarks/fleet.py [--hosts 4] [--models 3] [--width 1024] [--layers 12]

Workload (generated here with onnx.helper, nothing downloaded): ``--models`` MLPs of
``--layers`` x (MatMul [width x width] + Add + Relu), fp32 weights (about 50 MB per model
at the defaults), built as int8 by the ONNX Runtime backend (dynamic quantization, then
ORT_ENABLE_ALL optimisation). A TensorRT build of a real backbone takes minutes rather than
the ~1 s this CPU build takes, so the time-to-ready ratio here is a lower bound.

Simulated hosts are separate processes with their own cache folders and the same host
identity; the bucket is moto's standalone S3 server on 127.0.0.1 (a subprocess), reached
through s3fs over HTTP. Printed figures:

- compiles without the remote (N hosts x models) vs. with it (N hosts started together);
- time-to-ready of a host that builds everything vs. one that fetches everything;
- fetch cost: ``RemoteStore.download`` of a ``--fetch-gib`` engine (the product's fetch
  path: ranged GETs, hashed as they arrive, SHA-256 checked) divided by a plain s3fs
  ``get_file`` of the same object from the same server, alternated ``--fetch-rounds``
  times, best of each (``--fetch-gib 0`` skips it; ``--fetch-only`` runs only it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def make_models(folder: Path, count: int, width: int, layers: int) -> list[dict]:
    """Write ``count`` MLPs; return their backbone entries for corpus.yaml."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    backbones = []
    for index in range(count):
        rng = np.random.default_rng(index)
        nodes, weights, previous = [], [], "x"
        for layer in range(layers):
            weights.append(numpy_helper.from_array(
                (rng.standard_normal((width, width)) * 0.02).astype(np.float32), f"w{layer}"))
            weights.append(numpy_helper.from_array(np.zeros(width, np.float32), f"b{layer}"))
            nodes += [helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]),
                      helper.make_node("Add", [f"m{layer}", f"b{layer}"], [f"a{layer}"]),
                      helper.make_node("Relu", [f"a{layer}"], [f"r{layer}"])]
            previous = f"r{layer}"
        graph = helper.make_graph(
            nodes, f"mlp{index}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
            [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, width])], weights)
        path = folder / f"mlp{index}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        backbones.append({"model_name": f"mlp{index}", "onnx": str(path), "precision": "int8"})
    return backbones


def write_host(root: Path, name: str, backbones: list[dict], remote: dict | None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    document = {"cache_dir": "cache", "backend": "onnxruntime", "backbones": backbones}
    if remote:
        document["remote"] = remote
    path = folder / "corpus.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_hosts(configs: list[Path], start_together: bool) -> list[dict]:
    """Run one worker process per config (all at once, or one after another)."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    start_at = str(time.time() + 3.0) if start_together else ""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    if not start_together:
        return [_result(subprocess.run([*command, str(c)], env=env, capture_output=True, text=True)) for c in configs]
    procs = [subprocess.Popen([*command, str(c), start_at], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in configs]
    return [_result(p, *p.communicate()) for p in procs]


def _result(proc, out: str | None = None, err: str | None = None) -> dict:
    out = proc.stdout if out is None else out
    if proc.returncode != 0:
        raise SystemExit(f"a host failed:\n{(err if err is not None else proc.stderr)[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def worker(config: str, start_at: str | None) -> None:
    """One host: provision the corpus, report outcomes and the seconds until ready."""
    from provisioning import build_compile_request, build_engine_compiler, load_config

    loaded = load_config(config)
    compiler = build_engine_compiler(loaded)
    request = build_compile_request(loaded)
    if start_at:
        time.sleep(max(0.0, float(start_at) - time.time()))
    started = time.perf_counter()
    summary = compiler.compile_engines_for_corpus(request)
    seconds = time.perf_counter() - started
    print(json.dumps({"built": summary.built, "remote": sum(r.source == "remote" for r in summary),
                      "seconds": seconds, "bytes": sum(r.entry.size for r in summary)}))


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=0.5).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.05)
    raise SystemExit("moto server did not start")


def fetch_ratio(endpoint: str, gib: float, rounds: int) -> dict:
    """Seconds of the product's fetch vs. a plain s3fs get_file of one ``gib`` object."""
    import hashlib

    import s3fs

    from provisioning.remote.config import RemoteConfig
    from provisioning.remote.store import RemoteStore

    size = int(gib * (1 << 30))
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir("fetch")
    key = "fetch/engines/engine"
    with tempfile.TemporaryDirectory(prefix="fleet-fetch-") as tmp:
        source, target = Path(tmp) / "source", Path(tmp) / "target"
        digest = hashlib.sha256()
        with open(source, "wb") as out:
            rng = np.random.default_rng(7)
            left = size
            while left:
                block = rng.bytes(min(left, 16 << 20))
                digest.update(block)
                out.write(block)
                left -= len(block)
        fs.put_file(str(source), key)
        source.unlink()
        store = RemoteStore.open(RemoteConfig(config_path=Path(tmp) / "corpus.yaml", url="s3://fetch/engines",
                                              endpoint_url=endpoint, timeout_s=60))
        plain, fetch = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            fs.get_file(key, str(target))
            plain.append(time.perf_counter() - started)
            target.unlink()
            fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                started = time.perf_counter()
                store.download(key, fd, size, digest.hexdigest(), 60)
                fetch.append(time.perf_counter() - started)
            finally:
                os.close(fd)
                target.unlink()
    return {"bytes": size, "plain": plain, "fetch": fetch, "part_bytes": store.part_bytes,
            "concurrency": store.concurrency}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--fetch-gib", type=float, default=1.0, help="engine size for the fetch-cost row (0: skip)")
    parser.add_argument("--fetch-rounds", type=int, default=2)
    parser.add_argument("--fetch-only", action="store_true", help="measure only the fetch-cost row")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1] if len(args.worker) > 1 else None)
        return
    os.environ.update(ENV)
    moto, endpoint = start_moto()
    fetch = None
    try:
        if args.fetch_gib > 0:
            fetch = fetch_ratio(endpoint, args.fetch_gib, max(1, args.fetch_rounds))
        if args.fetch_only:
            _print_header()
            _print_fetch(fetch, args)
            return
        with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
            root = Path(tmp)
            (root / "models").mkdir()
            backbones = make_models(root / "models", args.models, args.width, args.layers)
            import s3fs

            s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("fleet")
            remote = {"url": "s3://fleet/engines", "endpoint_url": endpoint, "timeout_s": 60, "lease_s": 5}
            alone = run_hosts([write_host(root, f"alone{i}", backbones, None) for i in range(args.hosts)], False)
            fleet = run_hosts([write_host(root, f"fleet{i}", backbones, remote) for i in range(args.hosts)], True)
            late = run_hosts([write_host(root, "late", backbones, remote)], False)[0]
    finally:
        os.kill(moto.pid, signal.SIGTERM)
        moto.wait(10)
    compiles_alone = sum(r["built"] for r in alone)
    compiles_fleet = sum(r["built"] for r in fleet)
    build_s = sorted(r["seconds"] for r in alone)[len(alone) // 2]
    fetch_s = late["seconds"]
    _print_header()
    print(f"workload: {args.models} MLPs x {args.layers} layers of {args.width}x{args.width}, int8 (ONNX Runtime), "
          f"{late['bytes'] / 1e6:.1f} MB of engines per host")
    print(f"compiles, {args.hosts} hosts: without remote {compiles_alone} (= {args.hosts} x {args.models}), "
          f"with remote {compiles_fleet}; ratio {compiles_alone / max(1, compiles_fleet):.1f}x fewer")
    print(f"fleet hosts that fetched everything: {sum(r['remote'] == args.models for r in fleet)} of {args.hosts}")
    print(f"time-to-ready: builds {build_s:.2f} s (median of {args.hosts}), fetches {fetch_s:.2f} s; "
          f"ratio {build_s / fetch_s:.1f}x faster")
    _print_fetch(fetch, args)
    print(f"reproduce: .venv/bin/python benchmarks/fleet.py --hosts {args.hosts} --models {args.models} "
          f"--width {args.width} --layers {args.layers} --fetch-gib {args.fetch_gib:g}")


def _print_header() -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"fleet benchmark, {time.strftime('%Y-%m-%d')}, {_cpu_name()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {load}")


def _print_fetch(fetch: dict | None, args) -> None:
    if fetch is None:
        return
    plain, fetched = min(fetch["plain"]), min(fetch["fetch"])
    print(f"fetch of a {fetch['bytes'] / (1 << 30):g} GiB engine (RemoteStore.download: {fetch['concurrency']} x "
          f"{fetch['part_bytes'] >> 20} MiB ranged GETs, SHA-256 on the way) {fetched:.2f} s vs. plain s3fs get_file "
          f"{plain:.2f} s (best of {len(fetch['plain'])}, alternated); ratio {fetched / plain:.2f}")


if __name__ == "__main__":
    main()
