"""What one run of the remote cache shares: warnings given once, the wait budget, a dead endpoint.

A "run" is one process and one config. doit makes a RemoteCache per task, so the
start-up warnings, the wait budget (``wait_s``) and a transport failure's verdict (the
remote is off) live here, per process, and every RemoteCache of that run shares them:
a dead endpoint costs ``timeout_s`` once per ``doit engines`` run, not once per backbone
that misses. ``doit -n N`` runs tasks in N worker processes: each pays once. A process
that lives longer than :data:`RETRY_AFTER_S` after the failure (a server resolving
engines now and then) tries the remote again.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from .config import RemoteConfig

__all__ = ["RETRY_AFTER_S", "RunState", "run_state"]

RETRY_AFTER_S = 3600.0  # a run's "remote off" verdict holds this long (a whole doit run, in practice)


@dataclass
class RunState:
    """What one run shares across its RemoteCache objects: warnings given, wait budget left, remote off."""

    wait_left_s: float
    warned: set[str] = field(default_factory=set)
    unavailable: str | None = None  # why the remote is off for this run (a transport failure)
    unavailable_since: float = 0.0  # time.monotonic() of that failure

    def turn_off(self, reason: str) -> None:
        """A transport failure: the remote is off for the rest of the run, for every RemoteCache of it."""
        with _RUN_LOCK:
            self.unavailable, self.unavailable_since = reason, time.monotonic()

    def off_reason(self) -> str | None:
        """Why the remote is off for this run; None while it is on (or the verdict is over RETRY_AFTER_S old)."""
        with _RUN_LOCK:
            if self.unavailable is not None and time.monotonic() - self.unavailable_since > RETRY_AFTER_S:
                self.unavailable = None
            return self.unavailable

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
