"""Attacks on the bucket, performed for real against moto's S3 server over HTTP.

Each test is an attacker with write access to the bucket (and in some, the HMAC key).
Every one asserts the same four things: nothing unverified is published locally, no file
outside the hosts' caches changes, the run ends within its bounds, and the next writable
host repairs the entry (a third host fetches everything from the remote).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time

import pytest

from provisioning.manifest import manifest_bytes
from provisioning.remote import EntrySigner, SigningKeyConfig, parse_remote_config
from provisioning.remote.admin import plan_remote_gc
from provisioning.remote.config import KeySource
from provisioning.remote.signing import entry_message, unsigned_record
from provisioning.remote.store import ConditionalWriteUnsupported, RemoteStore

from .conftest import forged_record, make_host, remote_block, remote_entries, warnings_of
from .test_faults import assert_cache_clean

HMAC_KEY = base64.b16encode(b"k" * 32).decode()


def snapshot(root, skip=()):
    """sha256 of every file under ``root`` except under the ``skip`` folders."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not any(s in p.parents for s in skip)}


def signed_block(endpoint, bucket, monkeypatch, **extra):
    monkeypatch.setenv("ENGINE_CACHE_KEY", HMAC_KEY)
    return remote_block(endpoint, bucket, signing_key={"env": "ENGINE_CACHE_KEY"}, **extra)


def hmac_signer():
    return EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(env="ENGINE_CACHE_KEY")), "test")


def plant_engine(entry, evil: bytes, key_id=None, sign=None, namespace="default"):
    """Write ``evil`` as a content-addressed engine with a matching manifest; return the new record's body."""
    sha = hashlib.sha256(evil).hexdigest()
    manifest = json.loads(entry.cat(entry.manifest_key(key_id)))
    manifest["engine"].update(sha256=sha, size=len(evil))
    blob = manifest_bytes(manifest)
    msha = hashlib.sha256(blob).hexdigest()
    entry.put(f"{entry.base}/engine/{sha}", evil)
    entry.put(f"{entry.base}/manifest/{msha}", blob)
    body = entry_message(namespace, entry.host_key, entry.name, entry.digest, sha, len(evil), msha)
    return body, sha


def provision_timed(host, compiler=None, limit_s=60.0):
    """Provision in a thread: a run held past ``limit_s`` fails the test instead of hanging it."""
    box = {}
    started = time.monotonic()
    worker = threading.Thread(target=lambda: box.setdefault("summary", host.provision(compiler)), daemon=True)
    worker.start()
    worker.join(limit_s)
    assert not worker.is_alive(), f"the run was still going after {limit_s} s"
    assert "summary" in box, "the run failed (see the log)"
    return box["summary"], time.monotonic() - started


def assert_repaired(tmp_path, corpus_dir, block, name="c"):
    """The next host reuses every entry from the remote: the bad ones were replaced."""
    summary = make_host(tmp_path, name, corpus_dir, block).provision()
    assert [r.source for r in summary] == ["remote"] * 3


