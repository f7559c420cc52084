"""Two hosts, one bucket: the second host reuses what the first built, verified and signed."""

from __future__ import annotations

import base64
import logging



from provisioning import Sha256Sidecar
from .conftest import make_host, remote_block, remote_entries, s3fs_client, warnings_of

HMAC_KEY = base64.b16encode(b"k" * 32).decode()
OTHER_KEY = base64.b16encode(b"o" * 32).decode()


def _entry_objects(endpoint, bucket):
    fs = s3fs_client(endpoint)
    return sorted(p.split("/", 2)[2] for p in fs.find(f"{bucket}/engines"))


def test_second_host_reuses_the_first_hosts_engines_from_the_bucket(tmp_path, corpus_dir, s3_server, bucket, caplog):
    block = remote_block(s3_server.endpoint, bucket)
    a = make_host(tmp_path, "a", corpus_dir, block)
    b = make_host(tmp_path, "b", corpus_dir, block)
    built = a.provision()
    assert built.built == 3
    objects = _entry_objects(s3_server.endpoint, bucket)
    for model, entry in remote_entries(s3_server.endpoint, bucket, built).items():
        assert entry.commit_ids() == ["unsigned"]
        fields = entry.fields()
        assert fields.engine_sha256 == built.by_name()[model].entry.sha256
        assert sorted(entry.objects()) == sorted([entry.commit_key(), entry.engine_key(), entry.manifest_key()])
    assert not any(o.endswith("/lease") for o in objects), "leases are released after upload"

    with caplog.at_level(logging.INFO):
        fetched = b.provision()
    assert fetched.reused == 3 and fetched.built == 0
    for result in fetched:
        assert result.source == "remote" and result.compile_duration_s is None
        assert Sha256Sidecar.verify(result.entry.path)
        assert result.entry.sha256 == built.by_name()[result.model_name].entry.sha256
    events = [e for e in b.events() if e["outcome"] == "REUSED"]
    assert {e["source"] for e in events} == {"remote"}
    assert all(e["fetch_bytes"] > 0 and e["fetch_seconds"] >= 0 for e in events)
    assert warnings_of(caplog) == []
    # A third run on b is a local hit: nothing is fetched again.
    again = b.provision()
    assert [r.source for r in again] == ["local"] * 3


def test_read_only_client_fetches_but_never_writes(tmp_path, corpus_dir, s3_server, bucket):
    reader = make_host(tmp_path, "reader", corpus_dir, remote_block(s3_server.endpoint, bucket, mode="read-only"))
    summary = reader.provision()
    assert summary.built == 3
    assert _entry_objects(s3_server.endpoint, bucket) == [], "a read-only client uploaded or leased"
    writer = make_host(tmp_path, "writer", corpus_dir, remote_block(s3_server.endpoint, bucket))
    writer.provision()
    reader2 = make_host(tmp_path, "reader2", corpus_dir, remote_block(s3_server.endpoint, bucket, mode="read-only"))
    assert [r.source for r in reader2.provision()] == ["remote"] * 3


def test_mode_off_builds_locally_without_touching_the_bucket(tmp_path, corpus_dir, s3_server, bucket):
    host = make_host(tmp_path, "off", corpus_dir, remote_block(s3_server.endpoint, bucket, mode="off"))
    assert host.compiler()[1] is None
    assert host.provision().built == 3
    assert _entry_objects(s3_server.endpoint, bucket) == []


