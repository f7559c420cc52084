"""What the doit commands show about the bucket: a remote column for status, and remote gc.

Kept here so ``provisioning/doit/commands.py`` only calls two functions; both return
plain data (and JSON-friendly dicts) and raise ConfigError for a bad ``remote:`` block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

from ..config import ProvisioningConfig
from . import key_ring, remote_config_of
from .admin import RemoteGcPlan, apply_remote_gc, plan_remote_gc, remote_entry_status
from .layout import EntryPaths
from .signing import UNSIGNED
from .store import RemoteStore

_DAY_S = 86400.0


def remote_states(config: ProvisioningConfig, entries: Iterable[tuple[str, str, str, str]]) -> dict[str, Any] | None:
    """For ``(model_name, host_key, engine_name, inputs_digest)`` rows: ``{"url", "states": {model: state}}``.

    None without a remote. States: present, absent, incomplete, unreachable, or off
    (``mode: off``). One unreachable answer marks the rest unreachable too, so a dead
    endpoint costs one timeout. "present" means a commit record of a key this host
    trusts (or an unsigned one where those are accepted) exists for today's inputs.
    """
    remote = remote_config_of(config)
    if remote is None:
        return None
    entries = list(entries)
    if not remote.enabled:
        return {"url": remote.url, "states": {model: "off" for model, _, _, _ in entries}}
    ring = key_ring(remote)
    store = RemoteStore.open(remote)
    states: dict[str, str] = {}
    for model, host_key, engine_name, digest in entries:
        if "unreachable" in states.values():
            states[model] = "unreachable"
            continue
        ids = ring.ids_for(host_key) if ring is not None else []
        if ring is None or not remote.require_signature:
            ids.append(UNSIGNED)
        states[model] = remote_entry_status(store, EntryPaths(store, host_key, engine_name, digest), ids,
                                            remote.timeout_s)
    return {"url": remote.url, "states": states}


def _printable(text: str) -> str:
    """A bucket path for the terminal: object names are remote content (newlines, escapes)."""
    return text if text.isprintable() and text.isascii() else ascii(text)[1:-1]


@dataclass(frozen=True)
class RemoteGcReport:
    """A remote gc plan, and whether it was applied."""

    url: str
    plan: RemoteGcPlan
    applied: bool

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "remote": self.url, "applied": self.applied, "bytes_freed": self.plan.bytes,
            "items": [{"path": i.path, "objects": len(i.objects), "size": i.bytes, "reason": i.reason}
                      for i in self.plan.items],
            "kept": list(self.plan.kept),
        }

    def render(self, human_bytes) -> str:
        """The text form; ``human_bytes`` formats sizes like the local gc does."""
        mode = "deleting" if self.applied else "dry run, add --apply to delete"
        lines = [f"engines-gc --remote: {self.url} ({mode})"]
        for item in self.plan.items:
            lines.append(f"  {human_bytes(item.bytes):>10}  {_printable(item.path)}  {item.reason}")
        lines.extend(f"  {'kept':>10}  {_printable(kept)}" for kept in self.plan.kept)
        verb = "freed" if self.applied else "would free"
        lines.append(f"{verb} {human_bytes(self.plan.bytes)} in {len(self.plan.items)} item(s)")
        return "\n".join(lines)


def remote_gc(config: ProvisioningConfig, host_keys: Iterable[str], current: Iterable[tuple[str, str]], *,
              apply: bool, now: float | None = None) -> RemoteGcReport | None:
    """Plan (and with ``apply`` perform) gc on the bucket; None when the config has no enabled remote.

    Entries of ``host_keys`` are checked against ``current`` (today's ``(engine name,
    inputs digest)`` pairs); other host keys go when nothing under them changed for
    ``remote.host_max_age_days``.
    """
    remote = remote_config_of(config)
    if remote is None or not remote.enabled:
        return None
    if apply and not remote.writable:
        from ..errors import ConfigError

        raise ConfigError(f"{config.config_path}: field 'remote.mode': is {remote.mode}; "
                          "engines-gc --remote --apply needs read-write")
    store = RemoteStore.open(remote)
    ring = key_ring(remote)
    current = list(current)
    keys = sorted(set(host_keys))
    plans = [plan_remote_gc(store, key, current, host_max_age_s=remote.host_max_age_days * _DAY_S,
                            timeout_s=remote.timeout_s, now=time.time() if now is None else now,
                            lease_s=remote.lease_s, corpus=remote.corpus, keys=ring, namespace=remote.namespace,
                            accepts_unsigned=ring is None or not remote.require_signature)
             for key in keys]
    # Several own host keys (e.g. TensorRT compatibility levels): none of them is a stale host.
    items, seen = [], set()
    for plan in plans:
        for item in plan.items:
            if item.path in seen or any(item.path == store.host_dir(k) for k in keys):
                continue
            seen.add(item.path)
            items.append(item)
    merged = RemoteGcPlan(tuple(items), tuple(k for p in plans for k in p.kept))
    if apply:
        apply_remote_gc(store, merged, remote.timeout_s)
    return RemoteGcReport(remote.url, merged, apply)
