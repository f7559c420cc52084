"""The GPU side of the host probe: NVML (``nvidia-ml-py``), the driver and the CUDA device.

Never imports TensorRT; NVML is a small C library
reached through ``pynvml``. ``CUDA_VISIBLE_DEVICES`` is honoured: the GPU described is
the one CUDA will use (the first visible), not NVML's index 0.

NVML numbers GPUs by PCI bus; CUDA numbers them fastest-first unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID``. The two agree when every GPU is the same model; on a
mixed host a numeric index is ambiguous, and since the GPU names the engine, the probe
refuses to guess (select by UUID or set the order). ``MIG-...`` selectors describe that
MIG instance (its own name and UUID: a slice has fewer SMs, so it gets its own engines).
A GPU with MIG mode enabled selected without a ``MIG-<uuid>`` selector is refused: CUDA
would run on one of its instances, so describing the whole GPU would misname the engine.

One GPU per process: a build uses CUDA device 0 of the visible set, which
:func:`check_cuda_device_matches` confirms is the GPU NVML described (same UUID).

The TensorRT wheels carry a CUDA runtime of one major version (``tensorrt-cu13`` ...),
and that runtime needs a minimum driver: :func:`wheel_cuda_major`,
:func:`check_driver_for_wheel` and :func:`no_gpu_reason` turn a too-old driver into one
line instead of TensorRT's "CUDA initialization failure".
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from importlib import metadata

from .errors import HostProbeError, NoGpuError
from .versions import release_tuple
from .host import GpuInfo

NO_GPU_HINT = (
    "run the engine build on a GPU host (for a container: a build stage on a GPU runner, "
    "or `doit engines` at container start with the cache folder on a mounted volume), "
    "or set backend: onnxruntime"
)


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
        if _mig_enabled(pynvml, handle):
            raise HostProbeError(
                f"GPU {index} ({name}, {uuid}) has MIG mode enabled, so CUDA runs on one of its MIG "
                "instances, not the whole GPU; select an instance with CUDA_VISIBLE_DEVICES=MIG-<uuid> "
                "(the instances are listed by `nvidia-smi -L`)"
            )
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


def _mig_enabled(pynvml, handle) -> bool:
    """True when MIG mode is currently enabled on ``handle`` (False when not MIG capable)."""
    # Not MIG capable: NotSupported; a driver older than MIG (R450): FunctionNotFound.
    not_capable = tuple(
        getattr(pynvml, name)
        for name in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
        if isinstance(getattr(pynvml, name, None), type)
    )
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except not_capable:
        return False
    return current == getattr(pynvml, "NVML_DEVICE_MIG_ENABLE", 1)


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


# --- driver vs the wheel's CUDA ---------------------------------------------------------

# Linux minimum driver for each CUDA major's GA release (NVIDIA's CUDA toolkit release
# notes, "CUDA Toolkit and Corresponding Driver Versions"). Keyed by major, because minor
# version compatibility lets a 12.x runtime run on any driver that meets the 12.0 floor.
MIN_DRIVER_FOR_CUDA = {12: (525, 60, 13), 13: (580, 65, 6)}

_WHEEL_PATTERNS = {
    # tensorrt-cu13, tensorrt_cu13_bindings, tensorrt_cu13_libs (names normalised to '_')
    "tensorrt": re.compile(r"tensorrt_cu(\d+)(?:_|$)"),
    "tensorrt_rtx": re.compile(r"tensorrt_rtx_cu(\d+)(?:_|$)"),
}
_PRODUCT = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}
_CU12_EXTRA = {"tensorrt": "provisioning[tensorrt-cu12]", "tensorrt_rtx": "provisioning[tensorrt-rtx-cu12]"}


def _installed_distribution_names() -> Iterable[str]:
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            yield name


def wheel_cuda_major(
    module: str, *, distributions: Callable[[], Iterable[str]] = _installed_distribution_names
) -> int | None:
    """The CUDA major of the installed wheel of ``module`` (``tensorrt`` or ``tensorrt_rtx``).

    Read from distribution names (``tensorrt_cu13_bindings`` -> 13, ``tensorrt-rtx-cu12``
    -> 12); ``None`` when no such distribution is installed (a tarball install) or when
    two majors are and the one imported cannot be told from the names.
    ``distributions`` returns the installed distribution names (injectable for tests).
    """
    pattern = _WHEEL_PATTERNS.get(module)
    if pattern is None:
        return None
    bindings, others = set(), set()
    for raw in distributions():
        name = re.sub(r"[-_.]+", "_", raw).lower()
        match = pattern.match(name)
        if match:
            # The bindings are what ``import`` loads; a stray libs or metapackage of another
            # major left behind by an upgrade must not decide.
            (bindings if name.endswith("_bindings") else others).add(int(match.group(1)))
    majors = bindings or others
    return next(iter(majors)) if len(majors) == 1 else None


def _dotted(version: tuple[int, ...]) -> str:
    head, *rest = version
    return ".".join([str(head), *(f"{part:02d}" for part in rest)])


def _too_old(gpu, major: int | None) -> tuple[int, ...] | None:
    """The minimum driver for CUDA ``major`` when ``gpu``'s driver is below it, else None."""
    minimum = MIN_DRIVER_FOR_CUDA.get(major) if major is not None else None
    if minimum is None or gpu is None:
        return None
    driver = release_tuple(str(gpu.driver_version or ""))
    if not driver:
        return None  # unparseable: let CUDA itself decide
    return minimum if driver < minimum else None


