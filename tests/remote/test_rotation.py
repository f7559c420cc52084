"""Named trusted keys and rotation, against moto's S3 server: the steps the README gives, run in order.

1. add the new key to every verifier's ``trusted_keys``;
2. switch the builders to the new key (the old one stays trusted);
3. remove the old key.

Throughout, writable hosts on either key never discard or overwrite the other key's
valid entries, and after step 3 a revoked key's entries are neither fetched nor kept
unnoticed: ``doit engines-status --verify-signatures`` names the local engines it vouched for.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioning.cache import read_events

from .conftest import make_ed25519_keys, make_host, remote_block, remote_entries, warnings_of


@pytest.fixture
def keys(tmp_path):
    return make_ed25519_keys(tmp_path / "keys", "old", "fleet-2026-06"), make_ed25519_keys(
        tmp_path / "keys", "new", "fleet-2026-12")


def _block(s3_server, bucket, signing, trusted=(), **extra):
    return remote_block(s3_server.endpoint, bucket, signing_key=signing, trusted_keys=list(trusted), **extra)


def test_rotation_step_by_step_never_rebuilds_or_overwrites(tmp_path, corpus_dir, s3_server, bucket, keys, caplog):
    old, new = keys
    # Before: builders sign with old, readers trust old.
    built = make_host(tmp_path, "builder0", corpus_dir, _block(s3_server, bucket, old.builder)).provision()
    entries = remote_entries(s3_server.endpoint, bucket, built)
    old_records = {m: e.record("fleet-2026-06") for m, e in entries.items()}
    # Step 1: readers add the new key; they still fetch the old key's entries.
    reader_block = _block(s3_server, bucket, old.reader, [new.reader], mode="read-only")
    assert [r.source for r in make_host(tmp_path, "reader1", corpus_dir, reader_block).provision()] == ["remote"] * 3
    # Step 2: a builder switches to the new key and keeps trusting the old one: it reuses, uploads nothing.
    switched = _block(s3_server, bucket, new.builder, [old.reader])
    summary = make_host(tmp_path, "builder1", corpus_dir, switched).provision()
    assert [r.source for r in summary] == ["remote"] * 3
    assert all(e.commit_ids() == ["fleet-2026-06"] for e in entries.values())
    # A builder still on the old key that never heard of the new one, and one on the new key
    # that already dropped the old one, both writable: each builds what it cannot verify and
    # commits under its own key id, beside the other's record, which stays byte for byte.
    with caplog.at_level(logging.WARNING):
        fresh = make_host(tmp_path, "builder2", corpus_dir, _block(s3_server, bucket, new.builder)).provision()
    assert fresh.built == 3
    lines = warnings_of(caplog)
    assert len(lines) == 3 and all("does not trust ('fleet-2026-06')" in line for line in lines), lines
    for model, entry in entries.items():
        assert entry.commit_ids() == ["fleet-2026-06", "fleet-2026-12"]
        assert entry.record("fleet-2026-06") == old_records[model]
    again = make_host(tmp_path, "builder3", corpus_dir, _block(s3_server, bucket, old.builder)).provision()
    assert [r.source for r in again] == ["remote"] * 3  # its own key's record is there and verifies
    # Step 3: the old key is removed from every verifier: only new-key entries are used.
    final = make_host(tmp_path, "reader2", corpus_dir, _block(s3_server, bucket, new.reader, mode="read-only"))
    summary = final.provision()
    assert [r.source for r in summary] == ["remote"] * 3
    events = [e for e in final.events() if e.get("outcome") == "REUSED"]
    assert {e.get("fetch_key_id") for e in events} == {"fleet-2026-12"}


def test_a_trusted_key_vouches_only_for_its_host_key_prefixes(tmp_path, corpus_dir, s3_server, bucket, keys, caplog):
    old, new = keys
    make_host(tmp_path, "builder", corpus_dir, _block(s3_server, bucket, old.builder)).provision()
    scoped = {**old.reader, "host_key_prefixes": ["sm"]}  # a GPU builders' key: no say over CPU entries
    reader = make_host(tmp_path, "reader", corpus_dir, _block(s3_server, bucket, new.reader, [scoped],
                                                              mode="read-only"))
    with caplog.at_level(logging.WARNING):
        summary = reader.provision()
    assert summary.built == 3
    assert all("does not trust ('fleet-2026-06')" in line for line in warnings_of(caplog))
    widened = {**old.reader, "host_key_prefixes": [summary.by_name()["det"].entry.inputs["host"]["host_key"][:3]]}
    again = make_host(tmp_path, "reader2", corpus_dir, _block(s3_server, bucket, new.reader, [widened],
                                                              mode="read-only"))
    assert [r.source for r in again.provision()] == ["remote"] * 3


def test_a_fetched_engine_keeps_its_record_and_a_revoked_key_is_found(tmp_path, corpus_dir, s3_server, bucket, keys):
    old, new = keys
    make_host(tmp_path, "builder", corpus_dir, _block(s3_server, bucket, old.builder)).provision()
    host = make_host(tmp_path, "edge", corpus_dir, _block(s3_server, bucket, old.reader, mode="read-only"))
    summary = host.provision()
    for result in summary:
        record = result.entry.path.with_name(result.entry.file_name + ".commit").read_bytes()
        assert b"signature ed25519 fleet-2026-06 " in record
    fetched = [e for e in read_events(host.cache_dir) if e.get("outcome") == "REUSED"]
    assert [e["fetch_key_id"] for e in fetched] == ["fleet-2026-06"] * 3
    ok = _verify_signatures(host)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [r["state"] for r in json.loads(ok.stdout)["signatures"]] == ["signed"] * 3
    # The old key is revoked: only the new one is trusted now.
    config = yaml.safe_load(host.config_path.read_text())
    config["remote"]["signing_key"] = new.reader
    host.config_path.write_text(yaml.safe_dump(config))
    revoked = _verify_signatures(host)
    assert revoked.returncode == 1
    rows = json.loads(revoked.stdout)["signatures"]
    assert [r["state"] for r in rows] == ["rejected"] * 3
    assert all("'fleet-2026-06', which this host does not trust" in r["detail"] for r in rows)
    text = _verify_signatures(host, as_json=False)
    assert text.returncode == 1 and "REJECTED" in text.stdout and "Traceback" not in text.stderr


def _verify_signatures(host, as_json=True):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [str(Path(sys.executable).parent / "doit"), "engines-status", "--verify-signatures",
               "--config", str(host.config_path)] + (["--json"] if as_json else [])
    return subprocess.run(command, capture_output=True, text=True, cwd=host.folder, env=env, timeout=120)
