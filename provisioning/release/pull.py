"""``engines-pull``: put the engine a signed release pins for this host into the cache, verified.

The order is what makes every failure harmless:

1. the release is verified (signature by a trusted key, namespace, exact format) before
   anything else: a bad one is refused with one line (exit 2) and nothing is downloaded;
2. this host is probed (:mod:`.select`) and one variant is chosen per backbone;
3. engines already in the cache are verified (all in parallel, as the warm path does;
   ``verify: stat`` trusts an unchanged, once-hashed engine) and reported PRESENT;
4. the others are downloaded with the fleet's transfer code (parallel ranged GETs, hashed
   while they arrive), their bytes checked against the SHA-256 the release pins, and
   published as a local build is (engine, manifest, sidecar last: the commit point), under
   the engine's build lock. Nothing is ever compiled.

One line per backbone: ``PULLED``, ``PRESENT``, ``PLANNED`` (``--dry-run``), or what went
wrong (``NO-VARIANT``, ``REFUSED`` for bytes that do not match the release, ``GONE`` for an
entry no longer in the bucket, ``FAILED``); exit code 0 when every backbone is ready, else 1.
A dead bucket costs ``timeout_s`` once per run: after the first transport failure the
remaining downloads are not tried.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..backends.base import writing_back_fd
from ..cache import engine_lock, ensure_cache_dir
from ..errors import ConfigError
from ..manifest import manifest_path_for, read_manifest
from ..sidecar import Sha256Sidecar, create_temp, is_temp_name
from ..verify import EngineVerifier
from .format import Release, Variant, load_release
from .select import Choice, ServingHost, choose, no_variant_line, probe_serving_host
from .serving_config import ServingConfig

READY = ("PULLED", "PRESENT", "PLANNED")
_MAX_MANIFEST = 1 << 20
_DOWNLOADS = 8  # engines downloaded at once (each with its own ranged parts)
_WRITEBACK_S = 0.02  # how often a download in flight is written back to disk
_FREE_MARGIN = 64 << 20  # left free after a download, as a fetch from the remote cache leaves


@dataclass
class PullLine:
    """The outcome for one backbone."""

    model: str
    state: str  # PULLED, PRESENT, PLANNED, NO-VARIANT, REFUSED, GONE, FAILED
    choice: Choice | None = None
    detail: str = ""
    path: Path | None = None

    @property
    def ready(self) -> bool:
        return self.state in READY

    def text(self) -> str:
        """``PULLED det <engine> (exact)``, or the state and its one-line reason."""
        if self.state == "NO-VARIANT":
            return self.detail
        if self.choice is None:
            return f"{self.state} {self.model}: {self.detail}"
        head = f"{self.state} {self.model} {self.choice.variant.engine} ({self.choice.reason})"
        return f"{head}: {self.detail}" if self.detail else head

    def as_dict(self) -> dict[str, Any]:
        variant = self.choice.variant if self.choice is not None else None
        return {
            "model_name": self.model, "state": self.state, "ready": self.ready,
            "engine": variant.engine if variant else None, "reason": self.choice.reason if self.choice else None,
            "rank": self.choice.rank if self.choice else None, "sha256": variant.sha256 if variant else None,
            "size": variant.size if variant else None, "host_key": variant.host_key if variant else None,
            "backend": variant.backend if variant else None,
            "backend_version": variant.backend_version if variant else None,
            "path": str(self.path) if self.path is not None else None, "detail": self.detail or None,
        }


@dataclass
class PullReport:
    """Every backbone's line, with the host and the release they were decided for."""

    release: Release
    host: ServingHost
    lines: list[PullLine] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if all(line.ready for line in self.lines) else 1

    def header(self) -> str:
        return (f"engines-pull: release of {self.release.created} (namespace {self.release.namespace}, signed by "
                f"{', '.join(self.release.signed_by)}); host {self.host.describe()}")

    def as_dict(self) -> dict[str, Any]:
        host = self.host
        return {
            "created": self.release.created, "namespace": self.release.namespace,
            "signed_by": list(self.release.signed_by),
            "host": {"gpu": host.gpu.name if host.gpu else None, "sm": host.gpu.sm if host.gpu else None,
                     "runtimes": dict(host.runtimes), "runtime_given": host.runtime_given, "cpu_key": host.cpu_key,
                     "describe": host.describe()},
            "backbones": [line.as_dict() for line in self.lines],
            "untrusted": [{"model_name": m, "host_key": k, "why": w} for m, k, w in self.release.untrusted],
            "exit_code": self.exit_code,
        }


