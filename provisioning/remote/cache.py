"""RemoteCache: the shared bucket behind the local cache folder.

Implements :class:`provisioning.compiler.RemoteEngineCache`. ``fetch`` runs under the
compiler's engine lock on a local miss. It looks the entry up by its *inputs* (layout 2,
see :mod:`provisioning.remote.layout`), reads the commit record of each key this host
trusts, verifies the signature over the record's raw bytes before parsing it, fetches
the content-addressed manifest and checks its SHA-256 before parsing it, compares it
with today's inputs *before* downloading the engine, then streams the engine into a
temporary file in the cache folder while hashing it (parallel ranged GETs for big
engines) and publishes it locally with the same protocol as a build (engine, manifest,
commit record, sidecar last). ``publish`` uploads after a local build: content-addressed
parts created only if absent, then the commit record created only if absent.

Neither ever raises for a remote problem, and the two kinds of problem are kept apart:
remote *content* that does not verify or cannot even be parsed (over a size limit, not
JSON, nested too deep, a link) condemns that one entry, which is discarded with one
warning, built here and, in read-write mode, replaced (conditionally, so a concurrent
repair is not undone); only a *transport* failure (:class:`RemoteUnavailable`: network,
server, credentials, a stall longer than ``timeout_s``) turns the remote off for the rest
of the run, so one malformed object cannot switch a fleet's cache off.

A "run" is one process and one config: doit builds a RemoteCache per task, so the
start-up warnings and the wait budget (``wait_s``) live in a per-process :class:`RunState`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import COMMIT_SUFFIX, EngineCacheEntry
from ..compiler import RemoteFetch
from ..manifest import BuildInputs, explain_mismatch, manifest_bytes, manifest_path_for
from ..sidecar import Sha256Sidecar, create_temp, open_nofollow
from .config import RemoteConfig
from .layout import EntryPaths, inputs_digest
from .lease import BuilderLease, read_lease
from .signing import (
    MAX_COMMIT_BYTES, UNSIGNED, Commit, KeyRing, Unverified, entry_message, parse_body, split_record, unsigned_record,
)
from .store import SEEN, ConditionalWriteUnsupported, RemoteContentError, RemoteStore, RemoteUnavailable, shown

log = logging.getLogger("provisioning.remote")
_MAX_MANIFEST = 1 << 20
_FREE_MARGIN = 64 << 20  # left free after a download, for the manifest, logs and the next build

__all__ = ["COMMIT_SUFFIX", "RemoteCache", "RunState", "Unverified", "commit_path_for", "run_state", "shared_manifest"]


def commit_path_for(engine_path: Path) -> Path:
    """Where the commit record of a fetched engine is kept locally."""
    return engine_path.with_name(engine_path.name + COMMIT_SUFFIX)


class _LocalWriteError(Exception):
    """Writing a fetched engine into the local cache failed (not the remote's fault)."""


class _LocalManifestError(Exception):
    """The local manifest of an entry to upload cannot be read or parsed (not the remote's fault)."""


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


@dataclass(frozen=True)
class _Condemned:
    """A commit record this run could not verify, as read (so a repair replaces exactly it)."""

    key_id: str
    record: bytes
    etag: str | None


class RemoteCache:
    """The second cache level: fetch-and-verify on a local miss, upload after a build."""

    def __init__(self, config: RemoteConfig, store: RemoteStore, keys: KeyRing | None = None,
                 run: RunState | None = None) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self.run = run if run is not None else run_state(config)
        self.disabled_reason: str | None = None
        self._leases: dict[str, BuilderLease] = {}
        self._condemned: dict[str, list[_Condemned]] = {}  # entry base -> records this run discarded
        self._seen_marked = False
        self._bad_parts: set[str] = set()  # content-addressed objects whose bytes do not match their name
        self._conditional = True  # False once the store refused a conditional write: never retried
        self._startup_warnings()

    # -- policy ------------------------------------------------------------------------
    @property
    def accepts_unsigned(self) -> bool:
        """True in an unsigned fleet, or with the explicit opt-out ``require_signature: false``."""
        return self.keys is None or not self.config.require_signature

    @property
    def commit_id(self) -> str:
        """The commit name this host writes: its signing key's id, or ``unsigned``."""
        signing = self.keys.signing_id if self.keys is not None else None
        return signing or UNSIGNED

    def _startup_warnings(self) -> None:
        """Once per run: key set-ups that leave the fleet open, each with its fix."""
        cfg, url = self.config, self.config.url
        if self.keys is None and self.run.once("unsigned"):
            log.warning("remote cache %s: entries are unsigned, so anyone who can write to the bucket can replace "
                        "the engines every host runs; set remote.signing_key (README, Fleet)", url,
                        extra={"event": "remote_unsigned"})
        if self.keys is not None and not cfg.require_signature and self.run.once("signature_optional"):
            log.warning("remote cache %s: require_signature is false, so unsigned entries are installed too and the "
                        "key protects nothing; remove remote.require_signature: false", url,
                        extra={"event": "remote_signature_optional"})
        if self.keys is not None and not cfg.writable and self.run.once("hmac_reader"):
            held = [key for key in self.keys.keys.values() if key.algorithm == "hmac-sha256"]
            if held:
                log.warning("remote cache %s: this read-only host holds the HMAC key %s (%s), and with HMAC every "
                            "verifier can sign: whoever controls this host can forge entries for the whole fleet; give "
                            "readers an Ed25519 public key instead (signing_key: {algorithm: ed25519, public_key: ...})",
                            url, held[0].key_id, held[0].source, extra={"event": "remote_hmac_reader"})

    def __repr__(self) -> str:
        return f"RemoteCache({self.config.url!r}, mode={self.config.mode}, keys={self.keys!r})"

    # -- fetch -------------------------------------------------------------------------
    def fetch(self, engine_path: Path, model_name: str, expected: BuildInputs) -> RemoteFetch | None:
        """On a local miss: fetch, verify and publish the remote entry locally; None to build here."""
        if self.disabled_reason is not None:
            return None
        host_key = str(expected.host.get("host_key", ""))
        paths = EntryPaths(self.store, host_key, engine_path.name, inputs_digest(expected))
        where = paths.display()
        try:
            self._mark_seen(host_key)
            found = self._commit_or_wait(engine_path, paths, model_name)
            if found is None:
                return None
            commit, etag = found
            try:
                return self._download(engine_path, paths, expected, commit)
            except Unverified:  # a record that verifies but whose parts do not: replace the record too
                self._condemned.setdefault(paths.base, []).append(_Condemned(commit.key_id, commit.raw, etag))
                raise
        except RemoteUnavailable as exc:  # transport only: the remote is off for the run
            self._disable(f"fetch of {where} failed ({_summary(exc, self.config.timeout_s)})", model_name)
        except _LocalWriteError as exc:
            log.warning("remote cache: could not write %s into %s (%s); building %s locally",
                        where, engine_path.parent, exc, model_name,
                        extra={"event": "remote_local_write", "model_name": model_name})
        except Exception as exc:  # remote content: whatever it does, it condemns this entry only
            reason = str(exc) if isinstance(exc, Unverified) else f"entry unreadable ({type(exc).__name__})"
            self._condemned.setdefault(paths.base, [])
            log.warning(
                "remote cache: discarded %s (%s); building %s locally", where, reason[:300], model_name,
                extra={"event": "remote_discard", "model_name": model_name, "reason": reason[:300]},
            )
        return None

    def _read_commit(self, paths: EntryPaths, key_id: str) -> tuple[bytes, str | None] | None:
        try:
            found = self.store.read_small_tagged(paths.commit(key_id), MAX_COMMIT_BYTES, self.config.timeout_s)
        except RemoteContentError as exc:
            self._condemned.setdefault(paths.base, []).append(_Condemned(key_id, b"", None))
            raise Unverified(f"commit record {shown(key_id, 64)} {exc}") from None
        return None if found is None else (found[0], found[2])

    def _find_commit(self, paths: EntryPaths) -> tuple[Commit, str | None] | None:
        """The first commit record, of a key this host trusts, that verifies; None when there is none.

        A trusted key's record that does not verify is remembered (so that publish may
        replace exactly it) and, when no other record verifies, condemns the entry.
        """
        ids = self.keys.ids_for(paths.host_key) if self.keys is not None else []
        if self.accepts_unsigned:
            ids.append(UNSIGNED)
        problems: list[str] = []
        for key_id in ids:
            found = self._read_commit(paths, key_id)
            if found is None:
                continue
            record, etag = found
            try:
                commit = self._verify(paths, key_id, record)
            except Unverified as exc:
                self._condemned.setdefault(paths.base, []).append(_Condemned(key_id, record, etag))
                problems.append(str(exc))
                continue
            return commit, etag
        if problems:
            raise Unverified(problems[0])
        return None

    def _verify(self, paths: EntryPaths, key_id: str, record: bytes) -> Commit:
        """Signature over the raw record first, then its fields against the entry asked for."""
        if key_id == UNSIGNED:
            body, algorithm, _, _ = split_record(record)
            if algorithm != "none":
                raise Unverified("unsigned commit record carries a signature")
        else:
            body, _ = self.keys.verify(record, key_id)
        commit = parse_body(body, record, key_id)
        if (commit.host_key, commit.engine_name, commit.inputs_digest) != (paths.host_key, paths.engine_name,
                                                                            paths.digest):
            raise Unverified("commit record names another entry (moved or copied)")
        if commit.namespace != self.config.namespace:
            raise Unverified(f"entry belongs to namespace {shown(commit.namespace)}, this host's is "
                             f"{self.config.namespace!r}")
        return commit

    def _untrusted_note(self, paths: EntryPaths, model_name: str) -> None:
        """When nothing this host trusts is there, say whether records of other keys are."""
        try:
            listed = self.store.list_dir(paths.commits, self.config.timeout_s)
        except RemoteContentError:
            return
        names = sorted(str(item.get("name", "")).rsplit("/", 1)[-1] for item in listed)
        if names:
            log.warning("remote cache: %s has only commit records this host does not trust (%s); building %s "
                        "locally (a key rotation? add the key to remote.trusted_keys)", paths.display(),
                        ", ".join(shown(n, 64) for n in names[:4]), model_name,
                        extra={"event": "remote_untrusted", "model_name": model_name})

    def _commit_or_wait(self, engine_path: Path, paths: EntryPaths,
                        model_name: str) -> tuple[Commit, str | None] | None:
        """The entry's verified commit; when absent, claim the build or wait for the host that has.

        Every round after the first is charged to the run's wait budget (``wait_s`` in
        total), so leases that never end, or flap, cost a run at most ``wait_s``.
        """
        cfg, store, run = self.config, self.store, self.run
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
                                    "builds take longer)", cfg.url, cfg.wait_s, paths.engine_name,
                                    extra={"event": "remote_wait_budget", "engine": paths.engine_name})
                    return None
            found = self._find_commit(paths)
            if found is not None:
                return found
            if not rounds:
                self._untrusted_note(paths, model_name)
            rounds += 1
            if cfg.writable and self._conditional:
                lease = BuilderLease(store, paths.lease, engine_path, cfg.lease_s, cfg.timeout_s)
                try:
                    if lease.try_acquire():
                        # The builder before us may have committed and released between our
                        # look and our claim: look again, holding the lease, before building.
                        found = self._find_commit(paths)
                        if found is not None:
                            lease.release()
                            return found
                        self._leases[paths.engine_name] = lease
                        return None  # this host builds; publish() uploads and releases
                except ConditionalWriteUnsupported as exc:
                    self._no_conditional(exc)
                    return None
            current = read_lease(store, paths.lease, cfg.timeout_s, cfg.lease_s)
            if current is None:
                if not cfg.writable or not self._conditional:
                    return None  # nobody is building it and this host may not claim it
                continue  # released between our create and our read: try to claim again
            owner = shown(current["owner"])
            if current["expires"] < time.time():
                if not cfg.writable:
                    return None
                log.info("remote cache: lease of %s by %s expired or invalid; taking over", paths.engine_name, owner)
                self._take_over(paths.lease, current.get("etag"))
                continue
            if not announced:
                log.info("remote cache: %s is building %s; waiting for its upload", owner, paths.engine_name,
                         extra={"event": "remote_wait", "engine": paths.engine_name})
                announced = True
            time.sleep(max(0.0, min(poll, run.wait_left_s)))

    def _take_over(self, lease_path: str, etag: str | None) -> None:
        """Delete an expired lease only if it is still the one read (If-Match), so two waiters do not both win."""
        if etag is not None and self._conditional:
            try:
                self.store.delete_if_match(lease_path, etag, self.config.timeout_s)
                return
            except ConditionalWriteUnsupported as exc:
                self._no_conditional(exc)
        self.store.delete([lease_path], self.config.timeout_s)

    def _download(self, engine_path: Path, paths: EntryPaths, expected: BuildInputs, commit: Commit) -> RemoteFetch:
        cfg, store = self.config, self.store
        started = time.monotonic()
        size, sha256 = commit.size, commit.engine_sha256
        if size > cfg.max_engine_bytes:
            raise Unverified(f"engine is {size} bytes, over remote.max_engine_bytes {cfg.max_engine_bytes}")
        try:
            manifest_blob = store.read_small(paths.manifest(commit.manifest_sha256), _MAX_MANIFEST, cfg.timeout_s)
        except RemoteContentError as exc:
            raise Unverified(f"manifest part {exc}") from None
        if manifest_blob is None:
            raise Unverified("manifest part is missing")
        if hashlib.sha256(manifest_blob).hexdigest() != commit.manifest_sha256:
            self._bad_parts.add(paths.manifest(commit.manifest_sha256))
            raise Unverified("manifest part does not match its commit record")
        try:  # only now, with bytes the signature vouches for, is anything parsed
            manifest = json.loads(manifest_blob)
        except (ValueError, UnicodeDecodeError):
            raise Unverified("manifest is not JSON") from None
        except RecursionError:
            raise Unverified("manifest is nested too deeply") from None
        reasons = explain_mismatch(manifest if isinstance(manifest, dict) else None, expected)
        if reasons:
            raise Unverified("manifest does not match this build: " + "; ".join(reasons))
        recorded = manifest.get("engine") if isinstance(manifest.get("engine"), dict) else {}
        if (recorded.get("sha256") != sha256 or recorded.get("file_name") != paths.engine_name
                or recorded.get("size") != size):
            raise Unverified("manifest describes another engine than its commit record")
        try:
            free = shutil.disk_usage(engine_path.parent).free
        except OSError as exc:
            raise _LocalWriteError(exc.strerror or str(exc)) from None
        if free < size + _FREE_MARGIN:
            raise _LocalWriteError(f"{_mib(free)} free, the engine needs {_mib(size + _FREE_MARGIN)}; free disk space")
        try:
            fd, tmp = create_temp(engine_path)
        except OSError as exc:
            raise _LocalWriteError(exc.strerror or str(exc)) from None
        try:
            try:
                store.download(paths.engine(sha256), fd, size, sha256, cfg.timeout_s)
            except FileNotFoundError:
                raise Unverified("engine part is missing") from None
            except RemoteContentError as exc:
                self._bad_parts.add(paths.engine(sha256))  # bytes that do not hash to their name: garbage
                raise Unverified(f"engine part: {exc}") from None
            except OSError as exc:  # our write into the cache folder
                raise _LocalWriteError(exc.strerror or str(exc)) from None
            try:
                os.fsync(fd)
            except OSError as exc:
                raise _LocalWriteError(exc.strerror or str(exc)) from None
            finally:
                os.close(fd)
                fd = -1
            try:
                Sha256Sidecar.publish_prepared(engine_path, tmp, sha256, {
                    manifest_path_for(engine_path): manifest_blob, commit_path_for(engine_path): commit.raw})
            except OSError as exc:
                raise _LocalWriteError(exc.strerror or str(exc)) from None
        finally:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return RemoteFetch(bytes=size, seconds=time.monotonic() - started, key_id=commit.key_id)

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
        started = time.monotonic()
        attempt, backoff = 0, 0.2
        while True:
            attempt += 1
            try:
                uploaded = self._upload(entry)
                log.info("remote cache: %s %s", "uploaded" if uploaded else "already has", entry.file_name,
                         extra={"event": "remote_upload", "engine": entry.file_name, "uploaded": uploaded,
                                "attempts": attempt, "key_id": self.commit_id})
                return
            except _LocalManifestError as exc:  # this host's own file: retrying or turning the remote off fixes nothing
                log.warning("remote cache: upload of %s skipped (its local manifest %s); the local engine is "
                            "published, the remote stays on", entry.file_name, exc,
                            extra={"event": "remote_upload_skipped"})
                return
            except RemoteContentError as exc:  # the bucket holds something this host cannot replace
                log.warning("remote cache: upload of %s skipped (%s); the local engine is published",
                            entry.file_name, shown(str(exc), 200), extra={"event": "remote_upload_skipped"})
                return
            except Exception as exc:
                if time.monotonic() - started + backoff >= cfg.timeout_s:
                    self._disable(
                        f"upload of {entry.file_name} failed after {attempt} attempt(s) in "
                        f"{time.monotonic() - started:.1f} s ({_summary(exc, cfg.timeout_s)})",
                        entry.model_name, consequence="the local engine is published",
                    )
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _upload(self, entry: EngineCacheEntry) -> bool:
        """Parts (content-addressed, created if absent), then the commit record: the commit point."""
        cfg, store, name = self.config, self.store, entry.file_name
        host_key = str(entry.inputs.get("host", {}).get("host_key", ""))
        paths = EntryPaths(store, host_key, name, inputs_digest(entry.inputs))
        try:
            manifest_blob = _read_local(manifest_path_for(entry.path))
            manifest_blob = shared_manifest(manifest_blob, corpus=cfg.corpus, details=cfg.share_build_details)
        except OSError as exc:
            raise _LocalManifestError(f"cannot be read: {exc.strerror or exc}") from None
        except (ValueError, RecursionError, AttributeError, TypeError) as exc:  # over 1 MiB (cut), or not a manifest
            raise _LocalManifestError(f"is not a readable manifest of at most 1 MiB ({type(exc).__name__})") from None
        manifest_sha = hashlib.sha256(manifest_blob).hexdigest()
        body = entry_message(cfg.namespace, host_key, name, paths.digest, entry.sha256, entry.size, manifest_sha)
        signer = self.keys.signer if self.keys is not None else None
        record = signer.sign(body) if signer is not None and signer.can_sign else unsigned_record(body)
        commit_key = paths.commit(self.commit_id)
        if not self._make_room_for_commit(paths, commit_key):
            return False  # another builder committed a valid entry first; it stays
        bad = sorted(p for p in self._bad_parts if p.startswith(paths.base + "/"))
        if bad:  # provably garbage whoever wrote them: a name is the SHA-256 of its bytes
            self._delete_planted(bad)
            self._bad_parts.difference_update(bad)
        if not self._create_file(paths.engine(entry.sha256), entry.path, entry.size):
            log.debug("remote cache: engine part of %s already present", name)
        self._create_bytes(paths.manifest(manifest_sha), manifest_blob)
        created = self._create_bytes(commit_key, record)
        self._condemned.pop(paths.base, None)
        return created

    def _make_room_for_commit(self, paths: EntryPaths, commit_key: str) -> bool:
        """True when this host may create its commit record: none there, or one this run condemned.

        A record that is there and verifies (another builder on the same key won the race)
        is left alone; one this run discarded, or that does not verify now, is deleted only
        if it is still byte-for-byte what was read (If-Match on its ETag), so a concurrent
        repair by another host is not undone. Records of other keys are never touched.
        """
        found = self._read_commit_for_publish(commit_key)
        if found is None:
            return True
        record, etag = found
        condemned = self._condemned.get(paths.base, [])
        if not any(c.key_id == self.commit_id and c.record == record for c in condemned):
            try:
                self._verify(paths, self.commit_id, record)
                return False
            except Unverified:
                pass
        if etag is not None and self._conditional:
            try:
                return self.store.delete_if_match(commit_key, etag, self.config.timeout_s)
            except ConditionalWriteUnsupported as exc:
                self._no_conditional(exc)
        self.store.delete([commit_key], self.config.timeout_s)
        return True

    def _read_commit_for_publish(self, commit_key: str) -> tuple[bytes, str | None] | None:
        try:
            found = self.store.read_small_tagged(commit_key, MAX_COMMIT_BYTES, self.config.timeout_s)
        except RemoteContentError:  # an oversized object, a FIFO, a link: not a record; replace it
            self._delete_planted([commit_key])
            return None
        return None if found is None else (found[0], found[2])

    def _create_file(self, key: str, local: Path, size: int) -> bool:
        if self._conditional:
            try:
                return self.store.put_file_exclusive(key, str(local), self.config.timeout_s)
            except ConditionalWriteUnsupported as exc:
                self._no_conditional(exc)
        if self.store.size(key, self.config.timeout_s) == size:
            return False  # content-addressed: same name, same bytes (a reader re-hashes anyway)
        self.store.put_file(key, str(local), self.config.timeout_s)
        return True

    def _create_bytes(self, key: str, data: bytes) -> bool:
        if self._conditional:
            try:
                return self.store.create_exclusive(key, data, self.config.timeout_s)
            except ConditionalWriteUnsupported as exc:
                self._no_conditional(exc)
        if self.store.read_small(key, MAX_COMMIT_BYTES if len(data) <= MAX_COMMIT_BYTES else _MAX_MANIFEST,
                                 self.config.timeout_s) == data:
            return False
        self.store.put_bytes(key, data, self.config.timeout_s)
        return True

    # -- helpers -----------------------------------------------------------------------
    def _delete_planted(self, keys: list[str]) -> None:
        """Delete objects that are not what they claim; a link above them is replaced by the writes that follow."""
        try:
            self.store.delete(keys, self.config.timeout_s)
        except RemoteContentError:
            pass

    def _no_conditional(self, exc: Exception) -> None:
        """The store refused a conditional write: known for the rest of the run, never retried per engine."""
        if self._conditional:
            self._conditional = False
            if self.run.once("no_conditional"):
                log.warning("remote cache %s refuses conditional writes (%s); hosts may build the same engine "
                            "concurrently and an upload race is settled by the last writer",
                            self.config.url, shown(str(exc), 200), extra={"event": "remote_no_conditional"})

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


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


