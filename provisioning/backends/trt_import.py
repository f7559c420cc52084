"""Importing TensorRT or TensorRT-RTX, and what the imported module offers before a build.

This is the only module that imports ``tensorrt`` or ``tensorrt_rtx``, and only inside
functions, so ``import provisioning`` and ``doit list`` work where neither is installed;
the other ``trt_*`` helpers get the imported module handed in. A module that does not
import (not installed, or a missing ``libnvinfer``) is one line saying how to install it.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from ..errors import BackendError, BackendUnavailableError
from ..host import sort_targets
from ..versions import release_tuple

log = logging.getLogger("provisioning.tensorrt")
_PLUGINS_READY: dict[Any, bool] = {}  # trt module -> what init_libnvinfer_plugins returned
_PLUGINS_LOCK = threading.Lock()
_INSTALL_HINTS = {
    "tensorrt": "install the tensorrt-cu12 or tensorrt-cu13 extra (matching the driver's CUDA major) "
                "from NVIDIA's package index (README, TensorRT)",
    "tensorrt_rtx": "install the tensorrt-rtx extra: pip install 'provisioning[tensorrt-rtx]'",
}


def import_tensorrt(module: str = "tensorrt") -> Any:
    """``import tensorrt`` (or ``tensorrt_rtx``), or BackendUnavailableError saying how to install it."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or OSError from a missing libnvinfer
        first = str(exc).splitlines()[0] if str(exc) else ""
        product = "TensorRT-RTX" if module == "tensorrt_rtx" else "TensorRT"
        raise BackendUnavailableError(
            f"{product} cannot be imported ({type(exc).__name__}: {first}); {_INSTALL_HINTS.get(module, '')}"
        ) from None


def compute_capability_targets(module: str = "tensorrt_rtx") -> tuple[str, ...]:
    """The compute capabilities the installed TensorRT-RTX can target, as sorted ``sm86`` tags."""
    trt = import_tensorrt(module)
    members = getattr(getattr(trt, "ComputeCapability", None), "__members__", {})
    return sort_targets(name.lower() for name in members if name.upper().startswith("SM"))


def check_imported_version(trt: Any, metadata_version: str, backend: str, product: str, where: str) -> None:
    """The imported module is the release its package metadata names (the version the cache key records)."""
    if release_tuple(str(trt.__version__)) != release_tuple(metadata_version):
        raise BackendError(
            f"{where}: the imported {product} is {trt.__version__} but its package metadata says "
            f"{metadata_version}; reinstall the {backend} extra so both agree"
        )


def init_plugins(trt: Any, logger: Any) -> bool:
    """Register TensorRT's plugins once per process, before parsing or deserializing.

    Plugin-backed ONNX ops (EfficientNMS, RoiAlign, ...) and plans with plugin layers
    need the registry filled first, as Polygraphy does.
    """
    with _PLUGINS_LOCK:
        if trt not in _PLUGINS_READY:
            try:
                _PLUGINS_READY[trt] = bool(trt.init_libnvinfer_plugins(logger, ""))
            except Exception as exc:  # noqa: BLE001 - a missing plugin library must not stop plain models
                log.warning("TensorRT plugins not registered (%s); models with plugin ops will not parse", exc)
                _PLUGINS_READY[trt] = False
        return _PLUGINS_READY[trt]
