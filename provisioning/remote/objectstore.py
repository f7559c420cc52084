"""What every remote store offers: paths inside the bucket and the bounded calls on them.

Two stores implement it: :class:`~provisioning.remote.store.RemoteStore` (``s3://``,
through s3fs) and :class:`~provisioning.remote.localstore.LocalRemoteStore` (``file://``,
a shared mount, never following a link). ``RemoteStore.open(config)`` picks one.
Layout of the bucket: see :mod:`provisioning.remote.layout`.

Calls that move bytes (reads, downloads, uploads) are bounded by a *stall* timeout: the
``timeout`` / ``stall_s`` argument is the longest they may go without a byte moving, so
a large object over a slow link completes while a dead or hung server fails within it
(RemoteUnavailable, ``__cause__`` a TimeoutError). Calls that move no bytes (size,
listings, deletes) must complete within ``timeout``. See :mod:`.transfer`.
"""

from __future__ import annotations

from typing import Any, Callable

ENGINE, MANIFEST, SIDECAR, SIGNATURE, LEASE = "engine", "manifest.json", "sha256", "sig", "lease"
SEEN = "_seen.json"
ENTRY_OBJECTS = (ENGINE, MANIFEST, SIGNATURE, SIDECAR, LEASE)


class ObjectStore:
    """One bucket prefix: its paths, and the calls a store implements (see each subclass)."""

    #: downloads: objects up to ``part_bytes`` take one GET, larger ones ranged GETs of
    #: ``part_bytes``, ``concurrency`` in flight; at most ``concurrency * part_bytes``
    #: bytes are held in memory (parts that arrive ahead of the hash frontier). 64 MiB x 4
    #: is the scale s5cmd and s3fs's get_file use (50 MiB parts, 5-10 in flight): fewer,
    #: larger requests, because servers that pay a per-request cost proportional to the
    #: object (moto reads the whole object for every ranged GET) punish small parts
    #: (16 MiB parts measured 2.6x slower than 64 MiB ones there), while S3 itself
    #: reaches full per-connection throughput well below 64 MiB.
    part_bytes = 64 << 20
    concurrency = 4
    #: uploads: files up to this size take one PUT; larger ones a multipart upload
    single_put_bytes = 32 << 20
    upload_part_bytes = 16 << 20
    upload_concurrency = 4

    def __init__(self, root: str, *, url: str) -> None:
        self.root = root.rstrip("/")
        self.url = url

    # -- paths ---------------------------------------------------------------------
    def host_dir(self, host_key: str) -> str:
        """The folder of one host key."""
        return f"{self.root}/{host_key}"

    def entry_path(self, host_key: str, engine_name: str, obj: str = "") -> str:
        """An entry's folder, or one of its objects."""
        base = f"{self.root}/{host_key}/{engine_name}"
        return f"{base}/{obj}" if obj else base

    def display(self, path: str) -> str:
        """A path as users write it (``s3://bucket/...``)."""
        return ("file://" if self.url.startswith("file://") else "s3://") + path

    # -- reads built on read_small_tagged ------------------------------------------
    def read_small(self, path: str, limit: int, timeout: float) -> bytes | None:
        """The bytes of a small object, None when absent; RemoteContentError above ``limit``.

        Streamed with a hard cap: never more than ``limit + 1`` bytes (plus one chunk) are
        held, whatever the server sends; Content-Length / Content-Range are checked first.
        """
        found = self.read_small_tagged(path, limit, timeout)
        return None if found is None else found[0]

    def read_small_info(self, path: str, limit: int, timeout: float) -> tuple[bytes, float | None] | None:
        """Like :meth:`read_small`, with the object's last-modified time (the server's clock)."""
        found = self.read_small_tagged(path, limit, timeout)
        return None if found is None else (found[0], found[1])

    # -- the calls each store implements -------------------------------------------
    def read_small_tagged(self, path: str, limit: int,
                          timeout: float) -> tuple[bytes, float | None, str | None] | None:
        """Like :meth:`read_small`, with the last-modified epoch and an ETag, from one read."""
        raise NotImplementedError

    def download(self, path: str, fd: int, size: int, sha256_hex: str, stall_s: float, *,
                 progress: Callable[[int], None] | None = None) -> None:
        """Write the ``size`` bytes of an object into ``fd``, hashed as they arrive."""
        raise NotImplementedError

    def size(self, path: str, timeout: float) -> int | None:
        """The size of an object, None when absent."""
        raise NotImplementedError

    def read_range(self, path: str, start: int, end: int, timeout: float) -> bytes:
        """Bytes ``[start, end)`` of an object."""
        raise NotImplementedError

    def put_bytes(self, path: str, data: bytes, timeout: float) -> None:
        """Create or replace an object."""
        raise NotImplementedError

    def put_file(self, path: str, local: str, timeout: float) -> None:
        """Upload a local file (``timeout`` is a stall timeout)."""
        raise NotImplementedError

    def put_file_exclusive(self, path: str, local: str, timeout: float) -> bool:
        """Upload a local file only if ``path`` is absent; False when it exists."""
        raise NotImplementedError

    def create_exclusive(self, path: str, data: bytes, timeout: float) -> bool:
        """Create an object only if absent; False when it exists."""
        raise NotImplementedError

    def delete_if_match(self, path: str, etag: str, timeout: float) -> bool:
        """Delete an object only if its ETag is still ``etag``; False when changed or absent."""
        raise NotImplementedError

    def delete(self, paths: list[str], timeout: float) -> None:
        """Remove objects; absent ones are ignored."""
        raise NotImplementedError

    def list_dir(self, path: str, timeout: float) -> list[dict[str, Any]]:
        """Entries directly under ``path`` (fsspec-style info dicts); empty when absent."""
        raise NotImplementedError

    def find(self, path: str, timeout: float) -> dict[str, dict[str, Any]]:
        """Every object under ``path`` with its info (size, LastModified / mtime)."""
        raise NotImplementedError


def modified_epoch(info: dict[str, Any]) -> float | None:
    """An object's last-modified time as epoch seconds, from an fsspec info dict."""
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
