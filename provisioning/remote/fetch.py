"""Fetch: on a local miss, verify a remote entry and publish it into the local cache.

The commit record is found and verified first (:mod:`.commit_lookup`, or a wait for the
host that builds it, :mod:`.commit_or_wait`); then the content-addressed manifest is
fetched and its SHA-256 checked before it is parsed, compared with today's inputs
*before* the engine is downloaded, and the engine is streamed into a temporary file in
the cache folder while being hashed, then published locally with the same protocol as
a build (engine, manifest, commit record, sidecar last).

Never raises for a remote problem: a transport failure turns the remote off for the run,
remote content that does not verify condemns that one entry (built here, repaired by a
read-write host), a local write error builds here and keeps the remote on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from ..cache import COMMIT_SUFFIX
from ..compiler import RemoteFetch
from ..manifest import BuildInputs, explain_mismatch, manifest_path_for
from ..sidecar import Sha256Sidecar, create_temp
from .commit_lookup import Condemned
from .config import RemoteConfig
from .errors import RemoteContentError, RemoteUnavailable, summary
from .layout import MAX_MANIFEST_BYTES, EntryPaths, inputs_digest
from .objectstore import ObjectStore
from .signing import Commit, Unverified

log = logging.getLogger("provisioning.remote")
_FREE_MARGIN = 64 << 20  # left free after a download, for the manifest, logs and the next build


def commit_path_for(engine_path: Path) -> Path:
    """Where the commit record of a fetched engine is kept locally."""
    return engine_path.with_name(engine_path.name + COMMIT_SUFFIX)


class LocalCacheWriteError(Exception):
    """Writing a fetched engine into the local cache failed (not the remote's fault)."""


class EntryFetch:
    """RemoteCache's fetch on a local miss."""

    config: RemoteConfig
    store: ObjectStore
    disabled_reason: str | None
    _condemned: dict[str, list[Condemned]]
    _bad_parts: set[str]

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
                self._condemned.setdefault(paths.base, []).append(Condemned(commit.key_id, commit.raw, etag))
                raise
        except RemoteUnavailable as exc:  # transport only: the remote is off for the run
            self._disable(f"fetch of {where} failed ({summary(exc, self.config.timeout_s)})", model_name)
        except LocalCacheWriteError as exc:
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

    def _download(self, engine_path: Path, paths: EntryPaths, expected: BuildInputs, commit: Commit) -> RemoteFetch:
        cfg, store = self.config, self.store
        started = time.monotonic()
        size, sha256 = commit.size, commit.engine_sha256
        if size > cfg.max_engine_bytes:
            raise Unverified(f"engine is {size} bytes, over remote.max_engine_bytes {cfg.max_engine_bytes}")
        try:
            manifest_blob = store.read_small(paths.manifest(commit.manifest_sha256), MAX_MANIFEST_BYTES, cfg.timeout_s)
        except RemoteContentError as exc:  # a folder, a link, a FIFO or oversized: garbage under its name
            self._bad_parts.add(paths.manifest(commit.manifest_sha256))
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
            raise LocalCacheWriteError(exc.strerror or str(exc)) from None
        if free < size + _FREE_MARGIN:
            raise LocalCacheWriteError(
                f"{_mib(free)} free, the engine needs {_mib(size + _FREE_MARGIN)}; free disk space")
        try:
            fd, tmp = create_temp(engine_path)
        except OSError as exc:
            raise LocalCacheWriteError(exc.strerror or str(exc)) from None
        try:
            try:
                store.download(paths.engine(sha256), fd, size, sha256, cfg.timeout_s)
            except FileNotFoundError:
                raise Unverified("engine part is missing") from None
            except RemoteContentError as exc:
                self._bad_parts.add(paths.engine(sha256))  # bytes that do not hash to their name: garbage
                raise Unverified(f"engine part: {exc}") from None
            except OSError as exc:  # our write into the cache folder
                raise LocalCacheWriteError(exc.strerror or str(exc)) from None
            try:
                os.fsync(fd)
            except OSError as exc:
                raise LocalCacheWriteError(exc.strerror or str(exc)) from None
            finally:
                os.close(fd)
                fd = -1
            try:
                Sha256Sidecar.publish_prepared(engine_path, tmp, sha256, {
                    manifest_path_for(engine_path): manifest_blob, commit_path_for(engine_path): commit.raw})
            except OSError as exc:
                raise LocalCacheWriteError(exc.strerror or str(exc)) from None
        finally:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return RemoteFetch(bytes=size, seconds=time.monotonic() - started, key_id=commit.key_id)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"
