"""Resolve the engine a release pins for this host from a pulled cache: no ONNX, no corpus, no compile.

``resolve_engine(release="engines.release.json", model="det", serving_config="serving.yaml")``
(:func:`provisioning.serving.resolve_engine` delegates here) verifies the release with the
serving config's keys, picks this host's variant exactly as ``engines-pull`` does, and
returns the local engine when it is in the cache and verified (its sidecar; ``verify:
stat`` trusts an unchanged, once-hashed engine) and is the very bytes the release pins.
Otherwise :class:`~provisioning.errors.EngineNotReadyError`, one line naming the fix (run
``doit engines-pull``). Imports no onnx, ONNX Runtime or TensorRT until ``.open()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..cache import EngineCacheEntry
from ..errors import ConfigError, EngineNotReadyError
from ..manifest import read_manifest
from ..verify import verify_engine
from .pull import is_present, plan, selected_models, verified_release
from .select import ServingHost, probe_serving_host
from .serving_config import ServingConfig, load_serving_config, serving_config_path


def resolve_from_release(release: str | os.PathLike[str], model: str,
                         serving_config: str | os.PathLike[str] | ServingConfig | None = None, *,
                         host: ServingHost | None = None) -> EngineCacheEntry:
    """This host's verified engine of ``model`` as ``release`` pins it (see the module docstring)."""
    config = (serving_config if isinstance(serving_config, ServingConfig)
              else load_serving_config(serving_config_path(os.fspath(serving_config) if serving_config else None)))
    loaded = verified_release(release, config)
    if not isinstance(model, str) or not model:
        raise ConfigError(f"resolve_engine: give the backbone with model=NAME (the release has "
                          f"{', '.join(loaded.model_names)})")
    (name,) = selected_models(loaded, [model])
    host = host if host is not None else probe_serving_host(config.runtime)
    ((_, choice, missing),) = plan(loaded, [name], host, config.allow_cpu_fallback)
    if choice is None:
        raise EngineNotReadyError(missing)
    variant = choice.variant
    path = Path(config.cache_dir) / variant.engine
    if not is_present(path, variant, lambda p: verify_engine(p, config.verify)):
        state = "missing" if not os.path.lexists(path) else "not the release's verified bytes"
        raise EngineNotReadyError(
            f"backbone {model}: the release's engine for this host, {variant.engine} ({choice.reason}), is {state} "
            f"in {config.cache_dir}; run `doit engines-pull {os.fspath(release)}` first")
    manifest: Any = read_manifest(path)
    return EngineCacheEntry(model_name=name, path=path, sha256=variant.sha256, size=variant.size,
                            inputs=manifest["inputs"], manifest=manifest)
