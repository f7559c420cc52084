"""The ``engines`` task generator: one doit task per backbone, reuse decided by the cache.

Each task ``engines:<model>`` has the canonical engine path as its target, the ONNX file
(with its external data) and the config as ``file_dep``, an :class:`EngineUpToDate`
checker backed by the sidecar and the manifest, and one action that asks the
:class:`~provisioning.compiler.EngineCompiler` to compile or reuse that backbone.

doit's database is only a hint: with it missing (a CI checkout with the cache restored),
every task runs and the action reports ``REUSED`` without compiling; with it present,
an intact engine is ``--`` without the action running at all.

Actions and clean actions are ``(module-level function, args)`` pairs whose arguments are
frozen dataclasses and strings, so ``doit -n N`` works under fork, spawn and forkserver.

This module builds the task dicts; their parts live beside it, one concept each, and are
re-exported here: the actions (:mod:`.action`), the up-to-date checker (:mod:`.uptodate`),
the run's shared verifier and cache index (:mod:`.verifier`), and how doit was started
(:mod:`.runmode`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from .. import interrupt
from ..errors import NoGpuError, ProvisioningError
from .action import (  # noqa: F401  (re-exported: dodo files and tests import them from here)
    BackendFactory,
    _compile_backbone,
    _default_backend,
    _report_interrupt,
    clean_engine,
    compile_backbone,
    no_gpu_action,
)
from .corpus import config_path, load_config_only, load_corpus
from .filedep import Sha256FileChecker
from .report import fail_fast
from .runmode import _NO_RUN_COMMANDS, _command_runs_tasks, _in_worker, _parallel_run, _task_option  # noqa: F401
from .uptodate import CHECKER_VALUE, ONNX_DIGEST_VALUE, EngineUpToDate  # noqa: F401
from . import verifier as _shared
from .verifier import SharedVerifier

DB_ENV = "PROVISIONING_DOIT_DB"
DEFAULT_DB = ".doit.db"

# The basenames engine_tasks() generated in this process: the one list object every
# doit_config() hands doit as default_tasks. doit reads DOIT_CONFIG right after importing the
# dodo and keeps this very object as its task selection (``args or default_tasks``), but only
# filters tasks by it after the task creators ran, and engine_tasks() appends while they run:
# so plain ``doit`` selects exactly the engine groups that exist, whatever their basename.
_DEFAULT_TASKS: list[str] = []

# ``doit engines --config PATH``: declared on every task of the group so that doit accepts
# the option after a task's name; its value is read from the command line when the tasks
# are generated (:func:`~provisioning.doit.runmode._task_option`), since it picks the corpus
CONFIG_PARAM = {"name": "engines_config", "long": "config", "type": str, "default": "",
                "help": "corpus YAML [default: config=PATH, $PROVISIONING_CONFIG, the dodo's, corpus/corpus.yaml]"}


def doit_config(**overrides: Any) -> dict[str, Any]:
    """A ``DOIT_CONFIG`` for engine projects: sqlite3 database ($PROVISIONING_DOIT_DB or .doit.db).

    ``file_dep`` changes are decided by :class:`~provisioning.doit.filedep.Sha256FileChecker`
    (doit's rules, a faster digest that reuses the action's own hash of the ONNX).
    ``default_tasks`` are the groups :func:`engine_tasks` generates (``engines`` unless it was
    given another ``basename``). The database's folder is created here: doit evaluates this
    when it imports the dodo, before it opens the database, and sqlite3 cannot create folders.
    """
    config: dict[str, Any] = {
        "backend": "sqlite3",
        "dep_file": os.environ.get(DB_ENV) or DEFAULT_DB,
        "default_tasks": _DEFAULT_TASKS,
        "check_file_uptodate": Sha256FileChecker,
    }
    config.update(overrides)
    _make_db_folder(config.get("dep_file"))
    return config


def _make_db_folder(dep_file: Any) -> None:
    folder = os.path.dirname(os.fspath(dep_file)) if isinstance(dep_file, (str, os.PathLike)) else ""
    if not folder or os.path.isdir(folder):
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:  # doit would fail with a sqlite3 traceback: say what to do instead
        fail_fast(f"cannot create the doit database folder {os.path.abspath(folder)} ({exc.strerror or exc}); "
                  f"create it, or point ${DB_ENV} (or dep_file) at a writable folder", 3)


def engine_tasks(
    config: str | os.PathLike[str] | None = None,
    *,
    basename: str = "engines",
    backend_factory: BackendFactory | None = None,
    export_triton: str | os.PathLike[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield doit task dicts: a group ``basename`` and one ``basename:<model>`` per backbone.

    ``export_triton=REPO`` adds a task ``<basename>_export`` (part of the group, after every
    engine) that keeps the Triton model repository REPO current, as ``doit engines-export``.

    The config is ``--config PATH`` after the group's or a task's name on the doit command
    line (``doit engines --config PATH``), else ``config=PATH``, else $PROVISIONING_CONFIG,
    else ``config``, else corpus/corpus.yaml (as for the engines-* commands). A bad config prints
    one line and exits with the error's code before any task runs. Without the GPU a
    ``backend: tensorrt`` config needs, the tasks are still listed (``doit list``) and the
    first one to run stops with the no-GPU line and exit code 69. ``backend_factory(name)``
    replaces the backend (a module-level callable, so that it pickles for ``doit -n``).
    """
    path = config_path(os.fspath(config) if config is not None else None,
                       option=_task_option(basename, CONFIG_PARAM["long"]))
    interrupt.install()  # doit's main process: Ctrl-C while it waits for `-n` workers exits 130, no traceback
    if basename not in _DEFAULT_TASKS:
        _DEFAULT_TASKS.append(basename)
    try:
        corpus = load_corpus(path)
        _check_remote_keys(corpus.config)
    except NoGpuError as exc:
        yield from _no_gpu_tasks(path, basename, exc)
        return
    except ProvisioningError as exc:
        fail_fast(str(exc).splitlines()[0], exc.exit_code)
    yield {
        "basename": basename,
        "name": None,
        "doc": f"compile or reuse the engines of {path.name} ({corpus.host.backend}, cache {corpus.cache_dir}); "
               f"another config: doit {basename} --config PATH (or config=PATH)",
        "params": [CONFIG_PARAM],
        **({"task_dep": [f"{basename}_export"]} if export_triton is not None else {}),
    }
    kwargs = {"backend_factory": backend_factory} if backend_factory is not None else {}
    engines = [corpus.engine_path(s) for s in corpus.specs]  # once each: a name costs a schema build
    verifier = SharedVerifier(engines, corpus.config.verify, corpus.specs, corpus.cache_dir)
    _shared._RUN_VERIFIER[str(corpus.cache_dir)] = verifier
    # verify: full hashes every engine byte whatever happens next: start while doit still
    # builds its tasks and opens its database (verify: stat answers from the index instead)
    if corpus.config.verify == "full" and _command_runs_tasks():
        verifier.start()
    for spec, engine in zip(corpus.specs, engines):
        yield {
            "basename": basename,
            "name": spec.model_name,
            "doc": f"{spec.model_name} -> {engine.name}",
            "actions": [(compile_backbone, [spec, corpus.host, corpus.config], kwargs)],
            "file_dep": [str(p) for p in (*spec.source_files, *spec.validation_files)] + [str(path)],
            "targets": [str(engine)],
            "uptodate": [EngineUpToDate(spec, corpus.host, engine, verifier)],
            "clean": [(clean_engine, [str(engine)])],
            "verbosity": 2,  # stream BUILT/REUSED lines and heartbeats as they happen
            "params": [CONFIG_PARAM],
            "meta": {"engine": str(engine), "model_name": spec.model_name},
        }
    if export_triton is not None:
        from .export import export_task  # imports doit: only for dodo files that ask for an export

        yield export_task(basename, path, export_triton, engines,
                          [s.model_name for s in corpus.specs])


