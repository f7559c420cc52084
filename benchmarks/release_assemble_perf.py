"""The ``release`` row (issue 21): assembling a release of 200 backbones x 4 host identities from the bucket.

    .venv/bin/python benchmarks/release_assemble_perf.py            # 200 backbones x 4 hosts (800 entries)
    .venv/bin/python benchmarks/release_assemble_perf.py --quick    # 20 x 4: a smoke test

Workload: moto's standalone S3 server on 127.0.0.1 (a subprocess, over HTTP) holds, for
every backbone of a 200-backbone corpus, the committed entries (layout 2: engine and
manifest parts, an Ed25519-signed commit record) of four host identities: three TensorRT
GPU classes (H100, L4, A100) and this CPU's ONNX Runtime, exactly as builders leave them
for today's inputs. Engines are ``--engine-kb`` of random bytes: assembly never reads one
(the run fails if it does), so their size does not matter.

Measured: ``doit engines-release OUT`` in a fresh process (imports, config, hashing the
200 ONNX files, listing, reading and verifying 800 commit records and 800 manifests,
signing, writing), best of ``--repeat``; and the bucket requests one assembly makes
(counted by the store, in-process). There is no target: the issue asks to report it.
Figures go to benchmarks/results/<date>-<machine>-release-assemble.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOIT = str(Path(sys.executable).parent / "doit")
RESULTS = ROOT / "benchmarks" / "results"
ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "release-assemble-bench"
CREATED = "2026-12-07T00:00:00Z"
GPUS = (("NVIDIA H100 80GB HBM3", (9, 0)), ("NVIDIA L4", (8, 9)), ("NVIDIA A100-SXM4-80GB", (8, 0)))


def start_moto() -> tuple[subprocess.Popen, str]:
    from tests.remote.conftest import MotoServer

    server = MotoServer().start()
    return server.process, server.endpoint


def fill(work: Path, endpoint: str, backbones: int, engine_bytes: int) -> tuple[Path, int]:
    """corpus.yaml of ``backbones`` backbones, and their entries for 4 host identities in the bucket."""
    import s3fs
    import yaml
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from provisioning.compiler import expected_build_inputs
    from provisioning.host import GpuInfo, HostCapabilities, ORT_DISTRIBUTIONS, installed_version, read_cpu_flags
    from provisioning.manifest import manifest_bytes
    from provisioning.onnxinfo import onnx_digest
    from provisioning.remote.config import KeySource, SigningKeyConfig
    from provisioning.remote.layout import inputs_digest
    from provisioning.remote.signing import EntrySigner, entry_message
    from provisioning.schema import EngineFilenameSchema
    from provisioning.specs import BackboneSpec

    private = Ed25519PrivateKey.generate()
    (work / "fleet.pem").write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    signer = EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=work / "fleet.pem"), key_id="fleet"),
                         "bench")
    models = work / "models"
    models.mkdir()
    specs = []
    for index in range(backbones):
        onnx_path = models / f"m{index:03d}.onnx"
        shutil.copyfile(ROOT / "corpus" / "models" / "det.onnx", onnx_path)
        specs.append(BackboneSpec(model_name=f"m{index:03d}", onnx_path=onnx_path, precision="fp32", workspace_mb=256))
    (work / "corpus.yaml").write_text(yaml.safe_dump({
        "cache_dir": "cache", "backend": "onnxruntime", "workspace_mb": 256,
        "remote": {"url": f"s3://{BUCKET}/engines", "endpoint_url": endpoint, "timeout_s": 60, "mode": "read-only",
                   "signing_key": {"algorithm": "ed25519", "id": "fleet", "private_key": {"file": "fleet.pem"}}},
        "backbones": [{"model_name": s.model_name, "onnx": f"models/{s.onnx_path.name}", "precision": "fp32"}
                      for s in specs]}, sort_keys=False))
    ort = HostCapabilities("onnxruntime", installed_version(ORT_DISTRIBUTIONS) or "1.23.2", platform.machine(),
                           read_cpu_flags())
    hosts = [HostCapabilities("tensorrt", "10.16.1.11", "x86_64", (), GpuInfo(name, f"GPU-{i}", cc, "580.65.06", 0))
             for i, (name, cc) in enumerate(GPUS)] + [ort]
    objects: list[tuple[str, bytes]] = []
    for spec in specs:
        digest = onnx_digest(spec.onnx_path)
        for host in hosts:
            inputs = expected_build_inputs(spec, host, digest)
            name = EngineFilenameSchema.build(spec, host)
            host_key = inputs.host["host_key"]
            engine = os.urandom(engine_bytes)
            sha = hashlib.sha256(engine).hexdigest()
            manifest = manifest_bytes({"schema_version": 1, "model_name": spec.model_name,
                                       "engine": {"file_name": name, "sha256": sha, "size": engine_bytes},
                                       "inputs": inputs.as_dict(), "build": {}})
            manifest_sha = hashlib.sha256(manifest).hexdigest()
            ident = inputs_digest(inputs)
            base = f"{BUCKET}/engines/{host_key}/{name}/{ident}"
            record = signer.sign(entry_message("default", host_key, name, ident, sha, engine_bytes, manifest_sha))
            objects += [(f"{base}/engine/{sha}", engine), (f"{base}/manifest/{manifest_sha}", manifest),
                        (f"{base}/commit/fleet", record)]
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir(BUCKET)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: fs.pipe_file(*item), objects))
    return work / "corpus.yaml", len(objects) // 3


def assemble_in_process(config_path: Path) -> dict:
    """One assembly in this process with engine reads forbidden; its request counts."""
    from provisioning import load_config
    from provisioning.release.assemble import assemble_release
    from provisioning.remote.store import RemoteStore

    def refuse(self, path, *args, **kwargs):
        raise AssertionError(f"assembly read engine object {path}")

    RemoteStore.download = refuse  # type: ignore[method-assign]
    RemoteStore.read_range = refuse  # type: ignore[method-assign]
    started = time.perf_counter()
    assembly = assemble_release(load_config(config_path), CREATED)
    return {"seconds": time.perf_counter() - started, "requests": assembly.requests, "calls": assembly.calls,
            "variants": sum(len(b.variants) for b in assembly.release.backbones),
            "backbones": len(assembly.release.backbones)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", type=int, default=200)
    parser.add_argument("--engine-kb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 backbones, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.backbones, args.repeat = 20, 1
    os.environ.update(ENV)
    process, endpoint = start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="release-assemble-") as tmp:
            work = Path(tmp)
            started = time.perf_counter()
            config, entries = fill(work, endpoint, args.backbones, args.engine_kb << 10)
            filled = time.perf_counter() - started
            walls, sizes = [], set()
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            for attempt in range(args.repeat):
                out = work / f"release-{attempt}.json"
                began = time.perf_counter()
                done = subprocess.run([DOIT, "engines-release", str(out), "--config", str(config), "--created",
                                       CREATED], cwd=work, env=env, capture_output=True, text=True)
                walls.append(time.perf_counter() - began)
                if done.returncode != 0:
                    print(done.stdout, done.stderr, file=sys.stderr)
                    return 1
                sizes.add(hashlib.sha256(out.read_bytes()).hexdigest())
                release_bytes = out.stat().st_size
            counted = assemble_in_process(config)
    finally:
        process.kill()
        process.wait(10)
    row = {
        "name": "release", "what": f"engines-release of {args.backbones} backbones x 4 host identities "
                                   f"({entries} entries) from moto over HTTP, fresh process",
        "seconds_best": min(walls), "seconds_all": walls, "requests": counted["requests"], "calls": counted["calls"],
        "in_process_seconds": counted["seconds"], "variants": counted["variants"], "backbones": counted["backbones"],
        "release_bytes": release_bytes, "identical_outputs": len(sizes) == 1, "engine_objects_read": 0,
        "fill_seconds": filled,
    }
    print(json.dumps(row, indent=2))
    document = {"rows": [row], "machine": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()[0],
                "command": " ".join(["benchmarks/release_assemble_perf.py", *sys.argv[1:]]),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    folder = RESULTS if not args.quick else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y-%m-%d-%H%M', time.gmtime())}-{platform.machine()}-release-assemble"
    (folder / f"{name}{'-quick' if args.quick else ''}.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0 if row["identical_outputs"] and counted["variants"] == entries else 1


if __name__ == "__main__":
    sys.exit(main())
