"""A builder's lease on one remote entry: so a fleet compiles each engine once.

The first host to miss an engine creates ``<entry>/lease`` with a conditional create
(``If-None-Match: *``; ``O_EXCL`` on a file:// mount) and builds; the others see the
lease and poll for the entry instead of compiling. The holder renews the lease while its
local build lock is held and deletes it after uploading, or as soon as its build ends
without an upload (a failed build), so a waiter takes over without waiting for expiry.
A holder that dies stops renewing: its lease expires after ``lease_s`` and a waiter takes
it over.

A lease is remote content, so a reader trusts it only as far as it must: its expiry is the
earlier of the recorded ``expires`` and the object's last-modified time (the server's
clock) plus the reader's own ``lease_s``, and a lease that would still hold more than
``lease_s`` from now by this host's clock is from the future: a ``file://`` lease's mtime
is whatever its writer set. A non-finite, non-numeric or far-future ``expires`` or
last-modified time, an oversized or unparsable lease reads as expired. So a planted lease with
``expires: 1e300`` holds hosts for one ``lease_s`` at most, unless someone keeps rewriting
it (and then each run's wait budget, ``wait_s``, bounds the cost).

Limits (documented in README, Fleet): expiry compares wall clocks, so hosts need NTP-level
agreement (well under ``lease_s``); two waiters taking over one expired lease at the same
instant can both build (harmless: entries are content-verified and the sidecar is
created conditionally); a store that ignores ``If-None-Match`` gives no exclusion at all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ..cache import lock_is_held
from ..errors import ProvisioningError
from .errors import ConditionalWriteUnsupported, RemoteContentError, shown
from .objectstore import ObjectStore

log = logging.getLogger("provisioning.remote")
_MAX_LEASE_BYTES = 4096
_SKEW_S = 2.0  # S3's LastModified has whole seconds; a little clock skew between hosts
INVALID_OWNER = "?"


def lease_owner() -> str:
    """``host:pid:token``: who holds a lease (shown to waiters; no secret)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def read_lease(store: ObjectStore, path: str, timeout: float, lease_s: float) -> dict[str, Any] | None:
    """``{"owner", "expires", "etag"}`` of the lease at ``path``, None when absent; an invalid one reads as expired.

    ``etag`` lets a waiter take an expired lease over with a conditional delete.
    """
    invalid: dict[str, Any] = {"owner": INVALID_OWNER, "expires": 0.0, "etag": None}
    try:
        found = store.read_small_tagged(path, _MAX_LEASE_BYTES, timeout)
    except RemoteContentError:
        return invalid
    if found is None:
        return None
    blob, modified, etag = found
    invalid["etag"] = etag
    try:
        document = json.loads(blob)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return invalid
    expires = document.get("expires") if isinstance(document, dict) else None
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
        return invalid
    if modified is not None:
        expires = min(float(expires), modified + lease_s + _SKEW_S)
    if expires > time.time() + lease_s + _SKEW_S:
        # From the future by this host's clock: a forged expiry, or a last-modified time the
        # writer chose (a file:// lease's mtime is whatever its writer set), or a clock far off
        return invalid
    owner = document.get("owner")
    return {"owner": owner if isinstance(owner, str) else INVALID_OWNER, "expires": float(expires), "etag": etag}


class BuilderLease:
    """A held lease: renewed in a thread while ``engine_path``'s build lock is held."""

    def __init__(self, store: ObjectStore, path: str, engine_path: Path, lease_s: float, timeout_s: float) -> None:
        self.store = store
        self.path = path
        self.engine_path = engine_path
        self.lease_s = lease_s
        self.timeout_s = timeout_s
        self.owner = lease_owner()
        self._stop = threading.Event()
        self._claimed = threading.Event()  # publish() took over: it releases after uploading
        self._lock = threading.Lock()
        self._released = False
        self._thread: threading.Thread | None = None

    def document(self) -> bytes:
        """The lease body with a fresh expiry."""
        return json.dumps({"owner": self.owner, "expires": time.time() + self.lease_s}).encode()

    def try_acquire(self) -> bool:
        """Create the lease if absent; True when this process now holds it."""
        if not self.store.create_exclusive(self.path, self.document(), self.timeout_s):
            return False
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.engine_path.name}", daemon=True)
        self._thread.start()
        return True

    def claim_for_publish(self) -> None:
        """Called by publish(): keep renewing until :meth:`release`, whatever the lock says."""
        self._claimed.set()

    def _build_lock_held(self) -> bool:
        """Whether this entry's local build still runs; a lock path that cannot be probed (a planted
        link) counts as held, so the lease keeps renewing until the build ends through publish()."""
        try:
            return lock_is_held(self.engine_path)
        except ProvisioningError as exc:
            log.warning("remote cache: cannot probe the build lock of %s (%s); the lease is kept while the build "
                        "runs", self.engine_path.name, exc)
            return True

    def _renew(self) -> None:
        interval = max(0.05, self.lease_s / 3)
        while not self._stop.wait(interval):
            if not self._claimed.is_set() and not self._build_lock_held():
                # The build ended without publish(): it failed. A short grace covers the
                # instant between the compiler releasing its lock and calling publish().
                if self._claimed.wait(min(2.0, self.lease_s / 2)):
                    continue
                self.release()
                return
            if self._stop.is_set():
                return
            try:
                self.store.put_bytes(self.path, self.document(), self.timeout_s)
            except Exception as exc:  # a missed renewal only shortens the lease
                log.debug("lease renewal of %s failed: %s", self.path, shown(str(exc), 200))

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (best effort).

        The delete is conditional (If-Match) on the ETag of the lease as read here, which
        must carry this host's owner token: a lease this host wrote. If another host took
        the lease over between that read and the delete, its lease has another ETag and
        survives. Only a store without conditional deletes falls back to a plain delete.
        """
        with self._lock:
            if self._released:
                return
            self._released = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.timeout_s + 1)  # a renewal in flight must not re-create it
        try:
            current = read_lease(self.store, self.path, self.timeout_s, self.lease_s)
            if current is None or current.get("owner") != self.owner or current.get("etag") is None:
                return  # gone, or another host's since a takeover: never ours to delete
            try:
                self.store.delete_if_match(self.path, current["etag"], self.timeout_s)
            except ConditionalWriteUnsupported:
                self.store.delete([self.path], self.timeout_s)
        except Exception as exc:  # an undeleted lease expires by itself
            log.debug("lease release of %s failed: %s", self.path, shown(str(exc), 200))
