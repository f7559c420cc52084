"""Stall timeouts: a transfer fails after ``stall_s`` without a byte moving, not after a total.

A :class:`Ticker` records the last time a byte moved (received, sent, or read from
disk); :func:`watched` (a coroutine on s3fs's loop) and :func:`run_in_worker` (a daemon
thread, for ``file://``) stop waiting once it is older than ``stall_s``. So a multi-GB
engine over a slow link completes, while a dead or hung server fails within ``stall_s``.
A call that moves no bytes (a HEAD, a listing, an open on a hung mount) must complete
within ``stall_s``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

from .errors import RemoteUnavailable


class Ticker:
    """The last time a byte moved (time.monotonic), shared by a transfer's workers."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.abandoned = False  # set when the caller stopped waiting: a worker stops writing

    def tick(self) -> None:
        self.last = time.monotonic()


def stalled(what: str, stall_s: float) -> RemoteUnavailable:
    """The error of a transfer that made no progress for ``stall_s``."""
    cause = TimeoutError(f"no progress for {stall_s:g} s ({what})")
    error = RemoteUnavailable(f"TimeoutError: {cause}")
    error.__cause__ = cause
    return error


async def watched(factory: Callable[[], Any], stall_s: float, ticker: Ticker, what: str) -> Any:
    """Await ``factory()`` on the running loop; cancel it after ``stall_s`` without a tick."""
    task = asyncio.ensure_future(factory())
    try:
        while True:
            left = ticker.last + stall_s - time.monotonic()
            if left <= 0:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise stalled(what, stall_s)
            done, _ = await asyncio.wait({task}, timeout=left)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()


def run_in_worker(fn: Callable[[Ticker], Any], stall_s: float, what: str) -> Any:
    """Run ``fn(ticker)`` in a daemon thread; stop waiting after ``stall_s`` without a tick.

    For ``file://``: a hung mount blocks the worker in a system call, never the caller.
    An abandoned worker runs on (it cannot be interrupted) and its result is dropped; it
    must own every descriptor it uses (see LocalRemoteStore.download's dup).
    """
    ticker = Ticker()
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn(ticker)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=f"remote-file {what}", daemon=True).start()
    while not done.wait(max(0.005, ticker.last + stall_s - time.monotonic())):
        if time.monotonic() - ticker.last >= stall_s:
            ticker.abandoned = True
            raise stalled(what, stall_s)
    if "error" in box:
        raise box["error"]
    return box.get("value")
