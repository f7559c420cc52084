"""The ``remote:`` block of corpus.yaml, validated into a frozen :class:`RemoteConfig`.

Only structure is checked here (no network, no key material read): key material is
loaded by :mod:`provisioning.remote.signing` when the compiler is built, so a bad block
fails before any build. Every error is one line naming the config file and the field.
"""

from __future__ import annotations

import ipaddress
import re
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .config_fields import names, shown
from .errors import ConfigError

MODES = ("read-write", "read-only", "off")
PROTOCOLS = ("s3", "s3a", "file")
ALGORITHMS = ("hmac-sha256", "ed25519")
_KEYS = (
    "url", "mode", "endpoint_url", "timeout_s", "signing_key", "require_signature",
    "lease_s", "wait_s", "host_max_age_days", "allow_insecure_http", "share_build_details", "trusted_keys",
    "namespace", "corpus", "max_engine_bytes",
)
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # botocore's order: the S3-specific one wins
_SOURCE_KEYS = ("env", "file")


@dataclass(frozen=True)
class KeySource:
    """Where key material lives: an environment variable or a file (never the bytes)."""

    env: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        """``env ENGINE_KEY`` or ``file /path``: safe to print, names no secret."""
        return f"env {self.env}" if self.env else f"file {self.file}"


@dataclass(frozen=True)
class SigningKeyConfig:
    """The signing key: HMAC-SHA256 (one secret) or Ed25519 (PEM private and/or public key)."""

    algorithm: str
    secret: KeySource | None = None  # hmac-sha256
    private_key: KeySource | None = None  # ed25519, PEM (PKCS#8, unencrypted)
    public_key: KeySource | None = None  # ed25519, PEM (SubjectPublicKeyInfo)
    key_id: str | None = None  # the key's name in commit records; None: its fingerprint
    host_key_prefixes: tuple[str, ...] = ()  # a trusted key vouches only for these host keys (empty: all)


@dataclass(frozen=True)
class RemoteConfig:
    """The shared remote cache, as configured (see README, Fleet)."""

    config_path: Path
    url: str
    mode: str = "read-write"
    endpoint_url: str | None = None
    timeout_s: float = 30.0
    signing_key: SigningKeyConfig | None = None
    # A key means signatures are required: otherwise deleting ``sig`` would bypass them.
    # ``require_signature: false`` next to a key is an explicit, warned opt-out (migration).
    require_signature: bool = False
    lease_s: float = 30.0  # a builder's claim on an engine; renewed while it builds
    wait_s: float = 600.0  # longest this run waits, in total, for other hosts' builds
    host_max_age_days: float = 30.0  # gc: hosts not seen for longer are removed
    allow_insecure_http: bool = False  # plain http to a non-loopback endpoint (needs signatures)
    share_build_details: bool = False  # upload the manifest as built (absolute ONNX path, pid)
    trusted_keys: tuple[SigningKeyConfig, ...] = ()  # further verification keys (rotation), each named
    namespace: str = "default"  # bound into every signature: staging entries do not verify in prod
    corpus: str | None = None  # recorded in uploads; lets engines-gc --remote remove this corpus's old entries
    max_engine_bytes: int = 64 << 30  # a remote entry claiming more is discarded before any download

    @property
    def signatures_required(self) -> bool:
        """True when every fetched entry must carry a valid signature."""
        return (self.signing_key is not None or bool(self.trusted_keys)) and self.require_signature

    @property
    def enabled(self) -> bool:
        """False for ``mode: off``."""
        return self.mode != "off"

    @property
    def writable(self) -> bool:
        """True for ``mode: read-write``."""
        return self.mode == "read-write"

    @property
    def protocol(self) -> str:
        """``s3`` or ``file``."""
        return "file" if self.url.startswith("file://") else "s3"


