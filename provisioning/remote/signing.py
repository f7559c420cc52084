"""Commit records of remote entries, and the keys that sign and verify them.

An entry is committed by one small text object, its *commit record*::

    provisioning-remote-entry/2
    namespace prod
    entry <host key>/<engine name>/<inputs digest>
    engine <sha256> <size>
    manifest <sha256>
    signature ed25519 <key id> <base64>

Everything above the ``signature`` line is the signed message, taken as raw bytes: a
verifier checks the signature over those bytes *before* it parses any of them, then
checks that the record names the entry it asked for (namespace, host key, engine name,
inputs digest), then fetches the content-addressed parts the record names and checks
their SHA-256 before parsing the manifest. So a signature can be neither moved to
another entry, nor to another namespace (staging entries copied into a prod prefix do not
verify there), nor kept across a changed engine or manifest.

Keys are named (as Nix's ``trusted-public-keys``): the builder's ``signing_key`` signs
with its id, and a host verifies with any key of its ring (the signing key plus
``trusted_keys``), optionally restricted to host-key prefixes. Each key id commits under
its own name (``commit/<key id>``), so during a rotation builders on the old and the new
key never replace each other's entries. Key material is held only inside
:class:`EntrySigner`; reprs, logs and errors name the key's *source* and id, never the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass
from typing import Iterable

from ..errors import ConfigError
from .config import KeySource, SigningKeyConfig
from .store import shown

SIGNATURE_SCHEMA = 2
HEADER = b"provisioning-remote-entry/2\n"
UNSIGNED = "unsigned"  # the commit name of an entry in an unsigned fleet
MAX_COMMIT_BYTES = 4096
_SHA = r"[0-9a-f]{64}"
_NAME = r"[A-Za-z0-9._-]{1,64}"
_ENTRY_PART = r"[!-.0-~]{1,255}"  # printable ASCII without space and "/"
_BODY_RE = re.compile(
    rb"provisioning-remote-entry/2\n"
    rb"namespace (" + _NAME.encode() + rb")\n"
    rb"entry (" + _ENTRY_PART.encode() + rb")/(" + _ENTRY_PART.encode() + rb")/([0-9a-f]{32})\n"
    rb"engine (" + _SHA.encode() + rb") ([0-9]{1,20})\n"
    rb"manifest (" + _SHA.encode() + rb")\n"
)
_SIG_RE = re.compile(rb"signature (?:none|(hmac-sha256|ed25519) (" + _NAME.encode() + rb") ([A-Za-z0-9+/=]{1,200}))\n")


def entry_message(namespace: str, host_key: str, engine_name: str, inputs_digest: str,
                  engine_sha256: str, size: int, manifest_sha256: str) -> bytes:
    """The signed part of a commit record (also what an unsigned record carries)."""
    return b"".join([
        HEADER,
        f"namespace {namespace}\n".encode(),
        f"entry {host_key}/{engine_name}/{inputs_digest}\n".encode(),
        f"engine {engine_sha256} {int(size)}\n".encode(),
        f"manifest {manifest_sha256}\n".encode(),
    ])


@dataclass(frozen=True)
class Commit:
    """A parsed, verified commit record."""

    namespace: str
    host_key: str
    engine_name: str
    inputs_digest: str
    engine_sha256: str
    size: int
    manifest_sha256: str
    key_id: str  # UNSIGNED for an unsigned record
    raw: bytes  # the record as stored (kept beside a fetched local entry)


class Unverified(Exception):
    """A remote entry exists but must not be used; the message is the reason (no key material)."""


def split_record(record: bytes) -> tuple[bytes, str, str | None, bytes | None]:
    """(signed body, algorithm or 'none', key id, raw signature) of a commit record, unparsed body."""
    if len(record) > MAX_COMMIT_BYTES:
        raise Unverified(f"commit record larger than {MAX_COMMIT_BYTES} bytes")
    cut = record.rfind(b"\nsignature ", 0, len(record))
    if cut < 0 or not record.endswith(b"\n"):
        raise Unverified("commit record is malformed (no signature line)")
    body, line = record[:cut + 1], record[cut + 1:]
    match = _SIG_RE.fullmatch(line)
    if match is None:
        raise Unverified("commit record's signature line is malformed")
    if match.group(1) is None:
        return body, "none", None, None
    algorithm = match.group(1).decode()
    try:
        raw = base64.b64decode(match.group(3), validate=True)
    except ValueError:
        raise Unverified("commit record's signature is not base64") from None
    return body, algorithm, match.group(2).decode(), raw


def parse_body(body: bytes, record: bytes, key_id: str) -> Commit:
    """The fields of a (verified, or knowingly unsigned) body."""
    match = _BODY_RE.fullmatch(body)
    if match is None:
        raise Unverified("commit record is malformed")
    groups = [g.decode() for g in match.groups()]
    return Commit(groups[0], groups[1], groups[2], groups[3], groups[4], int(groups[5]), groups[6], key_id, record)


class EntrySigner:
    """One named key: signs (HMAC secret or Ed25519 private key) and/or verifies."""

    def __init__(self, config: SigningKeyConfig, where: str, field: str = "signing_key") -> None:
        self.algorithm = config.algorithm
        self.host_key_prefixes: tuple[str, ...] = tuple(config.host_key_prefixes)
        self._hmac_key: bytes | None = None
        self._private = None
        self._public = None
        sources = [config.secret, config.private_key, config.public_key]
        self.source = ", ".join(src.describe() for src in sources if src is not None)  # names no secret
        if config.algorithm == "hmac-sha256":
            assert config.secret is not None
            self._hmac_key = _read(config.secret, where, field, secret=True)
            if len(self._hmac_key) < 16:
                raise ConfigError(
                    f"{where}: field 'remote.{field}': the key from {config.secret.describe()} is shorter than "
                    "16 bytes; use a random key, e.g. 32 bytes from /dev/urandom, hex-encoded"
                )
            fingerprint = hmac.new(self._hmac_key, b"provisioning key id", hashlib.sha256).hexdigest()[:16]
        else:
            self._load_ed25519(config, where, field)
            fingerprint = hashlib.sha256(_raw_public(self._public)).hexdigest()[:16]
        self.fingerprint = fingerprint
        self.key_id = config.key_id or fingerprint

    def _load_ed25519(self, config: SigningKeyConfig, where: str, field: str) -> None:
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
        except ImportError:
            raise ConfigError(
                f"{where}: field 'remote.{field}': ed25519 needs the cryptography package; "
                "install provisioning[remote]"
            ) from None
        for label, source in (("private_key", config.private_key), ("public_key", config.public_key)):
            if source is None:
                continue
            blob = _read(source, where, f"{field}.{label}", secret=False)
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
                    f"{where}: field 'remote.{field}.{label}': {source.describe()} is not an unencrypted "
                    f"Ed25519 PEM {label.replace('_', ' ')}"
                )
            if label == "private_key":
                self._private = key
                derived = key.public_key()
                if self._public is not None and _raw_public(self._public) != _raw_public(derived):
                    raise ConfigError(f"{where}: field 'remote.{field}': private_key and public_key do not match")
                self._public = derived
            elif self._private is not None and _raw_public(key) != _raw_public(self._public):
                raise ConfigError(f"{where}: field 'remote.{field}': private_key and public_key do not match")
            else:
                self._public = key

    def __repr__(self) -> str:
        return f"EntrySigner({self.algorithm}, key_id={self.key_id})"

    @property
    def can_sign(self) -> bool:
        """False for an Ed25519 verifier configured with only a public key."""
        return self._hmac_key is not None or self._private is not None

    def covers(self, host_key: str) -> bool:
        """True when this key may vouch for entries of ``host_key`` (its prefixes, if any)."""
        return not self.host_key_prefixes or any(host_key.startswith(p) for p in self.host_key_prefixes)

    @property
    def public_key(self):
        """The Ed25519 public key (a cryptography object; None for HMAC): what releases verify with."""
        return self._public

    def raw_signature(self, body: bytes) -> bytes:
        """This key's signature bytes over ``body`` (HMAC-SHA256 digest, or Ed25519 signature)."""
        if self._hmac_key is not None:
            return hmac.new(self._hmac_key, body, hashlib.sha256).digest()
        return self._private.sign(body)

    def signature_line(self, body: bytes) -> bytes:
        """The record's last line for ``body``."""
        raw = self.raw_signature(body)
        return f"signature {self.algorithm} {self.key_id} {base64.b64encode(raw).decode()}\n".encode()

    def sign(self, body: bytes) -> bytes:
        """A whole commit record: ``body`` followed by its signature line."""
        return body + self.signature_line(body)

    def check(self, body: bytes, raw: bytes) -> bool:
        """True when ``raw`` is this key's signature over ``body``."""
        if self._hmac_key is not None:
            return hmac.compare_digest(raw, hmac.new(self._hmac_key, body, hashlib.sha256).digest())
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(raw, body)
        except InvalidSignature:
            return False
        return True


