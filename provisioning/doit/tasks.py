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
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import interrupt
from ..cache import append_event, check_entry, engine_path_for, entry_files
from ..compiler import LOGGED_MARK, BackboneSpec, EngineCompiler, EngineCompileRequest, _event, expected_build_inputs
from ..config import ProvisioningConfig
from ..errors import NoGpuError, ProvisioningError
from ..host import HostCapabilities
from ..onnxinfo import write_pending_inspections
from ..qualification import validation_matches
from ..sidecar import Verification
from ..verify import entry_signatures, reuse_key
from .corpus import config_path, load_config_only, load_corpus
from .filedep import Sha256FileChecker
from .report import configure_console_logging, fail_fast

log = logging.getLogger("provisioning.doit")

DB_ENV = "PROVISIONING_DOIT_DB"
DEFAULT_DB = ".doit.db"
ONNX_DIGEST_VALUE = "onnx_sha256"
CHECKER_VALUE = "_engine_uptodate"

BackendFactory = Callable[[str], Any]

# The basenames engine_tasks() generated in this process: the one list object every
# doit_config() hands doit as default_tasks. doit reads DOIT_CONFIG right after importing the
# dodo and keeps this very object as its task selection (``args or default_tasks``), but only
# filters tasks by it after the task creators ran, and engine_tasks() appends while they run:
# so plain ``doit`` selects exactly the engine groups that exist, whatever their basename.
_DEFAULT_TASKS: list[str] = []


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


class SharedVerifier:
    """One :class:`~provisioning.verify.EngineVerifier` and one cache index for a whole run.

    doit evaluates checkers one task at a time in its main process. Hashing every existing
    engine on all cores starts at task generation when doit runs tasks with ``verify: full``
    (:func:`_command_runs_tasks`), else at the first check, so checkers find their result ready.
    A checker that finds no saved values (doit's database lost or new: every action runs)
    also starts hashing the ONNX files the actions will need, so that under ``-n 1`` each
    action finds its engine and its ONNX already hashed (:func:`compile_backbone` asks here).
    The :class:`~provisioning.verify.CacheIndex` lets an unchanged entry skip reading its
    sidecar and manifest; it is saved when the process exits (a ``-n`` worker: per action).
    Nothing is hashed or read for commands that never ask (``doit list``, ``doit clean``).
    """

    def __init__(self, engine_paths: list[Path], mode: str = "full", specs: tuple[BackboneSpec, ...] = (),
                 cache_dir: Path | None = None) -> None:
        self._paths = engine_paths
        self._mode = mode
        self._specs = specs
        self.mode = mode
        self._verifier: Any = None
        self._sources_started = False
        self._host_text: tuple[HostCapabilities, str] | None = None
        self._index: Any = None
        self._cache_dir = cache_dir

    def _started(self) -> Any:
        if self._verifier is None:
            from ..verify import EngineVerifier

            self._verifier = EngineVerifier(self._mode)
            self._verifier.prefetch(p for p in self._paths if p.is_file())
        return self._verifier

    def start(self) -> None:
        """Start hashing every existing engine now (at task generation, for a command that runs tasks)."""
        self._started()

    @property
    def hashing(self) -> bool:
        """Whether this run's engines are being (or were) hashed ahead."""
        return self._verifier is not None

    def check(self, engine_path: Path) -> Verification:
        """Verify one engine against its sidecar (using the prefetched result when ready)."""
        return self._started().check(engine_path)

    def host_text(self, host: HostCapabilities) -> str:
        """``repr(host)``, once per run (the same host object for every task)."""
        if self._host_text is None or self._host_text[0] is not host:
            self._host_text = (host, repr(host))
        return self._host_text[1]

    @property
    def index(self) -> Any:
        """The cache's :class:`~provisioning.verify.CacheIndex` (None without a cache folder)."""
        if self._index is None and self._cache_dir is not None:
            import atexit

            from ..verify import CacheIndex

            self._index = CacheIndex(self._cache_dir)
            atexit.register(self._index.save)
        return self._index

    def prefetch_sources(self) -> None:
        """Hash every backbone's ONNX files ahead of the actions (not under ``-n N``: the workers hash)."""
        if self._sources_started or _parallel_run():
            return
        self._sources_started = True
        index = self.index
        sources = [(s.onnx_path, s.source_files) for s in self._specs]
        if index is not None:
            sources = [(m, f) for m, f in sources if index.onnx_sha256(m, f) is None]
        self._started().prefetch_sources(sources)

    def onnx_sha256(self, spec: BackboneSpec) -> str:
        """The reuse key's ONNX digest: indexed (unchanged files), prefetched, or hashed now."""
        from ..verify import combine_onnx_digest, note_known_digests

        files = spec.source_files
        index = self.index
        known = index.onnx_sha256(spec.onnx_path, files) if index is not None else None
        if known is not None:
            note_known_digests(index.onnx_hashes(spec.onnx_path))
            return known
        hashed = self._started().source_hashes(spec.onnx_path, files)
        digest = combine_onnx_digest(spec.onnx_path, hashed)
        if index is not None:
            index.remember_onnx(spec.onnx_path, hashed, digest)
        note_known_digests(hashed)
        return digest


