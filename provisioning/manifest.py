"""The manifest: what an engine was built from, kept beside it as JSON.

Its ``inputs`` block is the reuse key as data: the ONNX digest (external data included),
the build settings, the host identity, the backend and its version. An engine is reused
only when the recorded key equals today's, and a miss names the input that differed
(as ccache explains a miss). Paths and labels are recorded for people, never compared.

One input is ordered rather than equal: a TensorRT *version-compatible* plan loads on the
runtime that built it and on any newer one of the same major, never on an older one. So
for such an engine ``backend_version`` matches when the recorded release is older than or
equal to today's (:func:`vc_builder_order`); a newer one is a miss whose reason starts with
:data:`NEWER_VC_BUILDER`, and :func:`built_by_newer_runtime` says so to a caller that must
not replace that engine (the compiler, the remote cache).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .versions import release_tuple
from .sidecar import open_nofollow

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
_MAX_MANIFEST_BYTES = 1 << 20
# the start of the one miss reason that means "valid, but for a newer runtime than this one"
NEWER_VC_BUILDER = "built by a newer TensorRT"


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
    if have.get("backend") != want["backend"]:
        reasons.append(f"backend changed: {_short(have.get('backend'))} -> {_short(want['backend'])}")
    order = vc_builder_order(have, want)
    if order == "newer":
        reasons.append(f"{NEWER_VC_BUILDER} {have.get('backend_version')} (a version-compatible plan loads only "
                       f"on its own or a newer runtime; this host runs {want['backend_version']})")
    elif order is None and have.get("backend_version") != want["backend_version"]:
        reasons.append(f"backend_version changed: {_short(have.get('backend_version'))} -> "
                       f"{_short(want['backend_version'])}")
    return reasons


def vc_builder_order(have: Mapping[str, Any], want: Mapping[str, Any]) -> str | None:
    """For two version-compatible TensorRT keys: 'older', 'equal' or 'newer' (the recorded builder's release).

    None when the rule does not apply: not both TensorRT, not both version-compatible, a
    release that is not numeric, or another major (the ``-vc`` name is per major), in which
    case ``backend_version`` is compared for equality like every other input.
    """
    if not (have.get("backend") == want.get("backend") == "tensorrt"):
        return None
    hosts = (have.get("host"), want.get("host"))
    if not all(isinstance(h, Mapping) and h.get("version_compatible") is True for h in hosts):
        return None
    old, new = (release_tuple(v) if isinstance(v, str) else () for v in (have.get("backend_version"),
                                                                          want.get("backend_version")))
    if not old or not new or old[0] != new[0]:
        return None
    return "older" if old < new else "equal" if old == new else "newer"


def built_by_newer_runtime(recorded: Mapping[str, Any] | None, expected: BuildInputs | Mapping[str, Any]) -> bool:
    """True when ``recorded`` is a version-compatible engine of a newer TensorRT than today's.

    Such an engine is valid for the hosts that built it and must not be replaced from this
    one: the compiler builds this host's own engine under the version-pinned name instead
    (:meth:`~provisioning.schema.EngineFilenameSchema.version_pinned`), and a remote cache
    leaves the remote entry in place. ``expected`` may be the ``inputs`` form (only its
    ``backend``, ``backend_version`` and ``host`` are read).
    """
    have = recorded.get("inputs") if isinstance(recorded, Mapping) else None
    want = expected.as_dict() if isinstance(expected, BuildInputs) else expected
    return isinstance(have, Mapping) and vc_builder_order(have, want) == "newer"


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