def check_driver_for_wheel(gpu: GpuInfo, module: str, *, cuda_major: int | None = None) -> None:
    """Raise :class:`NoGpuError` when ``gpu``'s driver is older than the wheel's CUDA needs.

    ``module`` is ``tensorrt`` or ``tensorrt_rtx``; ``cuda_major`` defaults to
    :func:`wheel_cuda_major`. An unknown major or an unparseable driver version passes.
    """
    major = wheel_cuda_major(module) if cuda_major is None else cuda_major
    minimum = _too_old(gpu, major)
    if minimum is None:
        return
    product = _PRODUCT.get(module, module)
    fix = f"update the driver to {_dotted(minimum)} or newer"
    if major > 12 and module in _CU12_EXTRA:
        fix = f"update the driver or install the cu12 extra: pip install '{_CU12_EXTRA[module]}'"
    raise NoGpuError(
        f"driver {gpu.driver_version} is too old for this CUDA {major} wheel of {product} "
        f"(needs {_dotted(minimum)} or newer); {fix}"
    )


# CUDA runtime error codes TensorRT reports when it cannot start; what each means here.
_CUDA_CAUSES = {
    3: "CUDA could not initialize",
    34: "libcuda is a stub library: the NVIDIA driver is not installed or not mounted into this container",
    35: "the driver is missing or older than this CUDA{major} wheel needs",
    46: "the GPU is busy or unavailable (exclusive-process compute mode?)",
    100: "no CUDA-capable device is visible",
    803: "the driver's user-mode library and kernel module differ (reboot after a driver update?)",
    804: "CUDA forward compatibility is not supported on this GPU",
    999: "CUDA hit an unknown error (a reset or reboot may be needed)",
}
_CUDA_NAMES = {
    "cudaErrorInsufficientDriver": 35,
    "CUDA driver version is insufficient": 35,
    "cudaErrorNoDevice": 100,
    "no CUDA-capable device is detected": 100,
    "cudaErrorStubLibrary": 34,
    "CUDA driver is a stub library": 34,
    "cudaErrorDevicesUnavailable": 46,
    "busy or unavailable": 46,
    "cudaErrorSystemDriverMismatch": 803,
    "unsupported display driver / cuda driver combination": 803,
    "cudaErrorCompatNotSupportedOnDevice": 804,
}
_CUDA_CODE = re.compile(
    r"(?:cudaError|CUDA initialization failure with error|CUDA (?:runtime )?error|CUDA failure)"
    r"\s*[:#=(]?\s*(\d+)",
    re.IGNORECASE,
)


