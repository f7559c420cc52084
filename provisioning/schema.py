"""EngineFilenameSchema: the canonical, hardware-tied file name of an engine.

``<model>.<precision>.<backend>-<version>.<host key>.<settings digest>.engine``, e.g.
``det.fp16.trt-10.16.1.sm90-h200.3f2a9c1b.engine`` or
``det.fp32.ort-1.23.2.x86_64-avx512-1a2b3c.0c4e7d21.engine``.

Only the version may contain dots, so :meth:`EngineFilenameSchema.parse` splits from both
ends and round-trips :meth:`EngineFilenameSchema.build`. A change of host, builder
version or build setting gives another name: the old files are left untouched.

A TensorRT version-compatible engine is named by the major only (``trt-10-vc``), so every
10.x host shares it: whichever builds it first, older or equal runtimes' plans serve the
newer ones. A host *older* than the builder of that shared engine cannot load it, and
must not replace it (the newer hosts would lose their engine and rebuild it, and the two
would take turns for ever): it keeps its own engine under the version-pinned name
``trt-10.16.1.11-vc`` (:meth:`EngineFilenameSchema.version_pinned`), which garbage
collection removes once that host has been upgraded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from .specs import BackboneSpec
    from .host import HostCapabilities

ENGINE_SUFFIX = ".engine"
# Names beside the engines in a cache folder (the backends write some of them, the cache owns them all)
LOCK_DIR = ".locks"
EVENTS_FILE = "events.jsonl"
BUILD_LOG_SUFFIX = ".build.log"  # a backend's log of the build, kept beside the engine
COMMIT_SUFFIX = ".commit"  # the remote commit record (signature) beside a fetched engine
MAX_NAME_BYTES = 200  # leaves room for temporary, sidecar and manifest suffixes under 255
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_]{0,39}(-vc)?")
_TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HOST_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DIGEST_RE = re.compile(r"[0-9a-f]{8}")


def canonical_sha256(value: Any) -> str:
    """SHA-256 hex digest of ``value``'s canonical JSON (sorted keys, no spaces, ASCII)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def settings_digest(settings: Mapping[str, Any]) -> str:
    """Eight hex digits over the canonical JSON of the build settings."""
    return canonical_sha256(settings)[:8]


@dataclass(frozen=True)
class ParsedEngineName:
    """The fields recovered from a canonical engine file name."""

    model_name: str
    precision: str
    backend_tag: str
    version_tag: str
    host_key: str
    settings_digest: str


class EngineFilenameSchema:
    """Builds and parses canonical engine file names."""

    suffix = ENGINE_SUFFIX

    @staticmethod
    def build(spec: "BackboneSpec", host: "HostCapabilities") -> str:
        """The canonical file name of ``spec`` built on ``host``."""
        identity = host.identity_for(spec)
        return EngineFilenameSchema.compose(
            ParsedEngineName(
                model_name=spec.model_name,
                precision=spec.precision,
                backend_tag=identity.backend_tag,
                version_tag=identity.version_tag,
                host_key=identity.host_key,
                settings_digest=settings_digest(spec.build_settings(host.backend)),
            )
        )

    @staticmethod
    def version_pinned(name: str, backend_version: str) -> str:
        """The version-pinned form of a shared ``-vc`` name: ``trt-10-vc`` -> ``trt-10.16.1.11-vc``.

        ValueError for a name that is not a shared version-compatible name (a plain name,
        or one already pinned).
        """
        fields = EngineFilenameSchema.parse(name)
        major = backend_version.split(".")[0]
        if fields.version_tag != f"{major}-vc":
            raise ValueError(f"{name!r} is not the shared version-compatible name of TensorRT {backend_version}")
        return EngineFilenameSchema.compose(replace(fields, version_tag=f"{backend_version}-vc"))

    @staticmethod
    def shared_vc_name(name: str) -> str | None:
        """The shared ``-vc`` name a version-pinned name stands beside (None: ``name`` is not pinned)."""
        try:
            fields = EngineFilenameSchema.parse(name)
        except ValueError:
            return None
        version, vc, _ = fields.version_tag.partition("-vc")
        if not vc or "." not in version:
            return None
        return EngineFilenameSchema.compose(replace(fields, version_tag=f"{version.split('.')[0]}-vc"))

    @staticmethod
    def compose(fields: ParsedEngineName) -> str:
        """Join already-computed fields into a name; ValueError if a field cannot round-trip."""
        version = re.sub(r"[^A-Za-z0-9.+_-]", "_", fields.version_tag)
        checks = (
            (_TOKEN_RE, fields.model_name, "model name"),
            (_TOKEN_RE, fields.precision, "precision"),
            (_TOKEN_RE, fields.backend_tag, "backend tag"),
            (_VERSION_RE, version, "version"),
            (_HOST_KEY_RE, fields.host_key, "host key"),
            (_DIGEST_RE, fields.settings_digest, "settings digest"),
        )
        for pattern, value, label in checks:
            if not pattern.fullmatch(value) or (label != "model name" and label != "version" and "." in value):
                raise ValueError(f"{label} {value!r} cannot be part of an engine file name")
        if "-" in fields.backend_tag:
            raise ValueError(f"backend tag {fields.backend_tag!r} must not contain '-'")
        name = (
            f"{fields.model_name}.{fields.precision}.{fields.backend_tag}-{version}."
            f"{fields.host_key}.{fields.settings_digest}{ENGINE_SUFFIX}"
        )
        if len(name.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"engine file name would be {len(name.encode())} bytes, over {MAX_NAME_BYTES}")
        return name

    @staticmethod
    def parse(name: str) -> ParsedEngineName:
        """Recover the fields of a canonical name; ValueError for any other name."""
        if not name.endswith(ENGINE_SUFFIX):
            raise ValueError(f"{name!r} is not an engine file name (no {ENGINE_SUFFIX} suffix)")
        parts = name[: -len(ENGINE_SUFFIX)].split(".")
        if len(parts) < 5:
            raise ValueError(f"{name!r} has too few fields for an engine file name")
        model, precision, host_key, digest = parts[0], parts[1], parts[-2], parts[-1]
        backend_version = ".".join(parts[2:-2])
        backend_tag, sep, version = backend_version.partition("-")
        if not sep:
            raise ValueError(f"{name!r} has no '<backend>-<version>' field")
        parsed = ParsedEngineName(model, precision, backend_tag, version, host_key, digest)
        if EngineFilenameSchema.compose(parsed) != name:
            raise ValueError(f"{name!r} is not a canonical engine file name")
        return parsed
