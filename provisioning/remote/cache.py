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

The class is assembled from one module per concept: :mod:`.fetch` (fetch and local
publish), :mod:`.commit_lookup` (finding a record that verifies), :mod:`.commit_or_wait`
(the lease protocol on a miss), :mod:`.publish` (upload) and :mod:`.repair`
(conditional writes, replacing what this run condemned), :mod:`.run_state`.
"""

from __future__ import annotations

import json
import logging
import time

from ..cache import COMMIT_SUFFIX
from .commit_lookup import CommitLookup, Condemned
from .commit_or_wait import CommitOrWait
from .config import RemoteConfig
from .errors import shown
from .fetch import EntryFetch, commit_path_for
from .lease import BuilderLease
from .objectstore import SEEN, ObjectStore
from .publish import EntryPublish, shared_manifest
from .repair import EntryRepair
from .run_state import RunState, run_state
from .signing import UNSIGNED, KeyRing, Unverified

log = logging.getLogger("provisioning.remote")

__all__ = ["COMMIT_SUFFIX", "RemoteCache", "RunState", "Unverified", "commit_path_for", "run_state", "shared_manifest"]


class RemoteCache(EntryFetch, CommitOrWait, CommitLookup, EntryPublish, EntryRepair):
    """The second cache level: fetch-and-verify on a local miss, upload after a build."""

    def __init__(self, config: RemoteConfig, store: ObjectStore, keys: KeyRing | None = None,
                 run: RunState | None = None) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self.run = run if run is not None else run_state(config)
        self._leases: dict[str, BuilderLease] = {}
        self._condemned: dict[str, list[Condemned]] = {}  # entry base -> records this run discarded
        self._seen_marked = False
        self._bad_parts: set[str] = set()  # content-addressed objects whose bytes do not match their name
        self._conditional = True  # False once the store refused a conditional write: never retried
        self._startup_warnings()

    @property
    def disabled_reason(self) -> str | None:
        """Why the remote is off for this run (a transport failure, here or in an earlier task, under
        RETRY_AFTER_S ago: a cache a long-lived process holds tries again after that too); None when on."""
        return self.run.off_reason()

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
        self.run.turn_off(reason)
        log.warning(
            "remote cache %s: %s; %s, remote cache off for the rest of this run "
            "(check remote.endpoint_url, the network and AWS_* credentials)", self.config.url, reason, consequence,
            extra={"event": "remote_unavailable", "model_name": model_name, "reason": reason},
        )