def no_gpu_reason(log_text: str, gpu: GpuInfo | None, *, module: str = "tensorrt",
                  cuda_major: int | None = None) -> str | None:
    """The one-line cause when TensorRT's log shows CUDA could not start, else ``None``.

    ``log_text`` is what TensorRT logged around a failed ``Builder()``, ``Runtime()``,
    build or deserialize. With a known-too-old driver the line says so:
    ``no usable GPU (CUDA error 35: ...; driver 535.104.05 < 580.65.06)``.
    """
    lowered = log_text.lower()
    codes = [int(found) for found in _CUDA_CODE.findall(log_text)]
    codes += [code for text, code in _CUDA_NAMES.items() if text.lower() in lowered]
    # Only the codes that mean "CUDA cannot start": an error 700 during a build is a
    # failing kernel, not a missing GPU, and stays the backend's BackendError.
    code = next((code for code in codes if code in _CUDA_CAUSES), None)
    if code is None:
        if "cuda initialization failure" not in lowered:
            return None
        return f"no usable GPU (CUDA initialization failed{f' with error {codes[0]}' if codes else ''})"
    major = wheel_cuda_major(module) if cuda_major is None else cuda_major
    cause = _CUDA_CAUSES[code].format(major=f" {major}" if major else "")
    minimum = _too_old(gpu, major) if code == 35 else None  # only 35 is about the driver's age
    if minimum is not None:
        cause += f"; driver {gpu.driver_version} < {_dotted(minimum)}"
    return f"no usable GPU (CUDA error {code}: {cause})"


# --- CUDA device 0 vs NVML --------------------------------------------------------------


def cuda_uuid_text(raw) -> str:
    """16 raw UUID bytes (``cudaDeviceProp.uuid.bytes``) in NVML's ``GPU-8-4-4-4-12`` form."""
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    data = bytes(b & 0xFF for b in raw)  # a char array may come back as signed values
    if len(data) != 16:
        raise HostProbeError(f"CUDA reported a {len(data)}-byte GPU UUID, expected 16; update cuda-python")
    text = data.hex()
    return f"GPU-{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _cuda_call(cudart, what: str, result):
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        try:
            code = int(err)
        except (TypeError, ValueError):
            code = _CUDA_NAMES.get(name)
        cause = _CUDA_CAUSES.get(code, "").format(major="")  # cuda-python's own CUDA major: not known here
        detail = f"{name}: {cause}" if cause else name
        raise NoGpuError(f"no usable GPU: CUDA {what} failed ({detail}); {NO_GPU_HINT}")
    return values[0] if values else None


def check_cuda_device_matches(cudart, gpu: GpuInfo) -> None:
    """Confirm CUDA device 0 (the one a build uses) is ``gpu``, the GPU NVML described.

    ``cudart`` is cuda-python's runtime (``from cuda.bindings import runtime``). A failed
    CUDA call is :class:`NoGpuError`; another GPU is :class:`HostProbeError`, since the
    engine would be named for one GPU and built on another. MIG instances are not
    compared (CUDA reports a MIG instance under a different UUID than NVML's ``MIG-...``).
    """
    _cuda_call(cudart, "cudaSetDevice(0)", cudart.cudaSetDevice(0))
    props = _cuda_call(cudart, "cudaGetDeviceProperties(0)", cudart.cudaGetDeviceProperties(0))
    if gpu.uuid.upper().startswith("MIG-"):
        return
    cuda_uuid = cuda_uuid_text(props.uuid.bytes)
    if cuda_uuid.lower() != gpu.uuid.lower():
        raise HostProbeError(
            f"CUDA device 0 is {cuda_uuid} but NVML described {gpu.uuid} ({gpu.name}); "
            f"select the GPU by UUID in CUDA_VISIBLE_DEVICES (CUDA_VISIBLE_DEVICES={gpu.uuid})"
        )