def _in_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _parallel_run() -> bool:
    """Whether doit was started with ``-n N`` (N > 1): actions then run in worker processes."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-n", "--process") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--process="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-n") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None and value.isdigit() and int(value) > 1:
            return True
    return False


# doit's own commands that generate tasks without running any (doit.doit_cmd.DoitMain.DOIT_CMDS
# but ``run``), and this package's engines-* commands: they must not pay for hashing
_NO_RUN_COMMANDS = frozenset({"help", "list", "info", "clean", "forget", "ignore", "dumpdb", "strace",
                              "tabcompletion", "reset-dep", "auto"})


def _command_runs_tasks() -> bool:
    """Whether this process is doit's command line running tasks (``doit``, ``doit run``, ``doit TASK``).

    doit takes its first argument as the command when it names one, else runs ``run``; the
    check is by name, so that nothing is imported for it. A plugin command this list does not
    know counts as a run: it costs background hashing only, never a wrong answer.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program != "doit" and getattr(spec, "name", None) != "doit.__main__":
        return False  # a library call or a test: hashing starts at the first check, as before
    args = sys.argv[1:]  # ``run``, a task name or an option ("-n") all mean a run
    return not args or (args[0] not in _NO_RUN_COMMANDS and not args[0].startswith("engines-"))


# The SharedVerifier of the corpus this process generated tasks for: the actions use it
_RUN_VERIFIER: dict[str, SharedVerifier] = {}


class EngineUpToDate:
    """doit ``uptodate`` checker: True only when the cached engine verifies against today's inputs.

    It runs in doit's main process when ``file_dep`` is unchanged, so the ONNX is the one the
    last successful run hashed: the digest saved in ``values`` stands in for re-hashing it.
    The engine is verified against its sidecar (hashed in full unless the config opts into
    ``verify: stat``) and its manifest compared with today's settings, host and builder
    version. It never raises: an exception in an uptodate callable would stop doit with
    exit 3, so any surprise means "run the task".
    """

    def __init__(
        self, spec: BackboneSpec, host: HostCapabilities, engine_path: Path, verifier: SharedVerifier | None = None
    ) -> None:
        self.spec = spec
        self.host = host
        self.engine_path = Path(engine_path)
        self.verifier = verifier

    def configure_task(self, task: Any) -> None:
        """Record which engine this success vouched for (saved with the task's values)."""
        task.value_savers.append(lambda: {CHECKER_VALUE: self.engine_path.name})

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        try:
            return self._verify(values)
        except Exception as exc:  # never abort the doit run from a checker
            log.debug("uptodate check of %s failed (%s); running the task", self.spec.model_name, exc)
            return False

    def _verify(self, values: dict[str, Any]) -> bool:
        onnx_sha256 = values.get(ONNX_DIGEST_VALUE)
        if values.get(CHECKER_VALUE) != self.engine_path.name or not isinstance(onnx_sha256, str):
            if self.verifier is not None:  # the action will run: hash what it needs ahead of it
                self.verifier.prefetch_sources()
            return False
        index = self.verifier.index if self.verifier is not None else None
        # today's inputs are a function of these three (see expected_build_inputs): no need to build them
        key = reuse_key(onnx_sha256, self.spec, self.verifier.host_text(self.host)) if index is not None else ""
        if index is not None:
            indexed = index.engine(self.engine_path, key)
            if indexed is not None:  # sidecar and manifest unchanged since they checked out under this key
                sha256, unchanged = indexed
                if unchanged and self.verifier.mode == "stat":
                    return True
                verification = self.verifier.check(self.engine_path)
                return verification.ok and verification.sha256 == sha256
        expected = expected_build_inputs(self.spec, self.host, onnx_sha256)
        before = entry_signatures(self.engine_path) if index is not None else None
        verify = self.verifier.check if self.verifier is not None else None
        check = check_entry(self.engine_path, self.spec.model_name, expected, verify=verify)
        # validate: asks for a passing record under today's criteria; without one the action
        # runs, and validates the cached engine rather than rebuilding it
        hit = check.hit and validation_matches(check.entry.manifest, self.spec)
        if hit and index is not None:
            index.remember_engine(self.engine_path, key, check.entry.sha256, before)
        return hit

    def __repr__(self) -> str:
        return f"EngineUpToDate({self.engine_path.name!r})"

    # doit asks inspect.signature() of every uptodate callable once per task and run; for an
    # instance that means resolving __call__ each time (~0.1 ms): a class attribute answers at once
    __signature__ = inspect.Signature([inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                       for name in ("task", "values")])


