"""Stopping on SIGINT or SIGTERM: unwind, remove this process's partial files, one line, exit 128+N.

Left alone, Python turns SIGINT into a KeyboardInterrupt (doit prints its traceback) and
SIGTERM kills the process without running a single ``finally``, so a build's scratch folder
and ``.incomplete`` files stay behind. Under ``doit -n N`` that is the normal case: on
Ctrl-C doit's main process terminates every worker with SIGTERM at once (MRunner.run_tasks).

Here both signals raise :class:`Interrupted`, a :class:`SystemExit` whose code is 128 + the
signal number. Being a SystemExit, it passes through doit's runner (which catches
``Exception`` only), still lets doit save its database (``finally``), and ends the process
with 130 or 143 without a traceback; a doit worker hands it to the main process, which
re-creates it from ``str(exc)`` (the signal number) and stops the run with the same code.

- :func:`install`: doit's main process (from :func:`~provisioning.doit.tasks.engine_tasks`),
  so a signal while it waits for ``-n`` workers stops it cleanly; handlers an embedding
  program set are kept.
- :func:`guard`: around one build action, in whatever process runs it. The first signal
  raises; later ones are swallowed until the action has unwound, because a second Ctrl-C
  must not cut short the removal of the first one's partial files. In doit's main process, a
  second signal outside a build ends it at once (nothing of ours is half-written there).
- :func:`deferred`: around the renames that commit an engine, so a signal lands before the
  old sidecar is withdrawn or after the new one is in place, never between.
- Both start a thread that forwards a signal the kernel gave another thread to the main
  thread (as SIGURG, with an empty handler), so a blocking call there ends at once.

A handler runs only between Python steps: a build inside one long native call (a TensorRT
builder) stops when that call returns.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .tempnames import is_temp_name, temp_owner_pid

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_WAKE = signal.SIGURG  # ignored by default: a stray one does nothing anywhere

__all__ = ["Interrupted", "deferred", "guard", "install", "interrupt_of", "remove_own_temporaries"]


class Interrupted(SystemExit):
    """A stop request by signal: ``code`` is 128 + signum, ``str()`` the signum (doit re-creates it from that)."""

    def __init__(self, signum: int | str = signal.SIGINT) -> None:
        try:
            number = int(signum)
        except (TypeError, ValueError):  # re-created by doit from an unexpected text: treat as Ctrl-C
            number = int(signal.SIGINT)
        super().__init__(128 + number)
        self.signum = number

    def __str__(self) -> str:
        return str(self.signum)

    @property
    def signal_name(self) -> str:
        """``SIGINT``, ``SIGTERM``."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def error_class(self) -> str:
        """What the event records: ``KeyboardInterrupt`` for Ctrl-C (what Python calls it), else the signal."""
        return "KeyboardInterrupt" if self.signum == signal.SIGINT else self.signal_name


class _State:
    signum: int | None = None  # the signal this process is stopping for
    building = 0  # guard() depth: partial files of ours may exist
    deferring = 0  # deferred() depth: a commit is being renamed into place
    pending: int | None = None  # a signal that arrived while deferring
    forwarder_pid: int | None = None  # the process whose forwarder thread runs (threads do not survive fork)
    forwarder_fds: tuple[int, int] | None = None  # its pipe (read, write): the write end is the wakeup fd


_state = _State()


def _handle(signum: int, frame: Any) -> None:
    if _state.deferring:
        _state.pending = _state.pending or signum  # raised again when the commit is complete
        return
    if _state.signum is None:
        _state.signum = signum
        raise Interrupted(signum)
    if not _state.building and multiprocessing.parent_process() is None:
        os._exit(128 + signum)  # doit's main process, nothing of ours half-written: a second signal stops now
    # else: a build's cleanup runs to its end first; and a worker must not die now: it may hold the
    # lock of doit's result queue (while reporting its stop), and every other worker would wait on it


