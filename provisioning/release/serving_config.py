"""The serving host's config: ``serving.yaml`` (where a pull reads the bucket, the keys and the cache).

A serving host has no corpus.yaml, no ONNX and no backbone list. It has one small file,
given with ``--serving-config FILE`` or ``$PROVISIONING_SERVING_CONFIG``::

    cache_dir: /engines                 # where pulled engines are published (relative: to this file)
    runtime: tensorrt==10.8.0.43        # optional: the serving runtime, when it is not a wheel here
    allow_cpu_fallback: false           # optional: ONNX Runtime engines only when true
    verify: full                        # optional: full (hash) or stat (trust an unchanged, hashed engine)
    remote:                             # exactly corpus.yaml's remote: block (mode defaults to read-only)
      url: s3://fleet-engines/prod
      namespace: prod
      signing_key: {algorithm: ed25519, id: fleet, public_key: {file: fleet.pub}}

Flags override the file: ``--cache-dir``, ``--runtime``, ``--allow-cpu-fallback``. Every
error is one line naming the file and the field (:class:`~provisioning.errors.ConfigError`,
exit code 2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from ..remote.config import RemoteConfig, parse_remote_config

ENV_VAR = "PROVISIONING_SERVING_CONFIG"
MAX_CONFIG_BYTES = 1 << 20
VERIFY_MODES = ("full", "stat")
_KEYS = ("cache_dir", "runtime", "allow_cpu_fallback", "verify", "remote")
#: runtime names as written after ``--runtime`` and the backend each one means
RUNTIME_NAMES = {
    "tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx", "tensorrt_rtx": "tensorrt-rtx",
    "onnxruntime": "onnxruntime",
}
_VERSION_RE = re.compile(r"[0-9]+(\.[0-9]+){0,4}([A-Za-z0-9.+_-]{0,20})")


@dataclass(frozen=True)
class Runtime:
    """An explicit serving runtime: a backend and its full version (``tensorrt==10.8.0.43``)."""

    backend: str
    version: str

    def __str__(self) -> str:
        return f"{self.backend}=={self.version}"


@dataclass(frozen=True)
class ServingConfig:
    """What a pull needs on a serving host."""

    config_path: Path
    cache_dir: Path
    remote: RemoteConfig
    runtime: Runtime | None = None
    allow_cpu_fallback: bool = False
    verify: str = "full"


def parse_runtime(text: Any, where: str = "--runtime") -> Runtime:
    """``NAME==VERSION`` as a :class:`Runtime`; ConfigError (one line) otherwise."""
    if not isinstance(text, str) or text.count("==") != 1:
        raise ConfigError(f"{where}: {text!r} is not NAME==VERSION; write e.g. tensorrt==10.8.0.43 "
                          f"(names: {', '.join(sorted(RUNTIME_NAMES))})")
    name, version = (part.strip() for part in text.split("=="))
    backend = RUNTIME_NAMES.get(name.lower())
    if backend is None:
        raise ConfigError(f"{where}: unknown runtime {name!r}; use one of {', '.join(sorted(RUNTIME_NAMES))}")
    if not _VERSION_RE.fullmatch(version):
        raise ConfigError(f"{where}: version {version!r} of {name} is not a release number such as 10.8.0.43")
    return Runtime(backend, version)


def serving_config_path(option: str | None) -> Path:
    """The serving config this invocation means: ``--serving-config``, else $PROVISIONING_SERVING_CONFIG."""
    chosen = option or os.environ.get(ENV_VAR)
    if not chosen:
        raise ConfigError(f"no serving config: pass --serving-config FILE or set {ENV_VAR} (a serving.yaml with "
                          "cache_dir and the remote: block; see docs/releases.md)")
    return Path(os.path.abspath(os.path.expanduser(chosen)))


def load_serving_config(path: str | os.PathLike[str], *, cache_dir: str | None = None, runtime: str | None = None,
                        allow_cpu_fallback: bool = False) -> ServingConfig:
    """Read and validate ``serving.yaml``, then apply the flags that override it."""
    import yaml

    config_path = Path(os.path.abspath(os.fspath(path)))
    try:
        with open(config_path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: serving config not found; pass --serving-config FILE or set "
                          f"{ENV_VAR}") from None
    except IsADirectoryError:
        raise ConfigError(f"{config_path}: is a folder, not a serving.yaml") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read the serving config ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{config_path}: larger than {MAX_CONFIG_BYTES} bytes; a serving config is a few lines")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{config_path}: is not UTF-8 text; save it as UTF-8 YAML") from None
    except RecursionError:
        raise ConfigError(f"{config_path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{config_path}: invalid YAML{at}: {problem}") from None
    config = parse_serving_config(data, config_path)
    if cache_dir:
        config = replace(config, cache_dir=Path(os.path.abspath(os.path.expanduser(cache_dir))))
    if runtime:
        config = replace(config, runtime=parse_runtime(runtime))
    if allow_cpu_fallback:
        config = replace(config, allow_cpu_fallback=True)
    return config


def parse_serving_config(data: Any, config_path: Path) -> ServingConfig:
    """Validate an already-parsed serving config document."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{config_path}: the top level must be a mapping with cache_dir and remote")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise ConfigError(f"{config_path}: unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(_KEYS)} "
                          "(a serving config lists no backbones: the release names them)")
    raw_cache = data.get("cache_dir")
    if not isinstance(raw_cache, str) or not raw_cache.strip():
        raise ConfigError(f"{config_path}: field 'cache_dir': missing or not a path; give the folder engines are "
                          "pulled into (e.g. cache_dir: /engines)")
    cache_dir = Path(os.path.normpath(os.path.join(config_path.parent, os.path.expanduser(raw_cache))))
    runtime = data.get("runtime")
    parsed_runtime = None if runtime is None else parse_runtime(runtime, f"{config_path}: field 'runtime'")
    fallback = data.get("allow_cpu_fallback", False)
    if not isinstance(fallback, bool):
        raise ConfigError(f"{config_path}: field 'allow_cpu_fallback': must be true or false, got {fallback!r}")
    verify = data.get("verify", "full")
    if verify not in VERIFY_MODES:
        raise ConfigError(f"{config_path}: field 'verify': unknown value {verify!r}; use full or stat")
    raw_remote = data.get("remote")
    if raw_remote is None:
        raise ConfigError(f"{config_path}: field 'remote': missing; give the bucket url and the trusted keys, as in "
                          "corpus.yaml's remote: block")
    if not isinstance(raw_remote, Mapping):
        raise ConfigError(f"{config_path}: field 'remote': must be a mapping (url, signing_key, ...)")
    remote = parse_remote_config({"mode": "read-only", **raw_remote}, config_path)  # a pull never writes
    if not remote.enabled:
        raise ConfigError(f"{config_path}: field 'remote.mode': is off, but a pull downloads from the remote; "
                          "remove mode: off")
    return ServingConfig(config_path, cache_dir, remote, parsed_runtime, fallback, verify)
