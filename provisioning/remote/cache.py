"""RemoteCache: the shared bucket behind the local cache folder.

Implements :class:`provisioning.compiler.RemoteEngineCache`. ``fetch`` runs under the
compiler's engine lock on a local miss: it verifies the remote sidecar, manifest (build
inputs and host identity against ``expected``) and signature, downloads the engine to a
temporary file in the cache folder while hashing it, and publishes it locally with the
same protocol as a build (engine, manifest, sidecar last). ``publish`` uploads after a
local build. Neither ever raises for a remote problem, and the two kinds of problem are
kept apart: remote *content* that does not verify or cannot even be parsed (over a size
limit, not JSON, nested too deep, a link) condemns that one entry, which is discarded with
one warning, built here and, in read-write mode, replaced; only a *transport* failure
(:class:`RemoteUnavailable`: network, server, credentials, timeout) turns the remote off
for the rest of the run, so one malformed object cannot switch a fleet's cache off. The
signature is checked on the raw bytes before the manifest is parsed.

A "run" is one process and one config: doit builds a RemoteCache per task, so the
start-up warnings and the wait budget (``wait_s``) live in a per-process :class:`RunState`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import EngineCacheEntry
from ..compiler import RemoteFetch
from ..manifest import BuildInputs, explain_mismatch, manifest_bytes, manifest_path_for
from ..sidecar import Sha256Sidecar, create_temp, open_nofollow, write_all
from .config import RemoteConfig
from .lease import BuilderLease, read_lease
from .signing import EntrySigner, entry_message
from .store import (
    ENGINE, LEASE, MANIFEST, SEEN, SIDECAR, SIGNATURE, ConditionalWriteUnsupported, RemoteContentError, RemoteStore,
    RemoteUnavailable, shown,
)

log = logging.getLogger("provisioning.remote")
_SIDECAR_RE = re.compile(r"([0-9a-f]{64}) [ *](.+)\n?")
_MAX_MANIFEST = 1 << 20
_MAX_SMALL = 4096


class Unverified(Exception):
    """A remote entry exists but must not be used; the message is the reason."""


class _LocalWriteError(Exception):
    """Writing a fetched engine into the local cache failed (not the remote's fault)."""


@dataclass
class RunState:
    """What one run shares across its RemoteCache objects: warnings given, wait budget left."""

    wait_left_s: float
    warned: set[str] = field(default_factory=set)

    def once(self, kind: str) -> bool:
        """True the first time ``kind`` is asked for in this run."""
        with _RUN_LOCK:
            if kind in self.warned:
                return False
            self.warned.add(kind)
            return True


_RUN_LOCK = threading.Lock()
_RUNS: dict[tuple[int, str, str], RunState] = {}


def run_state(config: RemoteConfig) -> RunState:
    """This process's state for ``config`` (a forked doit worker starts its own)."""
    key = (os.getpid(), str(config.config_path), config.url)
    with _RUN_LOCK:
        return _RUNS.setdefault(key, RunState(config.wait_s))


class RemoteCache:
    """The second cache level: fetch-and-verify on a local miss, upload after a build."""

    def __init__(self, config: RemoteConfig, store: RemoteStore, signer: EntrySigner | None = None,
                 run: RunState | None = None) -> None:
        self.config = config
        self.store = store
        self.signer = signer
        self.run = run if run is not None else run_state(config)
        self.download_chunk_bytes = 8 << 20
        self.disabled_reason: str | None = None
        self._leases: dict[str, BuilderLease] = {}
        self._discarded: set[str] = set()  # entries this run could not verify: publish replaces them
        self._seen_marked = False
        self._leases_supported = True
        self._startup_warnings()

    def _startup_warnings(self) -> None:
        """Once per run: key set-ups that leave the fleet open, each with its fix."""
        cfg, url = self.config, self.config.url
        if self.signer is None and self.run.once("unsigned"):
            log.warning("remote cache %s: entries are unsigned, so anyone who can write to the bucket can replace "
                        "the engines every host runs; set remote.signing_key (README, Fleet)", url,
                        extra={"event": "remote_unsigned"})
        if self.signer is not None and not cfg.require_signature and self.run.once("signature_optional"):
            log.warning("remote cache %s: require_signature is false, so an entry whose sig object was deleted is "
                        "still installed and the key protects nothing; remove remote.require_signature: false", url,
                        extra={"event": "remote_signature_optional"})
        key = cfg.signing_key
        if (self.signer is not None and key is not None and key.algorithm == "hmac-sha256" and not cfg.writable
                and self.run.once("hmac_reader")):
            source = key.secret.describe() if key.secret is not None else "the config"
            log.warning("remote cache %s: this read-only host holds the HMAC signing key (%s), so whoever controls "
                        "it can forge entries for the whole fleet; give readers an Ed25519 public key instead "
                        "(signing_key: {algorithm: ed25519, public_key: ...})", url, source,
                        extra={"event": "remote_hmac_reader"})

    def __repr__(self) -> str:
        return f"RemoteCache({self.config.url!r}, mode={self.config.mode}, signer={self.signer!r})"

    # -- fetch -------------------------------------------------------------------------
    def fetch(self, engine_path: Path, model_name: str, expected: BuildInputs) -> RemoteFetch | None:
        """On a local miss: fetch, verify and publish the remote entry locally; None to build here."""
        if self.disabled_reason is not None:
            return None
        host_key = str(expected.host.get("host_key", ""))
        name = engine_path.name
        where = self.store.display(self.store.entry_path(host_key, name))
        try:
            self._mark_seen(host_key)
            sidecar = self._sidecar_or_wait(engine_path, host_key, name)
            if sidecar is None:
                return None
            return self._download(engine_path, host_key, name, expected, sidecar)
        except RemoteUnavailable as exc:  # transport only: the remote is off for the run
            self._disable(f"fetch of {where} failed ({_summary(exc, self.config.timeout_s)})", model_name)
        except _LocalWriteError as exc:
            log.warning("remote cache: fetched %s but could not write it into %s (%s); building %s locally",
                        where, engine_path.parent, exc, model_name)
        except Exception as exc:  # remote content: whatever it does, it condemns this entry only
            reason = str(exc) if isinstance(exc, Unverified) else f"entry unreadable ({type(exc).__name__})"
            self._discarded.add(f"{host_key}/{name}")
            log.warning(
                "remote cache: discarded %s (%s); building %s locally", where, reason[:300], model_name,
                extra={"event": "remote_discard", "model_name": model_name, "reason": reason[:300]},
            )
        return None

    def _read(self, host_key: str, name: str, obj: str, limit: int, timeout: float) -> bytes | None:
        try:
            return self.store.read_small(self.store.entry_path(host_key, name, obj), limit, timeout)
        except RemoteContentError as exc:
            raise Unverified(f"{obj} object {exc}") from None

    def _sidecar_or_wait(self, engine_path: Path, host_key: str, name: str) -> bytes | None:
        """The entry's sidecar; when absent, claim the build or wait for the host that has.

        Every round after the first is charged to the run's wait budget (``wait_s`` in
        total), so leases that never end, or flap, cost a run at most ``wait_s``.
        """
        cfg, store, run = self.config, self.store, self.run
        lease_path = store.entry_path(host_key, name, LEASE)
        poll = max(0.05, min(1.0, cfg.lease_s / 20))
        announced = False
        last = time.monotonic()
        rounds = 0
        while True:
            if rounds:
                now = time.monotonic()
                run.wait_left_s -= now - last
                last = now
                if run.wait_left_s <= 0:
                    if run.once("wait_budget"):
                        log.warning("remote cache %s: waited %.0f s in total for other hosts' builds; building %s "
                                    "and the rest of this run locally without waiting (raise remote.wait_s if "
                                    "builds take longer)", cfg.url, cfg.wait_s, name,
                                    extra={"event": "remote_wait_budget", "engine": name})
                    return None
            rounds += 1
            sidecar = self._read(host_key, name, SIDECAR, _MAX_SMALL, cfg.timeout_s)
            if sidecar is not None:
                return sidecar
            if cfg.writable and self._leases_supported:
                lease = BuilderLease(store, lease_path, engine_path, cfg.lease_s, cfg.timeout_s)
                try:
                    if lease.try_acquire():
                        self._leases[name] = lease
                        return None  # this host builds; publish() uploads and releases
                except ConditionalWriteUnsupported as exc:
                    self._leases_supported = False  # known for the rest of the run: never retried per engine
                    log.warning("remote cache %s refuses conditional writes (%s); hosts may build the same "
                                "engine concurrently", cfg.url, _printable(str(exc)))
                    return None
            current = read_lease(store, lease_path, cfg.timeout_s, cfg.lease_s)
            if current is None:
                if not cfg.writable or not self._leases_supported:
                    return None  # nobody is building it and this host may not claim it
                continue  # released between our create and our read: try to claim again
            owner = shown(current["owner"])
            if current["expires"] < time.time():
                if not cfg.writable:
                    return None
                log.info("remote cache: lease of %s by %s expired or invalid; taking over", name, owner)
                store.delete([lease_path], cfg.timeout_s)
                continue
            if not announced:
                log.info("remote cache: %s is building %s; waiting for its upload", owner, name,
                         extra={"event": "remote_wait", "engine": name})
                announced = True
            time.sleep(max(0.0, min(poll, run.wait_left_s)))

    def _download(self, engine_path: Path, host_key: str, name: str, expected: BuildInputs,
                  sidecar: bytes) -> RemoteFetch:
        cfg, store = self.config, self.store
        started = time.monotonic()
        deadline = started + cfg.timeout_s
        match = _SIDECAR_RE.fullmatch(sidecar.decode("utf-8", "replace"))
        if match is None:
            raise Unverified("sidecar is malformed")
        sha256, file_name = match.group(1), match.group(2)
        if file_name != name:
            raise Unverified(f"sidecar names another file ({shown(file_name)})")
        manifest_blob = self._read(host_key, name, MANIFEST, _MAX_MANIFEST, _left(deadline))
        if manifest_blob is None:
            raise Unverified("manifest is missing")
        self._check_signature(host_key, name, manifest_blob, sidecar, deadline)  # before parsing anything
        try:
            manifest = json.loads(manifest_blob)
        except (ValueError, UnicodeDecodeError):
            raise Unverified("manifest is not JSON") from None
        except RecursionError:
            raise Unverified("manifest is nested too deeply") from None
        reasons = explain_mismatch(manifest if isinstance(manifest, dict) else None, expected)
        if reasons:
            raise Unverified("manifest does not match this build: " + "; ".join(reasons))
        recorded = manifest.get("engine") if isinstance(manifest.get("engine"), dict) else {}
        size = recorded.get("size")
        if (recorded.get("sha256") != sha256 or recorded.get("file_name") != name or not isinstance(size, int)
                or isinstance(size, bool) or size < 0):
            raise Unverified("manifest describes another engine than the sidecar")
        engine_key = store.entry_path(host_key, name, ENGINE)
        try:
            remote_size = store.size(engine_key, _left(deadline))
        except RemoteContentError as exc:
            raise Unverified(f"engine object {exc}") from None
        if remote_size is None:
            raise Unverified("sidecar present but the engine object is missing")
        if remote_size != size:
            raise Unverified(f"engine object is {remote_size} bytes, its manifest says {size}")
        try:
            fd, tmp = create_temp(engine_path)
        except OSError as exc:
            raise _LocalWriteError(exc.strerror or str(exc)) from None
        try:
            self._download_to(engine_key, fd, size, sha256, deadline)
            try:
                self._publish_locally(engine_path, tmp, manifest_blob, sha256)
            except OSError as exc:
                raise _LocalWriteError(exc.strerror or str(exc)) from None
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return RemoteFetch(bytes=size, seconds=time.monotonic() - started)

    def _check_signature(self, host_key: str, name: str, manifest: bytes, sidecar: bytes, deadline: float) -> None:
        if self.signer is None:
            return  # an unsigned fleet (warned once per run at start-up)
        sig = self._read(host_key, name, SIGNATURE, _MAX_SMALL, _left(deadline))
        if sig is None and not self.config.require_signature:
            return  # the explicit opt-out require_signature: false (warned once per run)
        check = self.signer.verify(entry_message(host_key, name, manifest, sidecar), sig)
        if not check.ok:
            raise Unverified(check.reason)

    def _download_to(self, key: str, fd: int, size: int, sha256: str, deadline: float) -> None:
        """Stream the object into ``fd`` (closed here), hashing as it goes."""
        digest = hashlib.sha256()
        try:
            offset = 0
            while offset < size:
                end = min(size, offset + self.download_chunk_bytes)
                try:
                    chunk = self.store.read_range(key, offset, end, _left(deadline))
                except RemoteContentError as exc:
                    raise Unverified(f"engine object {exc}") from None
                if not chunk:
                    raise Unverified(f"engine object truncated at {offset} of {size} bytes")
                if len(chunk) > end - offset:
                    raise Unverified("engine object is longer than its manifest says")
                digest.update(chunk)
                try:
                    write_all(fd, memoryview(chunk))
                except OSError as exc:
                    raise _LocalWriteError(exc.strerror or str(exc)) from None
                offset += len(chunk)
            try:
                os.fsync(fd)
            except OSError as exc:
                raise _LocalWriteError(exc.strerror or str(exc)) from None
        finally:
            os.close(fd)
        if digest.hexdigest() != sha256:
            raise Unverified("engine bytes do not match the sidecar (corrupt or truncated)")

    @staticmethod
    def _publish_locally(engine_path: Path, tmp: Path, manifest_blob: bytes, sha256: str) -> None:
        """The local atomic protocol, from an already verified temporary file."""
        Sha256Sidecar.publish_prepared(engine_path, tmp, sha256, {manifest_path_for(engine_path): manifest_blob})

    # -- publish -----------------------------------------------------------------------
    def publish(self, entry: EngineCacheEntry) -> None:
        """Upload a freshly built entry (read-write only); warns, never raises."""
        lease = self._leases.pop(entry.file_name, None)
        if lease is not None:
            lease.claim_for_publish()
        try:
            if self.config.writable and self.disabled_reason is None:
                self._upload_with_retries(entry)
        except Exception as exc:  # never fail a build that succeeded locally
            log.warning("remote cache: upload of %s skipped (%s); the local engine is published",
                        entry.file_name, _summary(exc, self.config.timeout_s))
        finally:
            if lease is not None:
                lease.release()

    def _upload_with_retries(self, entry: EngineCacheEntry) -> None:
        cfg = self.config
        host_key = str(entry.inputs.get("host", {}).get("host_key", ""))
        started = time.monotonic()
        deadline = started + cfg.timeout_s
        attempt, backoff = 0, 0.2
        while True:
            attempt += 1
            try:
                uploaded = self._upload(entry, host_key, deadline)
                log.info("remote cache: %s %s", "uploaded" if uploaded else "already has", entry.file_name,
                         extra={"event": "remote_upload", "engine": entry.file_name, "uploaded": uploaded,
                                "attempts": attempt})
                return
            except Exception as exc:
                if time.monotonic() + backoff >= deadline:
                    self._disable(
                        f"upload of {entry.file_name} failed after {attempt} attempt(s) in "
                        f"{time.monotonic() - started:.1f} s ({_summary(exc, cfg.timeout_s)})",
                        entry.model_name, consequence="the local engine is published",
                    )
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _upload(self, entry: EngineCacheEntry, host_key: str, deadline: float) -> bool:
        """engine, manifest, signature, then the sidecar (conditional create): the commit point."""
        store, name = self.store, entry.file_name
        sidecar_key = store.entry_path(host_key, name, SIDECAR)
        replace = f"{host_key}/{name}" in self._discarded
        if not replace:
            try:
                if store.read_small(sidecar_key, _MAX_SMALL, _left(deadline)) is not None:
                    return False  # another builder committed first; its entry stays
            except RemoteContentError:
                replace = True  # a sidecar that cannot be one: this verified build replaces the entry
        manifest_blob = _read_local(manifest_path_for(entry.path))
        if not self.config.share_build_details:
            manifest_blob = shared_manifest(manifest_blob)
        sidecar = Sha256Sidecar.format_line(entry.sha256, name).encode()
        if replace:  # withdraw the entry this host could not verify before replacing its parts
            store.delete([sidecar_key], _left(deadline))
        store.put_file(store.entry_path(host_key, name, ENGINE), str(entry.path), _left(deadline))
        store.put_bytes(store.entry_path(host_key, name, MANIFEST), manifest_blob, _left(deadline))
        sig_key = store.entry_path(host_key, name, SIGNATURE)
        if self.signer is not None and self.signer.can_sign:
            store.put_bytes(sig_key, self.signer.sign(entry_message(host_key, name, manifest_blob, sidecar)),
                            _left(deadline))
        else:
            store.delete([sig_key], _left(deadline))  # a stale signature must not outlive its entry
        created = True
        try:
            if self._leases_supported:
                created = store.create_exclusive(sidecar_key, sidecar, _left(deadline))
            else:
                store.put_bytes(sidecar_key, sidecar, _left(deadline))
        except ConditionalWriteUnsupported:
            self._leases_supported = False
            store.put_bytes(sidecar_key, sidecar, _left(deadline))
        self._discarded.discard(f"{host_key}/{name}")
        return created

    # -- helpers -----------------------------------------------------------------------
    def _mark_seen(self, host_key: str) -> None:
        """Once per run, record that a read-write client of this host key is alive (for gc)."""
        if self._seen_marked or not self.config.writable:
            return
        self._seen_marked = True
        document = json.dumps({"seen": time.time()}).encode()
        self.store.put_bytes(f"{self.store.host_dir(host_key)}/{SEEN}", document, self.config.timeout_s)

    def _disable(self, reason: str, model_name: str, consequence: str = "building locally") -> None:
        self.disabled_reason = reason
        log.warning(
            "remote cache %s: %s; %s, remote cache off for the rest of this run "
            "(check remote.endpoint_url, the network and AWS_* credentials)", self.config.url, reason, consequence,
            extra={"event": "remote_unavailable", "model_name": model_name, "reason": reason},
        )


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        error = RemoteUnavailable("remote timeout_s exceeded")
        error.__cause__ = TimeoutError("remote timeout_s exceeded")
        raise error
    return left


def _summary(exc: BaseException, timeout_s: float | None = None) -> str:
    """One line about a failure; the server's own words are escaped (they are remote content)."""
    if isinstance(exc, RemoteUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, TimeoutError) and timeout_s is not None:  # fsspec's FSTimeoutError included
        return f"no answer within timeout_s {timeout_s:g} s"
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {_printable(text[:200])}" if text else name


def _printable(text: str) -> str:
    return text if text.isprintable() and text.isascii() else ascii(text)[1:-1]


def shared_manifest(blob: bytes) -> bytes:
    """The manifest as uploaded: what a verifier needs, not the builder's paths and pid.

    ``build.onnx_path`` keeps only the file name and ``build.pid`` goes; the reuse key
    (``inputs``) and the engine record stay, so a fetching host publishes a valid entry,
    and the signature covers exactly these bytes. ``share_build_details: true`` opts out.
    """
    document = json.loads(blob)
    build = document.get("build")
    if isinstance(build, dict):
        build = {k: v for k, v in build.items() if k != "pid"}
        if isinstance(build.get("onnx_path"), str):
            build["onnx_path"] = re.split(r"[\\/]", build["onnx_path"])[-1]
        document["build"] = build
    return manifest_bytes(document)


def _read_local(path: Path) -> bytes:
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(_MAX_MANIFEST + 1)
