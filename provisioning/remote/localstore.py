"""A ``file://`` remote (a shared mount) that never follows a link below its root.

fsspec's local file system follows symlinks, so a link planted at ``<host key>/_seen.json``
or at an upload path would make a builder overwrite a file outside the mount, and a FIFO
planted as a sidecar would hang every host that opens it. Here every component below the
root is opened with ``O_NOFOLLOW`` relative to its parent's descriptor, objects are read
only when ``fstat`` says they are regular files (opened ``O_NONBLOCK``, so a FIFO cannot
block), and every write goes to a fresh temporary file that is renamed (or hard-linked,
for a conditional create) into place: a rename replaces a planted link instead of
following it. The root itself is the operator's choice and may be a link (a mount point).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from typing import Any, Iterator

from ..sidecar import open_nofollow, write_all
from .errors import ConditionalWriteUnsupported, LocalWriteError, RemoteContentError, RemoteUnavailable
from .objectstore import ObjectStore
from .ordered_hasher import OrderedHasher
from .stall import run_in_worker

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK
_READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK
_NOT_FOLLOWED = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)  # EMLINK: FreeBSD's O_NOFOLLOW on a link
_NO_LINK = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV)
# a folder where an object belongs (rename over it, unlink it): bad content, removed and replaced
_IN_THE_WAY = (errno.EISDIR, errno.ENOTEMPTY, errno.ENOTDIR, errno.EPERM)
_CHUNK = 4 << 20


class LocalRemoteStore(ObjectStore):
    """The store calls on a local or mounted folder, link- and FIFO-safe."""

    def __init__(self, root: str, *, url: str) -> None:
        super().__init__(root, url=url)

    # -- path walking ------------------------------------------------------------------
    def _parts(self, path: str) -> list[str]:
        prefix = self.root + "/"
        parts = path[len(prefix):].split("/") if path.startswith(prefix) else []
        if not parts or any(p in ("", ".", "..") for p in parts):
            raise RemoteContentError(f"{path!r} is not an object below the remote root")
        return parts

    @contextmanager
    def _folder(self, parts: list[str], create: bool) -> Iterator[int]:
        """A descriptor of ``root/parts``; FileNotFoundError when absent (and not ``create``).

        With ``create`` a component that is a link, file or FIFO is removed (unlink never
        follows) and made a real folder: that is how a writable host repairs a planted link.
        """
        if create:
            os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            for name in parts:
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    child = self._make_folder(fd, name)
                except OSError as exc:
                    if exc.errno not in _NOT_FOLLOWED:
                        raise
                    if not create:
                        raise RemoteContentError(f"{name!r} is a link or not a folder; not followed") from None
                    os.unlink(name, dir_fd=fd)
                    child = self._make_folder(fd, name)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _make_folder(parent: int, name: str) -> int:
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        return os.open(name, _DIR_FLAGS, dir_fd=parent)

    @contextmanager
    def _reading(self, path: str) -> Iterator[int | None]:
        """A descriptor of a regular file, None when absent; RemoteContentError for anything else."""
        parts = self._parts(path)
        try:
            with self._folder(parts[:-1], create=False) as folder:
                try:
                    fd = os.open(parts[-1], _READ_FLAGS, dir_fd=folder)
                except FileNotFoundError:
                    fd = None
                except OSError as exc:
                    if exc.errno in _NOT_FOLLOWED:
                        raise RemoteContentError("is a symlink; not followed") from None
                    raise
        except FileNotFoundError:
            fd = None
        except OSError as exc:
            raise _unavailable(exc) from exc
        if fd is None:
            yield None
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RemoteContentError("is not a regular file (a FIFO, device or folder); not read")
            yield fd
        finally:
            os.close(fd)

    def _write(self, path: str, fill, *, exclusive: bool) -> bool:
        """Write a temporary file via ``fill(fd)`` and rename (or link, if ``exclusive``) it into place."""
        parts = self._parts(path)
        try:
            with self._folder(parts[:-1], create=True) as folder:
                tmp = f".{parts[-1]}.{os.getpid()}.{secrets.token_hex(4)}.incomplete"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o644,
                             dir_fd=folder)
                try:
                    try:
                        fill(fd)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    if not exclusive:
                        try:
                            os.rename(tmp, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
                        except OSError as exc:
                            if exc.errno not in _IN_THE_WAY or not _remove_folder(folder, parts[-1]):
                                raise
                            os.rename(tmp, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
                        return True
                    try:  # link() fails if anything (a link included) is there: create-if-absent
                        os.link(tmp, parts[-1], src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                    except FileExistsError:
                        return False
                    except OSError as exc:
                        if exc.errno in _NO_LINK:
                            raise ConditionalWriteUnsupported(f"hard links refused ({exc.strerror})") from None
                        raise
                    return True
                finally:
                    try:
                        os.unlink(tmp, dir_fd=folder)
                    except FileNotFoundError:
                        pass
        except (RemoteContentError, ConditionalWriteUnsupported):
            raise
        except OSError as exc:
            raise _unavailable(exc) from exc

    # -- the ObjectStore calls --------------------------------------------------------
    # Each runs in a daemon worker thread (stall.run_in_worker): a hung mount blocks
    # the worker, and the caller gets RemoteUnavailable (TimeoutError cause) after
    # ``timeout`` seconds without progress. Copies tick per chunk, so only a stall counts.
    def _bounded(self, fn, timeout: float, what: str):
        return run_in_worker(fn, max(0.1, timeout), what)

    def read_small_tagged(self, path: str, limit: int,
                          timeout: float) -> tuple[bytes, float | None, str | None] | None:
        """(data, mtime, tag); the tag is :func:`file_tag` of the file as read."""
        return self._bounded(lambda ticker: self._read_small_now(path, limit, ticker), timeout, "read")

    def _read_small_now(self, path: str, limit: int, ticker) -> tuple[bytes, float | None, str] | None:
        with self._reading(path) as fd:
            if fd is None:
                return None
            st = os.fstat(fd)
            if st.st_size > limit:
                raise RemoteContentError(f"larger than {limit} bytes")
            chunks, total = [], 0
            while total <= limit:
                chunk = _read(fd, limit + 1 - total)
                ticker.tick()
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > limit:
                raise RemoteContentError(f"larger than {limit} bytes")
            return b"".join(chunks), st.st_mtime, file_tag(st)

    def download(self, path: str, fd: int, size: int, sha256_hex: str, stall_s: float, *,
                 progress=None) -> None:
        """The ObjectStore.download contract on a mount: sequential reads, hashed as they go.

        The worker writes through its own duplicate of ``fd``, so an abandoned worker (a
        hung mount) can never write into a descriptor number the caller has reused.
        ``progress`` is called from the worker thread.
        """
        own = os.dup(fd)
        try:
            sink = OrderedHasher(own, size, progress)
        except BaseException:
            os.close(own)
            raise

        def copy(ticker) -> None:
            try:
                with self._reading(path) as src:
                    if src is None:
                        raise FileNotFoundError(path)
                    actual = os.fstat(src).st_size
                    if actual != size:
                        raise RemoteContentError(f"is {actual} bytes, expected {size}")
                    offset = 0
                    while offset < size:
                        chunk = _pread(src, min(_CHUNK, size - offset), offset)
                        ticker.tick()
                        if ticker.abandoned:
                            return  # the caller gave up (a stall): write nothing more
                        if not chunk:
                            raise RemoteContentError(f"is shorter than the expected {size} bytes (ended at {offset})")
                        sink.add(offset, chunk)
                        offset += len(chunk)
                    if _pread(src, 1, size):
                        raise RemoteContentError(f"is longer than the expected {size} bytes")
            finally:
                os.close(own)

        try:
            self._bounded(copy, stall_s, "download")
        except LocalWriteError as exc:
            raise exc.error from None
        sink.finish(sha256_hex)

    def size(self, path: str, timeout: float) -> int | None:
        def now(ticker) -> int | None:
            with self._reading(path) as fd:
                return None if fd is None else os.fstat(fd).st_size

        return self._bounded(now, timeout, "size")

    def read_range(self, path: str, start: int, end: int, timeout: float) -> bytes:
        def now(ticker) -> bytes:
            with self._reading(path) as fd:
                if fd is None:
                    raise RemoteContentError("vanished while being read")
                return _pread(fd, end - start, start)

        return self._bounded(now, timeout, "read")

    def put_bytes(self, path: str, data: bytes, timeout: float) -> None:
        self._bounded(lambda ticker: self._write(path, lambda fd: write_all(fd, memoryview(data)), exclusive=False),
                      timeout, "write")

    def _copy_from(self, local: str, ticker):
        def copy(fd: int) -> None:
            src = open_nofollow(local)
            try:
                while chunk := os.read(src, _CHUNK):
                    write_all(fd, memoryview(chunk))
                    ticker.tick()
            finally:
                os.close(src)

        return copy

    def put_file(self, path: str, local: str, timeout: float) -> None:
        self._bounded(lambda ticker: self._write(path, self._copy_from(local, ticker), exclusive=False),
                      timeout, "upload")

    def put_file_exclusive(self, path: str, local: str, timeout: float) -> bool:
        """Copy to a temporary file, then hard-link it into place: False if anything is there."""
        return self._bounded(lambda ticker: self._write(path, self._copy_from(local, ticker), exclusive=True),
                             timeout, "upload")

    def create_exclusive(self, path: str, data: bytes, timeout: float) -> bool:
        return self._bounded(
            lambda ticker: self._write(path, lambda fd: write_all(fd, memoryview(data)), exclusive=True),
            timeout, "write")

    def delete(self, paths: list[str], timeout: float) -> None:
        def now(ticker) -> None:
            for path in paths:
                parts = self._parts(path)
                try:
                    with self._folder(parts[:-1], create=False) as folder:
                        try:
                            os.unlink(parts[-1], dir_fd=folder)  # removes a link itself, never its target
                        except OSError as exc:  # a folder where an object belongs: removed too
                            if exc.errno not in _IN_THE_WAY or not _remove_folder(folder, parts[-1]):
                                raise
                except (FileNotFoundError, RemoteContentError):
                    pass  # absent, or under a link: nothing of ours to delete
                except OSError as exc:
                    raise _unavailable(exc) from exc
                ticker.tick()

        self._bounded(now, timeout, "delete")

    def delete_if_match(self, path: str, etag: str, timeout: float) -> bool:
        """Unlink ``path`` only if :func:`file_tag` of it (lstat) is still ``etag``.

        Not atomic: a POSIX file system has no compare-and-unlink, so a file renamed into
        place between the check and the unlink (microseconds) is removed instead. False
        when absent, changed, or below a link.
        """
        def now(ticker) -> bool:
            parts = self._parts(path)
            try:
                with self._folder(parts[:-1], create=False) as folder:
                    st = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
                    if file_tag(st) != etag:
                        return False
                    os.unlink(parts[-1], dir_fd=folder)
                    return True
            except (FileNotFoundError, RemoteContentError):
                return False
            except OSError as exc:
                raise _unavailable(exc) from exc

        return self._bounded(now, timeout, "delete")

    def list_dir(self, path: str, timeout: float) -> list[dict[str, Any]]:
        """Entries directly under ``path`` (lstat: a link is listed, never followed)."""
        return self._bounded(lambda ticker: self._list_dir_now(path), timeout, "list")

    def _list_dir_now(self, path: str) -> list[dict[str, Any]]:
        parts = self._parts(path) if path.rstrip("/") != self.root else []
        try:
            with self._folder(parts, create=False) as folder:
                names = os.listdir(folder)
                rows = []
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
                    rows.append({"name": f"{path.rstrip('/')}/{name}", "size": st.st_size, "mtime": st.st_mtime,
                                 "type": kind})
                return rows
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _unavailable(exc) from exc

    def find(self, path: str, timeout: float) -> dict[str, dict[str, Any]]:
        """Every entry under ``path`` (links listed, never descended), with lstat's size and mtime."""
        def now(ticker) -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            for folder, dirs, files in os.walk(path, followlinks=False):
                ticker.tick()  # a listing that keeps finding folders is progressing
                for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                    full = os.path.join(folder, name)
                    try:
                        st = os.lstat(full)
                    except FileNotFoundError:
                        continue
                    found[full] = {"name": full, "size": st.st_size, "mtime": st.st_mtime,
                                   "type": "file" if stat.S_ISREG(st.st_mode) else "other"}
            return found

        return self._bounded(now, timeout, "list")


def _remove_folder(parent: int, name: str) -> bool:
    """Remove the folder ``name`` below ``parent`` with everything in it; False when it is not a folder.

    A folder where an object belongs is bad content (a careless copy, an attacker): it is
    deleted so that the object can be written, without following any link inside it
    (shutil.rmtree with ``dir_fd`` walks by descriptors and unlinks links themselves).
    """
    try:
        if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            return False
    except FileNotFoundError:
        return True
    shutil.rmtree(name, dir_fd=parent)
    return True


def file_tag(st: os.stat_result) -> str:
    """A file's ETag stand-in: device, inode, mtime (ns) and size; a rewrite or rename-over changes it."""
    return f'"{st.st_dev:x}-{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _read(fd: int, n: int) -> bytes:
    try:
        return os.read(fd, n)
    except OSError as exc:
        raise _unavailable(exc) from exc


def _pread(fd: int, n: int, offset: int) -> bytes:
    try:
        return os.pread(fd, n, offset)
    except OSError as exc:
        raise _unavailable(exc) from exc


def _unavailable(exc: OSError) -> RemoteUnavailable:
    error = RemoteUnavailable(f"{type(exc).__name__}: {exc.strerror or exc}")
    error.__cause__ = exc
    return error
