"""The actions of the engine tasks: compile or reuse one backbone, clean one engine, say "no GPU".

Every action is a module-level function whose arguments are frozen dataclasses and
strings, so that ``doit -n N`` pickles them under fork, spawn and forkserver. An action
returns JSON-only values (doit's database stores them) or ``TaskFailed`` with one line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .. import interrupt
from ..cache import append_event, engine_path_for, entry_files
from ..compiler import LOGGED_MARK, BackboneSpec, EngineCompiler, EngineCompileRequest, _event
from ..config import ProvisioningConfig
from ..errors import ProvisioningError
from ..failtext import REASON_MARK, short_reason
from ..host import HostCapabilities
from ..onnxinfo import write_pending_inspections
from .report import configure_console_logging, fail_fast
from .runmode import _in_worker
from .uptodate import ONNX_DIGEST_VALUE
from . import verifier as _shared

log = logging.getLogger("provisioning.doit")

BackendFactory = Callable[[str], Any]


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
        shared = _shared._RUN_VERIFIER.get(str(cache))  # this process's checkers may have hashed ahead of us
        hooks = {} if shared is None else {"verify": shared.check, "onnx_sha256": shared.onnx_sha256,
                                           "hashed_onnx_sha256": shared.hashed_onnx_sha256}
        try:
            result = EngineCompiler(backend, remote=remote, **hooks).compile_engines_for_corpus(request).results[0]
        finally:
            if shared is not None and shared.index is not None and _in_worker():
                shared.index.save()  # a -n worker's exit skips atexit
        write_pending_inspections(cache)  # a first run's ONNX inspections: the next run skips importing onnx
    except Exception as exc:  # one line for the user; the compiler logged the class and the event
        text = getattr(exc, REASON_MARK, None) or (str(exc).splitlines()[0] if str(exc) else "")
        text = short_reason(text)  # the compiler's own reason is short already (its whole text in the build log)
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
