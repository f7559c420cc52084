"""Which corpus a doit invocation means, loaded once: config, host and resolved backbones."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..specs import BackboneSpec
from ..compose import build_backbone_specs, load_config, probe_host_for, resolve_backend
from ..config import ProvisioningConfig
from ..host import HostCapabilities
from ..cache import engine_path_for

DEFAULT_CONFIG = "corpus/corpus.yaml"
CONFIG_ENV = "PROVISIONING_CONFIG"
CONFIG_VAR = "config"


def config_path(dodo_argument: str | None = None, *, option: str | None = None, base: str | None = None) -> Path:
    """Which config a doit invocation means: the one precedence of the tasks and the commands.

    The command line first (a command's ``--config PATH`` = ``option``, else ``config=PATH``),
    then $PROVISIONING_CONFIG, then the dodo's ``engine_tasks(PATH)`` = ``dodo_argument``,
    then corpus/corpus.yaml. The command line and the environment are relative to the working
    folder doit was started in; the dodo's argument and the default to ``base`` (a command
    given a dodo with ``-f``), else to the working folder (for tasks, doit has moved there:
    the dodo's folder).
    """
    from doit import get_var  # imported here: provisioning itself never needs doit

    invoked = _initial_workdir()
    for value in (option, get_var(CONFIG_VAR, None), os.environ.get(CONFIG_ENV)):
        if value:
            return Path(os.path.abspath(os.path.join(invoked, os.path.expanduser(value))))
    chosen = os.path.expanduser(dodo_argument or DEFAULT_CONFIG)
    return Path(os.path.abspath(os.path.join(base or os.getcwd(), chosen)))


def config_origin(dodo_argument: str | None = None, *, option: str | None = None) -> str:
    """Where :func:`config_path`'s answer came from, for the first line of engines-status."""
    from doit import get_var

    if option:
        return "--config"
    if get_var(CONFIG_VAR, None):
        return "config= on the command line"
    if os.environ.get(CONFIG_ENV):
        return f"${CONFIG_ENV}"
    return "the dodo's engine_tasks()" if dodo_argument else "the default"


def _initial_workdir() -> str:
    """The folder doit was started in (doit moves to the dodo's folder before loading tasks)."""
    try:
        from doit import get_initial_workdir

        return get_initial_workdir() or os.getcwd()
    except ImportError:  # pragma: no cover - doit < 0.36
        return os.getcwd()


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
