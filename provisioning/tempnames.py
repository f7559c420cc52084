"""The names of temporary files: process-unique, recognisable, carrying their owner's pid (and whether it lives).

The lowest layer: both the atomic writes (:mod:`provisioning.sidecar`) and the interrupt
handling that sweeps a process's own leftovers (:mod:`provisioning.interrupt`) use them.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TEMP_SUFFIX = ".incomplete"


def temp_path_for(dest: Path) -> Path:
    """A process-unique temporary name beside ``dest``; recognisable by its suffix."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """True for names made by :func:`temp_path_for` (leftovers of an interrupted write)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def temp_owner_pid(name: str) -> int | None:
    """The pid recorded in a temporary file's name, or None."""
    parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this host (a temporary file's owner, a lock's holder).

    A pid read from a name or a record in the cache may be anything: none, zero, negative or
    too large for the kernel is no live process, never an error.
    """
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
