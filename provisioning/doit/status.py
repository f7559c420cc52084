"""What ``doit engines-status`` and ``doit engines-key`` compute: per-backbone states and a CI key."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from ..cache import check_entry, entry_files
from ..compiler import expected_build_inputs
from ..gc import CacheScan, plan_gc
from ..manifest import explain_mismatch, read_manifest
from ..miss import NO_ENGINE, previous_engine, why_changed
from ..onnxinfo import onnx_digest
from ..qualification import validation_matches, validation_of, why_not_validated
from .corpus import LoadedCorpus
from .report import human_bytes

STATES = ("fresh", "unvalidated", "missing", "stale", "corrupt", "foreign")
KEY_SCHEMA = 1


@dataclass(frozen=True)
class EngineStatus:
    """One row of the status table."""

    model_name: str
    state: str
    reason: str
    size: int
    host_key: str
    path: str
    qualified: str = "-"  # yes / no: the recorded validation passed or not (under today's criteria when asked); -: none
    validation: dict[str, Any] | None = None  # the recorded report (parity, latency, criteria)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``--json``)."""
        return asdict(self)


def backbone_statuses(corpus: LoadedCorpus, scan: CacheScan) -> list[EngineStatus]:
    """One row per backbone (fresh/missing/stale/corrupt), then one per foreign engine."""
    rows = []
    by_path = {e.path.name: e for e in scan.engines}
    for spec in corpus.specs:
        path = corpus.engine_path(spec)
        key = corpus.host_key(spec)
        expected = expected_build_inputs(spec, corpus.host)
        cached = by_path.get(path.name)
        size = cached.size if cached else 0
        if not os.path.lexists(path):
            newest = previous_engine(scan.engines, spec.model_name, key)
            if newest is not None:
                why = why_changed(newest, expected)
                rows.append(EngineStatus(spec.model_name, "stale", f"{'; '.join(why)} (cached: {newest.path.name})",
                                         newest.size, key, str(path)))
            else:
                rows.append(EngineStatus(spec.model_name, "missing", NO_ENGINE, 0, key, str(path)))
            continue
        check = check_entry(path, spec.model_name, expected)
        if check.hit:
            report = validation_of(check.entry.manifest)
            report = dict(report) if report is not None else None
            if not spec.criteria.enabled:
                rows.append(EngineStatus(spec.model_name, "fresh", "verified", size, key, str(path),
                                         "-" if report is None else "yes" if report.get("passed") else "no", report))
            elif validation_matches(check.entry.manifest, spec):
                rows.append(EngineStatus(spec.model_name, "fresh", "verified and validated", size, key, str(path),
                                         "yes", report))
            else:
                why = why_not_validated(check.entry.manifest, spec)
                rows.append(EngineStatus(spec.model_name, "unvalidated", f"{why}; doit engines validates it",
                                         size, key, str(path), "no", report))
            continue
        manifest = read_manifest(path)
        mismatch = explain_mismatch(manifest, expected) if manifest is not None else []
        state = "stale" if mismatch else "corrupt"
        rows.append(EngineStatus(spec.model_name, state, "; ".join(check.reasons), size, key, str(path)))
    own_keys = {corpus.host_key(spec) for spec in corpus.specs}
    for engine in scan.engines:
        if engine.parsed.host_key not in own_keys:
            rows.append(EngineStatus(engine.parsed.model_name, "foreign",
                                     f"built for another host ({engine.parsed.backend_tag}-"
                                     f"{engine.parsed.version_tag}, {engine.parsed.host_key})",
                                     engine.size, engine.parsed.host_key, str(engine.path)))
    return rows


def status_totals(corpus: LoadedCorpus, scan: CacheScan, rows: list[EngineStatus]) -> dict[str, Any]:
    """Counts by state, the cache's size, and what ``engines-gc`` would free."""
    plan = plan_gc(scan, current=(corpus.engine_path(s).name for s in corpus.specs),
                   host_keys=(corpus.host_key(s) for s in corpus.specs))
    counts = {state: sum(r.state == state for r in rows) for state in STATES}
    return {
        "backbones": len(corpus.specs),
        **counts,
        "cache_files": sum(1 for e in scan.engines for f in entry_files(e.path) if f.exists()) + len(scan.leftovers),
        "cache_bytes": scan.total_bytes,
        "gc_reclaimable_bytes": plan.bytes_freed,
        "gc_items": len(plan.items),  # an empty scratch folder frees 0 B, yet engines-gc lists (and removes) it
    }


def render_status(corpus: LoadedCorpus, rows: list[EngineStatus], totals: dict[str, Any],
                  remote: dict[str, Any] | None = None) -> str:
    """The human table; with ``remote`` (``{"url", "states": {model: state}}``) a REMOTE column.

    A foreign engine's REMOTE cell is ``-``: the remote is asked about today's entries only.
    """
    identity = corpus.host.identity()
    lines = [f"cache {corpus.cache_dir}  ({corpus.host.backend} {corpus.host.backend_version}, "
             f"host {identity.host_key})"]
    states = None if remote is None else remote["states"]
    if remote is not None:
        lines.append(f"remote {remote['url']}")
    table = [("MODEL", "STATE", "SIZE", "QUALIFIED", *(() if states is None else ("REMOTE",)), "HOST KEY", "PATH")]
    for row in rows:
        cell = () if states is None else ("-" if row.state == "foreign" else states.get(row.model_name, "-"),)
        table.append((row.model_name, row.state, human_bytes(row.size) if row.size else "-", row.qualified,
                      *cell, row.host_key, row.path))
    last = len(table[0]) - 1  # the path: not padded
    widths = [max(len(r[i]) for r in table) for i in range(last)]
    for index, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:last])) + "  " + row[last])
        if index and rows[index - 1].state not in ("fresh", "missing"):
            lines.append(" " * (widths[0] + 2) + "why: " + rows[index - 1].reason)
    summary = ", ".join(f"{totals[s]} {s}" for s in STATES if totals[s])
    noun = "backbone" if totals["backbones"] == 1 else "backbones"
    lines.append(f"total: {totals['backbones']} {noun} ({summary}); cache {human_bytes(totals['cache_bytes'])}; "
                 f"engines-gc would free {human_bytes(totals['gc_reclaimable_bytes'])}"
                 f" in {totals['gc_items']} item(s)")
    return "\n".join(lines)


def cache_key(corpus: LoadedCorpus) -> tuple[str, str]:
    """``(key, restore_prefix)`` for a CI cache: host identity + every corpus input, stable.

    The prefix names backend, version and host, so a CI restore may fall back to the
    newest cache of the same host when the corpus changed (then only the changes rebuild).
    """
    identity = corpus.host.identity()
    payload = {
        "schema": KEY_SCHEMA,
        "backend": corpus.host.backend,
        "backend_version": corpus.host.backend_version,
        "host": identity.as_dict(),
        "backbones": [
            {
                "model_name": spec.model_name,
                "onnx_sha256": onnx_digest(spec.onnx_path, spec.external_data),
                "settings": spec.build_settings(corpus.host.backend),
                "engine": corpus.engine_path(spec).name,
            }
            for spec in sorted(corpus.specs, key=lambda s: s.model_name)
        ],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]
    prefix = f"engines-{identity.backend_tag}-{identity.version_tag}-{identity.host_key}-"
    return prefix + digest, prefix


def engine_file_names(corpus: LoadedCorpus) -> list[str]:
    """Today's engine file names on this host."""
    return [corpus.engine_path(spec).name for spec in corpus.specs]
