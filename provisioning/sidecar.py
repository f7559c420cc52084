"""SHA-256 sidecars and the atomic publish protocol for one file.

A published engine is ``NAME`` plus ``NAME.sha256`` in ``sha256sum`` format, so
``sha256sum -c NAME.sha256`` works from the cache folder. The engine is written to a
process-unique temporary file in the same folder, fsynced and renamed into place; an
optional ``before_commit`` step (the manifest) follows; the sidecar is written last, the
same way, and is the commit point. A file without a sidecar that matches it is absent.
No path here is ever followed through a symlink, and no read blocks on a FIFO.
Lock files have their own module, :mod:`provisioning.locks`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Union

from .errors import UnsafePathError
from .interrupt import deferred as deferred_interrupts
from .tempnames import TEMP_SUFFIX, is_temp_name, temp_owner_pid, temp_path_for  # noqa: F401 (re-exported)

CHUNK_BYTES = 4 * 1024 * 1024  # large reads: hashing runs at the CPU's SHA speed
SIDECAR_SUFFIX = ".sha256"
_SIDECAR_RE = re.compile(r"([0-9a-f]{64}) [ *](.+)\n?")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

Payload = Union[bytes, bytearray, memoryview, Path]


def hash_fd(fd: int, chunk_guard: ContextManager[object] | None = None) -> tuple[str, int]:
    """SHA-256 and length of everything readable from ``fd`` (streamed, no whole-file read).

    ``chunk_guard`` is entered around each read-and-hash step; a verifier uses it to hold
    its hashing threads between chunks while the process forks, or to stop them early.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)  # one buffer, filled in place: no copy per chunk
    view = memoryview(buffer)
    guard = chunk_guard if chunk_guard is not None else contextlib.nullcontext()
    total = 0
    while True:
        with guard:
            n = os.readv(fd, [buffer])
            if n:
                digest.update(view[:n])  # releases the GIL: other threads hash meanwhile
        if not n:
            break
        total += n
    return digest.hexdigest(), total


def hash_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a regular file, refusing symlinks."""
    fd = open_nofollow(path)
    try:
        return hash_fd(fd)[0]
    finally:
        os.close(fd)


def open_nofollow(path: str | os.PathLike[str]) -> int:
    """Open a regular file read-only, never through a symlink at its last component, never blocking.

    The open is non-blocking, so a FIFO (or a device) planted where a file belongs returns at
    once instead of waiting forever for a writer; anything but a regular file is refused
    (``OSError`` EISDIR, "not a regular file"); then O_NONBLOCK is cleared for ordinary reads.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_regular_or_gone(path: str | os.PathLike[str]) -> bool:
    """False only for something that exists and is neither a regular file nor a symlink (a FIFO, a device)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return True
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


def stat_signature(st: os.stat_result) -> list[int]:
    """What changes when a file's bytes may have changed: size, mtime, ctime, inode, device.

    ctime cannot be set from user space, so a write that restores the old mtime still shows.
    A list, so that it compares equal to its own JSON round trip.
    """
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: memoryview) -> None:
    """Write every byte of ``data`` (os.write may write less than asked)."""
    while data:
        written = os.write(fd, data)
        data = data[written:]


def write_temp(dest: Path, payload: Payload, *, move: bool = False) -> tuple[Path, str, int]:
    """Write ``payload`` to a fresh temporary file beside ``dest``, fsynced.

    Returns the temporary path, the SHA-256 and the size. On any failure the temporary
    file is removed and the error propagates. With ``move=True`` a ``Path`` payload on the
    same file system is renamed to the temporary name and hashed there (no copy).
    """
    if move and isinstance(payload, Path):
        moved = _move_to_temp(dest, payload)
        if moved is not None:
            return moved
    fd, tmp = create_temp(dest)
    try:
        digest = hashlib.sha256()
        size = 0
        if isinstance(payload, Path):
            src = open_nofollow(payload)
            try:
                buffer = bytearray(CHUNK_BYTES)
                view = memoryview(buffer)
                while True:
                    n = os.readv(src, [buffer])
                    if not n:
                        break
                    digest.update(view[:n])
                    write_all(fd, view[:n])
                    size += n
            finally:
                os.close(src)
        else:
            view = memoryview(payload).cast("B")
            for start in range(0, len(view), CHUNK_BYTES):
                chunk = view[start : start + CHUNK_BYTES]
                digest.update(chunk)
                write_all(fd, chunk)
            size = len(view)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp, digest.hexdigest(), size


def _move_to_temp(dest: Path, source: Path) -> tuple[Path, str, int] | None:
    """Rename ``source`` to a temporary name beside ``dest``, then hash and fsync it there.

    None when the rename is impossible (another file system): the caller copies instead.
    rename() replaces a link planted at the random name instead of following it.
    """
    if os.path.islink(source):
        return None
    tmp = temp_path_for(dest)
    try:
        os.rename(source, tmp)
    except OSError:
        return None
    try:
        fd = open_nofollow(tmp)
        try:
            sha256, size = hash_fd(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp, sha256, size


def create_temp(dest: Path) -> tuple[int, Path]:
    """Create a fresh temporary file beside ``dest`` for writing: ``(fd, path)``.

    Never opens anything already there (O_EXCL, O_NOFOLLOW); the caller removes it.
    """
    for _ in range(4):
        tmp = temp_path_for(dest)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o644), tmp
        except FileExistsError:
            continue  # a random name already taken: a planted file or link; try another name
    what = "a symlink" if os.path.islink(tmp) else "a file"
    raise UnsafePathError(
        f"temporary path {tmp} already exists as {what} although its name is random (planted in the cache?); "
        "not followed; remove it"
    )


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Replace ``dest`` atomically with ``data`` (temp file, fsync, rename)."""
    tmp, _, _ = write_temp(dest, data)
    try:
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class SidecarRecord:
    """The content of a sidecar: the digest and the file name it vouches for."""

    sha256: str
    file_name: str


