"""The kinds of remote failure, and how remote-controlled text appears in messages.

Failures come in kinds that call for opposite reactions: a :class:`RemoteUnavailable`
(network, server, credentials, timeout) turns the remote off for the run, while a
:class:`RemoteContentError` (an object too large, a link, not a regular file) only
condemns one entry, which is rebuilt and repaired. A :class:`LocalWriteError` is this
host's own disk failing, never the remote's fault.

Everything a bucket returns is attacker-controlled for a host that does not trust its
writers: :func:`shown` and :func:`summary` put it into one escaped, capped line.
"""

from __future__ import annotations


class ConditionalWriteUnsupported(Exception):
    """The store cannot create-if-absent; leases fall back to best effort."""


class RemoteUnavailable(Exception):
    """A transport failure (network, server, credentials, timeout); ``__cause__`` is the original."""


class RemoteContentError(Exception):
    """An object that must not be used as stored (over a size limit, a link, not a regular file)."""


class LocalWriteError(Exception):
    """Writing the destination failed; ``error`` is the OSError (not the remote's fault)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def transport(exc: BaseException) -> RemoteUnavailable:
    """``exc`` as a RemoteUnavailable: its type and first line, the original as ``__cause__``."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    error = RemoteUnavailable(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    error.__cause__ = exc
    return error


def shown(value: object, cap: int = 64) -> str:
    """A remote-controlled string as logs show it: ascii() of at most ``cap`` characters.

    ascii() escapes newlines, carriage returns, ANSI escapes and non-ASCII look-alikes, so
    a crafted lease owner, key id or file name cannot forge a log line of its own.
    """
    text = value if isinstance(value, str) else repr(value)
    return ascii(text[:cap]) + ("..." if len(text) > cap else "")


def summary(exc: BaseException, timeout_s: float | None = None) -> str:
    """One line about a failure; the server's own words are escaped (they are remote content)."""
    if isinstance(exc, RemoteUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, TimeoutError) and timeout_s is not None:  # fsspec's FSTimeoutError included
        return f"no progress for timeout_s {timeout_s:g} s"
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {printable(text[:200])}" if text else name


def printable(text: str) -> str:
    """``text`` unchanged when printable ASCII, else its ascii() escape without the quotes."""
    return text if text.isprintable() and text.isascii() else ascii(text)[1:-1]