def test_an_unsigned_record_does_not_bypass_a_configured_key(tmp_path, corpus_dir, s3_server, bucket, monkeypatch,
                                                             caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)  # require_signature not written: on
    built = make_host(tmp_path, "a", corpus_dir, block).provision()
    found = remote_entries(s3_server.endpoint, bucket, built)
    evil = b"\x7fELF not the engine you built " * 64
    det, cls = found["det"], found["cls"]
    body, sha = plant_engine(det, evil)
    det.put(det.commit_key(), unsigned_record(body))  # the whole attack on det: no key needed
    body, _ = plant_engine(cls, evil)
    [cls_id] = cls.commit_ids()
    cls.rm(cls.commit_key())  # on cls: delete the signed record, leave an unsigned one beside it
    cls.put(cls.commit_key("unsigned"), unsigned_record(body))
    before = snapshot(tmp_path, skip=[tmp_path / "b"])
    b = make_host(tmp_path, "b", corpus_dir, block)
    with caplog.at_level(logging.WARNING):
        summary, elapsed = provision_timed(b)
    assert summary.by_name()["det"].source == "local" and summary.by_name()["cls"].source == "local"
    assert summary.by_name()["emb"].source == "remote" and summary.built == 2
    assert not any(evil in p.read_bytes() for p in b.cache_dir.rglob("*") if p.is_file())
    assert_cache_clean(b, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 2, lines
    assert "discarded" in lines[0] and "entry is not signed" in lines[0]
    assert "does not trust ('unsigned')" in lines[1] and "cls" in lines[1]
    assert snapshot(tmp_path, skip=[tmp_path / "b"]) == before and elapsed < 20
    assert cls.commit_ids() == sorted([cls_id, "unsigned"])  # b wrote its own signed record beside it
    assert_repaired(tmp_path, corpus_dir, block)


def test_a_forged_signature_is_refused_with_hmac_and_ed25519(tmp_path, corpus_dir, s3_server, bucket, monkeypatch,
                                                             caplog, ed25519_keys):
    for algorithm, block in (("hmac-sha256", signed_block(s3_server.endpoint, bucket, monkeypatch)),
                             ("ed25519", remote_block(s3_server.endpoint, bucket, signing_key=ed25519_keys.builder,
                                                      namespace="ed"))):
        prefix = algorithm.split("-")[0]
        block["url"] = f"s3://{bucket}/{prefix}"
        built = make_host(tmp_path, f"a-{algorithm}", corpus_dir, block).provision()
        det = remote_entries(s3_server.endpoint, bucket, built, prefix=prefix)["det"]
        [key_id] = det.commit_ids()
        body, _ = plant_engine(det, b"evil engine", namespace=block.get("namespace", "default"))
        det.put(det.commit_key(), forged_record(body, key_id, raw=b"\x01" * (32 if "hmac" in algorithm else 64),
                                                algorithm=algorithm))
        caplog.clear()
        before = snapshot(tmp_path, skip=[tmp_path / f"b-{algorithm}"])
        b = make_host(tmp_path, f"b-{algorithm}", corpus_dir, block)
        with caplog.at_level(logging.WARNING):
            summary, elapsed = provision_timed(b)
        assert summary.by_name()["det"].source == "local" and summary.built == 1 and elapsed < 20
        assert_cache_clean(b, summary)
        assert not any(b"evil engine" in p.read_bytes() for p in b.cache_dir.rglob("*") if p.is_file())
        assert snapshot(tmp_path, skip=[tmp_path / f"b-{algorithm}"]) == before
        lines = warnings_of(caplog)
        assert len(lines) == 1 and f"signature by key '{key_id}' does not match the entry" in lines[0], lines
        assert_repaired(tmp_path, corpus_dir, block, name=f"c-{algorithm}")


def test_a_record_moved_to_another_entry_or_namespace_does_not_verify(tmp_path, corpus_dir, s3_server, bucket,
                                                                      monkeypatch, caplog):
    staging = signed_block(s3_server.endpoint, bucket, monkeypatch, namespace="staging")
    staging["url"] = f"s3://{bucket}/staging"
    built = make_host(tmp_path, "stage", corpus_dir, staging).provision()
    prod = signed_block(s3_server.endpoint, bucket, monkeypatch, namespace="prod")
    prod["url"] = f"s3://{bucket}/prod"
    fs = remote_entries(s3_server.endpoint, bucket, built, prefix="staging")["det"].fs
    fs.copy(f"{bucket}/staging", f"{bucket}/prod", recursive=True)  # staging entries pushed into prod
    moved = remote_entries(s3_server.endpoint, bucket, built, prefix="prod")
    det, cls = moved["det"], moved["cls"]
    fs.pipe_file(cls.commit_key(), det.record())  # det's valid record placed as cls's
    before = snapshot(tmp_path, skip=[tmp_path / "prod"])
    host = make_host(tmp_path, "prod", corpus_dir, prod)
    with caplog.at_level(logging.WARNING):
        summary, elapsed = provision_timed(host)
    assert summary.built == 3 and elapsed < 20
    assert_cache_clean(host, summary)
    assert snapshot(tmp_path, skip=[tmp_path / "prod"]) == before
    lines = warnings_of(caplog)
    assert len(lines) == 3, lines
    assert "belongs to namespace 'staging', this host's is 'prod'" in lines[0]
    assert "names another entry" in lines[1]
    assert_repaired(tmp_path, corpus_dir, prod)


def test_parts_are_checked_against_the_record_before_they_are_parsed(tmp_path, corpus_dir, s3_server, bucket,
                                                                     monkeypatch, caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    found = remote_entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    deep = b"[" * 200_000 + b"]" * 200_000  # RecursionError in json, were it ever parsed
    found["det"].put(found["det"].manifest_key(), deep)  # replaced under the name the record vouches for
    emb = found["emb"]
    body, _ = plant_engine(emb, b"x")  # a key holder signs a manifest nested too deeply
    deep_sha = hashlib.sha256(deep).hexdigest()
    emb.put(f"{emb.base}/manifest/{deep_sha}", deep)
    fields = emb.fields()
    body = entry_message("default", emb.host_key, emb.name, emb.digest, fields.engine_sha256, fields.size, deep_sha)
    emb.put(emb.commit_key(), hmac_signer().sign(body))
    b = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = b.compiler()
    with caplog.at_level(logging.WARNING):
        summary, elapsed = provision_timed(b, compiler)
    assert summary.built == 2 and remote.disabled_reason is None and elapsed < 20
    lines = warnings_of(caplog)
    assert len(lines) == 2 and "manifest part does not match its commit record" in lines[0], lines
    assert "manifest is nested too deeply" in lines[1]
    assert_cache_clean(b, summary)
    assert_repaired(tmp_path, corpus_dir, block)


def test_malformed_objects_condemn_one_entry_not_the_remote(tmp_path, corpus_dir, s3_server, bucket, monkeypatch,
                                                            caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    found = remote_entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    det, cls, emb = found["det"], found["cls"], found["emb"]
    det.put(det.commit_key(), b"0" * 5000)  # over the 4 KiB limit
    cls.put(cls.commit_key(), cls.record().replace(b"signature hmac", b"signature \x1b[2Khmac"))
    emb.put(emb.manifest_key(), b"{" + b" " * (2 << 20) + b"}")  # over the 1 MiB manifest limit
    before = snapshot(tmp_path, skip=[tmp_path / "b"])
    b = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = b.compiler()
    with caplog.at_level(logging.WARNING):
        summary, elapsed = provision_timed(b, compiler)
    assert summary.built == 3 and remote.disabled_reason is None
    assert_cache_clean(b, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 3 and all("discarded" in line for line in lines), lines
    assert "larger than 4096 bytes" in lines[0]
    assert "signature line is malformed" in lines[1]
    assert "manifest part larger than" in lines[2]
    assert snapshot(tmp_path, skip=[tmp_path / "b"]) == before and elapsed < 20
    assert_repaired(tmp_path, corpus_dir, block)


def test_upload_race_loser_never_overwrites_the_winners_committed_entry(tmp_path, corpus_dir, s3_server, bucket,
                                                                        monkeypatch):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    winner = make_host(tmp_path, "winner", corpus_dir, block).provision()
    committed = {m: e.objects() for m, e in remote_entries(s3_server.endpoint, bucket, winner).items()}
    # The loser checked for a record before the winner committed, then built a different engine.
    loser = make_host(tmp_path, "loser", corpus_dir, block)
    compiler, remote, _ = loser.compiler()
    remote._make_room_for_commit = lambda paths, key: True
    remote.fetch = lambda *args: None
    summary = loser.provision(compiler)
    for result in summary:
        result.entry.path.write_bytes(result.entry.path.read_bytes() + b"loser's bytes")  # other bytes, other name
        remote.publish(type(result.entry)(result.model_name, result.entry.path,
                                          hashlib.sha256(result.entry.path.read_bytes()).hexdigest(),
                                          result.entry.path.stat().st_size, result.entry.inputs,
                                          result.entry.manifest))
    after = remote_entries(s3_server.endpoint, bucket, winner)
    for model, objects in committed.items():
        now = after[model].objects()
        assert {k: v for k, v in now.items() if k in objects} == objects, f"{model}: a committed part changed"
        assert after[model].record() == objects[after[model].commit_key()]
    assert_repaired(tmp_path, corpus_dir, block)


def test_two_corpora_with_a_same_named_model_keep_their_own_entries(tmp_path, corpus_dir, s3_server, bucket,
                                                                    monkeypatch):
    import shutil

    other = tmp_path / "other-corpus"
    shutil.copytree(corpus_dir, other)
    from tests.conftest import DEFAULT_BACKBONES

    det_spec = [b for b in DEFAULT_BACKBONES if b["model_name"] == "det"]
    source = other / det_spec[0]["onnx"]
    shutil.copy(corpus_dir / [b for b in DEFAULT_BACKBONES if b["model_name"] == "cls"][0]["onnx"], source)
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    x = make_host(tmp_path, "x", corpus_dir, {**block, "corpus": "vision"}, backbones=det_spec).provision()
    y = make_host(tmp_path, "y", other, {**block, "corpus": "audio"}, backbones=det_spec).provision()
    assert x.by_name()["det"].entry.file_name == y.by_name()["det"].entry.file_name  # same name, other ONNX
    for name, corpus, folder, result in (("x2", "vision", corpus_dir, x), ("y2", "audio", other, y)):
        again = make_host(tmp_path, name, folder, {**block, "corpus": corpus}, backbones=det_spec).provision()
        assert again.by_name()["det"].source == "remote"
        assert again.by_name()["det"].entry.sha256 == result.by_name()["det"].entry.sha256
    host = make_host(tmp_path, "gc", corpus_dir, {**block, "corpus": "vision"}, backbones=det_spec)
    store = RemoteStore.open(parse_remote_config({**block, "corpus": "vision"}, host.config_path))
    entry = remote_entries(s3_server.endpoint, bucket, x)["det"]
    plan = plan_remote_gc(store, entry.host_key, [(entry.name, entry.digest)], host_max_age_s=1e9, timeout_s=3,
                          corpus="vision", now=time.time() + 7200)
    assert plan.items == ()  # the audio corpus's det is not "superseded"
    assert len(plan.kept) == 1 and "names corpus 'audio', not 'vision'" in plan.kept[0]


def test_forged_lease_expiries_cost_one_lease_at_most(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket)  # lease_s 2, wait_s default
    found = remote_entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    for model, document in {"det": b'{"owner": "x", "expires": 1e300}', "cls": b'{"owner": "x", "expires": Infinity}',
                            "emb": b'{"owner": "x", "expires": NaN}'}.items():
        found[model].rm(found[model].commit_key())
        found[model].put(found[model].lease_key, document)
    b = make_host(tmp_path, "b", corpus_dir, block)
    summary, elapsed = provision_timed(b, limit_s=15)
    assert summary.built == 3, f"forged leases held the run for {elapsed:.1f} s"
    assert_cache_clean(b, summary)
    assert warnings_of(caplog) == []
    assert_repaired(tmp_path, corpus_dir, block)


def test_malformed_leases_are_taken_over(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket)
    found = remote_entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    nested = b"[" * 2000 + b"]" * 2000  # under 4 KiB, deeper than the recursion limit
    for model, lease in (("det", b"{" + b" " * 5000 + b"}"), ("cls", b'{"expires": ' + nested + b"}")):
        found[model].rm(found[model].commit_key())
        found[model].put(found[model].lease_key, lease)
    b = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = b.compiler()
    summary, elapsed = provision_timed(b, compiler)
    assert summary.built == 2 and remote.disabled_reason is None and elapsed < 20
    assert warnings_of(caplog) == []
    assert_repaired(tmp_path, corpus_dir, block)


def test_an_expired_lease_is_taken_over_only_if_unchanged(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket)
    host = make_host(tmp_path, "a", corpus_dir, block)
    _, remote, _ = host.compiler()
    fs = remote_entries(s3_server.endpoint, bucket, host.provision())["det"].fs
    path = f"{bucket}/engines/some/lease"
    fs.pipe_file(path, b'{"owner": "first", "expires": 0}')
    _, _, stale_etag = remote.store.read_small_tagged(path, 4096, 3)
    fs.pipe_file(path, b'{"owner": "second waiter took it over", "expires": 0}')  # another waiter, in between
    remote._take_over(path, stale_etag)
    assert fs.cat_file(path).startswith(b'{"owner": "second')  # If-Match failed: its lease stays
    _, _, etag = remote.store.read_small_tagged(path, 4096, 3)
    remote._take_over(path, etag)
    assert not fs.exists(path)


def test_a_forged_lease_cannot_pin_an_entry_against_gc(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket)
    host = make_host(tmp_path, "a", corpus_dir, block)
    det = remote_entries(s3_server.endpoint, bucket, host.provision())["det"]
    abandoned = f"{det.base.rsplit('/', 1)[0]}/{'0' * 32}"
    det.fs.pipe_file(abandoned + "/engine/" + "1" * 64, b"half an upload")
    det.fs.pipe_file(abandoned + "/lease", b'{"owner": "x", "expires": 1e300}')
    store = RemoteStore.open(parse_remote_config(block, host.config_path))
    plan = plan_remote_gc(store, det.host_key, [(det.name, det.digest)], host_max_age_s=1e9, timeout_s=3,
                          now=time.time() + 7200, lease_s=2)
    assert [i.path for i in plan.items] == [abandoned] and plan.kept == ()
    assert "abandoned upload" in plan.items[0].reason


def test_a_renewed_hostile_lease_costs_one_wait_budget_per_run(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket, wait_s=1.5)
    a_summary, baseline = provision_timed(make_host(tmp_path, "a", corpus_dir, block))
    found = remote_entries(s3_server.endpoint, bucket, a_summary)
    for entry in found.values():
        entry.rm(entry.commit_key())
    stop = threading.Event()

    def keep_leasing():  # a live attacker (or a stuck builder) renewing every lease forever
        from .conftest import s3fs_client

        fs = s3fs_client(s3_server.endpoint)
        while not stop.is_set():
            for entry in found.values():
                fs.pipe_file(entry.lease_key, json.dumps({"owner": "x", "expires": time.time() + 2}).encode())
            stop.wait(0.3)

    attacker = threading.Thread(target=keep_leasing, daemon=True)
    attacker.start()
    try:
        with caplog.at_level(logging.WARNING):
            summary, elapsed = provision_timed(make_host(tmp_path, "b", corpus_dir, block))
    finally:
        stop.set()
        attacker.join(10)
    assert summary.built == 3
    assert elapsed - baseline < 1.5 + 2.5, f"waited {elapsed - baseline:.1f} s with wait_s 1.5 for the whole run"
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "waited 2 s in total" in lines[0] and "remote.wait_s" in lines[0], lines
    for entry in found.values():
        entry.rm(entry.lease_key)
    assert_repaired(tmp_path, corpus_dir, block)


def test_a_store_without_conditional_writes_is_detected_once(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket)
    host = make_host(tmp_path, "a", corpus_dir, block)
    compiler, remote, _ = host.compiler()
    calls = []

    def refuse(*args):
        calls.append(args[0].rsplit("/", 1)[1])
        raise ConditionalWriteUnsupported("If-None-Match: NotImplemented")

    remote.store.create_exclusive = refuse
    remote.store.put_file_exclusive = refuse
    with caplog.at_level(logging.WARNING):
        summary = host.provision(compiler)
    assert summary.built == 3 and calls == ["lease"], calls  # found out once, never retried per engine
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "refuses conditional writes" in lines[0]
    assert_repaired(tmp_path, corpus_dir, block)


def test_remote_strings_cannot_forge_log_lines(tmp_path, corpus_dir, s3_server, bucket, monkeypatch, caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    found = remote_entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    owner = "x\nBUILT det (fake)\r\x1b[2K" + "A" * 500
    found["det"].rm(found["det"].commit_key())
    found["det"].put(found["det"].lease_key, json.dumps({"owner": owner, "expires": time.time() + 1}).encode())
    cls = found["cls"]
    own = cls.commit_key()
    cls.put(f"{cls.base}/commit/k\rBUILT cls (fake)\x1b[1A", b"x")  # a commit name this host does not trust
    cls.rm(own)
    with caplog.at_level(logging.INFO, logger="provisioning"):
        summary, elapsed = provision_timed(make_host(tmp_path, "b", corpus_dir, block))
    assert summary.built == 2 and elapsed < 20
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("provisioning")]
    assert not [m for m in messages if any(c in m for c in "\n\r\x1b")], "a remote string reached the log raw"
    assert max(len(m) for m in messages) < 1000
    text = "\n".join(messages)
    assert "'x\\nBUILT det (fake)\\r\\x1b[2K" in text and "'k\\rBUILT cls (fake)\\x1b[1A'" in text


def test_uploaded_manifests_carry_no_paths_or_pids(tmp_path, corpus_dir, s3_server, bucket, monkeypatch):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    built = make_host(tmp_path, "a", corpus_dir, block).provision()
    for model, entry in remote_entries(s3_server.endpoint, bucket, built).items():
        blob = entry.cat(entry.manifest_key())
        build = json.loads(blob)["build"]
        assert "pid" not in build and build["onnx_path"] == f"{model}.onnx", build
        assert str(tmp_path).encode() not in blob
    b = make_host(tmp_path, "b", corpus_dir, block)
    summary = b.provision()
    assert [r.source for r in summary] == ["remote"] * 3  # the record covers the uploaded bytes
    assert_cache_clean(b, summary)
    for result in summary:
        entry = remote_entries(s3_server.endpoint, bucket, summary)[result.model_name]
        local_blob = result.entry.path.with_name(result.entry.file_name + ".manifest.json").read_bytes()
        assert local_blob == entry.cat(entry.manifest_key())
        assert result.entry.path.with_name(result.entry.file_name + ".commit").read_bytes() == entry.record()


def test_share_build_details_uploads_the_manifest_as_built(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket, share_build_details=True)
    built = make_host(tmp_path, "a", corpus_dir, block).provision()
    det = remote_entries(s3_server.endpoint, bucket, built)["det"]
    build = json.loads(det.cat(det.manifest_key()))["build"]
    assert build["onnx_path"] == str(corpus_dir / "models" / "det.onnx") and isinstance(build["pid"], int)


def test_a_manifest_for_other_inputs_is_refused_before_the_engine_is_downloaded(tmp_path, corpus_dir, s3_server,
                                                                                bucket, monkeypatch, caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    det = remote_entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())["det"]
    manifest = json.loads(det.cat(det.manifest_key()))
    manifest["inputs"]["onnx_sha256"] = "0" * 64  # built from another ONNX, signed by a key holder
    blob = manifest_bytes(manifest)
    msha = hashlib.sha256(blob).hexdigest()
    det.put(f"{det.base}/manifest/{msha}", blob)
    fields = det.fields()
    det.put(det.commit_key(), hmac_signer().sign(entry_message(
        "default", det.host_key, det.name, det.digest, fields.engine_sha256, fields.size, msha)))
    b = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = b.compiler()
    download, fetched = remote.store.download, []
    remote.store.download = lambda path, *args, **kw: (fetched.append(path), download(path, *args, **kw))[1]
    with caplog.at_level(logging.WARNING):
        summary = b.provision(compiler)
    assert summary.by_name()["det"].source == "local" and summary.built == 1
    assert not any(det.name in path for path in fetched), "the engine was downloaded before the manifest check"
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "manifest does not match this build: ONNX bytes changed" in lines[0], lines
    assert_repaired(tmp_path, corpus_dir, block)


def test_an_engine_over_max_engine_bytes_is_discarded_unread(tmp_path, corpus_dir, s3_server, bucket, monkeypatch,
                                                             caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    built = make_host(tmp_path, "a", corpus_dir, block).provision()
    limit = min(r.entry.size for r in built) - 1  # every entry claims more than this host accepts
    b = make_host(tmp_path, "b", corpus_dir, {**block, "max_engine_bytes": limit})
    compiler, remote, _ = b.compiler()
    remote.store.download = lambda *args, **kw: pytest.fail("an oversized engine was downloaded")
    with caplog.at_level(logging.WARNING):
        summary = b.provision(compiler)
    assert summary.built == 3
    lines = warnings_of(caplog)
    assert len(lines) == 3 and all(f"over remote.max_engine_bytes {limit}" in line for line in lines), lines


def test_a_download_that_would_not_fit_on_the_disk_is_not_started(tmp_path, corpus_dir, s3_server, bucket,
                                                                  monkeypatch, caplog):
    import shutil as shutil_module
    from collections import namedtuple

    from provisioning.remote import fetch as remote_fetch

    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    make_host(tmp_path, "a", corpus_dir, block).provision()
    b = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = b.compiler()
    usage = namedtuple("usage", "total used free")
    # The one stand-in: a nearly full file system, as statvfs would report it.
    monkeypatch.setattr(remote_fetch.shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - 4096, 4096))
    remote.store.download = lambda *args, **kw: pytest.fail("a download was started without the space for it")
    with caplog.at_level(logging.WARNING):
        summary = b.provision(compiler)
    monkeypatch.setattr(remote_fetch.shutil, "disk_usage", shutil_module.disk_usage)
    assert summary.built == 3 and remote.disabled_reason is None
    lines = warnings_of(caplog)
    assert len(lines) == 3 and all("could not write" in line and "0 MiB free" in line for line in lines), lines
