"""The release file: a DSSE envelope holding an in-toto Statement v1 (see docs/releases.md).

::

    {"payload": <base64 of the Statement>, "payloadType": "application/vnd.in-toto+json",
     "signatures": [{"keyid": "<fleet key id>", "sig": <base64>}]}

The Statement's subjects are the engines (canonical file name and SHA-256); its predicate
(:data:`PREDICATE_TYPE`) lists, per backbone, every variant: where it runs, what it was
built from and where its entry lives in the bucket. The payload is canonical JSON (sorted
keys, no spaces) and the envelope too, so the same inputs give the same bytes; the only
time in it is the explicit ``created`` field.

The envelope is made and checked by securesystemslib (DSSE signs the PAE of payload type
and payload, never the raw payload). :func:`load_release` refuses, with one line each
(:class:`ReleaseError`, exit code 2): a file over 16 MiB or nested deeper than 64, anything
but this envelope, a signature by no trusted key or one that does not verify, an envelope
not byte-for-byte in the form written here (so editing any byte is refused), another
namespace, and a predicate that is not exactly this format. A trusted key restricted to
``host_key_prefixes`` vouches only for the variants of those host keys: the others are
left out of the returned release and listed in :attr:`Release.untrusted`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..remote.signing import EntrySigner, KeyRing
from ..schema import EngineFilenameSchema
from ..sidecar import open_nofollow
from .errors import ReleaseError  # noqa: F401 (re-exported: release.format.ReleaseError)
from .parse import check_predicate
from .keys import signing_entry, sslib_key, sslib_signer, trusted_entries

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://github.com/provisioning/engine-release/v1"
MAX_RELEASE_BYTES = 16 << 20
MAX_DEPTH = 64
BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx")

__all__ = [
    "BACKENDS", "BackboneVariants", "Compatibility", "EntryRef", "MAX_DEPTH", "MAX_RELEASE_BYTES", "PAYLOAD_TYPE",
    "PREDICATE_TYPE", "Release", "ReleaseError", "STATEMENT_TYPE", "TiedTo", "Variant", "canonical_json",
    "envelope_bytes", "load_release", "parse_release", "sign_release", "statement", "statement_bytes",
]


@dataclass(frozen=True)
class TiedTo:
    """What an engine is tied to: a GPU (model and compute capability, either may be None) or a CPU ISA."""

    kind: str  # "gpu" or "cpu"
    gpu_model: str | None = None
    compute_capability: str | None = None  # "9.0"
    machine: str | None = None
    isa: str | None = None  # the host key's ISA tier: avx512, avx2, neon, sve, base

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "gpu":
            return {"kind": "gpu", "gpu_model": self.gpu_model, "compute_capability": self.compute_capability}
        return {"kind": "cpu", "machine": self.machine, "isa": self.isa}


@dataclass(frozen=True)
class Compatibility:
    """Where else a plan loads: TensorRT version/hardware compatibility, TensorRT-RTX targets."""

    version_compatible: bool = False
    hardware_compatibility: str = "none"
    rtx_targets: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"version_compatible": self.version_compatible, "hardware_compatibility": self.hardware_compatibility,
                "rtx_targets": list(self.rtx_targets)}


@dataclass(frozen=True)
class EntryRef:
    """Where a variant's entry lives in the bucket, relative to the remote prefix (layout 2)."""

    base: str  # <host key>/<engine name>/<inputs digest>
    inputs_digest: str
    engine: str  # engine/<sha256>
    manifest: str  # manifest/<sha256>
    commit: str  # commit/<key id>

    def as_dict(self) -> dict[str, Any]:
        return {"base": self.base, "inputs_digest": self.inputs_digest, "engine": self.engine,
                "manifest": self.manifest, "commit": self.commit}


