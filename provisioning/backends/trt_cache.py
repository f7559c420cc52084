"""The TensorRT backend's own files in the cache folder: timing caches and GPU locks.

Layout (beside the engines of :mod:`provisioning.cache`)::

    cache_dir/
      timing/trt-10.16.1.11.sm90-h200.timing-cache   kernel timings of one GPU model + TensorRT version
      .locks/timing-<same name>.lock                  one merge-and-save at a time
      .locks/gpu-GPU-<uuid>.lock                      one TensorRT build per GPU at a time

A timing cache records kernel measurements, so it belongs to the exact GPU model and
TensorRT version whatever compatibility level the engine asks for; a cache that does not
load (corrupt, or written by another device or version) is ignored with a warning and
replaced after the next build. Never fatal: it only makes builds faster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from filelock import Timeout

from ..schema import LOCK_DIR
from ..errors import UnsafePathError
from ..locks import safe_lock
from ..sidecar import atomic_write_bytes, open_nofollow

if TYPE_CHECKING:  # pragma: no cover
    from ..host import HostCapabilities

log = logging.getLogger("provisioning.tensorrt")

TIMING_DIR = "timing"
TIMING_SUFFIX = ".timing-cache"
_MAX_TIMING_BYTES = 1 << 30


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def timing_cache_path(cache_dir: Path, host: "HostCapabilities") -> Path:
    """The timing cache of this host's exact GPU model and TensorRT version."""
    exact = host.identity()  # no compatibility relaxations: timings are per device
    return cache_dir / TIMING_DIR / f"trt-{_safe(host.backend_version)}.{_safe(exact.host_key)}{TIMING_SUFFIX}"


def _read(path: Path) -> bytes | None:
    try:
        fd = open_nofollow(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("timing cache %s is unreadable (%s); building without it", path, exc.strerror or exc,
                    extra={"event": "timing_cache_ignored", "path": str(path)})
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(_MAX_TIMING_BYTES)


def load_timing_cache(config: Any, path: Path, build_log: Any = None) -> str:
    """Attach the saved timing cache to ``config`` (or an empty one); returns what happened.

    A corrupt file does not fail: TensorRT returns an *empty* cache and only logs
    "Failed to deserialize timing cache", so ``build_log`` (the build's TensorRT log) is
    read to tell; the file is then reported as ignored and replaced after the build.
    """
    blob = _read(path)
    if blob is not None:
        why = _attach(config, blob, build_log)
        if why is None:
            return f"loaded ({len(blob)} bytes)"
        log.warning(
            "timing cache %s ignored: %s; the build measures from scratch and replaces it", path, why,
            extra={"event": "timing_cache_ignored", "path": str(path), "reason": why},
        )
    empty_reason = _attach(config, b"")
    if empty_reason is not None:  # pragma: no cover - TensorRT always accepts an empty cache
        log.warning("cannot attach an empty timing cache: %s", empty_reason)
    return "new" if blob is None else f"ignored ({why})"


_CORRUPT_MARKERS = ("failed to deserialize timing cache", "timing cache will not be used",
                    "timing cache deserialization failed")


def _attach(config: Any, blob: bytes, build_log: Any = None) -> str | None:
    mark = build_log.mark() if build_log is not None and blob else None
    try:
        cache = config.create_timing_cache(blob)
    except Exception as exc:  # noqa: BLE001 - the bindings raise plain RuntimeError/TypeError
        return f"corrupt ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if cache is None:
        return "corrupt (TensorRT could not read it)"
    if mark is not None:
        said = [m for m in build_log.since(mark, "WARNING", "ERROR", "INTERNAL_ERROR")
                if any(marker in m.lower() for marker in _CORRUPT_MARKERS)]
        if said:
            return f"corrupt (TensorRT: {' '.join(said[-1].split())})"
    if not config.set_timing_cache(cache, False):
        return "written by another GPU or TensorRT version"
    return None


def save_timing_cache(config: Any, path: Path) -> str:
    """Merge the build's timings with the saved cache (another process may have added some) and save."""
    try:
        path.parent.mkdir(exist_ok=True)
        with safe_lock(path.parent.parent / LOCK_DIR / f"timing-{path.name}.lock"):  # no link, no FIFO
            built = config.get_timing_cache()
            if built is None:
                return "not saved (the builder kept no timing cache)"
            blob = _read(path)
            if blob:
                try:
                    saved = config.create_timing_cache(blob)
                except Exception:  # noqa: BLE001 - a corrupt file is simply replaced
                    saved = None
                if saved is not None:
                    built.combine(saved, False)  # False: refuse a foreign cache, keep ours
            atomic_write_bytes(path, bytes(memoryview(built.serialize())))
    except (OSError, UnsafePathError) as exc:
        why = getattr(exc, "strerror", None) or exc
        log.warning("timing cache %s not saved (%s)", path, why,
                    extra={"event": "timing_cache_not_saved", "path": str(path)})
        return f"not saved ({why})"
    return "saved"


def gpu_lock_path(cache_dir: Path, gpu_uuid: str) -> Path:
    """The lock file that serialises TensorRT builds on one GPU."""
    return cache_dir / LOCK_DIR / f"gpu-{_safe(gpu_uuid)}.lock"


@contextlib.contextmanager
def device_lock(cache_dir: Path, gpu_uuid: str, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold the GPU's build lock; concurrent builds would also skew TensorRT's kernel timing."""
    lock = safe_lock(gpu_lock_path(cache_dir, gpu_uuid))  # UnsafePathError: a link or FIFO planted there
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait(gpu_uuid)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
