"""The GPU side of the host probe: NVML (``nvidia-ml-py``) and the TensorRT version.

Never imports TensorRT when its package metadata is present; NVML is a small C library
reached through ``pynvml``. ``CUDA_VISIBLE_DEVICES`` is honoured: the GPU described is
the one CUDA will use (the first visible), not NVML's index 0.
"""

from __future__ import annotations

import os

from .errors import NoGpuError
from .host import TRT_DISTRIBUTIONS, GpuInfo, installed_version

NO_GPU_HINT = (
    "run the engine build on a GPU host (for a container: a build stage on a GPU runner, "
    "or `doit engines` at container start with the cache folder on a mounted volume), "
    "or set backend: onnxruntime"
)


def tensorrt_version() -> str:
    """TensorRT's full version from package metadata (import only as a last resort)."""
    version = installed_version(TRT_DISTRIBUTIONS)
    if version is not None:
        return version
    # A tarball or distribution-package install has no package metadata: ask the module
    # itself, through the backend (the one place that imports tensorrt).
    from .backends.tensorrt import import_tensorrt

    return str(import_tensorrt().__version__)


def _visible_selector() -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES entries, or None when unset (all devices visible)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            break
        if item.lstrip("-").isdigit() and int(item) < 0:
            break  # CUDA stops enumerating at the first invalid index
        entries.append(item)
    return entries


def probe_visible_gpu() -> GpuInfo:
    """Describe the GPU CUDA will use; :class:`NoGpuError` when there is none."""
    selector = _visible_selector()
    if selector == []:
        raise NoGpuError(f"no GPU: CUDA_VISIBLE_DEVICES is empty; {NO_GPU_HINT}")
    try:
        import pynvml
    except ImportError:
        raise NoGpuError(f"no GPU: nvidia-ml-py (pynvml) is not installed; {NO_GPU_HINT}") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise NoGpuError(f"no GPU: NVML is unavailable ({exc}); {NO_GPU_HINT}") from None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise NoGpuError(f"no GPU: NVML sees no device; {NO_GPU_HINT}")
        index = _resolve_index(pynvml, count, selector)
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(pynvml.nvmlDeviceGetName(handle))
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        return GpuInfo(name, uuid, (int(major), int(minor)), driver, index)
    except NoGpuError:
        raise
    except Exception as exc:
        raise NoGpuError(f"no usable GPU: NVML query failed ({exc}); {NO_GPU_HINT}") from None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _resolve_index(pynvml, count: int, selector: list[str] | None) -> int:
    if selector is None:
        return 0
    first = selector[0]
    if first.isdigit():
        index = int(first)
        if index >= count:
            raise NoGpuError(
                f"no GPU: CUDA_VISIBLE_DEVICES names device {index} but only {count} exist; {NO_GPU_HINT}"
            )
        return index
    wanted = first.lower()
    for index in range(count):
        uuid = _text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))).lower()
        if uuid.startswith(wanted) or uuid.startswith("gpu-" + wanted.removeprefix("gpu-")):
            return index
    raise NoGpuError(f"no GPU: CUDA_VISIBLE_DEVICES names {first!r}, which NVML does not list; {NO_GPU_HINT}")


def gpu_visible() -> bool:
    """True when a CUDA GPU is visible (used by ``backend: auto``)."""
    try:
        probe_visible_gpu()
    except NoGpuError:
        return False
    return True


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