def _default_backend(name: str) -> Any:
    from ..compose import make_backend

    return make_backend(name)


def compile_backbone(
    spec: BackboneSpec, host: HostCapabilities, config: ProvisioningConfig,
    backend_factory: BackendFactory | None = None,
) -> Any:
    """The task action: reuse or build one backbone; JSON-only values, TaskFailed on a known error.

    The compiler is wired as :func:`~provisioning.compose.build_engine_compiler` wires it
    (the config's remote cache included), with the backend from ``backend_factory``.
    SIGINT or SIGTERM stops it: the build unwinds (its partial files go), the backbone gets
    an INTERRUPTED event and line, and :class:`~provisioning.interrupt.Interrupted` (a
    SystemExit) ends doit with 130 or 143, from a ``-n`` worker too.
    """
    configure_console_logging()
    with interrupt.guard():  # SIGTERM would otherwise kill the process before any finally ran
        try:
            return _compile_backbone(spec, host, config, backend_factory)
        except BaseException as exc:
            stop = interrupt.interrupt_of(exc)
            if stop is None:
                raise
            _report_interrupt(spec, host, Path(config.cache_dir), stop, recorded=getattr(exc, LOGGED_MARK, False))
            raise stop from None


def _report_interrupt(spec: BackboneSpec, host: HostCapabilities, cache: Path, stop: interrupt.Interrupted,
                      recorded: bool) -> None:
    """Once a stopped action unwound: sweep its partial files, the INTERRUPTED event, one line."""
    engine_name = engine_path_for(cache, spec, host).name
    interrupt.remove_own_temporaries(cache, engine_name)
    if not recorded:  # stopped outside the build itself (hashing, the lock, a remote fetch): no event yet
        append_event(cache, _event(spec.model_name, "INTERRUPTED", engine_name, None, stop.error_class,
                                   host.identity_for(spec).host_key, reason=f"stopped by {stop.signal_name}"))
    log.error("INTERRUPTED %s: stopped by %s; partial files removed", spec.model_name, stop.signal_name,
              extra={"event": "result", "model_name": spec.model_name, "outcome": "INTERRUPTED",
                     "error_class": stop.error_class})


def _compile_backbone(spec: BackboneSpec, host: HostCapabilities, config: ProvisioningConfig,
                      backend_factory: BackendFactory | None) -> Any:
    from doit.exceptions import TaskFailed

    cache = Path(config.cache_dir)
    try:
        backend = (backend_factory or _default_backend)(host.backend)
        # TensorRT builds sharing a GPU take turns inside the backend (its device lock), so
        # `doit -n N` runs ONNX Runtime builds and verifications in parallel, GPU builds in turn
        remote = None
        if config.remote is not None:
            from ..remote import make_remote_cache  # its libraries load only for configs that use one

            remote = make_remote_cache(config)
        request = EngineCompileRequest(backbones=(spec,), cache_dir=cache, host=host)
        shared = _RUN_VERIFIER.get(str(cache))  # this process's checkers may have hashed ahead of us
        hooks = {} if shared is None else {"verify": shared.check, "onnx_sha256": shared.onnx_sha256}
        try:
            result = EngineCompiler(backend, remote=remote, **hooks).compile_engines_for_corpus(request).results[0]
        finally:
            if shared is not None and shared.index is not None and _in_worker():
                shared.index.save()  # a -n worker's exit skips atexit
        write_pending_inspections(cache)  # a first run's ONNX inspections: the next run skips importing onnx
    except Exception as exc:  # one line for the user; the compiler logged the class and the event
        text = str(exc).splitlines()[0] if str(exc) else ""
        if not isinstance(exc, (ProvisioningError, OSError)):  # a surprise: keep its type in the line
            log.debug("%s failed", spec.model_name, exc_info=True)
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        line = f"FAILED {spec.model_name}: {text or type(exc).__name__}"
        if not getattr(exc, LOGGED_MARK, False):  # the compiler logs build failures itself
            log.error(line)
        # report=False: doit's console reporter would repeat the line under 'TaskFailed - taskid:'
        return TaskFailed(line, report=False)
    return {
        "model_name": spec.model_name,
        "outcome": result.outcome.value,
        "engine": result.entry.file_name,
        "sha256": result.entry.sha256,
        ONNX_DIGEST_VALUE: str(result.entry.inputs.get("onnx_sha256", "")),
        "compile_duration_s": result.compile_duration_s,
    }


