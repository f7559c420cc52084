"""One corpus, loaded: a validated config with this host's identity and every backbone resolved.

What the doit commands, the Triton export and the release assembly start from; built
through the composition root, so it sits just above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cache import engine_path_for
from .compose import build_backbone_specs, load_config, probe_host_for, resolve_backend
from .config import ProvisioningConfig
from .host import HostCapabilities
from .specs import BackboneSpec

__all__ = ["LoadedCorpus", "load_config_only", "load_corpus"]


@dataclass(frozen=True)
class LoadedCorpus:
    """A validated config with this host's identity and every backbone resolved."""

    config: ProvisioningConfig
    host: HostCapabilities
    specs: tuple[BackboneSpec, ...]

    @property
    def cache_dir(self) -> Path:
        """The cache folder (absolute)."""
        return Path(self.config.cache_dir)

    def engine_path(self, spec: BackboneSpec) -> Path:
        """Where ``spec``'s engine for this host lives (the version-pinned name where the compiler uses it)."""
        return engine_path_for(self.cache_dir, spec, self.host)

    def host_key(self, spec: BackboneSpec) -> str:
        """The host key ``spec``'s engine carries on this host."""
        return self.host.identity_for(spec).host_key


def load_config_only(path: Path) -> ProvisioningConfig:
    """Read and validate the YAML (ConfigError, one line, on any mistake)."""
    return load_config(path)


def load_corpus(path: Path) -> LoadedCorpus:
    """Config, host probe and specs; raises ProvisioningError subclasses (one line each)."""
    config = load_config(path)
    backend = resolve_backend(config)
    host = probe_host_for(config, backend)
    specs = build_backbone_specs(config, backend, host=host)
    return LoadedCorpus(config, host, specs)
