"""Faults: a damaged bucket, a server that dies mid-transfer, an endpoint that never answers.

In every case the build goes on locally, nothing unverified reaches the local cache,
and the user gets exactly one warning naming the cause.
"""

from __future__ import annotations

import logging
import socket
import time

from provisioning import Sha256Sidecar
from provisioning.cache import check_entry
from provisioning.sidecar import is_temp_name

from .conftest import LOOPBACK, make_bucket, make_host, remote_block, remote_entries, s3fs_client, warnings_of


def assert_cache_clean(host, summary):
    """Every engine verifies against its sidecar and manifest; no temporary file is left."""
    leftovers = [p.name for p in host.cache_dir.iterdir() if is_temp_name(p.name)]
    assert leftovers == []
    for result in summary:
        assert Sha256Sidecar.verify(result.entry.path)
        assert check_entry(result.entry.path, result.model_name, _expected(result)).hit


def _expected(result):
    from provisioning.manifest import BuildInputs

    return BuildInputs(**result.entry.inputs)


def test_corrupted_engine_object_is_discarded_rebuilt_and_repaired(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket)
    first = make_host(tmp_path, "a", corpus_dir, block).provision()
    det = remote_entries(s3_server.endpoint, bucket, first)["det"]
    fs = det.fs
    key = det.engine_key()
    damaged = bytearray(fs.cat_file(key))
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one flipped byte: only the hash can tell
    fs.pipe_file(key, bytes(damaged))
    b = make_host(tmp_path, "b", corpus_dir, block)
    with caplog.at_level(logging.WARNING):
        summary = b.provision()
    sources = {r.model_name: (r.outcome.value, r.source) for r in summary}
    assert sources == {"det": ("BUILT", "local"), "cls": ("REUSED", "remote"), "emb": ("REUSED", "remote")}
    assert_cache_clean(b, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "engine bytes do not match" in lines[0] and "det" in lines[0]
    # b uploaded its verified build over the damaged entry: the next host fetches everything.
    c = make_host(tmp_path, "c", corpus_dir, block)
    assert [r.source for r in c.provision()] == ["remote"] * 3


def test_a_record_without_its_engine_reads_as_unusable(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket)
    cls = remote_entries(s3_server.endpoint, bucket, make_host(tmp_path, "a", corpus_dir, block).provision())["cls"]
    cls.rm(cls.engine_key())
    b = make_host(tmp_path, "b", corpus_dir, block)
    with caplog.at_level(logging.WARNING):
        summary = b.provision()
    assert summary.by_name()["cls"].source == "local" and summary.built == 1
    assert_cache_clean(b, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "engine part is missing" in lines[0]
    c = make_host(tmp_path, "c", corpus_dir, block)
    assert [r.source for r in c.provision()] == ["remote"] * 3  # b replaced the record


def test_server_killed_mid_upload_keeps_the_local_engine_and_warns_once(tmp_path, corpus_dir, private_server, caplog):
    bucket = make_bucket(private_server.endpoint)
    host = make_host(tmp_path, "a", corpus_dir, remote_block(private_server.endpoint, bucket, timeout_s=1.5))
    compiler, remote, _ = host.compiler()
    put_file = remote.store.put_file_exclusive
    seen = {}

    def put_then_die(path, local, timeout):
        put_file(path, local, timeout)  # the engine part is in the bucket...
        fs = s3fs_client(private_server.endpoint)
        seen["record_before_kill"] = fs.exists(path.rsplit("/", 2)[0] + "/commit")
        private_server.stop()  # ...and the server dies before the manifest and the commit record

    remote.store.put_file_exclusive = put_then_die
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        summary = host.provision(compiler)
    elapsed = time.monotonic() - started
    assert seen == {"record_before_kill": False}, "a commit record must come after its parts"
    assert summary.built == 3
    assert_cache_clean(host, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "upload of det" in lines[0] and "the local engine is published" in lines[0]
    assert elapsed < 1.5 + 10, f"a dead remote delayed the run by {elapsed:.1f} s"


def test_server_killed_mid_download_publishes_nothing_partial(tmp_path, corpus_dir, private_server, caplog):
    bucket = make_bucket(private_server.endpoint)
    block = remote_block(private_server.endpoint, bucket, timeout_s=1.5)
    make_host(tmp_path, "a", corpus_dir, block).provision()
    host = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = host.compiler()
    download = remote.store.download

    def first_bytes_then_die(path, fd, size, sha256, stall_s, progress=None):
        def die(done):
            if done:
                private_server.stop()
        remote.store.part_bytes, remote.store.concurrency = 256, 1  # several ranged reads per engine, in turn
        return download(path, fd, size, sha256, stall_s, progress=die)

    remote.store.download = first_bytes_then_die
    with caplog.at_level(logging.WARNING):
        summary = host.provision(compiler)
    assert summary.built == 3 and all(r.source == "local" for r in summary)
    assert_cache_clean(host, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "fetch of" in lines[0] and "remote cache off" in lines[0]


def test_unreachable_endpoint_costs_at_most_timeout_once(tmp_path, corpus_dir, caplog):
    # A listening socket that never accepts: connections hang like a black-holed route.
    with socket.socket() as black_hole:
        black_hole.bind((LOOPBACK, 0))
        black_hole.listen(64)
        endpoint = f"http://{LOOPBACK}:{black_hole.getsockname()[1]}"
        local = make_host(tmp_path, "local", corpus_dir, None)
        started = time.monotonic()
        local.provision()
        baseline = time.monotonic() - started
        host = make_host(tmp_path, "a", corpus_dir, remote_block(endpoint, "engines", timeout_s=1))
        with caplog.at_level(logging.WARNING):
            started = time.monotonic()
            summary = host.provision()
            elapsed = time.monotonic() - started
    assert summary.built == 3
    assert_cache_clean(host, summary)
    assert elapsed - baseline < 1 + 1.5, f"remote cost {elapsed - baseline:.1f} s with timeout_s 1"
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "remote cache off for the rest of this run" in lines[0]


def test_refused_connection_fails_fast(tmp_path, corpus_dir, caplog):
    from .conftest import free_port

    endpoint = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    host = make_host(tmp_path, "a", corpus_dir, remote_block(endpoint, "engines", timeout_s=5))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        summary = host.provision()
    assert summary.built == 3 and time.monotonic() - started < 5
    assert len(warnings_of(caplog)) == 1
