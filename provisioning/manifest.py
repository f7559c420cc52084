"""The manifest: what an engine was built from, kept beside it as JSON.

Its ``inputs`` block is the reuse key as data: the ONNX digest (external data included),
the build settings, the host identity, the backend and its version. An engine is reused
only when the recorded key equals today's, and a miss names the input that differed
(as ccache explains a miss). Paths and labels are recorded for people, never compared.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .sidecar import open_nofollow

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
_MAX_MANIFEST_BYTES = 1 << 20


def manifest_path_for(engine_path: Path) -> Path:
    """Where the manifest of ``engine_path`` lives."""
    return engine_path.with_name(engine_path.name + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class BuildInputs:
    """Everything that can change an engine's bytes or where it can run."""

    onnx_sha256: str
    build_settings: Mapping[str, Any]
    host: Mapping[str, Any]
    backend: str
    backend_version: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON form stored under ``inputs`` in the manifest."""
        return {
            "onnx_sha256": self.onnx_sha256,
            "build_settings": _plain(self.build_settings),
            "host": _plain(self.host),
            "backend": self.backend,
            "backend_version": self.backend_version,
        }


def _plain(value: Any) -> Any:
    """Normalise to what JSON round-trips (tuples become lists) so comparisons are exact."""
    return json.loads(json.dumps(value, sort_keys=True))


def explain_mismatch(recorded: Mapping[str, Any] | None, expected: BuildInputs) -> list[str]:
    """Human reasons why a recorded manifest does not match today's inputs (empty: it matches)."""
    if recorded is None:
        return ["manifest missing or unreadable"]
    if recorded.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        return [f"manifest schema {recorded.get('schema_version')!r} != {MANIFEST_SCHEMA_VERSION}"]
    have = recorded.get("inputs")
    if not isinstance(have, dict):
        return ["manifest has no inputs block"]
    want = expected.as_dict()
    reasons = []
    if have.get("onnx_sha256") != want["onnx_sha256"]:
        reasons.append("ONNX bytes changed (sha256 differs)")
    for block, label in (("build_settings", "build setting"), ("host", "host identity")):
        old, new = have.get(block) or {}, want[block]
        if not isinstance(old, dict):
            reasons.append(f"{label}s unreadable")
            continue
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                reasons.append(f"{label} '{key}' changed: {_short(old.get(key))} -> {_short(new.get(key))}")
    for key in ("backend", "backend_version"):
        if have.get(key) != want[key]:
            reasons.append(f"{key} changed: {_short(have.get(key))} -> {_short(want[key])}")
    return reasons


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def make_manifest(
    *,
    model_name: str,
    engine_path: Path,
    sha256: str,
    size: int,
    inputs: BuildInputs,
    onnx_path: Path,
    compile_duration_s: float | None,
    notes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest document for a freshly built engine."""
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "model_name": model_name,
        "engine": {"file_name": engine_path.name, "sha256": sha256, "size": size},
        "inputs": inputs.as_dict(),
        "build": {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": os.getpid(),
            "onnx_path": str(onnx_path),
            "compile_duration_s": compile_duration_s,
            "notes": _plain(dict(notes or {})),
        },
    }


def manifest_bytes(document: Mapping[str, Any]) -> bytes:
    """The manifest's file content (stable key order, so identical builds give identical files)."""
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"



def read_manifest(engine_path: Path) -> dict[str, Any] | None:
    """The manifest beside ``engine_path``, or None if missing, a symlink, or not JSON."""
    try:
        fd = open_nofollow(manifest_path_for(engine_path))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(_MAX_MANIFEST_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MAX_MANIFEST_BYTES:
        return None
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply to decode
        return None
    return document if isinstance(document, dict) else None
