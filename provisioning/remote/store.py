"""The bucket, through fsspec (s3fs for ``s3://``, the local file system for ``file://``).

A thin layer: paths inside the bucket, bounded calls, conditional create. fsspec and
s3fs are imported here only, and only when a store is opened, so ``import provisioning``
stays light. Failures come in two kinds, because they call for opposite reactions: a
:class:`RemoteUnavailable` (network, server, credentials, timeout) turns the remote off for
the run, while a :class:`RemoteContentError` (an object too large, a link, not a regular
file) only condemns one entry, which is rebuilt and repaired. A ``file://`` remote is
served by :class:`~provisioning.remote.localstore.LocalRemoteStore`, which never follows a
link below the root. Layout::

    <bucket>/<prefix>/
      <host key>/
        _seen.json                 last contact of a read-write client of this host key
        <engine name>/
          engine                   the engine bytes
          manifest.json            what it was built from (same document as locally)
          sig                      signature over manifest + sidecar (when a key is set)
          sha256                   sha256sum line: the commit point, uploaded last
          lease                    a builder's claim while it builds (temporary)
"""

from __future__ import annotations

import errno
from typing import Any, Callable

from ..errors import ConfigError
from .config import RemoteConfig, check_endpoint_env

ENGINE, MANIFEST, SIDECAR, SIGNATURE, LEASE = "engine", "manifest.json", "sha256", "sig", "lease"
SEEN = "_seen.json"
ENTRY_OBJECTS = (ENGINE, MANIFEST, SIGNATURE, SIDECAR, LEASE)


class ConditionalWriteUnsupported(Exception):
    """The store cannot create-if-absent; leases fall back to best effort."""


class RemoteUnavailable(Exception):
    """A transport failure (network, server, credentials, timeout); ``__cause__`` is the original."""


class RemoteContentError(Exception):
    """An object that must not be used as stored (over a size limit, a link, not a regular file)."""


def _transport(exc: BaseException) -> RemoteUnavailable:
    text = str(exc).splitlines()[0] if str(exc) else ""
    error = RemoteUnavailable(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    error.__cause__ = exc
    return error


class RemoteStore:
    """One bucket prefix; every call is bounded by ``timeout`` seconds."""

    def __init__(self, fs: Any, root: str, *, is_async: bool, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self._is_async = is_async

    @classmethod
    def open(cls, config: RemoteConfig) -> "RemoteStore":
        """A store for ``config.url`` (connects lazily, on the first call)."""
        try:
            import fsspec
        except ImportError:
            raise ConfigError(
                f"{config.config_path}: field 'remote': the remote cache needs fsspec and s3fs; "
                "install provisioning[remote] or set remote.mode: off"
            ) from None
        if config.protocol == "file":
            from .localstore import LocalRemoteStore

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
        return cls(fs, config.url[len("s3://"):], is_async=True, url=config.url)

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
            raise _transport(exc) from exc

    def read_small(self, path: str, limit: int, timeout: float) -> bytes | None:
        """The bytes of a small object, None when absent; RemoteContentError above ``limit``."""
        try:
            data = self._call(self.fs.cat_file, path, start=0, end=limit + 1, **self._kw(timeout))
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise RemoteContentError(f"larger than {limit} bytes")
        return bytes(data)

    def read_small_info(self, path: str, limit: int, timeout: float) -> tuple[bytes, float | None] | None:
        """Like :meth:`read_small`, with the object's last-modified time (the server's clock)."""
        try:
            info = self._call(self.fs.info, path, **self._kw(timeout))
        except FileNotFoundError:
            return None
        data = self.read_small(path, limit, timeout)
        return None if data is None else (data, modified_epoch(info))

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

    def put_file(self, path: str, local: str, timeout: float) -> None:
        """Upload a local file (multipart for large ones, s3fs decides)."""
        self._call(self.fs.put_file, local, path, **self._kw(timeout))

    def create_exclusive(self, path: str, data: bytes, timeout: float) -> bool:
        """Create an object only if absent (``If-None-Match: *``); False when it exists."""
        try:
            self.fs.pipe_file(path, data, mode="create", **self._kw(timeout))
        except FileExistsError:
            return False
        except Exception as exc:
            if (isinstance(exc, OSError) and exc.errno == errno.EINVAL) or "NotImplemented" in str(exc):
                raise ConditionalWriteUnsupported(str(exc).splitlines()[0] if str(exc) else "") from None
            raise _transport(exc) from exc
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


def shown(value: object, cap: int = 64) -> str:
    """A remote-controlled string as logs show it: ascii() of at most ``cap`` characters.

    ascii() escapes newlines, carriage returns, ANSI escapes and non-ASCII look-alikes, so
    a crafted lease owner, key id or file name cannot forge a log line of its own.
    """
    text = value if isinstance(value, str) else repr(value)
    return ascii(text[:cap]) + ("..." if len(text) > cap else "")