def verified_release(path: str | os.PathLike[str], config: ServingConfig) -> Release:
    """The release at ``path``, verified with the serving config's keys and namespace (ReleaseError: exit 2)."""
    from ..remote import key_ring

    ring = key_ring(config.remote)
    if ring is None:
        raise ConfigError(f"{config.config_path}: field 'remote.signing_key': missing; a pull verifies the release "
                          "with the fleet's key: give its public key (signing_key or trusted_keys)")
    return load_release(path, ring, config.remote.namespace)


def selected_models(release: Release, models: Iterable[str] | None) -> list[str]:
    """The backbones to pull, in name order; ConfigError (exit 2) naming an unknown one."""
    known = release.model_names
    if not models:
        return list(known)
    wanted = sorted(set(models))
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ConfigError(f"--models: the release has no backbone {', '.join(map(repr, unknown))} (it has "
                          f"{', '.join(known) or 'none'}); check the names")
    return wanted


def plan(release: Release, models: list[str], host: ServingHost,
         allow_cpu_fallback: bool) -> list[tuple[str, Choice | None, str]]:
    """(model, choice or None, the no-variant line) per backbone."""
    planned = []
    for model in models:
        variants = release.backbone(model).variants
        choice = choose(variants, host, allow_cpu_fallback)
        line = "" if choice is not None else no_variant_line(model, variants, host, allow_cpu_fallback)
        unvouched = sorted({key for name, key, _ in release.untrusted if name == model})
        if line and unvouched:
            line += (f"; variants for {', '.join(unvouched)} were left out: no trusted key vouches for those host "
                     "keys (host_key_prefixes)")
        planned.append((model, choice, line))
    return planned


def pull_release(release_path: str | os.PathLike[str], config: ServingConfig, *, models: Iterable[str] | None = None,
                 dry_run: bool = False, host: ServingHost | None = None) -> PullReport:
    """Verify the release, pick per backbone, verify what is present, download the rest.

    Bad input (a release that does not verify, another namespace, an unknown model, a bad
    config) raises a ProvisioningError with exit code 2 before anything is downloaded.
    """
    release = verified_release(release_path, config)
    names = selected_models(release, models)
    host = host if host is not None else probe_serving_host(config.runtime)
    report = PullReport(release, host)
    decided = plan(release, names, host, config.allow_cpu_fallback)
    cache_dir = config.cache_dir
    lines: dict[str, PullLine] = {}
    todo: list[tuple[str, Choice]] = []
    for model, choice, missing in decided:
        if choice is None:
            lines[model] = PullLine(model, "NO-VARIANT", None, missing)
        elif dry_run:
            lines[model] = PullLine(model, "PLANNED", choice, "", cache_dir / choice.variant.engine)
        else:
            todo.append((model, choice))
    if todo:
        ensure_cache_dir(cache_dir)
        missing = _present(cache_dir, todo, config.verify, lines)
        if missing:
            _download_all(config, release, missing, lines)
    report.lines = [lines[m] for m, _, _ in decided]
    return report


