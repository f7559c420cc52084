"""Commit records and key rings without a server: what a signature binds, and what it refuses."""

from __future__ import annotations

import base64

import pytest

from provisioning.remote.config import KeySource, SigningKeyConfig
from provisioning.remote.signing import (
    EntrySigner, KeyRing, Unverified, entry_message, parse_body, split_record, unsigned_record,
)

from .conftest import forged_record, make_ed25519_keys

FIELDS = dict(namespace="prod", host_key="sm86", engine_name="det.fp16.trt-10.sm86.0badc0de.engine",
              inputs_digest="ab" * 16, engine_sha256="cd" * 32, size=1234, manifest_sha256="ef" * 32)


def _hmac(monkeypatch, secret="k" * 32, key_id=None):
    monkeypatch.setenv("HMAC_KEY", secret)
    return EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(env="HMAC_KEY"), key_id=key_id), "test")


def _ed25519(tmp_path, name="a", key_id=None, public_only=False):
    keys = make_ed25519_keys(tmp_path, name)
    source = (dict(public_key=KeySource(file=keys.public_file)) if public_only
              else dict(private_key=KeySource(file=keys.private_file)))
    return EntrySigner(SigningKeyConfig("ed25519", key_id=key_id, **source), "test"), keys


@pytest.fixture(params=["hmac-sha256", "ed25519"])
def signer(request, monkeypatch, tmp_path):
    return _hmac(monkeypatch) if request.param == "hmac-sha256" else _ed25519(tmp_path)[0]


def test_a_record_verifies_and_parses_back_to_its_fields(signer):
    body = entry_message(**FIELDS)
    ring = KeyRing(signer)
    verified, key_id = ring.verify(signer.sign(body), signer.key_id)
    commit = parse_body(verified, signer.sign(body), key_id)
    assert (commit.namespace, commit.host_key, commit.engine_name, commit.inputs_digest, commit.engine_sha256,
            commit.size, commit.manifest_sha256) == tuple(FIELDS.values())


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_the_signature_binds_every_field(signer, field):
    changed = dict(FIELDS)
    changed[field] = 999 if field == "size" else ("0" * len(str(FIELDS[field])) if "sha" in field or "digest" in field
                                                  else str(FIELDS[field]) + "x")
    record = signer.sign(entry_message(**FIELDS))
    moved = entry_message(**changed) + record[record.rindex(b"signature "):]
    with pytest.raises(Unverified, match="does not match the entry"):
        KeyRing(signer).verify(moved, signer.key_id)


def test_a_forged_signature_under_a_trusted_id_is_refused(signer):
    body = entry_message(**FIELDS)
    length = 32 if signer.algorithm == "hmac-sha256" else 64
    for raw in (b"\0" * length, b"\xff" * length, b"\0"):
        with pytest.raises(Unverified, match="does not match the entry"):
            KeyRing(signer).verify(forged_record(body, signer.key_id, raw, signer.algorithm), signer.key_id)


def test_a_record_signed_by_one_key_does_not_verify_with_another(monkeypatch, tmp_path):
    first, _ = _ed25519(tmp_path, "first", "shared-id")
    second, _ = _ed25519(tmp_path, "second", "shared-id")  # an attacker's key under a trusted name
    record = second.sign(entry_message(**FIELDS))
    with pytest.raises(Unverified, match="does not match"):
        KeyRing(first).verify(record, "shared-id")
    hmac_a, hmac_b = _hmac(monkeypatch, "a" * 32, "h"), _hmac(monkeypatch, "b" * 32, "h")
    with pytest.raises(Unverified, match="does not match"):
        KeyRing(hmac_a).verify(hmac_b.sign(entry_message(**FIELDS)), "h")


def test_the_record_must_name_the_key_it_is_stored_under(signer):
    record = signer.sign(entry_message(**FIELDS))
    with pytest.raises(Unverified, match="is signed by"):
        KeyRing(signer).verify(record, "another-id")


def test_unknown_keys_unsigned_records_and_algorithm_swaps_are_refused(signer, monkeypatch, tmp_path):
    body = entry_message(**FIELDS)
    ring = KeyRing(signer)
    with pytest.raises(Unverified, match="not signed"):
        ring.verify(unsigned_record(body), signer.key_id)
    with pytest.raises(Unverified, match="does not trust"):
        ring.verify(forged_record(body, "stranger"), "stranger")
    other = "ed25519" if signer.algorithm == "hmac-sha256" else "hmac-sha256"
    with pytest.raises(Unverified, match=f"signed with {other}"):
        ring.verify(forged_record(body, signer.key_id, algorithm=other), signer.key_id)


def test_a_public_key_verifies_what_its_private_key_signed(tmp_path):
    builder, keys = _ed25519(tmp_path, "pair", "fleet")
    reader = EntrySigner(SigningKeyConfig("ed25519", public_key=KeySource(file=keys.public_file), key_id="fleet"),
                         "test")
    assert not reader.can_sign and builder.can_sign
    assert KeyRing(None, [reader]).verify(builder.sign(entry_message(**FIELDS)), "fleet")[1] == "fleet"
    assert KeyRing(None, [reader]).signing_id is None


@pytest.mark.parametrize("record, reason", [
    (b"", "no signature line"),
    (b"x" * 5000, "larger than 4096"),
    (entry_message(**FIELDS) + b"signature none extra\n", "signature line is malformed"),
    (entry_message(**FIELDS) + b"signature ed25519 id !!!notbase64\n", "signature line is malformed"),
    (entry_message(**FIELDS) + b"signature ed25519 id\n", "signature line is malformed"),
    (entry_message(**FIELDS) + b"signature ed25519 id\n", "signature line is malformed"),
])
def test_malformed_records_are_unverified_never_an_exception(record, reason):
    with pytest.raises(Unverified, match=reason):
        split_record(record)


@pytest.mark.parametrize("body", [
    b"provisioning-remote-entry/2\nnamespace prod\n",
    entry_message(**FIELDS).replace(b"namespace prod", b"namespace pr od"),
    entry_message(**FIELDS) + b"extra line\n",
    entry_message(**{**FIELDS, "size": -1}),
])
def test_a_body_that_is_not_exactly_a_record_is_refused(body):
    with pytest.raises(Unverified, match="malformed"):
        parse_body(body, body, "id")


def test_key_ids_default_to_a_fingerprint_and_never_show_the_key(monkeypatch, tmp_path):
    signer = _hmac(monkeypatch)
    assert len(signer.key_id) == 16 and "k" * 16 not in repr(signer) + signer.key_id
    named = _hmac(monkeypatch, key_id="builders-2026")
    assert named.key_id == "builders-2026" and named.fingerprint == signer.fingerprint
    record = named.sign(entry_message(**FIELDS))
    assert b"builders-2026" in record and b"k" * 16 not in record
    assert base64.b64decode(record.rsplit(b" ", 1)[1]) != b""
