"""The release file: a DSSE envelope of an in-toto Statement, made and checked with securesystemslib.

No bucket here: a release of hand-made variants, signed with real Ed25519 and HMAC fleet
keys as the remote config loads them. What a serving host must refuse (an edited byte,
another namespace, an untrusted or forged key, an unsigned, oversized or deeply nested
file) is refused with one line and exit code 2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

import pytest

from provisioning.release.format import (
    MAX_RELEASE_BYTES, PAYLOAD_TYPE, PREDICATE_TYPE, BackboneVariants, Compatibility, EntryRef, Release,
    ReleaseError, TiedTo, Variant, canonical_json, load_release, parse_release, sign_release, statement_bytes,
)
from provisioning.remote.config import KeySource, SigningKeyConfig
from provisioning.remote.signing import EntrySigner, KeyRing

from .conftest import CREATED, KEY_ID, make_ed25519_keys, reader, signer

ENGINES = {
    "sm90-nvidia-h100-80gb-hbm3": ("det.fp32.trt-10.16.1.11.sm90-nvidia-h100-80gb-hbm3.0a1b2c3d.engine",
                                   TiedTo("gpu", "NVIDIA H100 80GB HBM3", "9.0"), Compatibility()),
    "sm86-sm89": ("det.fp32.trtrtx-1.7.1.116.sm86-sm89.0a1b2c3d.engine", TiedTo("gpu"),
                  Compatibility(rtx_targets=("sm86", "sm89"))),
    "x86_64-avx2-1a2b3c": ("det.fp32.ort-1.23.2.x86_64-avx2-1a2b3c.0a1b2c3d.engine",
                           TiedTo("cpu", machine="x86_64", isa="avx2"), Compatibility()),
}


def _variant(host_key: str, model: str = "det", size: int = 1 << 20) -> Variant:
    name, tied, compat = ENGINES[host_key]
    name = name.replace("det.", f"{model}.", 1)
    sha = hashlib.sha256(f"{host_key}/{model}".encode()).hexdigest()
    digest = "d" * 32
    backend = {"trt": "tensorrt", "trtrtx": "tensorrt-rtx", "ort": "onnxruntime"}[name.split(".")[2].split("-")[0]]
    return Variant(name, sha, size, model, host_key, backend, "10.16.1.11", tied, compat, "b" * 64, "c" * 64,
                   EntryRef(f"{host_key}/{name}/{digest}", digest, f"engine/{sha}", f"manifest/{'b' * 64}",
                            f"commit/{KEY_ID}"),
                   {"passed": True, "max_abs_diff": 0.25} if backend == "tensorrt" else None)


def _release(namespace: str = "prod") -> Release:
    backbones = tuple(BackboneVariants(model, "e" * 64, "f" * 64, tuple(_variant(h, model) for h in ENGINES))
                      for model in ("det", "cls"))
    return Release(CREATED, namespace, "s3://engines/prod", "vision", backbones)


@pytest.fixture
def keys(tmp_path):
    return make_ed25519_keys(tmp_path / "keys", "fleet", KEY_ID)


@pytest.fixture
def signed(keys) -> bytes:
    return sign_release(_release(), signer(keys))


def _hmac(monkeypatch, key_id: str = KEY_ID, secret: str = "s" * 32, **extra) -> EntrySigner:
    monkeypatch.setenv("RELEASE_TEST_KEY", secret)
    return EntrySigner(SigningKeyConfig("hmac-sha256", secret=KeySource(env="RELEASE_TEST_KEY"), key_id=key_id,
                                        **extra), "test")


def test_a_signed_release_loads_back_to_what_was_signed(keys, signed, tmp_path):
    path = tmp_path / "engines.release.json"
    path.write_bytes(signed)
    release = load_release(path, [reader(keys)], "prod")
    assert release == _release()
    assert release.signed_by == (KEY_ID,) and release.untrusted == ()
    assert release.backbone("det").variants[0].size == 1 << 20  # an int, never a float
    assert sign_release(_release(), signer(keys)) == signed, "the same release gives the same bytes"


def test_the_file_is_a_dsse_envelope_of_an_in_toto_statement(signed):
    envelope = json.loads(signed)
    assert envelope["payloadType"] == PAYLOAD_TYPE == "application/vnd.in-toto+json"
    assert [s["keyid"] for s in envelope["signatures"]] == [KEY_ID]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE
    names = [s["name"] for s in statement["subject"]]
    assert names == sorted(names) and len(names) == 6
    assert all(set(s["digest"]) == {"sha256"} for s in statement["subject"])
    assert base64.b64decode(envelope["payload"]) == statement_bytes(_release())
    variant = statement["predicate"]["backbones"]["det"]["variants"][0]
    assert variant["host_key"] == "sm86-sm89" and variant["compatibility"]["rtx_targets"] == ["sm86", "sm89"]
    assert list(statement["predicate"]["backbones"]) == ["cls", "det"]


def test_in_toto_attestation_accepts_the_statement(signed):
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    payload = base64.b64decode(json.loads(signed)["payload"])
    message = json_format.Parse(payload, statement_pb2.Statement())
    Statement.copy_from_pb(message).validate()


VERIFY_ALONE = r"""
import json, sys
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

