"""Shape checks of a release's predicate: exact keys, exact types, bounded strings.

Run on signed bytes only (after the signature verified), so they guard against a
builder's bug or an old format rather than an attacker; still, nothing here trusts a
field's type. Every problem is a ValueError with one line naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

_SHA = re.compile(r"[0-9a-f]{64}")
_DIGEST32 = re.compile(r"[0-9a-f]{32}")
_HOST_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_CC = re.compile(r"[0-9]{1,2}\.[0-9]{1,2}")
_SM = re.compile(r"sm[0-9]{2,4}")
_CREATED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx")
_HWC = ("none", "ampere_plus", "same_compute_capability")
_MAX_TEXT = 1024


def _text(raw: Mapping[str, Any], key: str, where: str, *, optional: bool = False,
          pattern: re.Pattern[str] | None = None) -> None:
    value = raw[key]
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT or not value.isprintable():
        raise ValueError(f"{where}.{key} must be a printable string, got {_short(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValueError(f"{where}.{key} has an unexpected form: {_short(value)}")


def _keys(raw: Any, keys: tuple[str, ...], where: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict) or set(raw) != set(keys):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{where} must have exactly the keys {', '.join(keys)}, got {_short(got)}")
    return raw


def check_predicate(raw: Any) -> None:
    """ValueError unless ``raw`` is exactly a release predicate (see docs/releases.md)."""
    raw = _keys(raw, ("created", "namespace", "remote", "corpus", "backbones"), "predicate")
    _text(raw, "created", "predicate", pattern=_CREATED)
    _text(raw, "namespace", "predicate", pattern=re.compile(r"[A-Za-z0-9._-]{1,64}"))
    _text(raw, "remote", "predicate")
    _text(raw, "corpus", "predicate", optional=True)
    backbones = raw["backbones"]
    if not isinstance(backbones, dict):
        raise ValueError("predicate.backbones must be a mapping of model name to variants")
    for model, backbone in backbones.items():
        if not _MODEL.fullmatch(model):
            raise ValueError(f"predicate.backbones has a model name of unexpected form: {_short(model)}")
        check_backbone(model, backbone)


def check_backbone(model: str, raw: Any) -> None:
    where = f"backbones.{model}"
    raw = _keys(raw, ("onnx_sha256", "settings_sha256", "variants"), where)
    _text(raw, "onnx_sha256", where, pattern=_SHA)
    _text(raw, "settings_sha256", where, pattern=_SHA)
    if not isinstance(raw["variants"], list):
        raise ValueError(f"{where}.variants must be a list")
    for index, variant in enumerate(raw["variants"]):
        check_variant(variant, f"{where}.variants[{index}]")


_VARIANT_KEYS = ("engine", "sha256", "size", "model_name", "host_key", "backend", "backend_version", "tied_to",
                 "compatibility", "manifest_sha256", "settings_sha256", "entry", "validation")


def check_variant(raw: Any, where: str) -> None:
    raw = _keys(raw, _VARIANT_KEYS, where)
    for key in ("engine", "backend_version"):
        _text(raw, key, where)
    for key in ("sha256", "manifest_sha256", "settings_sha256"):
        _text(raw, key, where, pattern=_SHA)
    _text(raw, "model_name", where, pattern=_MODEL)
    _text(raw, "host_key", where, pattern=_HOST_KEY)
    if raw["backend"] not in _BACKENDS:
        raise ValueError(f"{where}.backend must be one of {', '.join(_BACKENDS)}, got {_short(raw['backend'])}")
    size = raw["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{where}.size must be a whole number of bytes, got {_short(size)}")
    tied = raw["tied_to"]
    if isinstance(tied, dict) and tied.get("kind") == "gpu":
        tied = _keys(tied, ("kind", "gpu_model", "compute_capability"), f"{where}.tied_to")
        _text(tied, "gpu_model", f"{where}.tied_to", optional=True)
        _text(tied, "compute_capability", f"{where}.tied_to", optional=True, pattern=_CC)
    else:
        tied = _keys(tied, ("kind", "machine", "isa"), f"{where}.tied_to")
        if tied["kind"] != "cpu":
            raise ValueError(f"{where}.tied_to.kind must be gpu or cpu")
        _text(tied, "machine", f"{where}.tied_to")
        _text(tied, "isa", f"{where}.tied_to")
    compat = _keys(raw["compatibility"], ("version_compatible", "hardware_compatibility", "rtx_targets"),
                   f"{where}.compatibility")
    if not isinstance(compat["version_compatible"], bool):
        raise ValueError(f"{where}.compatibility.version_compatible must be true or false")
    if compat["hardware_compatibility"] not in _HWC:
        raise ValueError(f"{where}.compatibility.hardware_compatibility must be one of {', '.join(_HWC)}")
    targets = compat["rtx_targets"]
    if not isinstance(targets, list) or not all(isinstance(t, str) and _SM.fullmatch(t) for t in targets):
        raise ValueError(f"{where}.compatibility.rtx_targets must be a list of sm tags such as sm89")
    entry = _keys(raw["entry"], ("base", "inputs_digest", "engine", "manifest", "commit"), f"{where}.entry")
    for key in ("base", "engine", "manifest", "commit"):
        _text(entry, key, f"{where}.entry")
    _text(entry, "inputs_digest", f"{where}.entry", pattern=_DIGEST32)
    if raw["validation"] is not None and not isinstance(raw["validation"], dict):
        raise ValueError(f"{where}.validation must be a mapping or null")


def _short(value: Any) -> str:
    text = repr(value)
    return ascii(text[:60]) if len(text) <= 60 else ascii(text[:57]) + "..."
