"""A download is hashed in one pass: chunks written at their offsets, hashed in offset order.

Parts of an engine arrive out of order (parallel ranged GETs); each is written where it
belongs at once, and hashed as soon as every byte before it has been. A part that
arrives ahead of the hash frontier is held in memory until then; the downloader bounds
how far ahead it asks (see :mod:`.s3_read`), so memory stays bounded whatever the size,
and the file is never read back.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable

from .errors import LocalWriteError, RemoteContentError


class OrderedHasher:
    """Write chunks at their offsets into ``fd`` and hash them in offset order.

    A chunk at the hash frontier is hashed at once, with any held chunks it makes
    contiguous; a chunk ahead of the frontier is written and held until then. The caller
    bounds how far ahead chunks may come (``held_bytes`` reports what is held).
    """

    def __init__(self, fd: int, size: int, progress: Callable[[int], None] | None = None) -> None:
        self.fd = fd
        self.size = size
        self.hashed = 0
        self.held_bytes = 0
        self.peak_held = 0
        self._held: dict[int, bytes] = {}
        self._digest = hashlib.sha256()
        self._progress = progress
        self._received = 0

    def add(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self.size:
            raise RemoteContentError(f"longer than the expected {self.size} bytes")
        _pwrite_all(self.fd, data, offset)
        self._received += len(data)
        if offset != self.hashed:
            self._held[offset] = data
            self.held_bytes += len(data)
            self.peak_held = max(self.peak_held, self.held_bytes)
        else:
            self._digest.update(data)
            self.hashed += len(data)
            while self.hashed in self._held:
                chunk = self._held.pop(self.hashed)
                self.held_bytes -= len(chunk)
                self._digest.update(chunk)
                self.hashed += len(chunk)
        if self._progress is not None:
            self._progress(self._received)

    def finish(self, sha256_hex: str) -> None:
        """RemoteContentError unless every byte arrived and the SHA-256 matches."""
        if self.hashed != self.size or self._held:
            raise RemoteContentError(f"shorter than the expected {self.size} bytes (got {self.hashed})")
        if self._digest.hexdigest() != sha256_hex.lower():
            raise RemoteContentError("engine bytes do not match the sidecar (corrupt or truncated)")


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        raise LocalWriteError(exc) from exc
