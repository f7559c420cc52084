"""Why an engine's name is absent: the settings digest is in the name, so a changed build
setting makes the new name simply missing. The previous engine of the same backbone on this
host (same model name and host key) says which input changed. Used by the compiler's
``miss`` line and by ``engines-status``'s ``stale`` rows, so both explain it the same way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from .gc import CachedEngine
from .manifest import BuildInputs, explain_mismatch, read_manifest
from .schema import ENGINE_SUFFIX, EngineFilenameSchema

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


def engines_named(cache_dir: Path, model_name: str, exclude: str = "") -> list[CachedEngine]:
    """The cache's engines of ``model_name``, found by their name's prefix (the model name).

    One listing of the folder's names, then work only for this model's few entries: no
    stat, parse or lock probe of the other backbones' files. A cold build of N backbones
    used to scan the whole cache (every entry's sizes and lock) on each of its N misses.
    """
    prefix = model_name + "."  # a model name has no dot (schema): the prefix is exact
    found: list[CachedEngine] = []
    for name in os.listdir(cache_dir):
        if not name.startswith(prefix) or not name.endswith(ENGINE_SUFFIX) or name == exclude:
            continue
        try:
            parsed = EngineFilenameSchema.parse(name)
            st = os.lstat(os.path.join(cache_dir, name))
        except (ValueError, OSError):
            continue  # not ours, or gone meanwhile
        if parsed.model_name != model_name or not stat.S_ISREG(st.st_mode):
            continue  # a symlink is never followed
        found.append(CachedEngine(Path(cache_dir) / name, parsed, st.st_size, max(st.st_atime, st.st_mtime), False))
    return found


def explain_absent(engine_path: Path, model_name: str, host_key: str, expected: BuildInputs) -> tuple[str, ...]:
    """The miss reasons for an engine whose file is absent: what changed since this host's last one.

    Never raises: an unreadable cache folder only loses the explanation.
    """
    try:
        previous = previous_engine(engines_named(engine_path.parent, model_name, engine_path.name), model_name,
                                   host_key, exclude=engine_path.name)
        if previous is None:
            return (NO_ENGINE,)
        return (f"{'; '.join(why_changed(previous, expected))} (cached: {previous.path.name})",)
    except (OSError, ValueError):
        return (NO_ENGINE,)