def _error(config_path: Path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{config_path}: field 'remote.{key}': {message}")


def parse_remote_config(raw: Mapping[str, Any], config_path: Path) -> RemoteConfig:
    """Validate the raw ``remote:`` mapping; ConfigError names the file and the field."""
    config_path = Path(config_path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{config_path}: field 'remote': must be a mapping (url, mode, ...)")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ConfigError(
            f"{config_path}: field 'remote': unknown key(s) {names(unknown)}; allowed keys are {', '.join(_KEYS)}"
        )
    mode = raw.get("mode", "read-write")
    if mode not in MODES:
        raise _error(config_path, "mode", f"unknown value {shown(mode)}; use one of {', '.join(MODES)}")
    if "url" not in raw:
        raise _error(config_path, "url", "missing; give an fsspec URL such as s3://bucket/engines or file:///srv/engines")
    url = _url(raw["url"], config_path)
    endpoint = raw.get("endpoint_url")
    if endpoint is not None:
        parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise _error(config_path, "endpoint_url", f"must be an http(s) URL such as http://127.0.0.1:9000, got {shown(endpoint)}")
        if parts.username or parts.password:
            raise _error(config_path, "endpoint_url", "must not contain credentials; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    signing = _signing_key(raw.get("signing_key"), config_path)
    trusted = _trusted_keys(raw.get("trusted_keys"), config_path)
    keyed = signing is not None or bool(trusted)
    require = _flag(raw, "require_signature", keyed, config_path)
    if require and not keyed:
        raise _error(config_path, "require_signature", "is true but no signing_key is set; add remote.signing_key")
    insecure = _flag(raw, "allow_insecure_http", False, config_path)
    if endpoint is not None:
        problem = insecure_http_problem(endpoint, insecure, keyed and require)
        if problem:
            raise _error(config_path, problem[0], problem[1])
    if signing is None and trusted and require and mode == "read-write":
        raise _error(config_path, "signing_key", "read-write mode signs uploads: add signing_key (trusted_keys only "
                     "verify), or use mode: read-only")
    if signing is not None and mode == "read-write" and signing.algorithm == "ed25519" and signing.private_key is None:
        raise _error(config_path, "signing_key", "read-write mode signs uploads: add private_key, or use mode: read-only")
    return RemoteConfig(
        config_path=config_path,
        url=url,
        mode=mode,
        endpoint_url=endpoint,
        timeout_s=_seconds(raw, "timeout_s", 30.0, config_path),
        signing_key=signing,
        require_signature=require,
        lease_s=_seconds(raw, "lease_s", 30.0, config_path),
        wait_s=_seconds(raw, "wait_s", 600.0, config_path),
        host_max_age_days=_seconds(raw, "host_max_age_days", 30.0, config_path),
        allow_insecure_http=insecure,
        share_build_details=_flag(raw, "share_build_details", False, config_path),
        trusted_keys=trusted,
        namespace=_name(raw, "namespace", "default", config_path),
        corpus=_name(raw, "corpus", None, config_path),
        max_engine_bytes=_size(raw, "max_engine_bytes", 64 << 30, config_path),
    )


def _name(raw: Mapping[str, Any], key: str, default: str | None, config_path: Path) -> str | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _error(config_path, key, f"must be 1-64 characters of A-Z a-z 0-9 . _ -, got {shown(value)}")
    return value


def _size(raw: Mapping[str, Any], key: str, default: int, config_path: Path) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _error(config_path, key, f"must be a positive whole number of bytes, got {shown(value)}")
    return value


def _flag(raw: Mapping[str, Any], key: str, default: bool, config_path: Path) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _error(config_path, key, f"must be true or false, got {shown(value)}")
    return value


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``: traffic that never leaves this machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_http_problem(endpoint: str, allowed: bool, signed: bool) -> tuple[str, str] | None:
    """(field, message) when ``endpoint`` is plain http that this config may not use; else None.

    Plain http lets anyone on the path read the engines and, without signatures, replace
    them; loopback traffic stays on this machine (a local MinIO, the tests' moto server).
    """
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or is_loopback(parts.hostname):
        return None
    if not allowed:
        return ("endpoint_url", f"plain http to {parts.hostname} lets anyone on the network read and replace "
                "engines; use https, or set remote.allow_insecure_http: true (signatures then required)")
    if not signed:
        return ("allow_insecure_http", f"plain http to {parts.hostname} needs signed entries; set "
                "remote.signing_key (and keep require_signature on), or use https")
    return None


def check_endpoint_env(config: RemoteConfig) -> None:
    """Apply the plain-http rule to AWS_ENDPOINT_URL(_S3) too, which botocore reads by itself."""
    if config.endpoint_url is not None:
        return
    for name in _ENDPOINT_ENV:
        value = os.environ.get(name)
        if value:
            problem = insecure_http_problem(value, config.allow_insecure_http, config.signatures_required)
            if problem:
                raise ConfigError(f"{config.config_path}: environment variable {name}: {problem[1]}")
            return


def _url(raw: Any, config_path: Path) -> str:
    if not isinstance(raw, str) or "://" not in raw:
        raise _error(config_path, "url", f"must be an fsspec URL such as s3://bucket/engines, got {shown(raw)}")
    protocol, _, rest = raw.partition("://")
    if protocol not in PROTOCOLS:
        raise _error(config_path, "url", f"protocol {shown(protocol)} is not supported; use s3:// or file://")
    if protocol == "file":
        # A relative shared-mount path is anchored at the config's folder, like cache_dir.
        path = os.path.normpath(os.path.join(config_path.parent, os.path.expanduser(rest)))
        return "file://" + path
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        raise _error(config_path, "url", "must not contain credentials; put them in AWS_* environment variables")
    if not bucket:
        raise _error(config_path, "url", f"has no bucket name: {shown(raw)}")
    return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")


def _seconds(raw: Mapping[str, Any], key: str, default: float, config_path: Path) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _error(config_path, key, f"must be a positive number, got {shown(value)}")
    return float(value)


def _signing_key(raw: Any, config_path: Path, field: str = "signing_key", trusted: bool = False) -> SigningKeyConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _error(config_path, field, "must be a mapping: {env: VAR} or {file: PATH} (never the key itself)")
    algorithm = raw.get("algorithm", "hmac-sha256")
    if algorithm not in ALGORITHMS:
        raise _error(config_path, f"{field}.algorithm", f"unknown value {shown(algorithm)}; use one of {', '.join(ALGORITHMS)}")
    common = ("algorithm", "id", "host_key_prefixes") if trusted else ("algorithm", "id")
    key_id = raw.get("id")
    if trusted and key_id is None:
        raise _error(config_path, field, "needs an id: the key id its builders sign with (engines-doctor prints it)")
    if key_id is not None and (not isinstance(key_id, str) or not _NAME_RE.fullmatch(key_id)
                               or key_id == "unsigned"):
        raise _error(config_path, f"{field}.id", f"must be 1-64 characters of A-Z a-z 0-9 . _ - (not 'unsigned'), got {shown(key_id)}")
    prefixes = raw.get("host_key_prefixes", [])
    if (not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes)):
        raise _error(config_path, f"{field}.host_key_prefixes", f"must be a list of host-key prefixes, got {shown(prefixes)}")
    if algorithm == "hmac-sha256":
        unknown = sorted(str(k) for k in raw if k not in (*common, *_SOURCE_KEYS))
        if unknown:
            raise _error(config_path, field, f"unknown key(s) {names(unknown)}; use env or file")
        return SigningKeyConfig(algorithm, secret=_source(raw, field, config_path), key_id=key_id,
                                host_key_prefixes=tuple(prefixes))
    unknown = sorted(str(k) for k in raw if k not in (*common, "private_key", "public_key"))
    if unknown:
        raise _error(config_path, field, f"unknown key(s) {names(unknown)}; use private_key, public_key")
    if trusted and "private_key" in raw:
        raise _error(config_path, f"{field}.private_key", "a trusted key only verifies: give its public_key")
    private = _source(raw["private_key"], f"{field}.private_key", config_path) if "private_key" in raw else None
    public = _source(raw["public_key"], f"{field}.public_key", config_path) if "public_key" in raw else None
    if private is None and public is None:
        raise _error(config_path, field, "ed25519 needs private_key and/or public_key ({file: PATH} or {env: VAR})")
    return SigningKeyConfig(algorithm, private_key=private, public_key=public, key_id=key_id,
                            host_key_prefixes=tuple(prefixes))


def _trusted_keys(raw: Any, config_path: Path) -> tuple[SigningKeyConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _error(config_path, "trusted_keys", "must be a list of keys, each {id, algorithm, public_key | env | file}")
    keys, ids = [], set()
    for index, item in enumerate(raw):
        key = _signing_key(item, config_path, f"trusted_keys[{index}]", trusted=True)
        if key.key_id in ids:
            raise _error(config_path, f"trusted_keys[{index}].id", f"{shown(key.key_id)} is listed twice")
        ids.add(key.key_id)
        keys.append(key)
    return tuple(keys)


def _source(raw: Any, key: str, config_path: Path) -> KeySource:
    if not isinstance(raw, Mapping):
        raise _error(config_path, key, "must be {env: VAR} or {file: PATH}")
    given = [k for k in _SOURCE_KEYS if k in raw]
    if len(given) != 1:
        raise _error(config_path, key, "give exactly one of env or file (the key itself never goes in the config)")
    value = raw[given[0]]
    if not isinstance(value, str) or not value.strip():
        raise _error(config_path, key, f"{given[0]} must be a non-empty string")
    if given[0] == "env":
        return KeySource(env=value)
    return KeySource(file=Path(os.path.normpath(os.path.join(config_path.parent, os.path.expanduser(value)))))