def _present(cache_dir: Path, todo: list[tuple[str, Choice]], mode: str, lines: dict[str, PullLine]) -> list:
    """Mark the engines already here and verified PRESENT (hashed in parallel); return the rest."""
    candidates = [(m, c, cache_dir / c.variant.engine) for m, c in todo]
    here = [path for _, _, path in candidates if os.path.lexists(path)]
    verifier = EngineVerifier(mode) if here else None
    rest = []
    try:
        if verifier is not None:
            verifier.prefetch(here)
        for model, choice, path in candidates:
            if verifier is not None and path in here and is_present(path, choice.variant, verifier.check):
                lines[model] = PullLine(model, "PRESENT", choice, "", path)
            else:
                rest.append((model, choice, path))
    finally:
        if verifier is not None:
            verifier.close()
    return rest


def is_present(path: Path, variant: Variant, check) -> bool:
    """True when ``path`` holds exactly the release's engine: its sidecar verifies, with its manifest."""
    if os.path.islink(path) or not os.path.lexists(path):
        return False
    verification = check(path)
    if not verification.ok or verification.sha256 != variant.sha256:
        return False
    manifest = read_manifest(path)
    engine = manifest.get("engine") if isinstance(manifest, dict) else None
    return (isinstance(engine, dict) and engine.get("sha256") == variant.sha256
            and engine.get("file_name") == variant.engine and isinstance(manifest.get("inputs"), dict))


class _Run:
    """What the downloads of one run share: the store, and the first transport failure."""

    def __init__(self, config: ServingConfig) -> None:
        from ..remote.store import RemoteStore

        self.config = config
        self.store = RemoteStore.open(config.remote)
        self.dead: str | None = None
        self.lock = threading.Lock()


