"""The GPU side of the host probe: NVML (``nvidia-ml-py``) and the TensorRT version.

Never imports TensorRT when its package metadata is present; NVML is a small C library
reached through ``pynvml``. ``CUDA_VISIBLE_DEVICES`` is honoured: the GPU described is
the one CUDA will use (the first visible), not NVML's index 0.

NVML numbers GPUs by PCI bus; CUDA numbers them fastest-first unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID``. The two agree when every GPU is the same model; on a
mixed host a numeric index is ambiguous, and since the GPU names the engine, the probe
refuses to guess (select by UUID or set the order). ``MIG-...`` selectors describe that
MIG instance (its own name and UUID: a slice has fewer SMs, so it gets its own engines).
"""

from __future__ import annotations

import os

from .errors import HostProbeError, NoGpuError
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
        if selector and selector[0].upper().startswith("MIG-"):
            return _mig_instance(pynvml, count, selector[0])
        index = _resolve_index(pynvml, count, selector)
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(pynvml.nvmlDeviceGetName(handle))
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        return GpuInfo(name, uuid, (int(major), int(minor)), driver, index)
    except (NoGpuError, HostProbeError):
        raise
    except Exception as exc:
        raise NoGpuError(f"no usable GPU: NVML query failed ({exc}); {NO_GPU_HINT}") from None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _resolve_index(pynvml, count: int, selector: list[str] | None) -> int:
    first = None if selector is None else selector[0]
    if first is None or first.isdigit():
        index = 0 if first is None else int(first)
        if index >= count:
            raise NoGpuError(
                f"no GPU: CUDA_VISIBLE_DEVICES names device {index} but only {count} exist; {NO_GPU_HINT}"
            )
        if count > 1 and os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") != "PCI_BUS_ID":
            names = {_text(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)}
            if len(names) > 1:
                raise HostProbeError(
                    f"this host has different GPUs ({', '.join(sorted(names))}) and CUDA numbers them "
                    "fastest-first while NVML numbers them by PCI bus, so device "
                    f"{index} is ambiguous; set CUDA_DEVICE_ORDER=PCI_BUS_ID or select the GPU by UUID "
                    "in CUDA_VISIBLE_DEVICES"
                )
        return index
    wanted = first.lower()
    for index in range(count):
        uuid = _text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))).lower()
        if uuid.startswith(wanted) or uuid.startswith("gpu-" + wanted.removeprefix("gpu-")):
            return index
    raise NoGpuError(f"no GPU: CUDA_VISIBLE_DEVICES names {first!r}, which NVML does not list; {NO_GPU_HINT}")


def _mig_instance(pynvml, count: int, wanted: str) -> GpuInfo:
    """The MIG instance a ``MIG-<uuid>`` selector names, with its parent's compute capability."""
    for index in range(count):
        parent = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(parent)
        except Exception:  # noqa: BLE001 - not MIG capable
            continue
        for slot in range(slots):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, slot)
            except Exception:  # noqa: BLE001 - an empty slot
                continue
            uuid = _text(pynvml.nvmlDeviceGetUUID(mig))
            if uuid.lower().startswith(wanted.lower()):
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(parent)
                driver = _text(pynvml.nvmlSystemGetDriverVersion())
                return GpuInfo(_text(pynvml.nvmlDeviceGetName(mig)), uuid, (int(major), int(minor)), driver, index)
    raise NoGpuError(f"no GPU: CUDA_VISIBLE_DEVICES names {wanted!r}, which NVML does not list; {NO_GPU_HINT}")


def gpu_visible() -> bool:
    """True when a CUDA GPU is visible (used by ``backend: auto``)."""
    try:
        probe_visible_gpu()
    except NoGpuError:
        return False
    except HostProbeError:
        return True  # a GPU is there; the TensorRT probe then explains what to fix
    return True


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
