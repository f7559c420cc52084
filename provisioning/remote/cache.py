"""RemoteCache: the shared bucket behind the local cache folder.

Implements :class:`provisioning.compiler.RemoteEngineCache`. ``fetch`` runs under the
compiler's engine lock on a local miss: it verifies the remote sidecar, manifest (build
inputs and host identity against ``expected``) and signature, downloads the engine to a
temporary file in the cache folder while hashing it, and publishes it locally with the
same protocol as a build (engine, manifest, sidecar last). ``publish`` uploads after a
local build. Neither ever raises for a remote problem: anything unverified is discarded
with one warning naming the reason, a slow or dead remote costs at most ``timeout_s``
once per run (then the remote is off for the rest of the run), and the build goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from ..cache import EngineCacheEntry
from ..compiler import RemoteFetch
from ..manifest import BuildInputs, explain_mismatch, manifest_path_for
from ..sidecar import Sha256Sidecar, create_temp, open_nofollow, write_all
from .config import RemoteConfig
from .lease import BuilderLease, read_lease
from .signing import EntrySigner, entry_message
from .store import ENGINE, LEASE, MANIFEST, SEEN, SIDECAR, SIGNATURE, ConditionalWriteUnsupported, RemoteStore

log = logging.getLogger("provisioning.remote")
_SIDECAR_RE = re.compile(r"([0-9a-f]{64}) [ *](.+)\n?")
_MAX_MANIFEST = 1 << 20
_MAX_SMALL = 4096


class Unverified(Exception):
    """A remote entry exists but must not be used; the message is the reason."""


class RemoteCache:
    """The second cache level: fetch-and-verify on a local miss, upload after a build."""

    def __init__(self, config: RemoteConfig, store: RemoteStore, signer: EntrySigner | None = None) -> None:
        self.config = config
        self.store = store
        self.signer = signer
        self.download_chunk_bytes = 8 << 20
        self.disabled_reason: str | None = None
        self._leases: dict[str, BuilderLease] = {}
        self._discarded: set[str] = set()  # entries this run could not verify: publish replaces them
        self._seen_marked = False
        self._leases_supported = True

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
        except Unverified as exc:
            self._discarded.add(f"{host_key}/{name}")
            log.warning(
                "remote cache: discarded %s (%s); building %s locally", where, exc, model_name,
                extra={"event": "remote_discard", "model_name": model_name, "reason": str(exc)},
            )
        except Exception as exc:  # a remote failure must never fail the build
            self._disable(f"fetch of {where} failed ({_summary(exc, self.config.timeout_s)})", model_name)
        return None

    def _sidecar_or_wait(self, engine_path: Path, host_key: str, name: str) -> bytes | None:
        """The entry's sidecar; when absent, claim the build or wait for the host that has."""
        cfg, store = self.config, self.store
        sidecar_path = store.entry_path(host_key, name, SIDECAR)
        lease_path = store.entry_path(host_key, name, LEASE)
        give_up = time.monotonic() + cfg.wait_s
        poll = max(0.05, min(1.0, cfg.lease_s / 20))
        announced = False
        while True:
            sidecar = store.read_small(sidecar_path, _MAX_SMALL, cfg.timeout_s)
            if sidecar is not None:
                return sidecar
            if cfg.writable and self._leases_supported:
                lease = BuilderLease(store, lease_path, engine_path, cfg.lease_s, cfg.timeout_s)
                try:
                    if lease.try_acquire():
                        self._leases[name] = lease
                        return None  # this host builds; publish() uploads and releases
                except ConditionalWriteUnsupported as exc:
                    self._leases_supported = True
                    log.warning("remote cache %s refuses conditional writes (%s); hosts may build the same "
                                "engine concurrently", cfg.url, exc)
                    return None
            current = read_lease(store, lease_path, cfg.timeout_s)
            if current is None:
                if not cfg.writable or not self._leases_supported:
                    return None  # nobody is building it and this host may not claim it
                continue  # released between our create and our read: try to claim again
            if current["expires"] < time.time():
                if not cfg.writable:
                    return None
                log.info("remote cache: lease of %s by %s expired; taking over", name, current.get("owner"))
                store.delete([lease_path], cfg.timeout_s)
                continue
            if time.monotonic() > give_up:
                log.warning("remote cache: waited %.0f s for %s to build %s; building locally",
                            cfg.wait_s, current.get("owner"), name)
                return None
            if not announced:
                log.info("remote cache: %s is building %s; waiting for its upload", current.get("owner"), name,
                         extra={"event": "remote_wait", "engine": name})
                announced = True
            time.sleep(poll)

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
            raise Unverified(f"sidecar names another file ({file_name[:80]})")
        try:
            manifest_blob = store.read_small(store.entry_path(host_key, name, MANIFEST), _MAX_MANIFEST, _left(deadline))
        except ValueError:
            raise Unverified("manifest is larger than 1 MiB") from None
        try:
            manifest = json.loads(manifest_blob) if manifest_blob is not None else None
        except (ValueError, UnicodeDecodeError):
            raise Unverified("manifest is not JSON") from None
        reasons = explain_mismatch(manifest if isinstance(manifest, dict) else None, expected)
        if reasons:
            raise Unverified("manifest does not match this build: " + "; ".join(reasons))
        recorded = manifest.get("engine") if isinstance(manifest.get("engine"), dict) else {}
        size = recorded.get("size")
        if recorded.get("sha256") != sha256 or recorded.get("file_name") != name or not isinstance(size, int):
            raise Unverified("manifest describes another engine than the sidecar")
        self._check_signature(host_key, name, manifest_blob, sidecar, deadline)
        engine_key = store.entry_path(host_key, name, ENGINE)
        remote_size = store.size(engine_key, _left(deadline))
        if remote_size is None:
            raise Unverified("sidecar present but the engine object is missing")
        if remote_size != size:
            raise Unverified(f"engine object is {remote_size} bytes, its manifest says {size}")
        fd, tmp = create_temp(engine_path)
        try:
            self._download_to(engine_key, fd, size, sha256, deadline)
            self._publish_locally(engine_path, tmp, manifest_blob, sha256)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return RemoteFetch(bytes=size, seconds=time.monotonic() - started)

    def _check_signature(self, host_key: str, name: str, manifest: bytes, sidecar: bytes, deadline: float) -> None:
        if self.signer is None:
            return
        sig = self.store.read_small(self.store.entry_path(host_key, name, SIGNATURE), _MAX_SMALL, _left(deadline))
        if sig is None and not self.config.require_signature:
            return  # unsigned entries are accepted unless require_signature says otherwise
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
                chunk = self.store.read_range(key, offset, end, _left(deadline))
                if not chunk:
                    raise Unverified(f"engine object truncated at {offset} of {size} bytes")
                digest.update(chunk)
                write_all(fd, memoryview(chunk))
                offset += len(chunk)
            os.fsync(fd)
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
        if not replace and store.read_small(sidecar_key, _MAX_SMALL, _left(deadline)) is not None:
            return False  # another builder committed first; its entry stays
        manifest_blob = _read_local(manifest_path_for(entry.path))
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
        try:
            created = store.create_exclusive(sidecar_key, sidecar, _left(deadline))
        except ConditionalWriteUnsupported:
            store.put_bytes(sidecar_key, sidecar, _left(deadline))
            created = True
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
        raise TimeoutError("remote timeout_s exceeded")
    return left


def _summary(exc: BaseException, timeout_s: float | None = None) -> str:
    if isinstance(exc, TimeoutError) and timeout_s is not None:  # fsspec's FSTimeoutError included
        return f"no answer within timeout_s {timeout_s:g} s"
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text else name


def _read_local(path: Path) -> bytes:
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(_MAX_MANIFEST + 1)