@dataclass(frozen=True)
class Variant:
    """One engine of a backbone, for one host identity."""

    engine: str
    sha256: str
    size: int
    model_name: str
    host_key: str
    backend: str
    backend_version: str
    tied_to: TiedTo
    compatibility: Compatibility
    manifest_sha256: str
    settings_sha256: str  # canonical SHA-256 of this variant's build settings
    entry: EntryRef
    validation: Mapping[str, Any] | None = field(default=None, hash=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "sha256": self.sha256, "size": self.size, "model_name": self.model_name,
            "host_key": self.host_key, "backend": self.backend, "backend_version": self.backend_version,
            "tied_to": self.tied_to.as_dict(), "compatibility": self.compatibility.as_dict(),
            "manifest_sha256": self.manifest_sha256, "settings_sha256": self.settings_sha256,
            "entry": self.entry.as_dict(),
            "validation": json.loads(json.dumps(self.validation)) if self.validation is not None else None,
        }


@dataclass(frozen=True)
class BackboneVariants:
    """Every variant of one backbone, all built from the same ONNX and settings."""

    model_name: str
    onnx_sha256: str
    settings_sha256: str  # canonical SHA-256 of {backend: build settings} over every backend
    variants: tuple[Variant, ...] = ()  # kept sorted by host key, engine name, SHA-256

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(sorted(self.variants, key=lambda v: (v.host_key, v.engine,
                                                                                           v.sha256))))

    def as_dict(self) -> dict[str, Any]:
        return {"onnx_sha256": self.onnx_sha256, "settings_sha256": self.settings_sha256,
                "variants": [v.as_dict() for v in self.variants]}


@dataclass(frozen=True)
class Release:
    """A release's content; ``signed_by`` and ``untrusted`` are filled by :func:`load_release` only."""

    created: str
    namespace: str
    remote: str
    corpus: str | None
    backbones: tuple[BackboneVariants, ...] = ()  # kept sorted by model name
    signed_by: tuple[str, ...] = field(default=(), compare=False)
    untrusted: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)  # (model, host key, why)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backbones", tuple(sorted(self.backbones, key=lambda b: b.model_name)))

    def backbone(self, model_name: str) -> BackboneVariants | None:
        """The backbone named ``model_name``, or None."""
        return next((b for b in self.backbones if b.model_name == model_name), None)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(sorted(b.model_name for b in self.backbones))

    def variants(self) -> Iterable[Variant]:
        """Every variant, backbone by backbone (sorted)."""
        for backbone in self.backbones:
            yield from backbone.variants


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the one byte form of a document."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def statement(release: Release) -> dict[str, Any]:
    """The in-toto Statement v1 of ``release`` (a plain dict; integers stay integers)."""
    subjects = sorted({(v.engine, v.sha256) for v in release.variants()})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": sha}} for name, sha in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "created": release.created, "namespace": release.namespace, "remote": release.remote,
            "corpus": release.corpus,
            "backbones": {b.model_name: b.as_dict() for b in release.backbones},
        },
    }


def statement_bytes(release: Release) -> bytes:
    """The signed payload: the Statement as canonical JSON."""
    return canonical_json(statement(release))


def envelope_bytes(envelope: Mapping[str, Any]) -> bytes:
    """A DSSE envelope's file form: canonical JSON and one newline."""
    signatures = sorted(envelope["signatures"], key=lambda s: (s.get("keyid", ""), s.get("sig", "")))
    return canonical_json({**envelope, "signatures": signatures}) + b"\n"


def sign_release(release: Release, signer: KeyRing | EntrySigner) -> bytes:
    """The release file: ``release``'s Statement in a DSSE envelope signed with the fleet's signing key."""
    from securesystemslib.dsse import Envelope

    entry = signing_entry(signer)
    if entry is None:
        raise ReleaseError("a release must be signed: this config has no signing key that can sign; "
                           "set remote.signing_key (with its private_key for ed25519)")
    envelope = Envelope(payload=statement_bytes(release), payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(sslib_signer(entry))
    return envelope_bytes(envelope.to_dict())


def load_release(path: str | os.PathLike, keys: KeyRing | EntrySigner | Iterable[EntrySigner],
                 namespace: str) -> Release:
    """Read, verify and parse the release at ``path`` (see the module docstring); ReleaseError otherwise."""
    path = Path(path)
    try:
        fd = open_nofollow(path)
    except OSError as exc:
        raise ReleaseError(f"release {path}: cannot be read ({exc.strerror or type(exc).__name__}); "
                           "give the path of a file engines-release wrote") from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_RELEASE_BYTES + 1)
    return parse_release(data, keys, namespace, str(path))