def _wake(signum: int, frame: Any) -> None:
    """Nothing: the wake signal's only job is to end the main thread's blocking call (EINTR)."""


def _forward(read_fd: int, main_thread: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 512)
        except OSError:
            return
        if not data:
            return
        if not any(byte in SIGNALS for byte in data):
            continue
        # Again until the handler ran (for 3 s at most): a wake that lands after the main thread
        # released the GIL but before its sleep began is lost like the signal itself.
        waited, delay = 0.0, 0.01
        while True:
            try:
                signal.pthread_kill(main_thread, _WAKE)
            except OSError:
                return
            if waited > 3:
                break
            time.sleep(delay)
            waited, delay = waited + delay, min(delay * 2, 0.5)
            if _state.signum is not None:
                break


def _ensure_forwarder() -> None:
    """Make sure a SIGINT or SIGTERM reaches the main thread, whichever thread the kernel chose.

    A signal sent to a process goes to any of its threads; when it is not the main thread
    (doit's queue feeder, the hasher, the heartbeat), the main thread's sleep, lock wait or
    pipe read is not interrupted, and Python runs the handler only when that call returns:
    minutes, or never. Python writes each handled signal's number to the wakeup fd; a thread
    reading it sends the main thread a wake signal with an empty handler, ending the call.
    """
    if _state.forwarder_pid == os.getpid():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        os.close(read_fd)
        os.close(write_fd)
        return
    inherited = _state.forwarder_fds  # a forked parent's pipe, read by no thread here
    if previous != -1 and (inherited is None or previous != inherited[1]):  # an event loop's: keep it
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    for fd in inherited or ():
        os.close(fd)
    _state.forwarder_fds, _state.forwarder_pid = (read_fd, write_fd), os.getpid()
    signal.signal(_WAKE, _wake)
    threading.Thread(target=_forward, args=(read_fd, threading.main_thread().ident), name="signal-forwarder",
                     daemon=True).start()


def _in_main_thread() -> bool:
    # signal.signal() works only there, and only the main thread ever runs the handler
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Handle SIGINT and SIGTERM in this process, where they still have Python's defaults."""
    if not _in_main_thread():
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    for signum in SIGNALS:
        if signal.getsignal(signum) is defaults[signum]:
            signal.signal(signum, _handle)
    _ensure_forwarder()


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` for the duration of one build.

    Signals ignored by whoever started us (SIG_IGN, as for background jobs) stay ignored.
    """
    if not _in_main_thread():  # doit -P thread: signals reach the main thread only
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _handle)
    _ensure_forwarder()
    _state.building += 1
    try:
        yield
    finally:
        _state.building -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the body runs; one that came meanwhile is raised after it."""
    if not _in_main_thread():
        yield
        return
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
        pending = _state.pending if not _state.deferring else None
        if pending is not None:
            _state.pending = None
            signal.raise_signal(pending)  # as if it arrived now: the handler raises at the next step


def interrupt_of(exc: BaseException) -> Interrupted | None:
    """``exc`` as an :class:`Interrupted` (a bare KeyboardInterrupt is SIGINT), or None for anything else."""
    if isinstance(exc, Interrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(signal.SIGINT)
    return None


def remove_own_temporaries(cache_dir: Path, engine_name: str) -> list[Path]:
    """Remove this process's leftovers of ``engine_name``: temporary files and scratch folders.

    The ``finally`` blocks of the compiler and the publish protocol remove them as the build
    unwinds; this sweep covers the instants between creating one and entering its ``try``.
    Only names carrying this process's pid are touched: another process's build of the same
    engine (waiting on the lock, or on another host sharing the folder) keeps its files.
    """
    removed: list[Path] = []
    prefix, pid = f".{engine_name}.", os.getpid()
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and is_temp_name(name) and temp_owner_pid(name) == pid):
            continue
        path = Path(cache_dir) / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError:
            continue  # engines-gc removes it once this process is gone
        removed.append(path)
    return removed
