"""Taking an engine's build lock, and saying so while another process holds it.

A build holds ``.locks/<engine>.lock`` (:func:`provisioning.cache.engine_lock`) through
:func:`build_lock`, which records the holder beside it, in ``.locks/<engine>.lock.holder``:
one JSON object with its pid, host name and start time. A process that finds the lock taken prints one line when its wait
starts, naming the holder and since when, then the usual heartbeat every ``heartbeat_s``
until the lock is free::

    waiting for det: another build holds its lock (pid 4242 on gpu-3, since 14:03:05 UTC, 2 s ago)
    building det: waiting for the build lock (pid 4242), 5 s elapsed

The record is a courtesy for that line, never a decision: the lock itself is the file
lock. It is written through a temporary file and a rename (a planted link at its name is
replaced, never followed), read without following links or blocking on a FIFO and capped
in size, and removed before the lock is released; one left by a killed build names a pid
that is gone, and is shown as "another process".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from filelock import Timeout

from .cache import lock_path_for
from .tempnames import process_alive, temp_path_for

log = logging.getLogger("provisioning.compiler")

HOLDER_SUFFIX = ".holder"
_MAX_RECORD = 4096
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def holder_path(engine_path: Path) -> Path:
    """Where the holder of ``engine_path``'s build lock records itself."""
    lock = lock_path_for(engine_path)
    return lock.with_name(lock.name + HOLDER_SUFFIX)


def write_holder(engine_path: Path) -> None:
    """Record this process as the lock's holder (best effort: the wait line is only a courtesy)."""
    path = holder_path(engine_path)
    record = {"pid": os.getpid(), "host": socket.gethostname()[:64], "since": time.time()}
    temp = temp_path_for(path)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644)
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def clear_holder(engine_path: Path) -> None:
    """Remove this process's record (before the lock is released)."""
    with contextlib.suppress(OSError):
        os.unlink(holder_path(engine_path))


def read_holder(engine_path: Path) -> dict[str, Any] | None:
    """The holder's record if it is a sane one from a live process on this host, else None."""
    try:
        fd = os.open(holder_path(engine_path), os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, _MAX_RECORD + 1)
        record = json.loads(data) if len(data) <= _MAX_RECORD else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(record, dict):
        return None
    pid, since, host = record.get("pid"), record.get("since"), record.get("host")
    if (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(since, (int, float))
            or isinstance(since, bool) or not isinstance(host, str)
            or not 0 < since < time.time() + 86400):  # a clock a day ahead, at most (and never NaN)
        return None
    if host == socket.gethostname()[:64] and not process_alive(pid):
        return None  # left by a build that was killed: the lock's holder is someone else
    return {"pid": pid, "since": float(since), "host": host}


def holder_text(holder: dict[str, Any] | None, now: float | None = None) -> str:
    """``pid 4242 on gpu-3, since 14:03:05 UTC, 2 s ago`` (or ``holder unknown``)."""
    if holder is None:
        return "holder unknown"
    now = time.time() if now is None else now
    since = datetime.fromtimestamp(holder["since"], timezone.utc).strftime("%H:%M:%S UTC")
    host = "".join(c if c.isprintable() and c.isascii() else "?" for c in holder["host"])
    return f"pid {holder['pid']} on {host}, since {since}, {max(0.0, now - holder['since']):.0f} s ago"


@contextlib.contextmanager
def build_lock(lock: Any, engine_path: Path, model_name: str, heartbeat_s: float = 5.0) -> Iterator[None]:
    """Hold ``lock`` (``engine_lock(engine_path)``); while another process holds it, one line, then a heartbeat."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _wait(lock, engine_path, model_name, heartbeat_s)
    try:
        write_holder(engine_path)
        yield
    finally:
        clear_holder(engine_path)
        lock.release()


def _wait(lock: Any, engine_path: Path, model_name: str, heartbeat_s: float) -> None:
    holder = read_holder(engine_path)
    log.info("waiting for %s: another build holds its lock (%s)", model_name, holder_text(holder),
             extra={"event": "lock_wait", "model_name": model_name,
                    "holder_pid": None if holder is None else holder["pid"]})
    if heartbeat_s <= 0:
        lock.acquire()
        return
    started = time.monotonic()
    detail = "" if holder is None else f" (pid {holder['pid']})"
    while True:
        try:
            lock.acquire(timeout=heartbeat_s)
            return
        except Timeout:
            elapsed = time.monotonic() - started
            log.info("building %s: waiting for the build lock%s, %.0f s elapsed", model_name, detail, elapsed,
                     extra={"event": "heartbeat", "model_name": model_name, "phase": "waiting for the build lock",
                            "elapsed_s": round(elapsed, 1)})