class KeyRing:
    """The keys one host trusts (its signing key first), by id; and the one it signs with."""

    def __init__(self, signer: EntrySigner | None, trusted: Iterable[EntrySigner] = ()) -> None:
        self.signer = signer
        self.keys: dict[str, EntrySigner] = {}
        for key in ([signer] if signer is not None else []) + list(trusted):
            self.keys.setdefault(key.key_id, key)

    def __repr__(self) -> str:
        return f"KeyRing(signs={self.signing_id!r}, trusts={sorted(self.keys)})"

    @property
    def signing_id(self) -> str | None:
        """The id new entries are committed under (None: this host cannot sign)."""
        return self.signer.key_id if self.signer is not None and self.signer.can_sign else None

    def ids_for(self, host_key: str) -> list[str]:
        """The commit names worth reading for ``host_key``, own key first."""
        return [key_id for key_id, key in self.keys.items() if key.covers(host_key)]

    def verify(self, record: bytes, key_id: str) -> tuple[bytes, str]:
        """(signed body, key id) of ``record`` read under ``commit/<key_id>``; Unverified if it fails."""
        body, algorithm, signed_by, raw = split_record(record)
        if algorithm == "none":
            raise Unverified("entry is not signed")
        if signed_by != key_id:
            raise Unverified(f"commit record of key {shown(key_id, 64)} is signed by {shown(signed_by, 64)}")
        key = self.keys.get(key_id)
        if key is None:
            raise Unverified(f"entry is signed with key id {shown(key_id, 64)}, which this host does not trust")
        if algorithm != key.algorithm:
            raise Unverified(f"entry is signed with {algorithm}, key {shown(key_id, 64)} is {key.algorithm}")
        if not key.check(body, raw):
            raise Unverified(f"signature by key {shown(key_id, 64)} does not match the entry")
        return body, key_id


