"""Release figures (issue 21): pulling a signed release onto a serving host, each a ratio measured in one run.

    .venv/bin/python benchmarks/release_perf.py           # 20 engines of ~100 MB (2 GB in a temp folder)
    .venv/bin/python benchmarks/release_perf.py --quick   # 4 engines of 4 MB: a smoke test, the ratios mean little

Workload: ``--engines`` random engines of ``--mb`` MB committed to moto's standalone S3
server on 127.0.0.1 (a subprocess, reached over HTTP) as builders leave them (layout 2:
engine and manifest parts, a commit record), and one release pinning them, signed with an
Ed25519 fleet key (:func:`provisioning.release.sign_release`). They are ONNX Runtime
variants for this CPU, so the serving host needs no GPU (``--allow-cpu-fallback``).

- pull: ``doit engines-pull RELEASE`` into an empty cache (verify the release, probe, download
  with parallel GETs hashed as they arrive, check the pinned SHA-256, fsync, publish) divided
  by a plain parallel s3fs ``get`` of the same objects into a folder, each in a fresh Python
  process. Target <= 1.10.
- pull-warm: ``doit engines-pull RELEASE`` with every engine present (``verify: full``: every
  engine hashed, in parallel) divided by ``openssl dgst -sha256`` over the same files. Target <= 0.75.

The timed children run byte-compiled, as an installed package does: their ``.pyc`` files go
to a private ``PYTHONPYCACHEPREFIX`` in the work folder, written by an untimed first run
(where ``PYTHONDONTWRITEBYTECODE`` is set, as on the machine these figures come from, every
process would otherwise compile the package from source: 0.2-0.3 s of each pull here).

Timings are the best of ``--repeat`` runs, the two sides alternated (the machine is shared:
others' work only adds time). Figures go to benchmarks/results/<date>-<machine>-release.json
(a --quick run: the temp folder). Exit 0 when every row passed (always with --quick).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DOIT = str(Path(sys.executable).parent / "doit")
RESULTS = ROOT / "benchmarks" / "results"
ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "release-bench"


@dataclass
class Row:
    name: str
    what: str
    measured: float
    limit: float
    detail: str
    figures: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.measured <= self.limit


def publish(work: Path, endpoint: str, engines: int, size: int) -> tuple[Path, Path, list[str]]:
    """Commit ``engines`` ONNX Runtime entries for this CPU to the bucket; (release, serving.yaml, keys)."""
    import s3fs
    import yaml
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from provisioning.host import HostCapabilities, installed_version, ORT_DISTRIBUTIONS, read_cpu_flags
    from provisioning.manifest import manifest_bytes
    from provisioning.release.format import (BackboneVariants, Compatibility, EntryRef, Release, TiedTo, Variant,
                                             sign_release)
    from provisioning.remote.config import KeySource, SigningKeyConfig
    from provisioning.remote.layout import inputs_digest
    from provisioning.remote.signing import EntrySigner, entry_message
    from provisioning.schema import EngineFilenameSchema, ParsedEngineName

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir(BUCKET)
    private = Ed25519PrivateKey.generate()
    (work / "fleet.pem").write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    (work / "fleet.pub").write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    signer = EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=work / "fleet.pem"), key_id="fleet"),
                         "bench")
    version = installed_version(ORT_DISTRIBUTIONS) or "1.23.2"
    key = HostCapabilities("onnxruntime", version, platform.machine(), read_cpu_flags()).cpu_key
    machine, isa = key.rsplit("-", 2)[0], key.rsplit("-", 2)[1]
    backbones, keys = [], []
    source = work / "engine.bin"
    for index in range(engines):
        model = f"m{index:03d}"
        name = EngineFilenameSchema.compose(ParsedEngineName(model, "fp32", "ort", version, key, "0a1b2c3d"))
        digest = hashlib.sha256()
        with open(source, "wb") as out:
            left = size
            while left:
                block = os.urandom(min(left, 8 << 20))
                digest.update(block)
                out.write(block)
                left -= len(block)
        sha = digest.hexdigest()
        inputs = {"onnx_sha256": hashlib.sha256(model.encode()).hexdigest(), "build_settings": {},
                  "host": {"backend": "onnxruntime", "host_key": key}, "backend": "onnxruntime",
                  "backend_version": version}
        ident = inputs_digest(inputs)
        manifest = manifest_bytes({"schema_version": 1, "model_name": model,
                                   "engine": {"file_name": name, "sha256": sha, "size": size}, "inputs": inputs,
                                   "build": {}})
        manifest_sha = hashlib.sha256(manifest).hexdigest()
        base = f"{key}/{name}/{ident}"
        fs.put_file(str(source), f"{BUCKET}/engines/{base}/engine/{sha}")
        fs.pipe_file(f"{BUCKET}/engines/{base}/manifest/{manifest_sha}", manifest)
        fs.pipe_file(f"{BUCKET}/engines/{base}/commit/fleet",
                     signer.sign(entry_message("default", key, name, ident, sha, size, manifest_sha)))
        keys.append(f"{BUCKET}/engines/{base}/engine/{sha}")
        variant = Variant(name, sha, size, model, key, "onnxruntime", version, TiedTo("cpu", machine=machine, isa=isa),
                          Compatibility(), manifest_sha, "0" * 64,
                          EntryRef(base, ident, f"engine/{sha}", f"manifest/{manifest_sha}", "commit/fleet"))
        backbones.append(BackboneVariants(model, inputs["onnx_sha256"], "0" * 64, (variant,)))
    source.unlink()
    release = work / "engines.release.json"
    release.write_bytes(sign_release(Release("2026-12-07T00:00:00Z", "default", f"s3://{BUCKET}/engines", None,
                                             tuple(backbones)), signer))
    serving = work / "serving.yaml"
    serving.write_text(yaml.safe_dump({"cache_dir": "cache", "allow_cpu_fallback": True, "remote": {
        "url": f"s3://{BUCKET}/engines", "endpoint_url": endpoint, "timeout_s": 60,
        "signing_key": {"algorithm": "ed25519", "id": "fleet", "public_key": {"file": str(work / "fleet.pub")}}}}))
    return release, serving, keys


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def drop(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def measure(work: Path, endpoint: str, release: Path, serving: Path, keys: list[str], repeat: int) -> list[Row]:
    env = {**os.environ, **ENV, "PYTHONPYCACHEPREFIX": str(work / "pycache")}
    for name in ("PROVISIONING_SERVING_CONFIG", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    cache, plain = work / "cache", work / "plain"
    pull = [DOIT, "engines-pull", str(release), "--serving-config", str(serving)]
    # Byte-compile what the children import once, untimed (see the module docstring).
    timed([*pull, "--dry-run"], env, work)
    timed([PYTHON, "-c", "import s3fs, fsspec.asyn, provisioning.release.pull, provisioning.remote.transfer"], env, work)
    get = [PYTHON, "-c", "import json, sys, s3fs\n"
           "fs = s3fs.S3FileSystem(endpoint_url=sys.argv[1], skip_instance_cache=True, use_listings_cache=False)\n"
           "keys = json.loads(sys.argv[3])\n"
           "fs.get(keys, [sys.argv[2] + '/' + str(i) for i in range(len(keys))])\n", endpoint, str(plain),
           json.dumps(keys)]
    pulls, gets = [], []
    for _ in range(repeat):
        drop(cache)
        pulls.append(timed(pull, env, work))
        drop(plain)
        plain.mkdir()
        gets.append(timed(get, env, work))
    drop(plain)
    files = sorted(str(p) for p in cache.iterdir() if p.name.endswith(".engine"))
    warm, ssl = [], []
    for _ in range(repeat):
        warm.append(timed(pull, env, work))
        ssl.append(timed(["openssl", "dgst", "-sha256", *files], env, work))
    total_mb = len(keys) and sum(os.path.getsize(f) for f in files) / 1e6
    return [
        Row("pull", f"`doit engines-pull`, {len(keys)} engines, {total_mb:.0f} MB from moto / plain parallel s3fs get",
            min(pulls) / min(gets), 1.10, f"pull {min(pulls):.2f} s, s3fs get {min(gets):.2f} s",
            {"pull_s": min(pulls), "get_s": min(gets), "pull_runs": pulls, "get_runs": gets}),
        Row("pull-warm", "`doit engines-pull`, every engine present, verify full / openssl dgst -sha256",
            min(warm) / min(ssl), 0.75, f"pull {min(warm):.2f} s, openssl {min(ssl):.2f} s",
            {"pull_s": min(warm), "openssl_s": min(ssl), "pull_runs": warm, "openssl_runs": ssl}),
    ]


def machine_slug() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1]
                break
    except OSError:
        pass
    words = "-".join(name.lower().split()[:2]) or "cpu"
    return f"{''.join(c for c in words if c.isalnum() or c == '-')}-{os.cpu_count()}-cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=20)
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 engines of 4 MB, 2 rounds: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.engines, args.mb, args.repeat = 4, 4.0, 2
    os.environ.update(ENV)  # moto's dummy credentials, for this process and the timed children
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = os.getloadavg()[0]
    sys.path.insert(0, str(ROOT))
    from tests.remote.conftest import MotoServer  # the tests' moto server on loopback

    server = MotoServer().start()
    endpoint = server.endpoint
    try:
        with tempfile.TemporaryDirectory(prefix="release-perf-") as tmp:
            work = Path(tmp)
            release, serving, keys = publish(work, endpoint, args.engines, int(args.mb * 1e6))
            rows = measure(work, endpoint, release, serving, keys, args.repeat)
    finally:
        server.stop()
    for row in rows:
        mark = "ok  " if row.passed else "FAIL"
        print(f"{mark} {row.name:<10} {row.measured:6.3f} (<= {row.limit})  {row.what}: {row.detail}")
    document = {"date": started, "machine": machine_slug(), "cores": os.cpu_count(), "load_start": load_start,
                "load_end": os.getloadavg()[0], "command": " ".join(["benchmarks/release_perf.py", *sys.argv[1:]]),
                "timing": f"best of {args.repeat}", "quick": args.quick,
                "rows": [{**asdict(r), "passed": r.passed} for r in rows]}
    folder = Path(tempfile.gettempdir()) if args.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{time.strftime('%Y-%m-%d-%H%M', time.gmtime())}-{machine_slug()}-release{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"figures: {out}")
    return 0 if args.quick or all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