def _summary(exc: BaseException, timeout_s: float | None = None) -> str:
    """One line about a failure; the server's own words are escaped (they are remote content)."""
    if isinstance(exc, RemoteUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, TimeoutError) and timeout_s is not None:  # fsspec's FSTimeoutError included
        return f"no progress for timeout_s {timeout_s:g} s"
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {_printable(text[:200])}" if text else name


def _printable(text: str) -> str:
    return text if text.isprintable() and text.isascii() else ascii(text)[1:-1]


def shared_manifest(blob: bytes, *, corpus: str | None = None, details: bool = False) -> bytes:
    """The manifest as uploaded: what a verifier needs, not the builder's paths and pid.

    ``build.onnx_path`` keeps only the file name and ``build.pid`` goes (unless
    ``share_build_details: true``); the reuse key (``inputs``) and the engine record stay,
    so a fetching host publishes a valid entry, and the commit record covers exactly
    these bytes. ``build.corpus`` records ``remote.corpus`` for engines-gc --remote.
    """
    document = json.loads(blob)
    build = document.get("build")
    if isinstance(build, dict):
        if not details:
            build = {k: v for k, v in build.items() if k != "pid"}
            if isinstance(build.get("onnx_path"), str):
                build["onnx_path"] = re.split(r"[\\/]", build["onnx_path"])[-1]
        if corpus is not None:
            build["corpus"] = corpus
        document["build"] = build
    return manifest_bytes(document)


def _read_local(path: Path) -> bytes:
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(_MAX_MANIFEST + 1)
