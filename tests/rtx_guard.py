"""One guard for every test that needs the real ``tensorrt_rtx``: skip without it, fail under CI.

CI installs the tensorrt-rtx extra with the test extra, so under ``CI=true`` a module that
does not import is a broken install and each test that needs it fails (an error at setup),
never a skip that would leave the real-builder tests silently unrun. Elsewhere (a laptop
without the extra) those tests are skipped, saying how to install it.

Use the fixture (``from tests.rtx_guard import rtx_required`` and
``pytestmark = pytest.mark.usefixtures("rtx_required")``) or call :func:`require_rtx` inside
a test.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

INSTALL = "install it with pip install -e '.[test]' (the tensorrt-rtx extra)"


def in_ci() -> bool:
    """``CI`` is set to a true value (as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def import_rtx() -> tuple[Any, str | None]:
    """``(tensorrt_rtx, None)``, or ``(None, why it does not import)``."""
    try:
        return importlib.import_module("tensorrt_rtx"), None
    except Exception as exc:  # ImportError, or OSError from a missing libtensorrt_rtx
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def require_rtx() -> Any:
    """The real ``tensorrt_rtx``; skips the calling test without it, fails it under CI=true."""
    module, why = import_rtx()
    if module is None:
        message = f"tensorrt_rtx is not importable ({why}); {INSTALL}"
        if in_ci():
            pytest.fail(f"CI=true and {message}: the CI install is broken", pytrace=False)
        pytest.skip(message)
    return module


@pytest.fixture
def rtx_required() -> Any:
    """:func:`require_rtx` as a fixture."""
    return require_rtx()
