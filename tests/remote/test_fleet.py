"""Fleet simulation: 4 processes, separate caches, one host identity, one bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from provisioning import Sha256Sidecar
from provisioning.cache import read_events

from ..conftest import REPO
from .conftest import S3_ENV, make_host, remote_block, s3fs_client

HOSTS = 4


def test_each_engine_is_built_once_across_a_racing_fleet(tmp_path, corpus_dir, s3_server, bucket):
    # lease_s well above a renewal's worst delay on a loaded 2-core runner (expiry means "builder dead").
    block = remote_block(s3_server.endpoint, bucket, lease_s=10)
    hosts = [make_host(tmp_path, f"host{i}", corpus_dir, block) for i in range(HOSTS)]
    env = {**os.environ, **S3_ENV, "PYTHONPATH": str(REPO)}
    start_at = time.time() + 2.0  # every host is imported and ready before the race begins
    procs = [subprocess.Popen([sys.executable, "-m", "tests.remote.fleet_worker", str(h.config_path), str(start_at)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for h in hosts]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))

    built = {}
    for host, results in zip(hosts, outputs):
        for r in results:
            if r["outcome"] == "BUILT":
                built[r["model"]] = built.get(r["model"], 0) + 1
            else:
                assert r["outcome"] == "REUSED" and r["source"] == "remote", r
        events = [e for e in read_events(host.cache_dir) if e["outcome"] == "REUSED"]
        assert all(e["source"] == "remote" and e["fetch_bytes"] > 0 for e in events)
        for engine in host.cache_dir.glob("*.engine"):
            assert Sha256Sidecar.verify(engine)
    assert built == {"det": 1, "cls": 1, "emb": 1}, f"compiles across the fleet: {built}"
    for model in ("det", "cls", "emb"):
        assert len({r["sha256"] for results in outputs for r in results if r["model"] == model}) == 1
    leases = [p for p in s3fs_client(s3_server.endpoint).find(f"{bucket}/engines") if p.endswith("/lease")]
    assert leases == [], "every lease is released once its engine is uploaded"


class _FailingBackend:
    def compile_engine(self, spec, host, output):
        raise RuntimeError("the builder ran out of memory")


def test_a_failed_build_releases_its_lease_so_another_host_takes_over(tmp_path, corpus_dir, s3_server, bucket):
    import pytest

    from provisioning import EngineCompiler

    block = remote_block(s3_server.endpoint, bucket)  # lease_s 2
    failing = make_host(tmp_path, "failing", corpus_dir, block)
    _, remote, _ = failing.compiler()
    with pytest.raises(RuntimeError):
        failing.provision(EngineCompiler(_FailingBackend(), heartbeat_s=0, remote=remote))
    fs = s3fs_client(s3_server.endpoint)
    deadline = time.monotonic() + 5
    while any(p.endswith("/lease") for p in fs.find(f"{bucket}/engines")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(p.endswith("/lease") for p in fs.find(f"{bucket}/engines")), "the failed builder kept its lease"
    started = time.monotonic()
    summary = make_host(tmp_path, "next", corpus_dir, block).provision()
    assert summary.built == 3 and time.monotonic() - started < 5, "the next host waited on a dead lease"
