"""EngineCompiler: per backbone, reuse the cached engine or compile it, never anything else.

The compiler depends only on :class:`~provisioning.backends.base.CompileEngineCallable`;
it never probes the host (the request carries :class:`HostCapabilities`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from .backends.base import CompileEngineCallable, EngineOutput
from .cache import (EngineCacheEntry, EntryCheck, append_event, check_entry, engine_lock, engine_path_for,
                    ensure_cache_dir, version_pinned_path)
from .errors import BackendError, CacheError, ConfigError, ValidationFailed
from .failtext import REASON_MARK, append_to_build_log, build_log_for, is_long, short_reason
from .host import HostCapabilities
from .interrupt import interrupt_of
from .lockwait import build_lock
from .manifest import BuildInputs, make_manifest, manifest_bytes, manifest_path_for
from .miss import NO_ENGINE, explain_absent
from .onnxinfo import onnx_digest, write_pending_inspections
from .qualification import record_validation, validation_matches, validation_of, why_not_validated
from .results import EngineCompileResult, EngineCompileSummary
from .specs import BackboneSpec, CompileOutcome, EngineCompileRequest
from .sidecar import TEMP_SUFFIX, Payload, Sha256Sidecar, Verification

log = logging.getLogger("provisioning.compiler")
# set on an exception whose FAILED line the compiler logged, so that a caller does not repeat it
LOGGED_MARK = "_provisioning_failure_logged"

__all__ = [
    "BackboneSpec",
    "CompileOutcome",
    "EngineCacheEntry",
    "EngineCompileRequest",
    "EngineCompileResult",
    "EngineCompileSummary",
    "EngineCompiler",
    "RemoteEngineCache",
    "RemoteFetch",
]


def expected_build_inputs(spec: BackboneSpec, host: HostCapabilities, onnx_sha256: str | None = None) -> BuildInputs:
    """Today's reuse key for ``spec`` on ``host``.

    The ONNX and its external data are hashed unless ``onnx_sha256`` is given (a caller
    that knows the files are unchanged since that digest was taken).
    """
    return BuildInputs(
        onnx_sha256=onnx_sha256 if onnx_sha256 is not None else _onnx_digest(spec),
        build_settings=spec.build_settings(host.backend),
        host=host.identity_for(spec).as_dict(),
        backend=host.backend,
        backend_version=host.backend_version,
    )


def _onnx_digest(spec: BackboneSpec, digest: Callable[[BackboneSpec], str] | None = None) -> str:
    try:
        return digest(spec) if digest is not None else onnx_digest(spec.onnx_path, spec.external_data)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"backbone {spec.model_name}: ONNX input {exc.filename or spec.onnx_path} disappeared; "
            "restore it or fix the 'onnx' path"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"backbone {spec.model_name}: cannot read {exc.filename or spec.onnx_path} ({exc.strerror or exc})"
        ) from None


@dataclass(frozen=True)
class RemoteFetch:
    """What a remote cache reports after publishing a fetched engine locally."""

    bytes: int
    seconds: float
    key_id: str | None = None  # the key whose commit record vouched for it ("unsigned" in an unsigned fleet)


class RemoteEngineCache(Protocol):
    """A second cache level behind the local folder (see :mod:`provisioning.remote`)."""

    def fetch(self, engine_path: Path, model_name: str, expected: BuildInputs) -> RemoteFetch | None:
        """On a local miss: download, verify and publish locally (atomic protocol); None when absent/unusable."""
        ...

    def publish(self, entry: EngineCacheEntry) -> None:
        """After a local build: upload the entry; must never raise for remote failures."""
        ...


class _Heartbeat:
    """Logs 'still building' with the current phase every ``interval_s`` while a build runs."""

    def __init__(self, model_name: str, interval_s: float) -> None:
        self.model_name = model_name
        self.interval_s = interval_s
        self.phase = "starting"
        self.detail = ""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{model_name}", daemon=True)

    def update(self, phase: str, detail: str = "") -> None:
        self.phase, self.detail = phase, detail

    def __enter__(self) -> "_Heartbeat":
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            elapsed = time.monotonic() - self.started
            detail = f" ({self.detail})" if self.detail else ""
            log.info(
                "building %s: %s%s, %.0f s elapsed",
                self.model_name, self.phase, detail, elapsed,
                extra={"event": "heartbeat", "model_name": self.model_name, "phase": self.phase,
                       "elapsed_s": round(elapsed, 1)},
            )


# One engine-hashing thread per process, shared by every compiler: doit makes a compiler per
# action, and starting a thread per action cost ~2 ms each while the verifier's threads kept
# both cores busy (0.9 s of a 400-backbone run without doit's database). Keyed by pid: a
# forked child (a `doit -n` worker) has none of its parent's threads and starts its own.
_HASHERS: dict[int, ThreadPoolExecutor] = {}


def _process_hasher() -> ThreadPoolExecutor:
    pool = _HASHERS.get(os.getpid())
    if pool is None:
        _HASHERS.clear()
        pool = _HASHERS[os.getpid()] = ThreadPoolExecutor(1, thread_name_prefix="engine-hash")
    return pool


class EngineCompiler:
    """Walks a corpus and, per backbone, reuses or compiles its engine."""

    def __init__(
        self,
        backend: CompileEngineCallable,
        *,
        heartbeat_s: float = 5.0,
        remote: RemoteEngineCache | None = None,
        verify: Callable[[Path], Verification] | None = None,
        onnx_sha256: Callable[[BackboneSpec], str] | None = None,
        hashed_onnx_sha256: Callable[[BackboneSpec], str] | None = None,
    ) -> None:
        """``verify`` and ``onnx_sha256`` replace hashing the cached engine and the ONNX (a
        caller that hashed them ahead, on other cores: doit's checkers, see provisioning.doit).

        ``onnx_sha256`` may answer from a record in the cache folder (local reuse only). Past a
        local miss, the digest that goes into a fetch's key, a build's manifest and an upload's
        signature comes from bytes this process hashed: ``hashed_onnx_sha256`` (a caller's
        digest of bytes it hashed itself, never a record), else the ONNX is hashed here."""
        self._backend = backend
        self._heartbeat_s = heartbeat_s
        self._remote = remote
        self._verify = verify or Sha256Sidecar.check
        self._onnx_sha256 = onnx_sha256
        self._hashed_onnx_sha256 = hashed_onnx_sha256

    @staticmethod
    def _hasher() -> ThreadPoolExecutor:
        return _process_hasher()

    def compile_engines_for_corpus(self, request: EngineCompileRequest) -> EngineCompileSummary:
        """Reuse or build every backbone of ``request``; the first failure propagates.

        A read-only cache (restored in CI, baked into an image) serves its verified engines;
        the folder must be writable only when something has to be built.
        """
        if not os.path.isdir(request.cache_dir):
            ensure_cache_dir(request.cache_dir)  # a new cache: create it (or say why not) up front
        results = [self._compile_one(spec, request) for spec in request.resolved_backbones()]
        write_pending_inspections(request.cache_dir)  # the next run (or resolve) skips importing onnx
        return EngineCompileSummary(tuple(results))

    def _compile_one(self, spec: BackboneSpec, request: EngineCompileRequest,
                     engine_path: Path | None = None) -> EngineCompileResult:
        host = request.host
        engine_path = engine_path or engine_path_for(request.cache_dir, spec, host)  # version-pinned: see cache
        # Hash the cached engine on another core while this one hashes the ONNX: a reuse
        # (the common case) costs the larger of the two reads, not their sum.
        engine_check = self._hasher().submit(self._verify, engine_path)
        try:
            expected = expected_build_inputs(spec, host, _onnx_digest(spec, self._onnx_sha256))
        finally:
            verification = engine_check.result()
        host_key = host.identity_for(spec).host_key
        check = check_entry(engine_path, spec.model_name, expected, verify=lambda _: verification)
        if check.hit and validation_matches(check.entry.manifest, spec):
            return self._finish(request, host_key, EngineCompileResult(check.entry, CompileOutcome.REUSED, None))
        ensure_cache_dir(request.cache_dir)
        with build_lock(engine_lock(engine_path), engine_path, spec.model_name, self._heartbeat_s):
            expected = self._from_hashed_bytes(spec, expected)
            check = check_entry(engine_path, spec.model_name, expected)  # another process may have built it
            pinned = None if check.hit else version_pinned_path(engine_path, expected)
            if pinned is not None:  # a newer TensorRT's host built the shared -vc engine meanwhile: never replace it
                return self._compile_one(spec, request, pinned)
            if check.hit:
                revalidated, check = self._revalidate(spec, host, check, request, host_key)
                if revalidated is not None:
                    return self._finish(request, host_key, revalidated)
            if check.reasons == (NO_ENGINE,):  # a new name: say which setting changed since the last one
                check = replace(check, reasons=explain_absent(engine_path, spec.model_name, host_key, expected))
            log.info(
                "miss %s: %s", spec.model_name, "; ".join(check.reasons),
                extra={"event": "miss", "model_name": spec.model_name, "reasons": list(check.reasons)},
            )
            if self._remote is not None:
                fetched = self._remote.fetch(engine_path, spec.model_name, expected)
                if fetched is not None:
                    remote_check, revalidated = check_entry(engine_path, spec.model_name, expected), None
                    if remote_check.hit:
                        revalidated, remote_check = self._revalidate(spec, host, remote_check, request, host_key,
                                                                     "remote")
                    if remote_check.hit and revalidated is not None:
                        result = replace(revalidated, miss_reasons=check.reasons)
                        return self._finish(request, host_key, result, fetch_bytes=fetched.bytes,
                                            fetch_seconds=round(fetched.seconds, 3), fetch_key_id=fetched.key_id)
            entry, duration = self._build(spec, host, engine_path, expected, request, host_key, check.reasons)
        if self._remote is not None:
            self._remote.publish(entry)
        result = EngineCompileResult(entry, CompileOutcome.BUILT, duration, check.reasons)
        return self._finish(request, host_key, result)

    def _from_hashed_bytes(self, spec: BackboneSpec, expected: BuildInputs) -> BuildInputs:
        """``expected`` with the ONNX digest of bytes this process hashed (what a fetch, a build and an upload use)."""
        if self._onnx_sha256 is None:
            return expected  # _onnx_digest hashed the files just now
        digest = _onnx_digest(spec, self._hashed_onnx_sha256)
        return expected if digest == expected.onnx_sha256 else replace(expected, onnx_sha256=digest)

    def _revalidate(self, spec: BackboneSpec, host: HostCapabilities, check: EntryCheck,
                    request: EngineCompileRequest, host_key: str,
                    source: str = "local") -> tuple[EngineCompileResult | None, EntryCheck]:
        """A verified entry, made reusable under today's validation criteria without a rebuild.

        Returns the REUSED result, or None with the check turned into a miss (the reason
        logged) when the engine cannot be validated here or misses the criteria: then it
        is rebuilt, and the rebuild must pass the same criteria to be published.
        """
        entry = check.entry
        assert entry is not None
        if validation_matches(entry.manifest, spec):
            return EngineCompileResult(entry, CompileOutcome.REUSED, None, source=source), check
        why = why_not_validated(entry.manifest, spec)
        validate_engine = getattr(self._backend, "validate_engine", None)
        if validate_engine is None:
            return None, EntryCheck(None, (f"{why}; this backend validates only while building",))
        log.info("validating %s: %s", spec.model_name, why,
                 extra={"event": "validate", "model_name": spec.model_name, "reason": why})
        try:
            report = validate_engine(spec, host, entry.path)
        except ValidationFailed as exc:
            reason = str(exc).splitlines()[0].removeprefix(f"backbone {spec.model_name}: ")
            return None, EntryCheck(None, (f"cached engine failed {reason.split('; the engine was not')[0]}",))
        except BaseException as exc:  # validation could not run at all: a rebuild would not either
            self._record_failure(spec, exc, request, host_key, entry.path.name, (why,), source)
            raise
        try:
            manifest = record_validation(entry.path, entry.manifest, report)
        except OSError as exc:
            raise _write_error(spec.model_name, entry.path, exc) from None
        entry = replace(entry, manifest=manifest)
        return EngineCompileResult(entry, CompileOutcome.REUSED, None, (why,), source=source), EntryCheck(entry)

    def _build(
        self,
        spec: BackboneSpec,
        host: HostCapabilities,
        engine_path: Path,
        expected: BuildInputs,
        request: EngineCompileRequest,
        host_key: str,
        miss_reasons: tuple[str, ...] = (),
    ) -> tuple[EngineCacheEntry, float]:
        try:
            scratch = Path(tempfile.mkdtemp(prefix=f".{engine_path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX,
                                            dir=request.cache_dir))
        except OSError as exc:
            raise _write_error(spec.model_name, engine_path, exc) from None
        started = time.monotonic()
        published: dict[str, Any] = {}

        def publish(payload: Payload, notes: Mapping[str, Any]) -> None:
            duration = time.monotonic() - started

            def manifest_companion(sha256: str, size: int) -> dict[Path, bytes]:
                document = make_manifest(
                    model_name=spec.model_name, engine_path=engine_path, sha256=sha256, size=size,
                    inputs=expected, onnx_path=spec.onnx_path, compile_duration_s=round(duration, 3),
                    notes=notes,
                )
                published["manifest"] = document
                return {manifest_path_for(engine_path): manifest_bytes(document)}

            # a file the backend left in its scratch folder is on the cache's file system: move it
            movable = isinstance(payload, Path) and scratch in Path(os.path.abspath(payload)).parents
            try:
                with _flushing(payload):
                    sha256, size = Sha256Sidecar.write_atomic_and_sidecar(
                        engine_path, payload, before_commit=manifest_companion, move=movable
                    )
            except OSError as exc:  # ENOSPC, EFBIG, EROFS, EIO: say where, and what to do
                raise _write_error(spec.model_name, engine_path, exc) from None
            published.update(sha256=sha256, size=size, duration=duration)

        try:
            with _Heartbeat(spec.model_name, self._heartbeat_s) as heartbeat:
                output = EngineOutput(engine_path, scratch, publish, heartbeat.update)
                self._backend.compile_engine(spec, host, output)
            if not output.written:
                raise BackendError(
                    f"backbone {spec.model_name}: the backend returned without writing an engine"
                )
        except BaseException as exc:
            self._record_failure(spec, exc, request, host_key, engine_path.name, miss_reasons)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        manifest = published["manifest"]
        entry = EngineCacheEntry(
            model_name=spec.model_name, path=engine_path, sha256=published["sha256"], size=published["size"],
            inputs=manifest["inputs"], manifest=manifest,
        )
        return entry, published["duration"]

    @staticmethod
    def _record_failure(spec: BackboneSpec, exc: BaseException, request: EngineCompileRequest, host_key: str,
                        engine_name: str, miss_reasons: tuple[str, ...], source: str = "local") -> None:
        """The FAILED line and event of a backbone, or the INTERRUPTED event (marked: a caller does not repeat them)."""
        stop = interrupt_of(exc)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if stop is None and is_long(str(exc)):  # the first error here, every error in the build log
            log_path = build_log_for(request.cache_dir, engine_name)
            written = append_to_build_log(log_path, f"FAILED {spec.model_name}: {type(exc).__name__}", str(exc))
            reason = short_reason(str(exc), log_path.name if written else None)
        if stop is not None:  # not a failure: an INTERRUPTED event; the caller prints its line once unwound
            reason, outcome, error_class = f"stopped by {stop.signal_name}", "INTERRUPTED", stop.error_class
        else:
            outcome, error_class = "FAILED", type(exc).__name__
            log.error(
                "FAILED %s: %s", spec.model_name, reason,
                extra={"event": "result", "model_name": spec.model_name, "outcome": "FAILED",
                       "error_class": error_class},
            )
        append_event(request.cache_dir, _event(spec.model_name, outcome, engine_name, None, error_class,
                                               host_key, reason=reason, source=source,
                                               miss_reasons=list(miss_reasons)))
        try:
            setattr(exc, LOGGED_MARK, True)
            setattr(exc, REASON_MARK, reason)
        except (AttributeError, TypeError):  # an exception type without a __dict__
            pass

    def _finish(
        self, request: EngineCompileRequest, host_key: str, result: EngineCompileResult, **extra: Any
    ) -> EngineCompileResult:
        duration = "" if result.compile_duration_s is None else f"{result.compile_duration_s:.1f} s  "
        log.info(
            "%-6s %s  %s%s", result.outcome.value, result.model_name, duration, result.entry.file_name,
            extra={"event": "result", "model_name": result.model_name, "outcome": result.outcome.value,
                   "engine": result.entry.file_name, "compile_duration_s": result.compile_duration_s},
        )
        report = validation_of(result.entry.manifest)
        if report is not None:
            extra["validation"] = dict(report)
        append_event(
            request.cache_dir,
            _event(result.model_name, result.outcome.value, result.entry.file_name, result.compile_duration_s,
                   None, host_key, source=result.source, miss_reasons=list(result.miss_reasons), **extra),
        )
        return result


@contextlib.contextmanager
def _flushing(payload: Payload) -> Iterator[None]:
    """While the publish hashes the backend's file (from the page cache), write it to disk in a thread.

    The publish's own fsync then waits only for what is left: hashing and writing back
    overlap instead of following each other (an I/O-bound build writes 100 MB engines).
    """
    if not isinstance(payload, Path):
        yield
        return
    try:
        fd = os.open(payload, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # the publish reports its own error
        yield
        return

    def flush() -> None:
        try:
            os.fsync(fd)  # fsync through any descriptor writes back the file's dirty pages
        except OSError:
            pass

    flusher = threading.Thread(target=flush, name="engine-flush", daemon=True)
    flusher.start()
    try:
        yield
    finally:
        flusher.join()
        os.close(fd)


def _write_error(model_name: str, engine_path: Path, exc: OSError) -> CacheError:
    """A one-line error for a failed write into the cache (the previous engine is left as it was)."""
    return CacheError(
        f"backbone {model_name}: cannot write {engine_path.name} into {engine_path.parent} "
        f"({exc.strerror or exc}); free disk space or raise the file size limit, then run again"
    )


def _event(model_name: str, outcome: str, engine: str, duration: float | None, error_class: str | None,
           host_key: str, **extra: Any) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
        "model_name": model_name,
        "outcome": outcome,
        "engine": engine,
        "compile_duration_s": None if duration is None else round(duration, 3),
        "error_class": error_class,
        "host_key": host_key,
        "pid": os.getpid(),
        **extra,
    }
