"""Commit or wait: on a miss, claim the build with a lease, or wait for the host that holds it.

Every round after the first is charged to the run's wait budget (``wait_s`` in total),
so leases that never end, or flap, cost a run at most ``wait_s``. An expired (or
invalid) lease is taken over with a conditional delete on the ETag read, so two waiters
do not both win.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .config import RemoteConfig
from .errors import ConditionalWriteUnsupported, shown
from .layout import EntryPaths
from .lease import BuilderLease, read_lease
from .objectstore import ObjectStore
from .run_state import RunState
from .signing import Commit

log = logging.getLogger("provisioning.remote")


class CommitOrWait:
    """RemoteCache's lease protocol on a miss."""

    config: RemoteConfig
    store: ObjectStore
    run: RunState
    _conditional: bool
    _leases: dict[str, BuilderLease]

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
