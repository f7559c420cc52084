"""Resolve this host's verified engine of a backbone, and open it the right way.

The engine's file name is hardware-tied, so a server cannot hard-code it: it asks
:func:`resolve_engine`, which computes the name for this host exactly as ``doit engines``
does, verifies the entry (sidecar, manifest, today's inputs; ``verify: stat`` trusts an
unchanged engine as the doit checker does) and returns it. With ``build=True`` a missing
engine is built or fetched through the same compiler and locks: the just-in-time path for
a server start. The warm path imports no onnx, onnxruntime, numpy or TensorRT.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..cache import EngineCacheEntry, check_entry, engine_path_for
from ..compiler import EngineCompileRequest, expected_build_inputs
from ..compose import build_backbone_specs, build_engine_compiler, probe_host_for, resolve_backend
from ..config import ProvisioningConfig, load_config
from ..backends.open import open_engine
from ..errors import ConfigError, EngineNotReadyError
from ..manifest import explain_mismatch, read_manifest
from ..onnxinfo import write_pending_inspections
from ..verify import verify_engine

__all__ = ["open_engine", "resolve_engine"]

def resolve_engine(config: str | os.PathLike[str] | ProvisioningConfig | None = None, model_name: str | None = None,
                   *, build: bool = False, release: str | os.PathLike[str] | None = None, model: str | None = None,
                   serving_config: Any = None) -> EngineCacheEntry:
    """This host's verified engine of ``model_name``; with ``build=True`` build or fetch it when needed.

    Without ``build`` a missing, stale or corrupt engine is :class:`EngineNotReadyError`
    (one line: which state, why, and the command that fixes it). With ``release=PATH``
    (and ``model=``, ``serving_config=`` or $PROVISIONING_SERVING_CONFIG) it needs no corpus
    and no ONNX: the engine that signed release pins for this host, as ``engines-pull``
    put it in the cache (see :mod:`provisioning.release.resolve`).
    """
    if release is not None:
        from ..release.resolve import resolve_from_release  # serving and release are one layer

        return resolve_from_release(release, model or model_name, serving_config)
    if config is None or model_name is None:
        raise ConfigError("resolve_engine: give a config and a backbone name, or release=PATH and model=NAME")
    loaded = config if isinstance(config, ProvisioningConfig) else load_config(config)
    backbone = next((b for b in loaded.backbones if b.model_name == model_name), None)
    if backbone is None:
        known = ", ".join(b.model_name for b in loaded.backbones)
        raise ConfigError(f"{loaded.config_path}: no backbone {model_name!r} (the config has {known}); "
                          "check the name or the config")
    one = replace(loaded, backbones=(backbone,))
    backend = resolve_backend(one)
    host = probe_host_for(one, backend)
    (spec,) = build_backbone_specs(one, backend, host=host)
    cache_dir = Path(loaded.cache_dir)
    engine_path = engine_path_for(cache_dir, spec, host)
    expected = expected_build_inputs(spec, host)
    check = check_entry(engine_path, model_name, expected, verify=lambda p: verify_engine(p, loaded.verify))
    if check.hit:
        write_pending_inspections(cache_dir)  # this process inspected the ONNX: spare the next one
        return check.entry
    if build:
        compiler = build_engine_compiler(one, backend=backend)
        request = EngineCompileRequest(backbones=(spec,), cache_dir=cache_dir, host=host)
        return compiler.compile_engines_for_corpus(request).results[0].entry
    state = _state(engine_path, expected)
    raise EngineNotReadyError(
        f"backbone {model_name}: this host's engine {engine_path.name} is {state} in {cache_dir} "
        f"({'; '.join(check.reasons)}); run `doit engines:{model_name}` (or `doit engines`), "
        "or resolve it with build=True"
    )


def _state(engine_path: Path, expected: Any) -> str:
    """missing (never built here), stale (built from other inputs) or corrupt (bytes or records damaged)."""
    if not os.path.lexists(engine_path):
        return "missing"
    manifest = read_manifest(engine_path)
    if manifest is not None and explain_mismatch(manifest, expected):
        return "stale"
    return "corrupt"
