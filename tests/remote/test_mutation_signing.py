"""What mutation testing of provisioning/remote/signing.py found unpinned (benchmarks/mutation.sh).

Each test states what a fleet operator would see: the refusal line ``engines-recheck`` or a
fetch prints, the config error a misconfigured key produces, which key ids a host reads,
and which forged or re-encoded records are refused. No server: everything is in-process.
"""

from __future__ import annotations

import base64
import re
import sys

import pytest

from provisioning.errors import ConfigError
from provisioning.remote.config import KeySource, SigningKeyConfig
from provisioning.remote.signing import (
    EntrySigner, KeyRing, Unverified, entry_message, parse_body, split_record, unsigned_record,
)

from .conftest import forged_record, make_ed25519_keys

FIELDS = dict(namespace="prod", host_key="sm86", engine_name="det.fp16.trt-10.sm86.0badc0de.engine",
              inputs_digest="ab" * 16, engine_sha256="cd" * 32, size=1234, manifest_sha256="ef" * 32)
BODY = entry_message(**FIELDS)


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _hmac(monkeypatch, secret="k" * 32, key_id=None, prefixes=()):
    monkeypatch.setenv("HMAC_KEY", secret)
    return EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(env="HMAC_KEY"), key_id=key_id,
                                        host_key_prefixes=tuple(prefixes)), "test")


