"""``doit engines-status`` shows the remote column; ``doit engines-gc --remote`` plans and applies on the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from provisioning.schema import EngineFilenameSchema

from .conftest import S3_ENV, make_host, remote_block, s3fs_client

DOIT = str(Path(sys.executable).parent / "doit")


def doit(host, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("PROVISIONING_CONFIG",)}
    env.update(S3_ENV)
    return subprocess.run([DOIT, *args, "--config", str(host.config_path)], cwd=host.folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_status_shows_whether_the_remote_has_this_hosts_entry(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket)
    make_host(tmp_path, "builder", corpus_dir, block, backbones=None).provision()
    s3fs_client(s3_server.endpoint).rm_file(next(
        p for p in s3fs_client(s3_server.endpoint).find(f"{bucket}/engines") if "/emb." in p and p.endswith("/sha256")))
    fresh = make_host(tmp_path, "fresh", corpus_dir, block)
    result = doit(fresh, "engines-status", "--json")
    assert result.returncode == 1, result.stderr  # nothing is in fresh's local cache yet
    document = json.loads(result.stdout)
    assert document["remote"] == f"s3://{bucket}/engines"
    remote = {row["model_name"]: (row["state"], row["remote"]) for row in document["backbones"]}
    assert remote == {"det": ("missing", "present"), "cls": ("missing", "present"), "emb": ("missing", "incomplete")}
    text = doit(fresh, "engines-status")
    assert f"remote s3://{bucket}/engines: det present, cls present, emb incomplete" in text.stdout


def test_status_without_a_remote_block_has_no_remote_column(tmp_path, corpus_dir):
    host = make_host(tmp_path, "plain", corpus_dir, None)
    document = json.loads(doit(host, "engines-status", "--json").stdout)
    assert "remote" not in document and all("remote" not in row for row in document["backbones"])


def test_gc_remote_plans_then_deletes_superseded_entries_and_stale_hosts(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket, host_max_age_days=2 / 86400)  # 2 s
    summary = make_host(tmp_path, "builder", corpus_dir, block).provision()
    fs = s3fs_client(s3_server.endpoint)
    det = summary.by_name()["det"]
    host_key = det.entry.inputs["host"]["host_key"]
    parsed = EngineFilenameSchema.parse(det.entry.file_name)
    old_name = EngineFilenameSchema.compose(parsed.__class__(**{**parsed.__dict__, "settings_digest": "00000000"}))
    for obj in ("engine", "manifest.json", "sha256"):  # det as an older build had left it
        fs.pipe_file(f"{bucket}/engines/{host_key}/{old_name}/{obj}", b"old " + obj.encode())
    fs.pipe_file(f"{bucket}/engines/x86_64-avx2-0ld0ff/{old_name}/sha256", b"gone host")
    time.sleep(2.5)  # the other host is now older than host_max_age_days (our own host key never is)
    host = make_host(tmp_path, "ops", corpus_dir, block)
    plan = doit(host, "engines-gc", "--remote", "--json")
    assert plan.returncode == 0, plan.stderr
    document = json.loads(plan.stdout)
    reasons = {item["path"].split("/engines/", 1)[1]: item["reason"] for item in document["items"]}
    assert set(reasons) == {f"{host_key}/{old_name}", "x86_64-avx2-0ld0ff"}, reasons
    assert "superseded" in reasons[f"{host_key}/{old_name}"] and "not seen" in reasons["x86_64-avx2-0ld0ff"]
    assert fs.exists(f"{bucket}/engines/{host_key}/{old_name}/engine"), "a dry run deleted something"
    applied = doit(host, "engines-gc", "--remote", "--apply")
    assert applied.returncode == 0 and "freed" in applied.stdout, applied.stderr
    remaining = {p.split("/engines/", 1)[1] for p in fs.find(f"{bucket}/engines")}
    assert not any(old_name in p or p.startswith("x86_64-avx2-0ld0ff") for p in remaining)
    assert all(f"{host_key}/{r.entry.file_name}/sha256" in remaining for r in summary), "a current entry was deleted"


def test_gc_remote_without_remote_block_is_a_one_line_error(tmp_path, corpus_dir):
    result = doit(make_host(tmp_path, "plain", corpus_dir, None), "engines-gc", "--remote")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no enabled remote" in result.stderr