def _check_remote_keys(config: Any) -> None:
    """Load the keys of an enabled ``remote:`` block now: a missing or unreadable key file is a config error.

    The actions load them again (each builds its own remote cache): without this, the first
    task would fail with ``FAILED det: ...`` after doit started the run, instead of one line
    and exit 2 before anything is built, as for every other config error.
    """
    if config.remote is None:
        return
    from ..remote import key_ring, remote_config_of  # only for configs with a remote: block

    remote = remote_config_of(config)
    if remote is not None and remote.enabled:
        key_ring(remote)


def _no_gpu_tasks(path: Path, basename: str, exc: NoGpuError) -> Iterator[dict[str, Any]]:
    """Tasks for listing without a GPU: no targets (an engine's name needs the GPU's identity).

    A placeholder target would be a path no build ever writes: ``doit clean`` and other
    tasks' ``file_dep`` would treat it as real. Without targets or ``file_dep``, and with
    ``uptodate: [False]``, a task always runs, and its action says there is no GPU.
    """
    try:
        config = load_config_only(path)
    except ProvisioningError as error:
        fail_fast(str(error).splitlines()[0], error.exit_code)
    message = str(exc).splitlines()[0]
    yield {"basename": basename, "name": None, "params": [CONFIG_PARAM],
           "doc": f"compile or reuse the engines of {path.name} ({config.backend}: no GPU visible here)"}
    for backbone in config.backbones:
        yield {
            "basename": basename,
            "name": backbone.model_name,
            "doc": f"{backbone.model_name} -> engine name unknown: no GPU visible",
            "actions": [(no_gpu_action, [message, exc.exit_code])],
            "uptodate": [False],
            "verbosity": 2,
            "params": [CONFIG_PARAM],
            "meta": {"model_name": backbone.model_name},
        }


def task_engines() -> Iterator[dict[str, Any]]:
    """Compile or reuse the corpus's engines (one subtask per backbone)."""
    yield from engine_tasks()
