"""Status and garbage collection on the bucket, as plans that are then applied.

``remote_entry_status`` answers "does the remote have this host's entry for today's
inputs?" (the commit record is the commit point, so parts without one read as
``incomplete``). ``plan_remote_gc`` lists what would go, with the bytes freed and a
reason per item, touching nothing; ``apply_remote_gc`` deletes exactly that plan (commit
records first, so a half-deleted entry is already absent to every reader).

gc touches only what its own corpus could have made, and says how it decided:

- orphaned parts of today's entries (engine or manifest objects no commit record names,
  older than an hour: the loser of an upload race, or a replaced entry);
- abandoned uploads (parts without any commit record for over an hour);
- superseded entries: same host key and a model of this corpus, other inputs, *and* a
  manifest whose ``build.corpus`` is this config's ``remote.corpus``. Without
  ``remote.corpus`` such entries are kept and listed, since another corpus sharing the
  bucket (or a roll-out in progress) may be using them. Only a commit record that
  verifies under this host's keys (an unsigned one only where unsigned entries are
  accepted), and the manifest part whose SHA-256 it names, decide whose an entry is: a
  bucket writer without a key cannot make gc delete another corpus's entries;
- host keys no read-write client has touched for ``host_max_age_days``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Iterable

from ..schema import EngineFilenameSchema
from .layout import COMMIT_DIR, ENGINE_DIR, LEASE, MANIFEST_DIR, EntryPaths
from .lease import read_lease
from .commit_lookup import verify_record
from .signing import MAX_COMMIT_BYTES, UNSIGNED, KeyRing, Unverified, parse_body, split_record
from .errors import RemoteContentError, shown
from .objectstore import SEEN, ObjectStore, modified_epoch

PRESENT, ABSENT, INCOMPLETE, UNREACHABLE = "present", "absent", "incomplete", "unreachable"
_STALE_S = 3600.0  # an upload without a commit record this old is abandoned
_MAX_MANIFEST = 1 << 20


def remote_entry_status(store: ObjectStore, paths: EntryPaths, commit_ids: Iterable[str], timeout_s: float) -> str:
    """``present`` (a commit record of a key in ``commit_ids``), ``absent``, ``incomplete`` or ``unreachable``."""
    try:
        for key_id in commit_ids:
            if store.size(paths.commit(key_id), timeout_s) is not None:
                return PRESENT
        if store.list_dir(f"{paths.base}/{ENGINE_DIR}", timeout_s):
            return INCOMPLETE
        return ABSENT
    except RemoteContentError:  # a link, FIFO or folder where an object belongs: not a usable entry
        return INCOMPLETE
    except Exception:
        return UNREACHABLE


@dataclass(frozen=True)
class RemoteGcItem:
    """One entry, part or whole host folder the plan would delete."""

    path: str
    objects: tuple[str, ...]
    bytes: int
    reason: str


@dataclass(frozen=True)
class RemoteGcPlan:
    """What ``apply_remote_gc`` would delete, and what it keeps on purpose (with why)."""

    items: tuple[RemoteGcItem, ...] = ()
    kept: tuple[str, ...] = field(default=())

    @property
    def bytes(self) -> int:
        """Bytes freed by applying the plan."""
        return sum(item.bytes for item in self.items)


def plan_remote_gc(
    store: ObjectStore,
    host_key: str,
    current: Iterable[tuple[str, str]],
    *,
    host_max_age_s: float,
    timeout_s: float,
    now: float | None = None,
    lease_s: float = 30.0,
    corpus: str | None = None,
    keys: KeyRing | None = None,
    namespace: str = "default",
    accepts_unsigned: bool = True,
) -> RemoteGcPlan:
    """Plan removals for this host key's entries, and for host keys not seen for ``host_max_age_s``.

    ``current`` are today's ``(engine name, inputs digest)`` pairs of the corpus on this
    host; ``corpus`` is ``remote.corpus`` (None: superseded entries cannot be told from
    another corpus's, so they are kept). ``keys``, ``namespace`` and ``accepts_unsigned``
    are the remote's trust policy: only records that verify under it decide ownership.
    """
    now = time.time() if now is None else now
    current = set(current)
    models = {_model(name) for name, _ in current} - {None}
    objects = store.find(store.root, timeout_s)
    entries: dict[tuple[str, str, str], dict[str, dict]] = {}
    by_host: dict[str, dict[str, dict]] = {}
    legacy: set[tuple[str, str]] = set()
    prefix = store.root + "/"
    for path, info in objects.items():
        rel = path[len(prefix):] if path.startswith(prefix) else path
        parts = rel.split("/")
        by_host.setdefault(parts[0], {})[path] = info
        if len(parts) >= 4:
            entries.setdefault((parts[0], parts[1], parts[2]), {})["/".join(parts[3:])] = info
        elif len(parts) == 3:
            legacy.add((parts[0], parts[1]))
    items: list[RemoteGcItem] = []
    kept: list[str] = []
    for (host, name, digest), parts in sorted(entries.items()):
        if host != host_key:
            continue
        paths = EntryPaths(store, host, name, digest)
        commits = {k.split("/", 1)[1]: v for k, v in parts.items() if k.startswith(COMMIT_DIR + "/")}
        newest = max((modified_epoch(i) or now for i in parts.values()), default=now)
        live = LEASE in parts and _lease_live(store, paths.lease, timeout_s, now, lease_s)
        if (name, digest) in current:
            orphans = _orphans(store, paths, parts, commits, timeout_s, now)
            if orphans and live:
                kept.append(f"{paths.label}: a builder holds its lease")
            elif orphans:
                items.append(_item(paths, orphans, parts, "orphaned parts: no commit record names them "
                                                          "(an upload race's loser or a replaced entry)"))
            continue
        reason = None
        if not commits:
            if now - newest > _STALE_S:
                reason = "abandoned upload (no commit record for over an hour)"
        elif _model(name) in models:
            owner = _recorded_corpus(store, paths, commits, timeout_s, _Trust(keys, namespace, accepts_unsigned))
            if corpus is not None and owner == corpus:
                reason = f"superseded: corpus {corpus!r} builds this model from other inputs now (manifest build.corpus)"
            else:
                kept.append(f"{paths.label}: other inputs for a model of this corpus, kept "
                            f"({_why_kept(store, paths, commits, timeout_s, corpus, owner)})")
        if reason is None:
            continue
        if live:
            kept.append(f"{paths.label}: a builder holds its lease")
            continue
        items.append(_item(paths, sorted(parts), parts, reason))
    for host, name in sorted(legacy):
        if host == host_key:
            kept.append(f"{host}/{name}: layout-1 entry, read only by earlier versions; delete it by hand once every "
                        "host runs this version")
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


def apply_remote_gc(store: ObjectStore, plan: RemoteGcPlan, timeout_s: float) -> int:
    """Delete what ``plan`` lists (commit records first, ``_seen.json`` last); returns the bytes freed."""
    for item in plan.items:
        first = [p for p in item.objects if f"/{COMMIT_DIR}/" in p]
        last = [p for p in item.objects if p.endswith("/" + SEEN)]
        rest = [p for p in item.objects if p not in first and p not in last]
        store.delete(first + rest + last, timeout_s)
    return plan.bytes


def _orphans(store: ObjectStore, paths: EntryPaths, parts: dict[str, dict], commits: dict[str, dict],
             timeout_s: float, now: float) -> list[str]:
    """Parts of an entry no commit record names, untouched for an hour."""
    named: set[str] = set()
    for key_id in commits:
        record = _record(store, paths, key_id, timeout_s)
        if record is None:
            return []  # a record we cannot read: keep everything, a later run decides
        named.add(f"{ENGINE_DIR}/{record.engine_sha256}")
        named.add(f"{MANIFEST_DIR}/{record.manifest_sha256}")
    orphans = []
    for rel, info in parts.items():
        if rel.split("/", 1)[0] in (ENGINE_DIR, MANIFEST_DIR) and rel not in named:
            if now - (modified_epoch(info) or now) > _STALE_S:
                orphans.append(rel)
    return sorted(orphans)


def _record(store: ObjectStore, paths: EntryPaths, key_id: str, timeout_s: float):
    """A commit record's fields, parsed without verifying (gc only keeps what any record names)."""
    try:
        blob = store.read_small(paths.commit(key_id), MAX_COMMIT_BYTES, timeout_s)
        if blob is None:
            return None
        body, _, _, _ = split_record(blob)
        return parse_body(body, blob, key_id)
    except (Unverified, RemoteContentError):
        return None


@dataclass(frozen=True)
class _Trust:
    """The records that may decide whose an entry is: those that verify under these keys."""

    keys: KeyRing | None
    namespace: str
    accepts_unsigned: bool

    def ids(self, host_key: str) -> list[str]:
        ids = self.keys.ids_for(host_key) if self.keys is not None else []
        return ids + [UNSIGNED] if self.accepts_unsigned else ids


def _recorded_corpus(store: ObjectStore, paths: EntryPaths, commits: dict[str, dict], timeout_s: float,
                     trust: _Trust) -> str | None:
    """``build.corpus`` of the manifest named by an entry's first record that verifies under ``trust``.

    An unverified record, or a manifest part whose bytes are not the ones the record
    names, decides nothing: anyone who can write to the bucket could have made them.
    """
    for key_id in [k for k in trust.ids(paths.host_key) if k in commits]:
        try:
            blob = store.read_small(paths.commit(key_id), MAX_COMMIT_BYTES, timeout_s)
            if blob is None:
                continue
            record = verify_record(trust.keys, trust.namespace, paths, key_id, blob)
            manifest = store.read_small(paths.manifest(record.manifest_sha256), _MAX_MANIFEST, timeout_s)
            if manifest is None or hashlib.sha256(manifest).hexdigest() != record.manifest_sha256:
                continue
            document = json.loads(manifest)
        except (Unverified, RemoteContentError, ValueError, RecursionError):
            continue
        build = document.get("build") if isinstance(document, dict) else None
        value = build.get("corpus") if isinstance(build, dict) else None
        return value if isinstance(value, str) else None
    return None


def _why_kept(store: ObjectStore, paths: EntryPaths, commits: dict[str, dict], timeout_s: float,
              corpus: str | None, owner: str | None) -> str:
    """Why an entry of other inputs is not this corpus's to delete, for the plan's "kept" line.

    Without a verified owner, the corpus a record merely claims (read without verifying)
    is named, and a claim of this very corpus says that it did not verify.
    """
    if corpus is None:
        return "set remote.corpus so gc can tell this corpus's old entries from others'"
    claimed = owner if owner is not None else _claimed_corpus(store, paths, commits, timeout_s)
    if claimed == corpus:
        return (f"its record names corpus {corpus!r} but does not verify under this host's keys "
                "(or its manifest part is not the one the record names)")
    return f"its manifest names corpus {shown(claimed, 64) if claimed else 'none'}, not {corpus!r}"


def _claimed_corpus(store: ObjectStore, paths: EntryPaths, commits: dict[str, dict], timeout_s: float) -> str | None:
    """``build.corpus`` named by an entry's first readable record, unverified: for messages only, never a decision."""
    for key_id in sorted(commits, key=lambda k: k == UNSIGNED):
        record = _record(store, paths, key_id, timeout_s)
        if record is None:
            continue
        try:
            blob = store.read_small(paths.manifest(record.manifest_sha256), _MAX_MANIFEST, timeout_s)
            document = json.loads(blob) if blob else None
        except (RemoteContentError, ValueError, RecursionError):
            continue
        build = document.get("build") if isinstance(document, dict) else None
        value = build.get("corpus") if isinstance(build, dict) else None
        return value if isinstance(value, str) else None
    return None


def _item(paths: EntryPaths, rels: Iterable[str], parts: dict[str, dict], reason: str) -> RemoteGcItem:
    rels = list(rels)
    objects = tuple(f"{paths.base}/{rel}" for rel in rels)
    return RemoteGcItem(paths.base, objects, sum(int(parts[r].get("size") or 0) for r in rels), reason)


def _lease_live(store: ObjectStore, path: str, timeout_s: float, now: float, lease_s: float) -> bool:
    lease = read_lease(store, path, timeout_s, lease_s)  # forged expiries cannot pin an entry
    return lease is not None and lease["expires"] >= now


def _model(name: str) -> str | None:
    try:
        return EngineFilenameSchema.parse(name).model_name
    except ValueError:
        return None