def parse_release(data: bytes, keys: KeyRing | EntrySigner | Iterable[EntrySigner], namespace: str,
                  where: str = "release") -> Release:
    """Verify and parse the bytes of a release file (``where`` names it in errors)."""
    from securesystemslib.dsse import Envelope

    def fail(message: str) -> ReleaseError:
        return ReleaseError(f"release {where}: {message}")

    if len(data) > MAX_RELEASE_BYTES:
        raise fail(f"larger than {MAX_RELEASE_BYTES >> 20} MiB; not a release engines-release wrote")
    document = _json(data, fail, "file")
    if not isinstance(document, dict) or set(document) != {"payload", "payloadType", "signatures"}:
        raise fail("not a DSSE envelope (payload, payloadType, signatures); give a file engines-release wrote")
    if document["payloadType"] != PAYLOAD_TYPE:
        raise fail(f"payloadType is {_shown(document['payloadType'])}, not {PAYLOAD_TYPE}")
    sigs = document["signatures"]
    if (not isinstance(sigs, list) or not sigs or not isinstance(document["payload"], str)
            or not all(isinstance(s, dict) and set(s) == {"keyid", "sig"} and all(isinstance(v, str) for v in s.values())
                       for s in sigs)):
        raise fail("not a signed DSSE envelope (signatures must be a list of {keyid, sig}); the release is unsigned")
    try:
        envelope = Envelope.from_dict(json.loads(data))
    except Exception:
        raise fail("DSSE envelope cannot be decoded (payload or signature is not base64)") from None
    entries = trusted_entries(keys)
    by_id = {entry.key_id: entry for entry in entries}
    signed_ids = sorted(envelope.signatures)
    verified: list[EntrySigner] = []
    forged: list[str] = []
    for key_id in signed_ids:
        entry = by_id.get(key_id)
        if entry is None:
            continue
        try:
            envelope.verify([sslib_key(entry)], 1)
        except Exception:
            forged.append(key_id)
            continue
        verified.append(entry)
    if not verified:
        if forged:
            raise fail(f"the signature of key {_shown(forged[0])} does not match the release (edited or forged); "
                       "use the file as engines-release wrote it")
        raise fail(f"signed by key(s) {', '.join(_shown(k) for k in signed_ids)}, none of which this host trusts "
                   f"(trusted: {', '.join(sorted(by_id)) or 'none'}); add the release key to remote.trusted_keys")
    if envelope_bytes(envelope.to_dict()) != data:
        raise fail("not byte-for-byte as engines-release wrote it (edited after signing); use the original file")
    payload = _json(envelope.payload, fail, "payload")
    if canonical_json(payload) != envelope.payload:
        raise fail("payload is not canonical JSON; it was not written by engines-release")
    release = _from_statement(payload, fail)
    if release.namespace != namespace:
        raise fail(f"belongs to namespace {_shown(release.namespace)}, this host's is {namespace!r}; "
                   "pull a release of this namespace")
    return _trusted_part(release, verified)


def _trusted_part(release: Release, verified: list[EntrySigner]) -> Release:
    """``release`` with only the variants some verifying key vouches for (host_key_prefixes)."""
    untrusted: list[tuple[str, str, str]] = []
    backbones = []
    for backbone in release.backbones:
        kept = []
        for variant in backbone.variants:
            if any(key.covers(variant.host_key) for key in verified):
                kept.append(variant)
            else:
                untrusted.append((backbone.model_name, variant.host_key,
                                  f"key {', '.join(k.key_id for k in verified)} does not vouch for host key "
                                  f"{variant.host_key} (host_key_prefixes)"))
        backbones.append(BackboneVariants(backbone.model_name, backbone.onnx_sha256, backbone.settings_sha256,
                                          tuple(kept)))
    return Release(release.created, release.namespace, release.remote, release.corpus, tuple(backbones),
                   signed_by=tuple(k.key_id for k in verified), untrusted=tuple(untrusted))


