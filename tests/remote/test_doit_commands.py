"""``doit engines-status`` shows the remote column; ``doit engines-gc --remote`` plans and applies on the bucket."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from provisioning.remote.signing import entry_message

from .conftest import S3_ENV, make_host, remote_block, remote_entries

DOIT = str(Path(sys.executable).parent / "doit")


def doit(host, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("PROVISIONING_CONFIG",)}
    env.update(S3_ENV)
    return subprocess.run([DOIT, *args, "--config", str(host.config_path)], cwd=host.folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_status_shows_whether_the_remote_has_this_hosts_entry(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket)
    emb = remote_entries(s3_server.endpoint, bucket, make_host(tmp_path, "builder", corpus_dir, block).provision())["emb"]
    emb.rm(emb.commit_key())
    fresh = make_host(tmp_path, "fresh", corpus_dir, block)
    result = doit(fresh, "engines-status", "--json")
    assert result.returncode == 1, result.stderr  # nothing is in fresh's local cache yet
    document = json.loads(result.stdout)
    assert document["remote"] == f"s3://{bucket}/engines"
    remote = {row["model_name"]: (row["state"], row["remote"]) for row in document["backbones"]}
    assert remote == {"det": ("missing", "present"), "cls": ("missing", "present"), "emb": ("missing", "incomplete")}
    text = doit(fresh, "engines-status")
    lines = text.stdout.splitlines()  # a REMOTE column after QUALIFIED, under a "remote URL" line
    assert f"remote s3://{bucket}/engines" in lines and lines[lines.index(f"remote s3://{bucket}/engines") + 1].split()[4] == "REMOTE"
    assert {line.split()[0]: line.split()[4] for line in lines if line.split()[:1] in (["det"], ["cls"], ["emb"])} == {
        "det": "present", "cls": "present", "emb": "incomplete"}


def test_status_without_a_remote_block_has_no_remote_column(tmp_path, corpus_dir):
    host = make_host(tmp_path, "plain", corpus_dir, None)
    document = json.loads(doit(host, "engines-status", "--json").stdout)
    assert "remote" not in document and all("remote" not in row for row in document["backbones"])


def test_gc_remote_plans_then_deletes_superseded_entries_and_stale_hosts(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket, host_max_age_days=2 / 86400, corpus="vision")  # 2 s
    summary = make_host(tmp_path, "builder", corpus_dir, block).provision()
    entries = remote_entries(s3_server.endpoint, bucket, summary)
    fs, det = entries["det"].fs, entries["det"]
    # det as this corpus built it from an earlier ONNX: same name, other inputs digest, build.corpus "vision".
    old = det.base.rsplit("/", 1)[0] + "/" + "0" * 32
    old_manifest = json.loads(det.cat(det.manifest_key()))
    old_blob = json.dumps(old_manifest).encode()
    fs.pipe_file(f"{old}/manifest/{hashlib.sha256(old_blob).hexdigest()}", old_blob)
    fs.pipe_file(f"{old}/engine/{'1' * 64}", b"old engine")
    fs.pipe_file(f"{old}/commit/unsigned", entry_message(
        "default", det.host_key, det.name, "0" * 32, "1" * 64, 10, hashlib.sha256(old_blob).hexdigest())
        + b"signature none\n")
    foreign = det.base.rsplit("/", 1)[0] + "/" + "f" * 32  # another corpus's det: kept
    other_blob = json.dumps({**old_manifest, "build": {**old_manifest["build"], "corpus": "audio"}}).encode()
    fs.pipe_file(f"{foreign}/manifest/{hashlib.sha256(other_blob).hexdigest()}", other_blob)
    fs.pipe_file(f"{foreign}/commit/unsigned", entry_message(
        "default", det.host_key, det.name, "f" * 32, "2" * 64, 10, hashlib.sha256(other_blob).hexdigest())
        + b"signature none\n")
    fs.pipe_file(f"{bucket}/engines/x86_64-avx2-0ld0ff/{det.name}/{'0' * 32}/commit/unsigned", b"gone host")
    time.sleep(2.5)  # the other host is now older than host_max_age_days (our own host key never is)
    host = make_host(tmp_path, "ops", corpus_dir, block)
    plan = doit(host, "engines-gc", "--remote", "--json")
    assert plan.returncode == 0, plan.stderr
    document = json.loads(plan.stdout)
    reasons = {item["path"].split("/engines/", 1)[1]: item["reason"] for item in document["items"]}
    own_old = old.split("/engines/", 1)[1]
    assert set(reasons) == {own_old, "x86_64-avx2-0ld0ff"}, reasons
    assert "superseded" in reasons[own_old] and "not seen" in reasons["x86_64-avx2-0ld0ff"]
    assert any("names corpus 'audio'" in kept for kept in document["kept"]), document["kept"]
    assert fs.exists(f"{old}/commit/unsigned"), "a dry run deleted something"
    applied = doit(host, "engines-gc", "--remote", "--apply")
    assert applied.returncode == 0 and "freed" in applied.stdout, applied.stderr
    remaining = {p.split("/engines/", 1)[1] for p in fs.find(f"{bucket}/engines")}
    assert not any(own_old in p or p.startswith("x86_64-avx2-0ld0ff") for p in remaining)
    assert any(p.startswith(foreign.split("/engines/", 1)[1]) for p in remaining), "another corpus's entry went"
    assert all(e.commit_key().split("/engines/", 1)[1] in remaining for e in entries.values()), "a current entry went"


def test_gc_remote_without_remote_block_is_a_one_line_error(tmp_path, corpus_dir):
    result = doit(make_host(tmp_path, "plain", corpus_dir, None), "engines-gc", "--remote")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no enabled remote" in result.stderr
