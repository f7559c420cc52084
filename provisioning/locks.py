"""Lock files: the one way this package opens (:func:`safe_lock`) or probes (:func:`lock_held`) one.

Both refuse a symlink, a hard link or a FIFO at the lock's path, and a symlinked lock
folder, with one line saying to remove it: a planted link must never make a lock open,
create or truncate a file outside the cache (filelock 3.12 truncated one in a dry-run gc).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from filelock import FileLock

from .errors import UnsafePathError

__all__ = ["check_lock_path", "lock_held", "safe_lock"]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def check_lock_path(path: str | os.PathLike[str]) -> None:
    """UnsafePathError unless ``path`` is absent or a regular file with one link, in a folder that is no symlink.

    A symlink, a hard link (a second name of a file maybe outside the cache) or a FIFO is
    refused with one line saying to remove it; nothing is created here.
    """
    fd = _open_lock_probe(Path(path))
    if fd is not None:
        os.close(fd)


def _open_lock_probe(path: Path) -> int | None:
    """A read-only descriptor of an existing, safe lock file (None: absent); UnsafePathError otherwise."""
    if os.path.islink(path.parent):
        raise UnsafePathError(f"lock folder {path.parent} is a symlink (not followed; nothing in the cache creates "
                              "one); remove it")
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):  # no lock folder, or a file there (builds refuse that)
        return None
    except OSError:
        if os.path.islink(path):
            raise UnsafePathError(f"lock file {path} is a symlink (not followed; nothing in the cache creates one); "
                                  "remove it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"lock file {path} is not a regular file (a FIFO or a device; nothing in the cache "
                                  "creates one); not used; remove it")
        if st.st_nlink > 1:
            raise UnsafePathError(f"lock file {path} has {st.st_nlink} hard links (another name of a file that may "
                                  "live outside the cache; nothing in the cache creates one); not used; remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def safe_lock(path: str | os.PathLike[str], timeout: float = -1) -> FileLock:
    """The one way this package opens a lock file: a FileLock, after :func:`check_lock_path`.

    filelock itself opens the file with O_NOFOLLOW (the floor in pyproject.toml), so a link
    planted between the check and the open is refused by the open.
    """
    check_lock_path(path)
    return FileLock(os.fspath(path), timeout=timeout)


def lock_held(path: str | os.PathLike[str]) -> bool:
    """True when a live process holds the lock at ``path``; creates, truncates and follows nothing.

    Probes with a non-blocking flock on a read-only descriptor of the existing file (an
    absent file is not held); UnsafePathError as :func:`check_lock_path`.
    """
    fd = _open_lock_probe(Path(path))
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
