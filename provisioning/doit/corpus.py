"""Which corpus a doit invocation means, loaded once: config, host and resolved backbones."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..compiler import BackboneSpec
from ..compose import build_backbone_specs, load_config, probe_host_for, resolve_backend
from ..config import ProvisioningConfig
from ..host import HostCapabilities
from ..schema import EngineFilenameSchema

DEFAULT_CONFIG = "corpus/corpus.yaml"
CONFIG_ENV = "PROVISIONING_CONFIG"
CONFIG_VAR = "config"


def config_path(explicit: str | None = None) -> Path:
    """``explicit``, else ``doit ... config=PATH``, else $PROVISIONING_CONFIG, else corpus/corpus.yaml."""
    chosen = explicit
    if not chosen:
        from doit import get_var  # imported here: provisioning itself never needs doit

        chosen = get_var(CONFIG_VAR, None)
    chosen = chosen or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    return Path(os.path.abspath(chosen))


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
        """Where ``spec``'s engine for this host lives."""
        return self.cache_dir / EngineFilenameSchema.build(spec, self.host)

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
