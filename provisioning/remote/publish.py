"""Publish: upload a freshly built entry, parts first, then the commit record.

Parts are content-addressed and created only if absent; the commit record is the
commit point, created only if absent (see :mod:`.repair` for a record this run condemned).
The manifest is uploaded as :func:`shared_manifest` makes it: without the builder's
paths and pid. Never fails a build that succeeded locally: a transport failure that
outlasts ``timeout_s`` turns the remote off for the run, anything else skips one upload.
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
from ..manifest import manifest_bytes, manifest_path_for
from ..sidecar import open_nofollow
from .config import RemoteConfig
from .errors import RemoteContentError, shown, summary
from .layout import MAX_MANIFEST_BYTES, EntryPaths, inputs_digest
from .lease import BuilderLease
from .objectstore import ObjectStore
from .signing import KeyRing, entry_message, unsigned_record

log = logging.getLogger("provisioning.remote")


class _LocalManifestError(Exception):
    """The local manifest of an entry to upload cannot be read or parsed (not the remote's fault)."""


class EntryPublish:
    """RemoteCache's upload after a local build."""

    config: RemoteConfig
    store: ObjectStore
    keys: KeyRing | None
    disabled_reason: str | None
    _leases: dict[str, BuilderLease]
    _bad_parts: set[str]

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
                        entry.file_name, summary(exc, self.config.timeout_s))
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
                        f"{time.monotonic() - started:.1f} s ({summary(exc, cfg.timeout_s)})",
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
            local_blob = _read_local(manifest_path_for(entry.path))
            manifest_blob = shared_manifest(local_blob, corpus=cfg.corpus, details=cfg.share_build_details)
            if entry.manifest and local_blob != manifest_bytes(entry.manifest):
                # what gets signed is what this process wrote, never what the cache folder holds now
                raise _LocalManifestError("changed since this process wrote it; rebuild it with doit engines")
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
        return handle.read(MAX_MANIFEST_BYTES + 1)