release, public, key_id = sys.argv[1:4]
key = SSlibKey.from_crypto(serialization.load_pem_public_key(open(public, "rb").read()), keyid=key_id)
envelope = Envelope.from_dict(json.load(open(release)))
assert envelope.payload_type == "application/vnd.in-toto+json"
accepted = envelope.verify([key], 1)
statement = json.loads(envelope.payload)
assert not any(m == "provisioning" or m.startswith("provisioning.") for m in sys.modules), "provisioning imported"
print(json.dumps({"keys": sorted(accepted), "subjects": len(statement["subject"]),
                  "type": statement["predicateType"]}))
"""


def test_a_release_verifies_with_securesystemslib_alone(keys, signed, tmp_path):
    """What any other tool does: the public key, securesystemslib, and nothing of this package."""
    path = tmp_path / "engines.release.json"
    path.write_bytes(signed)
    done = subprocess.run([sys.executable, "-I", "-c", VERIFY_ALONE, str(path), str(keys.public_file), KEY_ID],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"keys": [KEY_ID], "subjects": 6, "type": PREDICATE_TYPE}
    edited = bytearray(signed)
    edited[len(signed) // 3] ^= 0x01  # inside the payload's base64
    path.write_bytes(bytes(edited))
    done = subprocess.run([sys.executable, "-I", "-c", VERIFY_ALONE, str(path), str(keys.public_file), KEY_ID],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "VerificationError" in done.stderr


def test_editing_any_byte_is_refused(keys, signed):
    trusted = [reader(keys)]
    assert parse_release(signed, trusted, "prod") == _release()
    for index in range(len(signed)):
        for flip in (0x01, 0x20):
            edited = bytearray(signed)
            edited[index] ^= flip
            with pytest.raises(ReleaseError) as caught:
                parse_release(bytes(edited), trusted, "prod")
            assert "\n" not in str(caught.value) and caught.value.exit_code == 2
    for edited in (signed[:-1], signed + b"\n", b" " + signed, signed.replace(b'","', b'", "', 1)):
        with pytest.raises(ReleaseError):
            parse_release(edited, trusted, "prod")


def test_another_namespace_is_refused(keys, tmp_path):
    path = tmp_path / "staging.release.json"
    path.write_bytes(sign_release(_release("staging"), signer(keys)))
    with pytest.raises(ReleaseError, match="belongs to namespace 'staging', this host's is 'prod'") as caught:
        load_release(path, [reader(keys)], "prod")
    assert caught.value.exit_code == 2
    assert load_release(path, [reader(keys)], "staging").namespace == "staging"


def test_an_untrusted_key_is_refused(keys, signed, tmp_path, monkeypatch):
    other = make_ed25519_keys(tmp_path / "other", "other", "other")
    with pytest.raises(ReleaseError, match="signed by key\\(s\\) 'fleet', none of which this host trusts"):
        parse_release(signed, [reader(other, "other")], "prod")
    # An attacker's key under the trusted id: the signature does not verify.
    forged = sign_release(_release(), signer(other, KEY_ID))
    with pytest.raises(ReleaseError, match="signature of key 'fleet' does not match the release"):
        parse_release(forged, [reader(keys)], "prod")
    with pytest.raises(ReleaseError, match="none of which this host trusts"):
        parse_release(signed, [], "prod")
    # An HMAC key of the same id does not accept an Ed25519 signature (and the other way round).
    with pytest.raises(ReleaseError, match="does not match"):
        parse_release(signed, [_hmac(monkeypatch)], "prod")


def test_an_unsigned_release_is_refused(signed, keys):
    envelope = json.loads(signed)
    envelope["signatures"] = []
    with pytest.raises(ReleaseError, match="unsigned"):
        parse_release(canonical_json(envelope) + b"\n", [reader(keys)], "prod")


def test_an_hmac_fleet_signs_and_verifies_with_its_secret(monkeypatch):
    key = _hmac(monkeypatch)
    blob = sign_release(_release(), key)
    assert parse_release(blob, KeyRing(key), "prod") == _release()
    with pytest.raises(ReleaseError, match="does not match"):
        parse_release(blob, [_hmac(monkeypatch, secret="t" * 32)], "prod")


def test_a_key_restricted_by_host_key_prefixes_vouches_only_for_those_hosts(keys, signed):
    restricted = reader(keys, host_key_prefixes=("sm90", "x86_64"))
    release = parse_release(signed, [restricted], "prod")
    assert {v.host_key for v in release.variants()} == {"sm90-nvidia-h100-80gb-hbm3", "x86_64-avx2-1a2b3c"}
    assert sorted((m, h) for m, h, _ in release.untrusted) == [("cls", "sm86-sm89"), ("det", "sm86-sm89")]
    assert all("host_key_prefixes" in why for _, _, why in release.untrusted)


def test_a_release_that_cannot_sign_is_refused(keys):
    with pytest.raises(ReleaseError, match="must be signed"):
        sign_release(_release(), reader(keys))


def test_oversized_and_deeply_nested_files_are_refused_with_one_line(keys, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_RELEASE_BYTES + 1))
    with pytest.raises(ReleaseError, match="larger than 16 MiB"):
        load_release(big, [reader(keys)], "prod")
    for depth in (65, 100_000):
        deep = tmp_path / "deep.json"
        deep.write_bytes(b"[" * depth + b"]" * depth)
        with pytest.raises(ReleaseError, match="nested deeper than 64"):
            load_release(deep, [reader(keys)], "prod")


def test_a_signed_payload_that_is_not_a_release_is_refused(keys):
    """Signed by the fleet key, yet not this format: refused before anything uses it."""
    from securesystemslib.dsse import Envelope

    from provisioning.release.format import envelope_bytes
    from provisioning.release.keys import sslib_signer

    def signed_payload(payload) -> bytes:
        envelope = Envelope(canonical_json(payload), PAYLOAD_TYPE, {})
        envelope.sign(sslib_signer(signer(keys)))
        return envelope_bytes(envelope.to_dict())

    good = json.loads(statement_bytes(_release()))
    nested = good | {"predicate": {**good["predicate"], "corpus": None}}
    assert parse_release(signed_payload(nested), [reader(keys)], "prod").corpus is None
    deep: list = []
    for _ in range(70):
        deep = [deep]
    variant = good["predicate"]["backbones"]["det"]["variants"][0]
    cases = {
        "nested deeper": good | {"predicate": {**good["predicate"], "corpus": deep}},
        "not an in-toto Statement": good | {"extra": 1},
        "exactly the keys": good | {"predicate": {**good["predicate"], "extra": 1}},
        "size must be a whole number": _with_variant(good, variant | {"size": 1.5}),
        "entry paths do not follow the bucket layout": _with_variant(
            good, variant | {"entry": variant["entry"] | {"base": "../../etc/" + variant["entry"]["base"]}}),
        "subjects or field order": good | {"subject": good["subject"][1:]},
        "predicateType": good | {"predicateType": "https://example.com/other"},
    }
    for reason, payload in cases.items():
        with pytest.raises(ReleaseError, match=reason):
            parse_release(signed_payload(payload), [reader(keys)], "prod")


def _with_variant(statement: dict, variant: dict) -> dict:
    predicate = json.loads(json.dumps(statement["predicate"]))
    predicate["backbones"]["det"]["variants"][0] = variant
    return statement | {"predicate": predicate}


def test_a_missing_file_is_one_line(keys, tmp_path):
    with pytest.raises(ReleaseError, match="cannot be read .*give the path of a file engines-release wrote"):
        load_release(tmp_path / "nothing.json", [reader(keys)], "prod")
