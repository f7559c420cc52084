"""The fleet's keys as securesystemslib keys and signers, for signing and verifying releases.

A release is signed with the fleet's ``signing_key`` and verified with the keys a host
trusts, exactly those of ``remote.signing_key`` and ``remote.trusted_keys``, loaded once by
:class:`~provisioning.remote.signing.EntrySigner`: no key is read twice, and key material
never leaves it. Ed25519 keys become securesystemslib's own :class:`SSlibKey` (so any
securesystemslib user verifies a release with the public key alone); an HMAC-SHA256 fleet
key becomes the small :class:`HmacKey` below (symmetric: whoever verifies can also sign,
which is why fleets should give their readers Ed25519 public keys).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..remote.signing import EntrySigner, KeyRing
from .errors import ReleaseError

HMAC_KEYTYPE = "hmac"
HMAC_SCHEME = "hmac-sha256"


def _sslib():
    try:
        from securesystemslib import exceptions
        from securesystemslib.signer import Key, Signature, Signer, SSlibKey
    except ImportError:  # pragma: no cover - an install without the remote extra
        raise ReleaseError("releases need securesystemslib; install provisioning[remote]") from None
    return exceptions, Key, Signature, Signer, SSlibKey


def sslib_key(entry: EntrySigner) -> Any:
    """The securesystemslib verification key of ``entry`` (its keyid is the fleet key id)."""
    exceptions, Key, Signature, Signer, SSlibKey = _sslib()
    if entry.algorithm == "ed25519":
        return SSlibKey.from_crypto(entry.public_key, keyid=entry.key_id)
    return _hmac_key_class()(entry)


def sslib_signer(entry: EntrySigner) -> Any:
    """A securesystemslib Signer that signs with ``entry`` (HMAC or Ed25519 private key)."""
    exceptions, Key, Signature, Signer, SSlibKey = _sslib()
    public = sslib_key(entry)

    class FleetSigner(Signer):
        """Signs through the EntrySigner; the private key stays inside it."""

        def sign(self, payload: bytes) -> Signature:
            return Signature(entry.key_id, entry.raw_signature(payload).hex())

        @property
        def public_key(self) -> Any:
            return public

        @classmethod
        def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None):  # pragma: no cover
            raise NotImplementedError("fleet signers are made from the remote config")

    return FleetSigner()


_HMAC_CLASS = None


def _hmac_key_class():
    """securesystemslib Key subclass for an HMAC-SHA256 fleet key (made once, lazily)."""
    global _HMAC_CLASS
    if _HMAC_CLASS is not None:
        return _HMAC_CLASS
    exceptions, Key, Signature, Signer, SSlibKey = _sslib()

    class HmacKey(Key):
        """HMAC-SHA256 verification through the EntrySigner (no key bytes in keyval)."""

        def __init__(self, entry: EntrySigner) -> None:
            super().__init__(entry.key_id, HMAC_KEYTYPE, HMAC_SCHEME, {})
            self._entry = entry

        def verify_signature(self, signature, data: bytes) -> None:
            try:
                raw = bytes.fromhex(signature.signature)
            except ValueError:
                raise exceptions.UnverifiedSignatureError("signature is not hex") from None
            if signature.keyid != self.keyid or not self._entry.check(data, raw):
                raise exceptions.UnverifiedSignatureError(f"HMAC signature of key {self.keyid} does not match")

        def to_dict(self) -> dict[str, Any]:
            return {"keytype": self.keytype, "scheme": self.scheme, "keyval": {}}

        @classmethod
        def from_dict(cls, keyid: str, key_dict: dict[str, Any]):  # pragma: no cover
            raise NotImplementedError("HMAC keys come from the remote config, never from a document")

    _HMAC_CLASS = HmacKey
    return HmacKey


def trusted_entries(keys: KeyRing | EntrySigner | Iterable[EntrySigner]) -> list[EntrySigner]:
    """The verification keys of a key ring (its signing key and trusted keys), or of a list of keys."""
    if isinstance(keys, KeyRing):
        return list(keys.keys.values())
    if isinstance(keys, EntrySigner):
        return [keys]
    return list(keys)


def signing_entry(signer: KeyRing | EntrySigner) -> EntrySigner | None:
    """The key that signs: a ring's signing key, or the EntrySigner itself; None when it cannot sign."""
    entry = signer.signer if isinstance(signer, KeyRing) else signer
    return entry if entry is not None and entry.can_sign else None
