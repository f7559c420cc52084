"""Field validation for the corpus configuration: one checker per kind of field.

Each checker takes the raw YAML value and a :class:`Where` (the file, and optionally the
backbone and the field) and returns the value in its checked form, or raises one
:class:`~provisioning.errors.ConfigError` line naming all three. Values echoed in a message
are cut short by :func:`shown`. The corpus-level structure that calls these lives in
:mod:`provisioning.config`.
"""

from __future__ import annotations

import math
import os
import reprlib
from pathlib import Path
from typing import Any

from .errors import ConfigError

MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**34

# Values echoed in error messages are cut short: a YAML alias bomb expands to billions of
# elements, and a full repr() of it would take the memory and the screen.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 1, 6, 4, 60, 60


def shown(value: Any) -> str:
    """A bounded repr of a user's value for an error message."""
    return _SHORT.repr(value)


def names(keys: Any) -> str:
    """At most five key names, each bounded, for an 'unknown key(s)' message."""
    listed = sorted(_SHORT.repr(k) if not isinstance(k, str) else _SHORT.repr(k)[1:-1] for k in keys)
    more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
    return ", ".join(listed[:5]) + more


class Where:
    """Builds the 'file: backbone: field' prefix of an error message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, message: str, *, backbone: str | None = None, key: str | None = None) -> ConfigError:
        parts = [str(self.path)]
        if backbone is not None:
            parts.append(f"backbone {backbone}")
        if key is not None:
            parts.append(f"field '{key}'")
        return ConfigError(": ".join(parts) + ": " + " ".join(message.split()))


def dims_field(raw: Any, where: Where, name: str, key: str) -> tuple[int, ...]:
    """A shape: a non-empty list of positive integers, with a bounded element count."""
    if not isinstance(raw, list) or not raw:
        raise where.error("must be a non-empty list of positive integers", backbone=name, key=key)
    for dim in raw:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise where.error(f"dimension {shown(dim)} is not an integer", backbone=name, key=key)
        if dim <= 0:
            raise where.error(f"dimension {dim} must be positive", backbone=name, key=key)
        if dim > MAX_DIM:
            raise where.error(f"dimension {dim} is larger than {MAX_DIM}", backbone=name, key=key)
    if math.prod(raw) > MAX_ELEMENTS:
        raise where.error(
            f"shape {shown(raw)} has {math.prod(raw)} elements, more than any engine can take ({MAX_ELEMENTS})",
            backbone=name, key=key,
        )
    return tuple(raw)


def choice(raw: Any, allowed: tuple[str, ...], where: Where, *, backbone: str | None = None, key: str) -> str:
    """One of ``allowed``, spelled exactly."""
    if not isinstance(raw, str) or raw not in allowed:
        raise where.error(f"unknown value {shown(raw)}; use one of {', '.join(allowed)}", backbone=backbone, key=key)
    return raw


def int_field(raw: Any, where: Where, *, key: str) -> int:
    """A positive whole number of MiB, no larger than any GPU memory."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise where.error(f"must be a whole number of MiB, got {shown(raw)}", key=key)
    if raw <= 0:
        raise where.error(f"must be positive, got {raw}", key=key)
    if raw > 2**30:
        raise where.error(f"{raw} MiB is larger than any GPU memory", key=key)
    return raw


def bool_field(raw: Any, where: Where, name: str, key: str) -> bool:
    """``true`` or ``false`` (no 0/1, no strings)."""
    if not isinstance(raw, bool):
        raise where.error(f"must be true or false, got {shown(raw)}", backbone=name, key=key)
    return raw


def path_field(raw: Any, base: Path, where: Where, *, backbone: str | None = None, key: str) -> Path:
    """A path string, ``~`` expanded and made absolute against ``base`` (the config's folder)."""
    if not isinstance(raw, str) or not raw.strip():
        raise where.error(f"must be a non-empty path string, got {shown(raw)}", backbone=backbone, key=key)
    if "\x00" in raw:
        raise where.error("contains a NUL byte", backbone=backbone, key=key)
    expanded = os.path.expanduser(raw)
    return Path(os.path.normpath(os.path.join(base, expanded)))


def nested_shape(value: Any) -> tuple[int, ...] | None:
    """The shape of a scalar or a rectangular nested list of numbers (None when it is neither)."""
    if isinstance(value, (bool, int, float)):
        return ()
    if not isinstance(value, list) or not value:
        return None
    shapes = {nested_shape(item) for item in value}
    if len(shapes) != 1 or None in shapes:
        return None
    return (len(value), *shapes.pop())
