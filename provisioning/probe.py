"""Probing this host: which backend version is installed, which GPU is visible, which CPU ISA.

Above the backends (a TensorRT install without package metadata is asked for its version
through the one module that imports TensorRT) and below the composition root, which probes
once per run. The records it returns live in :mod:`provisioning.host`.
"""

from __future__ import annotations

import platform

from .errors import BackendUnavailableError, HostProbeError, NoGpuError
from .gpu import probe_visible_gpu
from .host import (ORT_DISTRIBUTIONS, RTX_DISTRIBUTIONS, TRT_DISTRIBUTIONS, GpuInfo, HostCapabilities,
                   installed_version, read_cpu_flags)

__all__ = ["probe_host", "tensorrt_library_version"]


def tensorrt_library_version(module: str = "tensorrt") -> str:
    """TensorRT's (``tensorrt``) or TensorRT-RTX's (``tensorrt_rtx``) full version, from package metadata.

    Only a tarball or distribution-package install without metadata makes this import the
    module (through the backend, the one place that imports TensorRT). At build and load
    time the module's own ``__version__`` is the authority (the backend compares them).
    """
    version = installed_version(RTX_DISTRIBUTIONS if module == "tensorrt_rtx" else TRT_DISTRIBUTIONS)
    if version is not None:
        return version
    from .backends.tensorrt import import_tensorrt

    return str(import_tensorrt(module).__version__)



def probe_host(backend: str) -> HostCapabilities:
    """Probe this host for ``backend`` ('onnxruntime', 'tensorrt', 'tensorrt-rtx'); milliseconds, no heavy imports."""
    machine = platform.machine() or "unknown"
    if backend == "onnxruntime":
        version = installed_version(ORT_DISTRIBUTIONS)
        if version is None:
            raise BackendUnavailableError(
                "ONNX Runtime is not installed; install it with: pip install onnxruntime"
            )
        return HostCapabilities("onnxruntime", version, machine, read_cpu_flags())
    if backend == "tensorrt":
        gpu = probe_visible_gpu()  # first: without a GPU, "install TensorRT" would be the wrong advice
        version = tensorrt_library_version("tensorrt")
        return HostCapabilities("tensorrt", version, machine, read_cpu_flags(), gpu)
    if backend == "tensorrt-rtx":
        import logging

        version = tensorrt_library_version("tensorrt_rtx")  # RTX builds without a GPU: the version comes first
        try:
            gpu: GpuInfo | None = probe_visible_gpu()
        except NoGpuError:
            gpu = None  # ahead-of-time build for the listed targets
        except HostProbeError as exc:  # e.g. a MIG GPU without an instance selected: build ahead of time
            logging.getLogger("provisioning.host").warning(
                "the GPU is not used for TensorRT-RTX (%s); building for the listed targets only", exc)
            gpu = None
        return HostCapabilities("tensorrt-rtx", version, machine, read_cpu_flags(), gpu)
    raise HostProbeError(f"unknown backend {backend!r}; use onnxruntime, tensorrt or tensorrt-rtx")
