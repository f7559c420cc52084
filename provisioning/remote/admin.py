"""Status and garbage collection on the bucket, as plans that are then applied.

``remote_entry_status`` answers "does the remote have this host's entry?" (the sidecar is
the commit point, so an engine without it reads as ``incomplete``). ``plan_remote_gc``
lists what would go, with the bytes freed and a reason per entry, touching nothing;
``apply_remote_gc`` deletes exactly that plan (sidecar first, so a half-deleted entry is
already absent to every reader).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

from ..schema import EngineFilenameSchema
from .lease import read_lease
from .store import ENGINE, LEASE, SEEN, SIDECAR, RemoteContentError, RemoteStore, modified_epoch

PRESENT, ABSENT, INCOMPLETE, UNREACHABLE = "present", "absent", "incomplete", "unreachable"
_STALE_INCOMPLETE_S = 3600.0  # an upload without a sidecar this old is abandoned


def remote_entry_status(store: RemoteStore, host_key: str, engine_name: str, timeout_s: float) -> str:
    """``present``, ``absent``, ``incomplete`` (parts without a sidecar) or ``unreachable``."""
    try:
        if store.size(store.entry_path(host_key, engine_name, SIDECAR), timeout_s) is not None:
            return PRESENT
        if store.size(store.entry_path(host_key, engine_name, ENGINE), timeout_s) is not None:
            return INCOMPLETE
        return ABSENT
    except RemoteContentError:  # a link, FIFO or folder where an object belongs: not a usable entry
        return INCOMPLETE
    except Exception:
        return UNREACHABLE


@dataclass(frozen=True)
class RemoteGcItem:
    """One entry (or whole host folder) the plan would delete."""

    path: str
    objects: tuple[str, ...]
    bytes: int
    reason: str


@dataclass(frozen=True)
class RemoteGcPlan:
    """What ``apply_remote_gc`` would delete, and what it keeps on purpose."""

    items: tuple[RemoteGcItem, ...] = ()
    kept: tuple[str, ...] = field(default=())

    @property
    def bytes(self) -> int:
        """Bytes freed by applying the plan."""
        return sum(item.bytes for item in self.items)


def plan_remote_gc(
    store: RemoteStore,
    host_key: str,
    current: Iterable[str],
    *,
    host_max_age_s: float,
    timeout_s: float,
    now: float | None = None,
    lease_s: float = 30.0,
) -> RemoteGcPlan:
    """Plan removals: this host key's superseded and abandoned entries, and hosts not seen for ``host_max_age_s``.

    ``current`` are today's canonical engine names of the corpus on this host. An entry of
    this host key is superseded when its model is in the corpus under another name (an old
    builder version or settings); models the corpus does not name are left alone, since
    another corpus may share the bucket. Entries with a live lease are never planned.
    """
    now = time.time() if now is None else now
    current = set(current)
    models = {_model(name) for name in current} - {None}
    objects = store.find(store.root, timeout_s)
    by_entry: dict[tuple[str, str], dict[str, dict]] = {}
    by_host: dict[str, dict[str, dict]] = {}
    prefix = store.root + "/"
    for path, info in objects.items():
        rel = path[len(prefix):] if path.startswith(prefix) else path
        parts = rel.split("/")
        by_host.setdefault(parts[0], {})[path] = info
        if len(parts) == 3:
            by_entry.setdefault((parts[0], parts[1]), {})[parts[2]] = info
    items, kept = [], []
    for (host, name), parts in sorted(by_entry.items()):
        if host != host_key or name in current:
            continue
        reason = None
        newest = max((modified_epoch(i) or now for i in parts.values()), default=now)
        if _model(name) in models and SIDECAR in parts:
            reason = "superseded: the corpus builds this model under another name now"
        elif SIDECAR not in parts and now - newest > _STALE_INCOMPLETE_S:
            reason = "abandoned upload (no sidecar for over an hour)"
        if reason is None:
            continue
        if LEASE in parts and _lease_live(store, store.entry_path(host, name, LEASE), timeout_s, now, lease_s):
            kept.append(f"{host}/{name}: a builder holds its lease")
            continue
        items.append(_item(store.entry_path(host, name), parts, store.entry_path(host, name), reason))
    for host, host_objects in sorted(by_host.items()):
        if host == host_key:
            continue
        seen = max((modified_epoch(i) or now for i in host_objects.values()), default=now)
        age = now - seen
        if age > host_max_age_s:
            total = sum(int(i.get("size") or 0) for i in host_objects.values())
            items.append(RemoteGcItem(store.host_dir(host), tuple(sorted(host_objects)), total,
                                      f"host not seen for {age / 86400:.1f} days"))
    return RemoteGcPlan(tuple(items), tuple(kept))


def apply_remote_gc(store: RemoteStore, plan: RemoteGcPlan, timeout_s: float) -> int:
    """Delete what ``plan`` lists (sidecars first); returns the bytes freed."""
    for item in plan.items:
        first = [p for p in item.objects if p.endswith("/" + SIDECAR)]
        rest = [p for p in item.objects if p not in first and not p.endswith("/" + SEEN)]
        seen = [p for p in item.objects if p.endswith("/" + SEEN)]
        store.delete(first + rest + seen, timeout_s)
    return plan.bytes


def _item(path: str, parts: dict[str, dict], base: str, reason: str) -> RemoteGcItem:
    paths = tuple(f"{base}/{obj}" for obj in sorted(parts))
    return RemoteGcItem(path, paths, sum(int(i.get("size") or 0) for i in parts.values()), reason)


def _lease_live(store: RemoteStore, path: str, timeout_s: float, now: float, lease_s: float) -> bool:
    lease = read_lease(store, path, timeout_s, lease_s)  # forged expiries cannot pin an entry
    return lease is not None and lease["expires"] >= now


def _model(name: str) -> str | None:
    try:
        return EngineFilenameSchema.parse(name).model_name
    except ValueError:
        return None
