"""Opening a verified cache entry the way its backend needs: the one place a server's engine is loaded.

Below the cache (``EngineCacheEntry.open`` calls it) and beside the backends it dispatches
to; heavy modules (ONNX Runtime, TensorRT) are imported only when an engine is opened.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ..errors import BackendError
from ..sidecar import hash_fd, open_nofollow, stat_signature

__all__ = ["open_engine"]

_PROTOBUF_LIMIT = 1_800_000_000  # ONNX Runtime parses bytes through protobuf (2 GiB at most)


def open_engine(entry: Any) -> Any:
    """A ready engine: an ONNX Runtime ``InferenceSession``, or a deserialized TensorRT engine.

    ONNX Runtime engines are already optimized, so they are opened with
    ``ORT_DISABLE_ALL`` (no second optimization pass at every start), from the very bytes
    that were checked against the entry's SHA-256. TensorRT and TensorRT-RTX plans go
    through ``load_verified_engine``, which verifies the sidecar before TensorRT sees a byte.
    """
    backend = entry.inputs.get("backend") if isinstance(entry.inputs, dict) else None
    if backend in ("tensorrt", "tensorrt-rtx"):
        from .tensorrt import load_verified_engine

        return load_verified_engine(entry.path)
    if backend != "onnxruntime":
        raise BackendError(f"engine {entry.path}: built by {backend or 'an unknown backend'}, which "
                           "open_engine cannot load; rebuild it with doit engines")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    where = f"engine {entry.path}"
    if entry.size > _PROTOBUF_LIMIT:  # too large to parse from memory: hashed, then opened through that descriptor
        return _open_large(ort, entry, options, where)
    with os.fdopen(open_nofollow(entry.path), "rb") as handle:
        blob = handle.read()
    if hashlib.sha256(blob).hexdigest() != entry.sha256:
        raise BackendError(f"{where}: bytes do not match the resolved SHA-256 (changed or corrupt); "
                           "resolve it again or rebuild it with doit engines")
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def _open_large(ort: Any, entry: Any, options: Any, where: str) -> Any:
    """An engine ONNX Runtime must read from a file: the very file that was hashed (issue 22 item 12).

    The file is opened once, hashed through that descriptor and handed to ONNX Runtime as
    ``/proc/self/fd/N``, which names the open file, not the path: a file swapped in at the
    path after the hash is never read. A write into the same file (its owner can) changes
    its ctime, which cannot be set back: the stat signature is compared once the session
    holds the model, and a change refuses it. Without ``/proc`` (not Linux) the file is
    opened by path after the hash: a swap in between is the documented window.
    """
    fd = open_nofollow(entry.path)
    try:
        before = stat_signature(os.fstat(fd))
        if hash_fd(fd)[0] != entry.sha256:
            raise BackendError(f"{where}: bytes changed since it was resolved; resolve it again")
        by_descriptor = f"/proc/self/fd/{fd}"
        source = by_descriptor if os.path.exists(by_descriptor) else str(entry.path)
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        if stat_signature(os.fstat(fd)) != before:
            raise BackendError(f"{where}: bytes changed while it was opened; resolve it again")
        return session
    finally:
        os.close(fd)
