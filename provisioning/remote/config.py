"""The ``remote:`` block's schema, as the remote package names it.

The parsing lives in :mod:`provisioning.config_remote` (the config layer: ``load_config``
checks the block before anything runs, without importing the remote package); these are
the same objects.
"""

from __future__ import annotations

from ..config_remote import (ALGORITHMS, MODES, PROTOCOLS, KeySource, RemoteConfig, SigningKeyConfig,  # noqa: F401
                             check_endpoint_env, insecure_http_problem, is_loopback, parse_remote_config)

__all__ = ["ALGORITHMS", "MODES", "PROTOCOLS", "KeySource", "RemoteConfig", "SigningKeyConfig", "check_endpoint_env",
           "insecure_http_problem", "is_loopback", "parse_remote_config"]
