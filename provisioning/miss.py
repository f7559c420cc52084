"""Why an engine's name is absent: the settings digest is in the name, so a changed build
setting makes the new name simply missing. The previous engine of the same backbone on this
host (same model name and host key) says which input changed. Used by the compiler's
``miss`` line and by ``engines-status``'s ``stale`` rows, so both explain it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .gc import CachedEngine, scan_cache
from .manifest import BuildInputs, explain_mismatch, read_manifest

NO_ENGINE = "no engine in the cache"


def previous_engine(engines: Iterable[CachedEngine], model_name: str, host_key: str,
                    exclude: str = "") -> CachedEngine | None:
    """This host's most recently used other engine of ``model_name`` (None: there is none)."""
    older = [e for e in engines if e.parsed.model_name == model_name and e.parsed.host_key == host_key
             and e.path.name != exclude]
    return max(older, key=lambda e: e.last_used) if older else None


def why_changed(previous: CachedEngine, expected: BuildInputs) -> list[str]:
    """The inputs that differ between ``previous``'s manifest and today's (never empty)."""
    return explain_mismatch(read_manifest(previous.path), expected) or ["its file name differs"]


def explain_absent(engine_path: Path, model_name: str, host_key: str, expected: BuildInputs) -> tuple[str, ...]:
    """The miss reasons for an engine whose file is absent: what changed since this host's last one.

    Never raises: an unreadable cache folder only loses the explanation.
    """
    try:
        previous = previous_engine(scan_cache(engine_path.parent).engines, model_name, host_key,
                                   exclude=engine_path.name)
        if previous is None:
            return (NO_ENGINE,)
        return (f"{'; '.join(why_changed(previous, expected))} (cached: {previous.path.name})",)
    except (OSError, ValueError):
        return (NO_ENGINE,)