def _from_statement(payload: Any, fail) -> Release:
    if not isinstance(payload, dict) or set(payload) != {"_type", "subject", "predicateType", "predicate"}:
        raise fail("payload is not an in-toto Statement (_type, subject, predicateType, predicate)")
    if payload["_type"] != STATEMENT_TYPE:
        raise fail(f"payload _type is {_shown(payload['_type'])}, not {STATEMENT_TYPE}")
    if payload["predicateType"] != PREDICATE_TYPE:
        raise fail(f"predicateType is {_shown(payload['predicateType'])}, not {PREDICATE_TYPE}")
    head = payload["predicate"]
    try:
        check_predicate(head)
        backbones = tuple(
            BackboneVariants(model, raw["onnx_sha256"], raw["settings_sha256"],
                             tuple(_variant_from(model, v) for v in raw["variants"]))
            for model, raw in head["backbones"].items()
        )
    except ValueError as exc:
        raise fail(f"predicate: {exc}") from None
    release = Release(head["created"], head["namespace"], head["remote"], head["corpus"], backbones)
    if statement(release) != payload:
        raise fail("subjects or field order do not match the predicate's variants")
    return release


def _variant_from(model: str, raw: Mapping[str, Any]) -> Variant:
    """A variant from its predicate form (its shape was checked by parse.check_variant)."""
    tied, compat, entry = raw["tied_to"], raw["compatibility"], raw["entry"]
    variant = Variant(
        engine=raw["engine"], sha256=raw["sha256"], size=raw["size"], model_name=raw["model_name"],
        host_key=raw["host_key"], backend=raw["backend"], backend_version=raw["backend_version"],
        tied_to=TiedTo(**tied),
        compatibility=Compatibility(compat["version_compatible"], compat["hardware_compatibility"],
                                    tuple(compat["rtx_targets"])),
        manifest_sha256=raw["manifest_sha256"], settings_sha256=raw["settings_sha256"],
        entry=EntryRef(**entry), validation=raw["validation"],
    )
    try:
        parsed = EngineFilenameSchema.parse(variant.engine)
    except ValueError:
        raise ValueError(f"variant engine {_shown(variant.engine)} is not a canonical engine file name") from None
    if variant.model_name != model or parsed.model_name != model or parsed.host_key != variant.host_key:
        raise ValueError(f"variant {_shown(variant.engine)} is filed under backbone {_shown(model)} or host key "
                         f"{_shown(variant.host_key)} that its name does not carry")
    expected = EntryRef(f"{variant.host_key}/{variant.engine}/{variant.entry.inputs_digest}",
                        variant.entry.inputs_digest, f"engine/{variant.sha256}",
                        f"manifest/{variant.manifest_sha256}", variant.entry.commit)
    if variant.entry != expected or not re.fullmatch(r"commit/[A-Za-z0-9._-]{1,64}", variant.entry.commit):
        raise ValueError(f"variant {_shown(variant.engine)}: entry paths do not follow the bucket layout")
    return variant


def _json(data: bytes, fail, what: str) -> Any:
    try:
        value = json.loads(data)
    except RecursionError:
        raise fail(f"{what} is nested deeper than {MAX_DEPTH}; not a release") from None
    except (ValueError, UnicodeDecodeError):
        raise fail(f"{what} is not JSON; give a file engines-release wrote") from None
    if _depth(value) > MAX_DEPTH:
        raise fail(f"{what} is nested deeper than {MAX_DEPTH}; not a release")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, iteratively (stops counting past MAX_DEPTH)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _shown(value: object, cap: int = 64) -> str:
    text = value if isinstance(value, str) else repr(value)
    return ascii(text[:cap]) + ("..." if len(text) > cap else "")
