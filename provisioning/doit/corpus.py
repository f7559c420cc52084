"""Which corpus a doit invocation means, loaded once: config, host and resolved backbones."""

from __future__ import annotations

import os
from pathlib import Path

from ..corpus import LoadedCorpus, load_config_only, load_corpus  # noqa: F401 (the doit layer's names for them)

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
