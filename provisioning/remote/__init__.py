"""The shared remote engine cache: a bucket (S3 API, or a shared mount) behind the local cache.

Configured by the ``remote:`` block of corpus.yaml (see README, Fleet). Importing this
package loads neither fsspec, s3fs nor botocore: they are imported when a store opens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .admin import RemoteGcItem, RemoteGcPlan, apply_remote_gc, plan_remote_gc, remote_entry_status
from .cache import RemoteCache
from .config import RemoteConfig, SigningKeyConfig, parse_remote_config
from .signing import EntrySigner, KeyRing
from .store import RemoteStore

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ProvisioningConfig

__all__ = [
    "EntrySigner",
    "KeyRing",
    "RemoteCache",
    "RemoteConfig",
    "RemoteGcItem",
    "RemoteGcPlan",
    "RemoteStore",
    "SigningKeyConfig",
    "apply_remote_gc",
    "key_ring",
    "make_remote_cache",
    "parse_remote_config",
    "plan_remote_gc",
    "remote_config_of",
    "remote_entry_status",
]


def remote_config_of(config: "ProvisioningConfig") -> RemoteConfig | None:
    """The validated ``remote:`` block of ``config``; None when absent. Raises ConfigError."""
    if config.remote is None:
        return None
    return parse_remote_config(config.remote, config.config_path)


def make_remote_cache(config: "ProvisioningConfig") -> RemoteCache | None:
    """The remote cache for ``config`` (None when absent or ``mode: off``); keys are loaded now."""
    remote = remote_config_of(config)
    if remote is None or not remote.enabled:
        return None
    return RemoteCache(remote, RemoteStore.open(remote), key_ring(remote))


def key_ring(remote: RemoteConfig) -> KeyRing | None:
    """The keys of ``remote`` loaded (ConfigError names the field and the source); None for an unsigned fleet."""
    where = str(remote.config_path)
    signer = EntrySigner(remote.signing_key, where) if remote.signing_key else None
    trusted = [EntrySigner(key, where, f"trusted_keys[{i}]") for i, key in enumerate(remote.trusted_keys)]
    if signer is None and not trusted:
        return None
    return KeyRing(signer, trusted)
