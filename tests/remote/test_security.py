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

from provisioning.manifest import manifest_bytes
from provisioning.remote import EntrySigner, SigningKeyConfig, parse_remote_config
from provisioning.remote.admin import plan_remote_gc
from provisioning.remote.config import KeySource
from provisioning.remote.signing import entry_message
from provisioning.remote.store import ConditionalWriteUnsupported, RemoteStore

from .conftest import make_host, remote_block, s3fs_client, warnings_of
from .test_faults import assert_cache_clean

HMAC_KEY = base64.b16encode(b"k" * 32).decode()


def snapshot(root, skip=()):
    """sha256 of every file under ``root`` except under the ``skip`` folders."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not any(s in p.parents for s in skip)}


class Entry:
    """One remote entry as the attacker sees it: paths in the bucket, raw access."""

    def __init__(self, fs, bucket, result):
        self.fs, self.name = fs, result.entry.file_name
        self.host_key = result.entry.inputs["host"]["host_key"]
        self.base = f"{bucket}/engines/{self.host_key}/{self.name}"

    def path(self, obj):
        return f"{self.base}/{obj}"

    def put(self, obj, data):
        self.fs.pipe_file(self.path(obj), data)

    def cat(self, obj):
        return self.fs.cat_file(self.path(obj))


def entries(endpoint, bucket, summary):
    fs = s3fs_client(endpoint)
    return {r.model_name: Entry(fs, bucket, r) for r in summary}


def signed_block(endpoint, bucket, monkeypatch, **extra):
    monkeypatch.setenv("ENGINE_CACHE_KEY", HMAC_KEY)
    return remote_block(endpoint, bucket, signing_key={"env": "ENGINE_CACHE_KEY"}, **extra)


def forge_signature(entry, manifest, sidecar):
    """What a holder of the HMAC key can do: sign anything."""
    signer = EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(env="ENGINE_CACHE_KEY")), "test")
    return signer.sign(entry_message(entry.host_key, entry.name, manifest, sidecar))


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


def test_deleting_sig_does_not_bypass_a_configured_key(tmp_path, corpus_dir, s3_server, bucket, monkeypatch, caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)  # require_signature not written: on
    built = make_host(tmp_path, "a", corpus_dir, block).provision()
    det = entries(s3_server.endpoint, bucket, built)["det"]
    evil = b"\x7fELF not the engine you built " * 64
    sha = hashlib.sha256(evil).hexdigest()
    manifest = json.loads(det.cat("manifest.json"))
    manifest["engine"].update(sha256=sha, size=len(evil))
    det.fs.rm_file(det.path("sig"))  # the whole attack: no key needed
    det.put("engine", evil)
    det.put("manifest.json", manifest_bytes(manifest))
    det.put("sha256", f"{sha}  {det.name}\n".encode())
    before = snapshot(tmp_path, skip=[tmp_path / "b"])
    b = make_host(tmp_path, "b", corpus_dir, block)
    with caplog.at_level(logging.WARNING):
        summary, elapsed = provision_timed(b)
    assert summary.by_name()["det"].source == "local" and summary.built == 1
    assert summary.by_name()["det"].entry.sha256 != sha
    assert not any(evil in p.read_bytes() for p in b.cache_dir.rglob("*") if p.is_file())
    assert_cache_clean(b, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "entry is not signed" in lines[0], lines
    assert snapshot(tmp_path, skip=[tmp_path / "b"]) == before and elapsed < 20
    assert det.fs.exists(det.path("sig"))
    assert_repaired(tmp_path, corpus_dir, block)


def test_malformed_objects_condemn_one_entry_not_the_remote(tmp_path, corpus_dir, s3_server, bucket, monkeypatch,
                                                            caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    found = entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    det, cls, emb = found["det"], found["cls"], found["emb"]
    det.put("sha256", b"0" * 5000)  # over the 4 KiB limit
    cls.put("sig", b"{" + b" " * 5000 + b"}")
    deep = b"[" * 200_000 + b"]" * 200_000  # RecursionError in json; signed by a key holder
    emb.put("manifest.json", deep)
    emb.put("sig", forge_signature(emb, deep, emb.cat("sha256")))
    before = snapshot(tmp_path, skip=[tmp_path / "b"])
    b = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = b.compiler()
    with caplog.at_level(logging.WARNING):
        summary, elapsed = provision_timed(b, compiler)
    assert summary.built == 3 and remote.disabled_reason is None
    assert_cache_clean(b, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 3 and all("discarded" in line for line in lines), lines
    assert "sha256 object larger than 4096 bytes" in lines[0]
    assert "sig object larger than 4096 bytes" in lines[1]
    assert "manifest is nested too deeply" in lines[2]
    assert snapshot(tmp_path, skip=[tmp_path / "b"]) == before and elapsed < 20
    assert_repaired(tmp_path, corpus_dir, block)


def test_malformed_leases_and_signatures_are_discarded_too(tmp_path, corpus_dir, s3_server, bucket, monkeypatch,
                                                           caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    found = entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    nested = b"[" * 2000 + b"]" * 2000  # under 4 KiB, deeper than the recursion limit
    for model, lease in (("det", b"{" + b" " * 5000 + b"}"), ("cls", b'{"expires": ' + nested + b"}")):
        found[model].fs.rm_file(found[model].path("sha256"))
        found[model].put("lease", lease)
    found["emb"].put("sig", nested)
    b = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = b.compiler()
    with caplog.at_level(logging.WARNING):
        summary, elapsed = provision_timed(b, compiler)
    assert summary.built == 3 and remote.disabled_reason is None and elapsed < 20
    assert_cache_clean(b, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "signature object is malformed" in lines[0], lines
    assert_repaired(tmp_path, corpus_dir, block)


def _strip_sidecars_and_plant(found, leases):
    for model, document in leases.items():
        found[model].fs.rm_file(found[model].path("sha256"))
        found[model].put("lease", document)


def test_forged_lease_expiries_cost_one_lease_at_most(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket)  # lease_s 2, wait_s default
    found = entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    _strip_sidecars_and_plant(found, {"det": b'{"owner": "x", "expires": 1e300}',
                                      "cls": b'{"owner": "x", "expires": Infinity}',
                                      "emb": b'{"owner": "x", "expires": NaN}'})
    b = make_host(tmp_path, "b", corpus_dir, block)
    summary, elapsed = provision_timed(b, limit_s=15)
    assert summary.built == 3, f"forged leases held the run for {elapsed:.1f} s"
    assert_cache_clean(b, summary)
    assert warnings_of(caplog) == []
    assert_repaired(tmp_path, corpus_dir, block)


def test_a_forged_lease_cannot_pin_an_entry_against_gc(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket)
    host = make_host(tmp_path, "a", corpus_dir, block)
    det = entries(s3_server.endpoint, bucket, host.provision())["det"]
    abandoned = f"{det.base.rsplit('/', 1)[0]}/det.fp32.ort-0.0.0.{det.host_key}.00000000.engine"
    det.fs.pipe_file(abandoned + "/engine", b"half an upload")
    det.fs.pipe_file(abandoned + "/lease", b'{"owner": "x", "expires": 1e300}')
    store = RemoteStore.open(parse_remote_config(block, host.config_path))
    plan = plan_remote_gc(store, det.host_key, [det.name], host_max_age_s=1e9, timeout_s=3,
                          now=time.time() + 7200, lease_s=2)
    assert [i.path.rsplit("/", 1)[1] for i in plan.items] == [abandoned.rsplit("/", 1)[1]] and plan.kept == ()


def test_a_renewed_hostile_lease_costs_one_wait_budget_per_run(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket, wait_s=1.5)
    a_summary, baseline = provision_timed(make_host(tmp_path, "a", corpus_dir, block))
    found = entries(s3_server.endpoint, bucket, a_summary)
    for entry in found.values():
        entry.fs.rm_file(entry.path("sha256"))
    stop = threading.Event()

    def keep_leasing():  # a live attacker (or a stuck builder) renewing every lease forever
        fs = s3fs_client(s3_server.endpoint)
        while not stop.is_set():
            for entry in found.values():
                fs.pipe_file(entry.path("lease"), json.dumps({"owner": "x", "expires": time.time() + 2}).encode())
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
        entry.fs.rm_file(entry.path("lease"))
    assert_repaired(tmp_path, corpus_dir, block)


def test_a_store_without_conditional_writes_is_detected_once(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket)
    host = make_host(tmp_path, "a", corpus_dir, block)
    compiler, remote, _ = host.compiler()
    calls = []

    def refuse(path, data, timeout):
        calls.append(path.rsplit("/", 1)[1])
        raise ConditionalWriteUnsupported("If-None-Match: NotImplemented")

    remote.store.create_exclusive = refuse
    with caplog.at_level(logging.WARNING):
        summary = host.provision(compiler)
    assert summary.built == 3 and calls == ["lease"], calls
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "refuses conditional writes" in lines[0]
    assert_repaired(tmp_path, corpus_dir, block)


def test_remote_strings_cannot_forge_log_lines(tmp_path, corpus_dir, s3_server, bucket, monkeypatch, caplog):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    found = entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())
    owner = "x\nBUILT det (fake)\r\x1b[2K" + "A" * 500
    found["det"].fs.rm_file(found["det"].path("sha256"))
    found["det"].put("lease", json.dumps({"owner": owner, "expires": time.time() + 1}).encode())
    signature = json.loads(found["cls"].cat("sig"))
    found["cls"].put("sig", json.dumps({**signature, "key_id": "k\nBUILT cls (fake)"}).encode())
    found["emb"].put("sha256", f"{'0' * 64}  evil\rBUILT emb (fake)\x1b[1A\n".encode())
    with caplog.at_level(logging.INFO, logger="provisioning"):
        summary, elapsed = provision_timed(make_host(tmp_path, "b", corpus_dir, block))
    assert summary.built == 3 and elapsed < 20
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("provisioning")]
    assert not [m for m in messages if any(c in m for c in "\n\r\x1b")], "a remote string reached the log raw"
    assert max(len(m) for m in messages) < 1000
    text = "\n".join(messages)
    assert "'x\\nBUILT det (fake)\\r\\x1b[2K" in text and "key id 'k\\nBUILT cls (fak'..." in text
    assert "'evil\\rBUILT emb (fake)\\x1b[1A'" in text
    assert_repaired(tmp_path, corpus_dir, block)


def test_uploaded_manifests_carry_no_paths_or_pids(tmp_path, corpus_dir, s3_server, bucket, monkeypatch):
    block = signed_block(s3_server.endpoint, bucket, monkeypatch)
    built = make_host(tmp_path, "a", corpus_dir, block).provision()
    for model, entry in entries(s3_server.endpoint, bucket, built).items():
        blob = entry.cat("manifest.json")
        build = json.loads(blob)["build"]
        assert "pid" not in build and build["onnx_path"] == f"{model}.onnx", build
        assert str(tmp_path).encode() not in blob
    b = make_host(tmp_path, "b", corpus_dir, block)
    summary = b.provision()
    assert [r.source for r in summary] == ["remote"] * 3  # the signature covers the uploaded bytes
    assert_cache_clean(b, summary)
    for result in summary:
        remote_blob = entries(s3_server.endpoint, bucket, summary)[result.model_name].cat("manifest.json")
        local_blob = result.entry.path.with_name(result.entry.file_name + ".manifest.json").read_bytes()
        assert local_blob == remote_blob


def test_share_build_details_uploads_the_manifest_as_built(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket, share_build_details=True)
    built = make_host(tmp_path, "a", corpus_dir, block).provision()
    det = entries(s3_server.endpoint, bucket, built)["det"]
    build = json.loads(det.cat("manifest.json"))["build"]
    assert build["onnx_path"] == str(corpus_dir / "models" / "det.onnx") and isinstance(build["pid"], int)