def _download_all(config: ServingConfig, release: Release, missing: list, lines: dict[str, PullLine]) -> None:
    run = _Run(config)
    if len(missing) >= run.store.concurrency:  # enough engines to fill the link: one GET each, no parts
        run.store.part_bytes = max(run.store.part_bytes, max(c.variant.size for _, c, _ in missing))
    queue, failures = list(missing), []

    def work() -> None:  # daemon threads: a stopped pull (Ctrl-C, SIGTERM) does not wait for them
        while True:
            with run.lock:
                if not queue:
                    return
                item = queue.pop(0)
            try:
                line = _pull_one(run, release, *item)
            except BaseException as exc:  # an unexpected error: raised in the caller's thread
                with run.lock:
                    failures.append(exc)
                    queue.clear()
                return
            with run.lock:
                lines[line.model] = line

    threads = [threading.Thread(target=work, name="pull", daemon=True)
               for _ in range(max(1, min(_DOWNLOADS, len(missing))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def _pull_one(run: _Run, release: Release, model: str, choice: Choice, path: Path) -> PullLine:
    from ..remote.store import RemoteContentError, RemoteUnavailable

    variant = choice.variant
    where = run.store.display(f"{run.store.root}/{variant.entry.base}")
    if run.dead is not None:
        return PullLine(model, "FAILED", choice, f"not tried: the remote is unavailable ({run.dead})")
    try:
        with engine_lock(path):
            if _published_meanwhile(path, variant):
                return PullLine(model, "PRESENT", choice, "", path)
            _remove_leftovers(path)
            _fetch(run, release, variant, path)
        return PullLine(model, "PULLED", choice, "", path)
    except _Gone as exc:
        return PullLine(model, "GONE", choice, f"its entry {where} is no longer in the bucket ({exc} missing: "
                        "garbage-collected?); nothing published; pull a newer release, or build and release this "
                        "host class again")
    except _Refused as exc:
        return PullLine(model, "REFUSED", choice, f"{exc} in {where}; nothing published for {model} (the bucket "
                        "was written after the release was signed; rebuild and release again)")
    except RemoteContentError as exc:
        return PullLine(model, "REFUSED", choice, f"the bucket's engine does not match the release's sha256 "
                        f"({_one_line(exc)}) in {where}; nothing published for {model} (the bucket was written "
                        "after the release was signed; rebuild and release again)")
    except RemoteUnavailable as exc:
        with run.lock:
            run.dead = run.dead or _transport_summary(exc, run.config.remote.timeout_s)
        return PullLine(model, "FAILED", choice, f"remote {run.config.remote.url} unavailable ({run.dead}); check "
                        "remote.url, remote.endpoint_url, the network and AWS_* credentials")
    except OSError as exc:
        return PullLine(model, "FAILED", choice, f"cannot write into {path.parent} ({exc.strerror or exc}); "
                        "free space or fix the cache folder's permissions")


class _Refused(Exception):
    """The bucket holds other bytes than the release pins (the message says which)."""


class _Gone(Exception):
    """A part of the entry the release pins is not in the bucket (the message names it)."""


def _published_meanwhile(path: Path, variant: Variant) -> bool:
    """Under the build lock: did another pull publish the release's engine since the check before?

    Only an engine whose sidecar already names the pinned SHA-256 is hashed again, so an
    engine found wrong before is not hashed twice.
    """
    record = Sha256Sidecar.read(path)
    return record is not None and record.sha256 == variant.sha256 and is_present(path, variant, Sha256Sidecar.check)


def _fetch(run: _Run, release: Release, variant: Variant, path: Path) -> None:
    """Manifest, then engine (hashed as it arrives), then publish with the sidecar last."""
    from ..remote.store import RemoteContentError

    store, timeout = run.store, run.config.remote.timeout_s
    base = f"{store.root}/{variant.entry.base}"
    try:
        blob = store.read_small(f"{base}/{variant.entry.manifest}", _MAX_MANIFEST, timeout)
    except RemoteContentError as exc:
        raise _Refused(f"the manifest part is unusable ({_one_line(exc)})") from None
    if blob is None:
        raise _Gone("its manifest part")
    _check_manifest(blob, variant, release)
    free = shutil.disk_usage(path.parent).free
    if free < variant.size + _FREE_MARGIN:
        raise OSError(errno.ENOSPC, f"{free >> 20} MiB free, the engine needs {(variant.size + _FREE_MARGIN) >> 20} MiB")
    fd, tmp = create_temp(path)
    try:
        try:
            with writing_back_fd(fd, _WRITEBACK_S):  # the disk writes while the network delivers
                try:
                    store.download(f"{base}/{variant.entry.engine}", fd, variant.size, variant.sha256, timeout)
                except FileNotFoundError:
                    raise _Gone("its engine part") from None
            os.fsync(fd)  # the durability point: the write-back above leaves it only the last pages
        finally:
            os.close(fd)
        Sha256Sidecar.publish_prepared(path, tmp, variant.sha256, {manifest_path_for(path): blob})
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _check_manifest(blob: bytes, variant: Variant, release: Release) -> None:
    """The manifest part must be the one the release pins, and describe the release's engine."""
    if hashlib.sha256(blob).hexdigest() != variant.manifest_sha256:
        raise _Refused("the manifest part does not match the release's manifest_sha256")
    try:
        manifest = json.loads(blob)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Refused("the manifest part is not JSON") from None
    engine = manifest.get("engine") if isinstance(manifest, dict) else None
    inputs = manifest.get("inputs") if isinstance(manifest, dict) else None
    if engine != {"file_name": variant.engine, "sha256": variant.sha256, "size": variant.size}:
        raise _Refused("the manifest describes another engine than the release")
    backbone = release.backbone(variant.model_name)
    host = inputs.get("host") if isinstance(inputs, dict) else None
    if (not isinstance(host, dict) or inputs.get("onnx_sha256") != backbone.onnx_sha256
            or host.get("host_key") != variant.host_key or inputs.get("backend") != variant.backend
            or inputs.get("backend_version") != variant.backend_version):
        raise _Refused("the manifest's build inputs differ from the release's")


def _remove_leftovers(path: Path) -> None:
    """Temporary files of this engine left by a killed pull or build (called under its build lock)."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and is_temp_name(name) and name.count(".") >= 3:
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200] if text.isprintable() and text.isascii() else ascii(text[:200])


def _transport_summary(exc: BaseException, timeout_s: float) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, TimeoutError):
        return f"no answer within timeout_s {timeout_s:g} s"
    return _one_line(cause)
