"""The ``s3://`` store, through s3fs, and the opener that picks a store for a config.

A thin layer: paths inside the bucket, bounded calls, conditional create. fsspec and
s3fs are imported here only, and only when a store is opened, so ``import provisioning``
stays light. Failures come in two kinds, because they call for opposite reactions: a
:class:`RemoteUnavailable` (network, server, credentials, timeout) turns the remote off for
the run, while a :class:`RemoteContentError` (an object too large, a link, not a regular
file) only condemns one entry, which is rebuilt and repaired (see :mod:`.errors`). A
``file://`` remote is served by :class:`~provisioning.remote.localstore.LocalRemoteStore`,
which never follows a link below the root. Layout: see :mod:`provisioning.remote.layout`.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable

from ..errors import ConfigError
from .config import RemoteConfig, check_endpoint_env, insecure_http_problem
from .errors import (
    ConditionalWriteUnsupported, LocalWriteError, RemoteContentError, RemoteUnavailable, shown, transport,
)
from .localstore import LocalRemoteStore
from .objectstore import ENGINE, ENTRY_OBJECTS, LEASE, MANIFEST, SEEN, SIDECAR, SIGNATURE, ObjectStore, modified_epoch
from .ordered_hasher import OrderedHasher
from .s3_read import s3_download, s3_read_capped
from .s3_write import conditional_failure, s3_delete_if_match, s3_upload
from .stall import Ticker, watched

__all__ = [
    "ENGINE", "ENTRY_OBJECTS", "LEASE", "MANIFEST", "SEEN", "SIDECAR", "SIGNATURE",
    "ConditionalWriteUnsupported", "LocalRemoteStore", "ObjectStore", "RemoteContentError", "RemoteStore",
    "RemoteUnavailable", "modified_epoch", "shown",
]


class RemoteStore(ObjectStore):
    """One ``s3://`` bucket prefix; :meth:`open` returns the store for any configured URL.

    Calls that move bytes (reads, downloads, uploads) are bounded by a *stall* timeout: the
    ``timeout`` / ``stall_s`` argument is the longest they may go without a byte moving, so
    a large object over a slow link completes while a dead or hung server fails within it
    (RemoteUnavailable, ``__cause__`` a TimeoutError). Calls that move no bytes (size,
    listings, deletes) must complete within ``timeout``. See :mod:`.transfer`.
    """

    def __init__(self, fs: Any, root: str, *, is_async: bool, url: str) -> None:
        super().__init__(root, url=url)
        self.fs = fs
        self._is_async = is_async

    @classmethod
    def open(cls, config: RemoteConfig) -> ObjectStore:
        """A store for ``config.url``; an ``s3://`` one makes its client now (no request is sent).

        The client is made here so that the endpoint botocore resolved, wherever it read
        it from, passes the plain-http rule before any request (see :func:`_check_resolved_endpoint`).
        """
        try:
            import fsspec  # noqa: F401  (present, or the remote cannot work)
        except ImportError:
            raise ConfigError(
                f"{config.config_path}: field 'remote': the remote cache needs fsspec and s3fs; "
                "install provisioning[remote] or set remote.mode: off"
            ) from None
        if config.protocol == "file":
            return LocalRemoteStore(config.url[len("file://"):], url=config.url)
        check_endpoint_env(config)
        try:
            import s3fs
        except ImportError:
            raise ConfigError(
                f"{config.config_path}: field 'remote.url': s3:// needs s3fs; install provisioning[remote]"
            ) from None
        timeout = max(1.0, config.timeout_s)
        fs = s3fs.S3FileSystem(
            endpoint_url=config.endpoint_url,  # None: botocore reads AWS_ENDPOINT_URL
            skip_instance_cache=True,  # a fresh client per store: no state shared across configs
            use_listings_cache=False,  # other hosts write the bucket; never trust a cached listing
            config_kwargs={"connect_timeout": timeout, "read_timeout": timeout,
                           "retries": {"max_attempts": 1, "mode": "standard"}},
        )
        fs.retries = 1  # retries are ours, bounded by timeout_s; s3fs would back off for ~10 s more
        _check_resolved_endpoint(config, fs)
        return cls(fs, config.url[len("s3://"):], is_async=True, url=config.url)

    # -- calls ---------------------------------------------------------------------
    def _kw(self, timeout: float) -> dict[str, float]:
        # fsspec's sync() takes a hard timeout for async file systems; local calls need none.
        return {"timeout": max(0.1, timeout)} if self._is_async else {}

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one fsspec call; anything but "absent" or "exists" is a transport failure."""
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, RemoteContentError, RemoteUnavailable):
            raise
        except Exception as exc:
            raise transport(exc) from exc

    def _bucket_key(self, path: str) -> tuple[str, str]:
        bucket, _, key = path.partition("/")
        return bucket, key

    def _stream(self, factory: Callable[..., Any], stall_s: float, what: str) -> Any:
        """Run ``factory(ticker)`` (a coroutine) on s3fs's loop under a stall watchdog.

        No total timeout: the watchdog cancels it after ``stall_s`` without a tick. Absent
        objects stay FileNotFoundError, a local write error its OSError; anything else
        from the transport is a RemoteUnavailable.
        """
        from fsspec.asyn import sync

        ticker = Ticker()
        try:
            return sync(self.fs.loop, watched, lambda: factory(ticker), max(0.1, stall_s), ticker, what)
        except (FileNotFoundError, RemoteContentError, RemoteUnavailable, ConditionalWriteUnsupported):
            raise
        except LocalWriteError as exc:
            raise exc.error from None
        except Exception as exc:
            raise transport(exc) from exc

    def read_small_tagged(self, path: str, limit: int,
                          timeout: float) -> tuple[bytes, float | None, str | None] | None:
        """Like :meth:`read_small`, with the server's last-modified epoch and ETag, from one GET.

        The ETag is the server's, quoted as sent; pass it unchanged to :meth:`delete_if_match`.
        """
        bucket, key = self._bucket_key(path)
        return self._stream(lambda ticker: s3_read_capped(self.fs, bucket, key, limit, ticker),
                            timeout, "read")

    def download(self, path: str, fd: int, size: int, sha256_hex: str, stall_s: float, *,
                 progress: Callable[[int], None] | None = None) -> None:
        """Write the ``size`` bytes of an object into ``fd`` (at offsets; not closed here).

        One GET up to :attr:`part_bytes`, else parallel ranged GETs of :attr:`part_bytes`,
        :attr:`concurrency` in flight, pinned to the first part's ETag (If-Match). Bytes are
        hashed in order as they arrive (one pass, the file is never read back); memory
        stays under ``concurrency * part_bytes``.
        RemoteContentError when the object is shorter or longer than ``size``, a response's
        Content-Range / Content-Length does not match its request, the object changes
        mid-download, or the SHA-256 differs ("engine bytes do not match the sidecar").
        RemoteUnavailable on transport failures and after ``stall_s`` without progress;
        FileNotFoundError when the object is absent; OSError when writing ``fd`` fails.
        ``progress(bytes_received)`` runs on the transfer's thread (s3fs's event loop, or
        the file:// worker): it must be quick and must not call the store.
        """
        bucket, key = self._bucket_key(path)
        sink = OrderedHasher(fd, size, progress)

        def fetch(ticker):
            return s3_download(self.fs, bucket, key, sink, ticker, part_bytes=max(1, self.part_bytes),
                                        concurrency=max(1, self.concurrency))

        self._stream(fetch, stall_s, "download")
        sink.finish(sha256_hex)

    def size(self, path: str, timeout: float) -> int | None:
        """The size of an object, None when absent."""
        try:
            info = self._call(self.fs.info, path, **self._kw(timeout))
        except FileNotFoundError:
            return None
        return int(info.get("size") or 0) if info.get("type", "file") == "file" else None

    def read_range(self, path: str, start: int, end: int, timeout: float) -> bytes:
        """Bytes ``[start, end)`` of an object."""
        return bytes(self._call(self.fs.cat_file, path, start=start, end=end, **self._kw(timeout)))

    def put_bytes(self, path: str, data: bytes, timeout: float) -> None:
        """Create or replace an object."""
        self._call(self.fs.pipe_file, path, data, **self._kw(timeout))

    def _upload(self, path: str, local: str, timeout: float, exclusive: bool) -> bool:
        bucket, key = self._bucket_key(path)

        def upload(ticker):
            return s3_upload(self.fs, bucket, key, local, ticker, exclusive=exclusive,
                                      part_bytes=self.upload_part_bytes, concurrency=self.upload_concurrency,
                                      single_put_bytes=self.single_put_bytes, stall_s=max(0.1, timeout))

        try:
            return bool(self._stream(upload, timeout, "upload"))
        except RemoteUnavailable as exc:
            verdict = conditional_failure(exc.__cause__) if exclusive and exc.__cause__ else None
            if verdict == "exists":
                return False
            if verdict == "unsupported":
                raise ConditionalWriteUnsupported(str(exc)) from None
            raise

    def put_file(self, path: str, local: str, timeout: float) -> None:
        """Upload a local file: one PUT up to :attr:`single_put_bytes`, else multipart.

        ``timeout`` is a stall timeout (no byte sent for that long), not a total.
        """
        self._upload(path, local, timeout, exclusive=False)

    def put_file_exclusive(self, path: str, local: str, timeout: float) -> bool:
        """Upload a local file only if ``path`` is absent (``If-None-Match: *``); False when it exists.

        The condition rides on the PUT, or on CompleteMultipartUpload for a multipart
        upload (after a HEAD that skips the upload when the object already exists).
        ConditionalWriteUnsupported when the server refuses conditional writes (501 /
        NotImplemented); a server that silently ignores the header cannot be told apart.
        """
        return self._upload(path, local, timeout, exclusive=True)

    def create_exclusive(self, path: str, data: bytes, timeout: float) -> bool:
        """Create an object only if absent (``If-None-Match: *``); False when it exists."""
        try:
            self.fs.pipe_file(path, data, mode="create", **self._kw(timeout))
        except FileExistsError:
            return False
        except Exception as exc:
            if (isinstance(exc, OSError) and exc.errno == errno.EINVAL) or "NotImplemented" in str(exc):
                raise ConditionalWriteUnsupported(str(exc).splitlines()[0] if str(exc) else "") from None
            raise transport(exc) from exc
        return True

    def delete_if_match(self, path: str, etag: str, timeout: float) -> bool:
        """Delete an object only if its ETag is still ``etag`` (DeleteObject ``If-Match``).

        True when deleted; False when the object changed (412) or is absent (404).
        ConditionalWriteUnsupported when the server answers 501 / NotImplemented. A server
        that ignores ``If-Match`` on DeleteObject (S3 has honoured it since 2024; check
        other implementations) deletes unconditionally; that cannot be detected here.
        """
        bucket, key = self._bucket_key(path)
        try:
            self._stream(lambda ticker: s3_delete_if_match(self.fs, bucket, key, etag), timeout, "delete")
        except FileNotFoundError:
            return False
        except RemoteUnavailable as exc:
            verdict = conditional_failure(exc.__cause__) if exc.__cause__ is not None else None
            if verdict == "exists":
                return False
            if verdict == "unsupported":
                raise ConditionalWriteUnsupported(str(exc)) from None
            raise
        return True

    def delete(self, paths: list[str], timeout: float) -> None:
        """Remove objects; absent ones are ignored."""
        for path in paths:
            try:
                self._call(self.fs.rm_file, path, **self._kw(timeout))
            except FileNotFoundError:
                pass

    def list_dir(self, path: str, timeout: float) -> list[dict[str, Any]]:
        """Entries directly under ``path`` (fsspec info dicts); empty when absent."""
        try:
            return list(self._call(self.fs.ls, path, detail=True, **self._kw(timeout)))
        except FileNotFoundError:
            return []

    def find(self, path: str, timeout: float) -> dict[str, dict[str, Any]]:
        """Every object under ``path`` with its info (size, LastModified / mtime)."""
        try:
            return dict(self._call(self.fs.find, path, detail=True, **self._kw(timeout)))
        except FileNotFoundError:
            return {}


def _check_resolved_endpoint(config: RemoteConfig, fs: Any) -> None:
    """The plain-http rule on the endpoint botocore resolved, not only on the ones this config sees.

    botocore also reads ``endpoint_url`` from the AWS shared config file (a profile such
    as ``[default]``, or its ``[services ...]`` section), after the environment. A client
    that cannot even be made (a missing profile, say) sends no request: its first call
    fails as a transport error, as before.
    """
    try:
        fs.connect()
        resolved = fs.s3.meta.endpoint_url
    except Exception:
        return
    if not isinstance(resolved, str):
        return
    problem = insecure_http_problem(resolved, config.allow_insecure_http, config.signatures_required)
    if problem is None:
        return
    source = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    raise ConfigError(f"{config.config_path}: field 'remote.endpoint_url': botocore resolved {resolved[:200]} from "
                      f"the AWS shared config ({source}, endpoint_url in a profile or its services section): "
                      f"{problem[1]}")
