"""Today's inputs of every backbone, as a release builder computes them: ONNX digest and settings.

The ONNX bytes (and external data) are hashed in this process, never taken from a cache
index or the inspection cache, so a release lists only entries built from the files on
disk now. The build settings are computed for every backend, because one bucket holds
the entries of builders on different backends (a TensorRT farm, a TensorRT-RTX CI job,
CPU hosts) that share one corpus: an entry is today's when its manifest records
today's ONNX digest and today's settings for *its* backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..compose import backbone_spec
from ..config import ProvisioningConfig
from ..errors import ConfigError
from ..onnxinfo import inspect_onnx, onnx_digest
from ..schema import EngineFilenameSchema, canonical_sha256, settings_digest
from .format import BACKENDS

BACKEND_OF_TAG = {"ort": "onnxruntime", "trt": "tensorrt", "trtrtx": "tensorrt-rtx"}


@dataclass(frozen=True)
class TodayInputs:
    """One backbone's identity for the release: what its entries must have been built from."""

    model_name: str
    precision: str
    onnx_sha256: str
    settings: Mapping[str, Mapping[str, Any]]  # backend -> build settings

    @property
    def settings_sha256(self) -> str:
        """The backbone's settings digest in the release: over every backend's settings."""
        return canonical_sha256({backend: self.settings[backend] for backend in BACKENDS})

    def name_matches(self, engine_name: str) -> str | None:
        """The backend of ``engine_name`` when its model, precision and settings digest are today's; else None."""
        try:
            parsed = EngineFilenameSchema.parse(engine_name)
        except ValueError:
            return None
        backend = BACKEND_OF_TAG.get(parsed.backend_tag)
        if (backend is None or parsed.model_name != self.model_name or parsed.precision != self.precision
                or parsed.settings_digest != settings_digest(self.settings[backend])):
            return None
        return backend

    def mismatch(self, inputs: Any) -> str | None:
        """Why a manifest's ``inputs`` block is not today's (None: it is)."""
        if not isinstance(inputs, dict):
            return "manifest has no inputs block"
        if inputs.get("onnx_sha256") != self.onnx_sha256:
            return "built from another ONNX (sha256 differs)"
        backend = inputs.get("backend")
        if backend not in self.settings:
            return f"unknown backend {str(backend)[:40]!r}"
        if inputs.get("build_settings") != self.settings[backend]:
            return "built with other settings"
        return None


def today_inputs(config: ProvisioningConfig) -> tuple[TodayInputs, ...]:
    """Every backbone of ``config`` with its ONNX hashed now (ConfigError names an unreadable file)."""
    found = []
    for backbone in config.backbones:
        where = f"{config.config_path}: backbone {backbone.model_name}: field 'onnx'"
        info = inspect_onnx(backbone.onnx, where=where)
        spec = backbone_spec(config, backbone, info.external_data)  # as the builders named their engines
        settings = {backend: _plain(spec.build_settings(backend)) for backend in BACKENDS}
        try:
            digest = onnx_digest(backbone.onnx, info.external_data)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {exc.filename or backbone.onnx} ({exc.strerror or exc}); "
                              "check the file and its permissions") from None
        found.append(TodayInputs(backbone.model_name, backbone.precision, digest, settings))
    return tuple(sorted(found, key=lambda t: t.model_name))


def _plain(value: Any) -> Any:
    """JSON round-trip (tuples to lists), as the manifest stores it."""
    import json

    return json.loads(json.dumps(value, sort_keys=True))