def _fixed_ed25519(tmp_path):
    """An Ed25519 key pair with a fixed private key (bytes 0..31), as PEM files."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    private, public = tmp_path / "fixed.pem", tmp_path / "fixed.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


# --- refusal lines, word for word (recheck and fetch print them) -----------------------------------

@pytest.mark.parametrize("record, reason", [
    (b"", "commit record is malformed (no signature line)"),
    (b"signature none\n", "commit record is malformed (no signature line)"),  # no body at all
    (BODY + b"signature none", "commit record is malformed (no signature line)"),  # no final newline
    (BODY + b"signature ed25519 id\n", "commit record's signature line is malformed"),
    (BODY + b"signature ed25519 id A\n", "commit record's signature is not base64"),
    (b"x" * 4097, "commit record larger than 4096 bytes"),
    # exactly at the limit: refused for what it is, not for its size
    (b"x" * 4096, "commit record is malformed (no signature line)"),
])
def test_each_malformed_record_is_refused_with_its_own_reason(record, reason):
    with pytest.raises(Unverified, match=_exactly(reason)):
        split_record(record)


def test_a_record_whose_signature_line_comes_first_is_reported_as_unsigned(monkeypatch):
    ring = KeyRing(_hmac(monkeypatch))
    with pytest.raises(Unverified, match=_exactly("entry is not signed")):
        ring.verify(b"\nsignature none\n", ring.signing_id)
    with pytest.raises(Unverified, match=_exactly("entry is not signed")):
        ring.verify(unsigned_record(BODY), ring.signing_id)


def test_a_body_that_is_not_a_record_is_refused_word_for_word():
    with pytest.raises(Unverified, match=_exactly("commit record is malformed")):
        parse_body(BODY + b"extra\n", BODY, "id")


def test_the_ring_names_both_key_ids_in_its_refusals(monkeypatch, tmp_path):
    signer = _hmac(monkeypatch, key_id="builders")
    ring = KeyRing(signer)
    record = signer.sign(BODY)
    with pytest.raises(Unverified, match=_exactly("commit record of key 'other' is signed by 'builders'")):
        ring.verify(record, "other")
    with pytest.raises(Unverified, match=_exactly(
            "entry is signed with key id 'stranger', which this host does not trust")):
        ring.verify(forged_record(BODY, "stranger"), "stranger")
    with pytest.raises(Unverified, match=_exactly("entry is signed with ed25519, key 'builders' is hmac-sha256")):
        ring.verify(forged_record(BODY, "builders", algorithm="ed25519"), "builders")
    with pytest.raises(Unverified, match=_exactly("signature by key 'builders' does not match the entry")):
        ring.verify(forged_record(BODY, "builders", b"\0" * 32, "hmac-sha256"), "builders")


# --- what a signature accepts ------------------------------------------------------------------

def test_a_re_encoded_signature_with_bytes_after_its_padding_is_refused(tmp_path):
    """Lenient base64 would drop what follows '==' and accept a record that is not the one signed."""
    keys = make_ed25519_keys(tmp_path, "pad")
    signer = EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=keys.private_file), key_id="k"),
                         "test")
    record = signer.sign(BODY)
    assert record.endswith(b"==\n")  # 64 signature bytes: 88 base64 characters ending in padding
    tampered = record[:-1] + b"AAAA\n"
    with pytest.raises(Unverified, match=_exactly("commit record's signature is not base64")):
        KeyRing(signer).verify(tampered, "k")


def test_a_parsed_record_keeps_who_signed_it_and_its_exact_bytes(monkeypatch):
    signer = _hmac(monkeypatch, key_id="builders")
    record = signer.sign(BODY)
    body, key_id = KeyRing(signer).verify(record, "builders")
    commit = parse_body(body, record, key_id)
    assert commit.key_id == "builders"  # recheck's "signed by key id builders"
    assert commit.raw == record  # kept beside a fetched entry and checked again later


def test_a_host_signs_with_its_signing_key_and_only_reads_the_ids_that_cover_a_host_key(monkeypatch, tmp_path):
    own = _hmac(monkeypatch, "o" * 32, "own")
    gpu = _hmac(monkeypatch, "g" * 32, "gpu-builders", prefixes=("sm",))
    ring = KeyRing(own, [gpu])
    assert ring.signing_id == "own"
    assert ring.ids_for("sm86") == ["own", "gpu-builders"]
    assert ring.ids_for("cpu-x86_64") == ["own"]  # a GPU builders' key has no say over CPU entries
    assert gpu.covers("sm90") and not gpu.covers("cpu-x86_64") and own.covers("cpu-x86_64")
    assert repr(ring) == "KeyRing(signs='own', trusts=['gpu-builders', 'own'])"


# --- default key ids are stable (a fleet's entries live under commit/<id>) ----------------------

def test_default_key_ids_are_the_same_fingerprint_in_every_release(monkeypatch, tmp_path):
    # an upgrade that changed these would make every host miss the fleet's existing entries
    assert _hmac(monkeypatch, "k" * 32).key_id == "591e7f2a25a670e4"
    private, public = _fixed_ed25519(tmp_path)
    assert EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=private)), "t").key_id == \
        "56475aa75463474c"
    assert EntrySigner(SigningKeyConfig("ed25519", public_key=KeySource(file=public)), "t").key_id == \
        "56475aa75463474c"


def test_a_secret_in_a_file_and_the_same_secret_in_the_environment_are_one_key(monkeypatch, tmp_path):
    key_file = tmp_path / "hmac.key"
    key_file.write_text("s" * 32 + "\n")  # as `echo ... > file` writes it
    from_file = EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(file=key_file), key_id="k"), "test")
    from_env = _hmac(monkeypatch, "s" * 32, "k")
    assert KeyRing(from_env).verify(from_file.sign(BODY), "k")[1] == "k"
    assert from_file.source == f"file {key_file}" and from_env.source == "env HMAC_KEY"  # what warnings name


def test_a_16_byte_hmac_key_is_enough_and_15_is_refused_naming_the_field(monkeypatch):
    assert _hmac(monkeypatch, "x" * 16).can_sign
    monkeypatch.setenv("HMAC_KEY", "x" * 15)
    with pytest.raises(ConfigError, match=_exactly(
            "test: field 'remote.signing_key': the key from env HMAC_KEY is shorter than 16 bytes; use a random "
            "key, e.g. 32 bytes from /dev/urandom, hex-encoded")):
        EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(env="HMAC_KEY")), "test")


# --- config errors name the config, the field and the source ------------------------------------

def test_a_missing_key_names_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match=_exactly(
            "cfg.yaml: field 'remote.signing_key': environment variable NO_SUCH_KEY is not set; "
            "export the key there")):
        EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(env="NO_SUCH_KEY")), "cfg.yaml")
    missing = tmp_path / "absent.key"
    with pytest.raises(ConfigError, match=_exactly(
            f"cfg.yaml: field 'remote.signing_key': cannot read key file {missing} (No such file or directory)")):
        EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(file=missing)), "cfg.yaml")
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=_exactly(f"cfg.yaml: field 'remote.signing_key': key file {empty} is empty")):
        EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(file=empty)), "cfg.yaml")
    with pytest.raises(ConfigError, match=_exactly(
            f"cfg.yaml: field 'remote.trusted_keys[0].private_key': cannot read key file {missing} "
            "(No such file or directory)")):
        EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=missing)), "cfg.yaml",
                    "trusted_keys[0]")


@pytest.mark.parametrize("label", ["private_key", "public_key"])
def test_a_file_that_is_not_an_ed25519_pem_is_a_config_error_naming_it(tmp_path, label):
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=_exactly(
            f"cfg.yaml: field 'remote.signing_key.{label}': file {junk} is not an unencrypted Ed25519 PEM "
            f"{label.replace('_', ' ')}")):
        EntrySigner(SigningKeyConfig("ed25519", **{label: KeySource(file=junk)}), "cfg.yaml")


def test_a_private_and_a_public_key_of_different_pairs_are_refused(tmp_path):
    first, second = make_ed25519_keys(tmp_path, "first"), make_ed25519_keys(tmp_path, "second")
    with pytest.raises(ConfigError, match=_exactly(
            "cfg.yaml: field 'remote.signing_key': private_key and public_key do not match")):
        EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=first.private_file),
                                     public_key=KeySource(file=second.public_file)), "cfg.yaml")
    both = EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=first.private_file),
                                        public_key=KeySource(file=first.public_file)), "cfg.yaml")
    assert both.can_sign and both.source == f"file {first.private_file}, file {first.public_file}"


def test_ed25519_without_the_cryptography_package_says_what_to_install(monkeypatch, tmp_path):
    keys = make_ed25519_keys(tmp_path, "k")
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.ed25519", None)
    with pytest.raises(ConfigError, match=_exactly(
            "cfg.yaml: field 'remote.signing_key': ed25519 needs the cryptography package; "
            "install provisioning[remote]")):
        EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=keys.private_file)), "cfg.yaml")


def test_no_error_or_repr_shows_the_key(monkeypatch):
    signer = _hmac(monkeypatch, "z" * 32, "named")
    assert "z" * 8 not in repr(signer) + repr(KeyRing(signer)) + signer.source
    assert base64.b64encode(b"z" * 32) not in signer.sign(BODY)