def unsigned_record(body: bytes) -> bytes:
    """The commit record of an unsigned fleet."""
    return body + b"signature none\n"


def _raw_public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read(source: KeySource, where: str, field: str, *, secret: bool) -> bytes:
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
        data = _read_key_file(source.file)
    except _NotAKeyFile as exc:
        raise ConfigError(f"{where}: field 'remote.{field}': key file {source.file} {exc}") from None
    except OSError as exc:
        raise ConfigError(
            f"{where}: field 'remote.{field}': cannot read key file {source.file} ({exc.strerror or type(exc).__name__})"
        ) from None
    if not data.strip():
        raise ConfigError(f"{where}: field 'remote.{field}': key file {source.file} is empty")
    return data.strip() if secret else data


MAX_KEY_FILE_BYTES = 64 << 10  # a PEM key or a hex secret is well under 1 KiB


class _NotAKeyFile(Exception):
    """The key file is there but cannot be a key; the message says why (never the content)."""


def _read_key_file(path) -> bytes:
    """At most 64 KiB of a regular file; links are followed (mounted secrets are links).

    The open is non-blocking, so a FIFO returns at once instead of waiting for a writer,
    and anything but a regular file (a FIFO, /dev/zero, a folder) is refused before a
    byte is read; the read is capped, so a huge file cannot take the memory.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotAKeyFile("is not a regular file (a FIFO, device or folder); point the field at the key file")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= MAX_KEY_FILE_BYTES:
            chunk = os.read(fd, MAX_KEY_FILE_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > MAX_KEY_FILE_BYTES:
        raise _NotAKeyFile(f"is larger than {MAX_KEY_FILE_BYTES // 1024} KiB, too large for a key; point the field at "
                           "the key file")
    return b"".join(chunks)
