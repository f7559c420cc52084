"""Signatures over a remote entry's manifest and sidecar (HMAC-SHA256 or Ed25519).

The signed message binds the entry's location (host key and engine name), the manifest
bytes (what it was built from) and the sidecar (the engine's SHA-256), so a signature can
be neither moved to another entry nor kept across a changed engine. Key material is held
only inside :class:`EntrySigner`; its repr, every log line and every error name the key's
*source* (``env VAR`` / ``file PATH``) and a non-secret key id, never the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from ..errors import ConfigError
from .config import KeySource, SigningKeyConfig
from .store import shown

SIGNATURE_SCHEMA = 1
_DOMAIN = b"provisioning-remote-entry/1\n"


def entry_message(host_key: str, engine_name: str, manifest: bytes, sidecar: bytes) -> bytes:
    """The bytes a signature covers."""
    return b"".join([
        _DOMAIN,
        f"{host_key}/{engine_name}\n".encode(),
        hashlib.sha256(manifest).hexdigest().encode(), b"\n",
        hashlib.sha256(sidecar).hexdigest().encode(), b"\n",
    ])


@dataclass(frozen=True)
class SignatureCheck:
    """Whether an entry's signature verified, and if not, why (no key material)."""

    ok: bool
    reason: str


class EntrySigner:
    """Signs and verifies entries with the configured key; the key never leaves this object."""

    def __init__(self, config: SigningKeyConfig, where: str) -> None:
        self.algorithm = config.algorithm
        self._hmac_key: bytes | None = None
        self._private = None
        self._public = None
        if config.algorithm == "hmac-sha256":
            assert config.secret is not None
            self._hmac_key = _read(config.secret, where, "signing_key")
            if len(self._hmac_key) < 16:
                raise ConfigError(
                    f"{where}: field 'remote.signing_key': the key from {config.secret.describe()} is shorter than "
                    "16 bytes; use a random key, e.g. 32 bytes from /dev/urandom, hex-encoded"
                )
            self.key_id = hmac.new(self._hmac_key, b"provisioning key id", hashlib.sha256).hexdigest()[:16]
        else:
            self._load_ed25519(config, where)

    def _load_ed25519(self, config: SigningKeyConfig, where: str) -> None:
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
        except ImportError:
            raise ConfigError(
                f"{where}: field 'remote.signing_key': ed25519 needs the cryptography package; "
                "install provisioning[remote]"
            ) from None
        for label, source in (("private_key", config.private_key), ("public_key", config.public_key)):
            if source is None:
                continue
            blob = _read(source, where, f"signing_key.{label}")
            try:
                if label == "private_key":
                    key = serialization.load_pem_private_key(blob, password=None)
                    ok = isinstance(key, Ed25519PrivateKey)
                else:
                    key = serialization.load_pem_public_key(blob)
                    ok = isinstance(key, Ed25519PublicKey)
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise ConfigError(
                    f"{where}: field 'remote.signing_key.{label}': {source.describe()} is not an unencrypted "
                    f"Ed25519 PEM {label.replace('_', ' ')}"
                )
            if label == "private_key":
                self._private = key
                derived = key.public_key()
                if self._public is not None and _raw_public(self._public) != _raw_public(derived):
                    raise ConfigError(f"{where}: field 'remote.signing_key': private_key and public_key do not match")
                self._public = derived
            elif self._private is not None and _raw_public(key) != _raw_public(self._public):
                raise ConfigError(f"{where}: field 'remote.signing_key': private_key and public_key do not match")
            else:
                self._public = key
        self.key_id = hashlib.sha256(_raw_public(self._public)).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"EntrySigner({self.algorithm}, key_id={self.key_id})"

    @property
    def can_sign(self) -> bool:
        """False for an Ed25519 verifier configured with only a public key."""
        return self._hmac_key is not None or self._private is not None

    def sign(self, message: bytes) -> bytes:
        """The ``sig`` object stored beside the entry (JSON)."""
        if self._hmac_key is not None:
            raw = hmac.new(self._hmac_key, message, hashlib.sha256).digest()
        else:
            raw = self._private.sign(message)
        document = {"schema": SIGNATURE_SCHEMA, "algorithm": self.algorithm, "key_id": self.key_id,
                    "signature": base64.b64encode(raw).decode()}
        return json.dumps(document, sort_keys=True).encode() + b"\n"

    def verify(self, message: bytes, sig_object: bytes | None) -> SignatureCheck:
        """Check a stored ``sig`` object against ``message``."""
        if sig_object is None:
            return SignatureCheck(False, "entry is not signed")
        try:
            document = json.loads(sig_object)
            algorithm, key_id = document["algorithm"], document["key_id"]
            raw = base64.b64decode(document["signature"], validate=True)
        except (ValueError, KeyError, TypeError, RecursionError):  # remote content: never let it escape
            return SignatureCheck(False, "signature object is malformed")
        if algorithm != self.algorithm:
            return SignatureCheck(False, f"entry is signed with {shown(algorithm, 20)}, this host expects {self.algorithm}")
        if key_id != self.key_id:
            return SignatureCheck(False, f"entry is signed with another key (key id {shown(key_id, 16)}, "
                                         f"this host's is {self.key_id})")
        if self._hmac_key is not None:
            good = hmac.compare_digest(raw, hmac.new(self._hmac_key, message, hashlib.sha256).digest())
        else:
            from cryptography.exceptions import InvalidSignature

            try:
                self._public.verify(raw, message)
                good = True
            except InvalidSignature:
                good = False
        return SignatureCheck(True, "signature verified") if good else SignatureCheck(False, "signature does not match the entry")


def _raw_public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read(source: KeySource, where: str, field: str) -> bytes:
    """Key bytes from the environment or a file; errors name the source, never content."""
    if source.env is not None:
        value = os.environ.get(source.env)
        if not value:
            raise ConfigError(
                f"{where}: field 'remote.{field}': environment variable {source.env} is not set; export the key there"
            )
        return value.strip().encode()
    assert source.file is not None
    try:
        data = source.file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{where}: field 'remote.{field}': cannot read key file {source.file} ({exc.strerror or type(exc).__name__})"
        ) from None
    if not data.strip():
        raise ConfigError(f"{where}: field 'remote.{field}': key file {source.file} is empty")
    return data.strip() if field == "signing_key" else data
