"""What one run of the remote cache shares: warnings given once, the wait budget left.

A "run" is one process and one config. doit makes a RemoteCache per task, so the
start-up warnings, the wait budget (``wait_s``) and a dead endpoint's verdict live here,
per process, and every RemoteCache of that run shares them.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from .config import RemoteConfig

__all__ = ["RunState", "run_state"]


@dataclass
class RunState:
    """What one run shares across its RemoteCache objects: warnings given, wait budget left."""

    wait_left_s: float
    warned: set[str] = field(default_factory=set)

    def once(self, kind: str) -> bool:
        """True the first time ``kind`` is asked for in this run."""
        with _RUN_LOCK:
            if kind in self.warned:
                return False
            self.warned.add(kind)
            return True


_RUN_LOCK = threading.Lock()
_RUNS: dict[tuple[int, str, str], RunState] = {}


def run_state(config: RemoteConfig) -> RunState:
    """This process's state for ``config`` (a forked doit worker starts its own)."""
    key = (os.getpid(), str(config.config_path), config.url)
    with _RUN_LOCK:
        return _RUNS.setdefault(key, RunState(config.wait_s))
