"""The validation record of a cached engine: which criteria it passed, read without numpy.

A backbone with ``validate:`` is reused only when its manifest records a passing
validation under today's criteria (the ``.npz`` of inputs by digest). Changing the
criteria does not change the engine's identity: a cached engine that lacks the record is
validated again and, on success, its manifest is rewritten atomically (the sidecar, which
vouches for the engine's bytes, is untouched). The running of engines lives in
:mod:`provisioning.backends.qualify`.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .manifest import manifest_bytes, manifest_path_for
from .sidecar import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .specs import BackboneSpec


def criteria_record(spec: "BackboneSpec") -> dict[str, Any]:
    """Today's validation criteria of ``spec`` as the manifest records them."""
    criteria = spec.criteria
    record = criteria.as_dict()
    file = criteria.inputs_file
    record["inputs_file_sha256"] = hashlib.sha256(file.read_bytes()).hexdigest() if file is not None else None
    return record


def validation_of(manifest: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The validation report recorded in a manifest's notes, or None."""
    build = manifest.get("build") if isinstance(manifest, Mapping) else None
    notes = build.get("notes") if isinstance(build, Mapping) else None
    report = notes.get("validation") if isinstance(notes, Mapping) else None
    return report if isinstance(report, Mapping) else None


def validation_matches(manifest: Mapping[str, Any] | None, spec: "BackboneSpec") -> bool:
    """True when no validation is asked for, or the manifest records a pass under today's criteria."""
    if not spec.criteria.enabled:
        return True
    report = validation_of(manifest)
    if report is None or report.get("passed") is not True:
        return False
    try:
        return report.get("criteria") == criteria_record(spec)
    except OSError:  # the .npz vanished: validation cannot be vouched for
        return False


def why_not_validated(manifest: Mapping[str, Any] | None, spec: "BackboneSpec") -> str:
    """A miss reason for an engine whose validation record does not cover today's criteria."""
    report = validation_of(manifest)
    if report is None:
        return "no validation recorded for this engine"
    if report.get("passed") is not True:
        return "its recorded validation did not pass"
    return "validation criteria changed since it was validated"


def record_validation(engine_path: Path, manifest: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``report`` into the engine's manifest atomically; returns the new manifest."""
    document = copy.deepcopy(dict(manifest))
    notes = document.setdefault("build", {}).setdefault("notes", {})
    notes["validation"] = dict(report)
    notes["validated"] = True
    atomic_write_bytes(manifest_path_for(engine_path), manifest_bytes(document))
    return document
