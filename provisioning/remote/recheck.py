"""Re-check the commit records kept beside fetched engines against today's trusted keys.

A fetched engine keeps the commit record that vouched for it (``<engine>.commit``), and
``events.jsonl`` records the key id. When a key is revoked (removed from ``signing_key``
and ``trusted_keys``), ``doit engines-status --verify-signatures`` finds every local engine
that only that key vouched for, so it can be deleted and fetched or built again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..manifest import manifest_path_for, read_manifest
from ..sidecar import Sha256Sidecar, hash_file, open_nofollow
from . import key_ring, remote_config_of
from .cache import commit_path_for
from .layout import inputs_digest
from .signing import MAX_COMMIT_BYTES, UNSIGNED, Unverified, parse_body, split_record
from .errors import shown

OK, BUILT_HERE, ABSENT, REJECTED = "signed", "built-here", "absent", "rejected"


@dataclass(frozen=True)
class SignatureRow:
    """One backbone's answer."""

    model_name: str
    engine: str
    state: str  # signed | built-here | absent | rejected
    key_id: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "engine": self.engine, "state": self.state, "key_id": self.key_id,
                "detail": self.detail}


def recheck_signatures(config: Any, engines: Iterable[tuple[str, Path]]) -> list[SignatureRow]:
    """A row per ``(model_name, engine_path)``; ``rejected`` rows are what a revoked key left behind."""
    remote = remote_config_of(config)
    ring = key_ring(remote) if remote is not None else None
    namespace = remote.namespace if remote is not None else "default"
    unsigned_ok = ring is None or (remote is not None and not remote.require_signature)
    rows = []
    for model, engine_path in engines:
        rows.append(_row(model, Path(engine_path), ring, namespace, unsigned_ok))
    return rows


def _row(model: str, engine_path: Path, ring: Any, namespace: str, unsigned_ok: bool) -> SignatureRow:
    name = engine_path.name
    if not engine_path.is_file():
        return SignatureRow(model, name, ABSENT, None, "no engine in the cache")
    record = _read(commit_path_for(engine_path))
    if record is None:
        return SignatureRow(model, name, BUILT_HERE, None, "built on this host (no remote commit record)")
    try:
        body, algorithm, key_id, _ = split_record(record)
        if algorithm == "none":
            if not unsigned_ok:
                raise Unverified("fetched unsigned, and this host now requires signatures")
            key_id = UNSIGNED
        else:
            if ring is None:
                raise Unverified(f"signed by key id {shown(key_id, 64)}, and this host trusts no key")
            body, key_id = ring.verify(record, key_id)
        commit = parse_body(body, record, key_id)
        sidecar = Sha256Sidecar.read(engine_path)
        if sidecar is None or sidecar.sha256 != commit.engine_sha256:
            return SignatureRow(model, name, BUILT_HERE, None,
                                "rebuilt on this host after a fetch (the old commit record no longer applies)")
        if commit.namespace != namespace:
            raise Unverified(f"fetched from namespace {shown(commit.namespace)}, this host's is {namespace!r}")
        manifest = read_manifest(engine_path)
        inputs = manifest.get("inputs") if isinstance(manifest, dict) else None
        if commit.engine_name != name or not isinstance(inputs, dict) or inputs_digest(inputs) != commit.inputs_digest:
            raise Unverified("the commit record names another entry")
        detail = f"signed by key id {key_id}" if key_id != UNSIGNED else "fetched unsigned"
        if _sha_of(manifest_path_for(engine_path)) != commit.manifest_sha256:
            detail += " (manifest since updated here, e.g. a validation record)"
        return SignatureRow(model, name, OK, key_id, detail)
    except Unverified as exc:
        return SignatureRow(model, name, REJECTED, None,
                            f"{exc}; delete the engine (doit engines-gc or rm) and run doit engines again")


def _read(path: Path) -> bytes | None:
    try:
        fd = open_nofollow(path)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_COMMIT_BYTES + 1)


def _sha_of(path: Path) -> str | None:
    try:
        return hash_file(path)
    except OSError:
        return None