def test_signed_entries_are_fetched_with_the_same_key(tmp_path, corpus_dir, s3_server, bucket, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_KEY", HMAC_KEY)
    block = remote_block(s3_server.endpoint, bucket, signing_key={"env": "ENGINE_CACHE_KEY"}, require_signature=True)
    make_host(tmp_path, "a", corpus_dir, block).provision()
    objects = _entry_objects(s3_server.endpoint, bucket)
    assert sum("/commit/" in o and not o.endswith("/unsigned") for o in objects) == 3
    fs = s3fs_client(s3_server.endpoint)
    for path in fs.find(f"{bucket}/engines"):
        assert HMAC_KEY.encode() not in fs.cat_file(path), f"key material stored in {path}"
    b = make_host(tmp_path, "b", corpus_dir, block)
    assert [r.source for r in b.provision()] == ["remote"] * 3
    for file in b.cache_dir.iterdir():
        if file.is_file():
            assert HMAC_KEY.encode() not in file.read_bytes()


def test_entry_signed_with_another_key_is_never_fetched(tmp_path, corpus_dir, s3_server, bucket, monkeypatch, caplog):
    monkeypatch.setenv("KEY_A", OTHER_KEY)
    monkeypatch.setenv("KEY_B", HMAC_KEY)
    make_host(tmp_path, "a", corpus_dir, remote_block(s3_server.endpoint, bucket, signing_key={"env": "KEY_A"})).provision()
    b = make_host(tmp_path, "b", corpus_dir, remote_block(
        s3_server.endpoint, bucket, signing_key={"env": "KEY_B"}, require_signature=True, mode="read-only"))
    with caplog.at_level(logging.WARNING):
        summary = b.provision()
    assert summary.built == 3 and all(r.source == "local" for r in summary)
    lines = warnings_of(caplog)
    assert len(lines) == 3 and all("does not trust" in line for line in lines)
    assert not any(HMAC_KEY in line or OTHER_KEY in line for line in lines)
    assert all(Sha256Sidecar.verify(r.entry.path) for r in summary)


def test_require_signature_rejects_an_unsigned_entry(tmp_path, corpus_dir, s3_server, bucket, monkeypatch, caplog):
    make_host(tmp_path, "a", corpus_dir, remote_block(s3_server.endpoint, bucket)).provision()  # unsigned
    monkeypatch.setenv("KEY_B", HMAC_KEY)
    b = make_host(tmp_path, "b", corpus_dir, remote_block(
        s3_server.endpoint, bucket, signing_key={"env": "KEY_B"}, require_signature=True))
    with caplog.at_level(logging.WARNING):
        summary = b.provision()
    assert summary.built == 3
    assert len(warnings_of(caplog)) == 3 and all("does not trust ('unsigned')" in w for w in warnings_of(caplog))
    # b replaced the entries it could not verify with its own signed ones: a third host reuses them.
    c = make_host(tmp_path, "c", corpus_dir, remote_block(
        s3_server.endpoint, bucket, signing_key={"env": "KEY_B"}, require_signature=True))
    assert [r.source for r in c.provision()] == ["remote"] * 3


def test_ed25519_key_pair_signs_and_a_public_key_only_reader_verifies(tmp_path, corpus_dir, s3_server, bucket):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    (tmp_path / "cache.pem").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "cache.pub").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    builder_key = {"algorithm": "ed25519", "private_key": {"file": str(tmp_path / "cache.pem")}}
    reader_key = {"algorithm": "ed25519", "public_key": {"file": str(tmp_path / "cache.pub")}}
    make_host(tmp_path, "ci", corpus_dir, remote_block(s3_server.endpoint, bucket, signing_key=builder_key)).provision()
    reader = make_host(tmp_path, "edge", corpus_dir, remote_block(
        s3_server.endpoint, bucket, signing_key=reader_key, require_signature=True, mode="read-only"))
    assert [r.source for r in reader.provision()] == ["remote"] * 3


def test_a_record_committed_between_the_look_and_the_claim_is_fetched_not_rebuilt(tmp_path, corpus_dir, s3_server,
                                                                                   bucket):
    block = remote_block(s3_server.endpoint, bucket)
    make_host(tmp_path, "a", corpus_dir, block).provision()
    b = make_host(tmp_path, "b", corpus_dir, block)
    compiler, remote, _ = b.compiler()
    find, looks = remote._find_commit, []

    def first_look_misses(paths):  # as if a's record landed (and its lease went) just after b looked
        looks.append(paths.engine_name)
        return None if len(looks) == 1 else find(paths)

    remote._find_commit = first_look_misses
    summary = b.provision(compiler)
    assert [r.source for r in summary] == ["remote"] * 3 and summary.built == 0
    assert looks[0] == looks[1], "the claim was not followed by a second look"