@dataclass(frozen=True)
class Verification:
    """The outcome of checking one engine against its sidecar, with the reason on failure."""

    ok: bool
    reason: str
    sha256: str | None = None
    size: int | None = None


class Sha256Sidecar:
    """Writes engines with their ``.sha256`` sidecar atomically, and verifies them."""

    suffix = SIDECAR_SUFFIX

    @staticmethod
    def path_for(engine_path: Path) -> Path:
        """Where the sidecar of ``engine_path`` lives."""
        return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)

    @staticmethod
    def format_line(sha256: str, file_name: str) -> str:
        """One ``sha256sum`` text-mode line."""
        return f"{sha256}  {file_name}\n"

    @classmethod
    def read(cls, engine_path: Path) -> SidecarRecord | None:
        """The sidecar's record, or None when it is missing, malformed or a symlink."""
        try:
            fd = open_nofollow(cls.path_for(engine_path))
        except OSError:
            return None
        try:
            raw = os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            match = _SIDECAR_RE.fullmatch(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return None
        return SidecarRecord(match.group(1), match.group(2)) if match else None

    @classmethod
    def write_atomic_and_sidecar(
        cls,
        engine_path: Path,
        payload: Payload,
        *,
        before_commit: Callable[[str, int], Mapping[Path, bytes] | None] | None = None,
        move: bool = False,
    ) -> tuple[str, int]:
        """Publish ``payload`` at ``engine_path``; return its SHA-256 and size.

        ``before_commit(sha256, size)`` returns the companion files (the manifest) to publish
        with the engine. ``move=True`` lets a ``Path`` payload on the same file system be
        renamed into the cache instead of copied (the caller gives it up). See
        :meth:`publish_prepared` for the order that makes every failure harmless.
        """
        engine_path = Path(engine_path)
        tmp, sha256, size = write_temp(engine_path, payload, move=move)
        try:
            companions = before_commit(sha256, size) if before_commit is not None else None
            cls.publish_prepared(engine_path, tmp, sha256, companions or {})
        finally:
            _unlink_quietly(tmp)
        return sha256, size

    @classmethod
    def publish_prepared(
        cls, engine_path: Path, tmp_engine: Path, sha256: str, companions: Mapping[Path, bytes]
    ) -> None:
        """Publish an fsynced, already hashed temporary engine with its companions and sidecar.

        Every byte is written before anything is renamed: the companions and the sidecar go
        to temporary files first, so a full disk or any write error leaves the previously
        published engine intact and verifying. Then the old sidecar is withdrawn, the engine,
        the companions and finally the sidecar (the commit point) are renamed into place.
        """
        staged: list[tuple[Path, Path]] = []
        try:
            for path, blob in companions.items():
                staged.append((write_temp(Path(path), blob)[0], Path(path)))
            sidecar = cls.path_for(engine_path)
            staged.append((write_temp(sidecar, cls.format_line(sha256, engine_path.name).encode())[0], sidecar))
            # SIGINT/SIGTERM wait for the last rename: between withdrawing the old sidecar and
            # writing the new one, stopping would leave no verifying engine at all
            with deferred_interrupts():
                _unlink_quietly(sidecar)  # the old engine is no longer vouched for from here
                os.replace(tmp_engine, engine_path)
                for tmp, path in staged:
                    os.replace(tmp, path)
            fsync_dir(engine_path.parent)
        finally:
            for tmp, _ in staged:
                _unlink_quietly(tmp)

    @classmethod
    def check(cls, engine_path: Path, chunk_guard: ContextManager[object] | None = None) -> Verification:
        """Verify ``engine_path`` against its sidecar, saying why when it does not verify.

        ``chunk_guard`` is handed to :func:`hash_fd` (see there).
        """
        record = cls.read(engine_path)
        sidecar = cls.path_for(engine_path)
        if record is None:
            if os.path.islink(sidecar):
                return Verification(False, f"sidecar {sidecar.name} is a symlink; not followed")
            if not os.path.lexists(sidecar):
                return Verification(False, "sidecar missing")
            if not is_regular_or_gone(sidecar):
                return Verification(False, f"sidecar {sidecar.name} is not a regular file (a FIFO?); not read")
            return Verification(False, "sidecar malformed")
        if record.file_name != engine_path.name:
            return Verification(False, f"sidecar names another file ({record.file_name})")
        try:
            fd = open_nofollow(engine_path)
        except FileNotFoundError:
            return Verification(False, "engine missing")
        except OSError as exc:
            if os.path.islink(engine_path):
                return Verification(False, "engine path is a symlink; not followed")
            return Verification(False, f"engine unreadable ({exc.strerror or exc})")
        try:
            sha256, size = hash_fd(fd, chunk_guard)
        finally:
            os.close(fd)
        if sha256 != record.sha256:
            return Verification(False, "engine bytes do not match the sidecar (corrupt or truncated)", sha256, size)
        return Verification(True, "verified", sha256, size)

    @classmethod
    def verify(cls, engine_path: Path) -> bool:
        """True when the engine exists, is a regular file and matches its sidecar."""
        return cls.check(Path(engine_path)).ok
