"""ONNX digests taken ahead of the actions: per-file hashes, the reuse key's combined digest.

A doit run hashes every backbone's ONNX files (the model, then its external data) on the
verifier's threads while checkers run; the action combines the per-file digests into the
one :func:`provisioning.onnxinfo.onnx_digest` would compute, and hands them to doit's
file_dep check so that nothing is read twice.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import ContextManager, Iterable

from .onnxinfo import remember_known_digest
from .sidecar import hash_fd, open_nofollow, stat_signature
from .verify_stat import _settled, _signature


def _hash_files(files: Iterable[Path], guard: ContextManager[object] | None = None) -> list[tuple[Path, list[int] | None, str]]:
    """Each file's SHA-256 with its signature, None when the file changed while it was read."""
    hashed = []
    for path in files:
        fd = open_nofollow(path)
        try:
            before = stat_signature(os.fstat(fd))
            digest, _ = hash_fd(fd, guard)
            hashed.append((Path(path), before if stat_signature(os.fstat(fd)) == before else None, digest))
        finally:
            os.close(fd)
    return hashed


def combine_onnx_digest(model: Path, hashed: list[tuple[Path, list[int] | None, str]]) -> str:
    """The reuse key's ONNX digest from per-file digests (model first): :func:`provisioning.onnxinfo.onnx_digest`."""
    if len(hashed) == 1:
        return hashed[0][2]
    combined = hashlib.sha256(hashed[0][2].encode())
    for path, _, digest in hashed[1:]:
        combined.update(b"\0" + os.path.relpath(path, model.parent).encode() + b"\0")
        combined.update(digest.encode())
    return combined.hexdigest()


def note_known_digests(hashed: Iterable[tuple[Path, list[int] | None, str]]) -> None:
    """Hand digests of settled, unchanged files to doit's file_dep check (it then reads nothing again).

    The same table :func:`provisioning.onnxinfo.onnx_digest` fills for the digests it takes.
    """
    now = time.time_ns()
    for path, signature, digest in hashed:
        if signature is not None and _settled([signature], now) and _signature(path) == signature:
            remember_known_digest(path, signature, digest)
