"""Version numbers compared as numbers: the one rule for TensorRT, ONNX Runtime and driver releases."""

from __future__ import annotations

import re

__all__ = ["release_tuple"]

_LEADING_RELEASE = re.compile(r"\s*v?(\d+(?:\.\d+)*)")


def release_tuple(version: str) -> tuple[int, ...]:
    """The numeric release of ``version``: ``"10.16.1.11.post1"`` -> ``(10, 16, 1, 11)``.

    PEP 440 through ``packaging`` when it is installed and the text is valid, else the
    leading dotted numbers (a driver's ``"535.104.05"`` -> ``(535, 104, 5)``); the empty
    tuple when ``version`` does not start with a number.
    """
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        pass
    else:
        try:
            return tuple(Version(version).release)
        except InvalidVersion:
            pass
    match = _LEADING_RELEASE.match(version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()