def clean_engine(engine_path: str, dryrun: bool = False) -> None:
    """``doit clean``: remove one engine with its sidecar (first: the commit point) and companions."""
    for path in entry_files(Path(engine_path)):
        if os.path.lexists(path):
            print(f"{'would remove' if dryrun else 'removing'} {path}")
            if not dryrun:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


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

    The config is ``config=PATH`` on the doit command line, else $PROVISIONING_CONFIG, else
    ``config``, else corpus/corpus.yaml (as for the engines-* commands). A bad config prints
    one line and exits with the error's code before any task runs. Without the GPU a
    ``backend: tensorrt`` config needs, the tasks are still listed (``doit list``) and the
    first one to run stops with the no-GPU line and exit code 69. ``backend_factory(name)``
    replaces the backend (a module-level callable, so that it pickles for ``doit -n``).
    """
    path = config_path(os.fspath(config) if config is not None else None)
    interrupt.install()  # doit's main process: Ctrl-C while it waits for `-n` workers exits 130, no traceback
    if basename not in _DEFAULT_TASKS:
        _DEFAULT_TASKS.append(basename)
    try:
        corpus = load_corpus(path)
    except NoGpuError as exc:
        yield from _no_gpu_tasks(path, basename, exc)
        return
    except ProvisioningError as exc:
        fail_fast(str(exc).splitlines()[0], exc.exit_code)
    yield {
        "basename": basename,
        "name": None,
        "doc": f"compile or reuse the engines of {path.name} ({corpus.host.backend}, cache {corpus.cache_dir}); "
               "another config: doit engines config=PATH",
        **({"task_dep": [f"{basename}_export"]} if export_triton is not None else {}),
    }
    kwargs = {"backend_factory": backend_factory} if backend_factory is not None else {}
    engines = [corpus.engine_path(s) for s in corpus.specs]  # once each: a name costs a schema build
    verifier = SharedVerifier(engines, corpus.config.verify, corpus.specs, corpus.cache_dir)
    _RUN_VERIFIER[str(corpus.cache_dir)] = verifier
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
            "meta": {"engine": str(engine), "model_name": spec.model_name},
        }
    if export_triton is not None:
        from .export import export_task  # imports doit: only for dodo files that ask for an export

        yield export_task(basename, path, export_triton, engines,
                          [s.model_name for s in corpus.specs])


def no_gpu_action(message: str, exit_code: int) -> Any:
    """The action of every task of a GPU config on a host without one: one line, then exit 69.

    In doit's own process SystemExit passes through its runner, so its code is doit's; a
    ``doit -n`` worker cannot end the run with its code: there the task fails (exit 1).
    """
    import multiprocessing

    if multiprocessing.parent_process() is None:
        fail_fast(message, exit_code)
    from doit.exceptions import TaskFailed

    sys.stderr.write(f"ERROR: {message}\n")
    return TaskFailed(message, report=False)


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
    yield {"basename": basename, "name": None,
           "doc": f"compile or reuse the engines of {path.name} ({config.backend}: no GPU visible here)"}
    for backbone in config.backbones:
        yield {
            "basename": basename,
            "name": backbone.model_name,
            "doc": f"{backbone.model_name} -> engine name unknown: no GPU visible",
            "actions": [(no_gpu_action, [message, exc.exit_code])],
            "uptodate": [False],
            "verbosity": 2,
            "meta": {"model_name": backbone.model_name},
        }


def task_engines() -> Iterator[dict[str, Any]]:
    """Compile or reuse the corpus's engines (one subtask per backbone)."""
    yield from engine_tasks()
