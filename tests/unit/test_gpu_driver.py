"""Driver vs the TensorRT wheel's CUDA major, CUDA device 0 vs NVML, and version parsing (no GPU)."""

from __future__ import annotations

import enum
import types

import pytest

from provisioning import gpu as gpu_module
from provisioning.errors import HostProbeError, NoGpuError
from provisioning.gpu import (
    MIN_DRIVER_FOR_CUDA,
    check_cuda_device_matches,
    check_driver_for_wheel,
    cuda_uuid_text,
    no_gpu_reason,
    release_tuple,
    wheel_cuda_major,
)
from provisioning.host import GpuInfo

H200_UUID = "GPU-0123abcd-4567-89ef-0123-456789abcdef"
H200_BYTES = bytes.fromhex("0123abcd456789ef0123456789abcdef")


def gpu(driver="580.65.06", uuid=H200_UUID) -> GpuInfo:
    return GpuInfo("NVIDIA H200", uuid, (9, 0), driver, 0)


# --- release_tuple --------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("10.16.1.11.post1", (10, 16, 1, 11)),
    ("1.7.1.116", (1, 7, 1, 116)),
    ("11.4.0.3+cuda13", (11, 4, 0, 3)),
    ("535.104.05", (535, 104, 5)),
    ("580.65.06", (580, 65, 6)),
    ("12.8.0rc1", (12, 8, 0)),
    ("v10.0", (10, 0)),
    ("2.1-custom build", (2, 1)),  # not PEP 440: the leading numbers
    ("unknown", ()),
    ("", ()),
])
def test_release_tuple(text, expected):
    assert release_tuple(text) == expected


def test_release_tuple_without_packaging(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "packaging.version", None)
    assert release_tuple("10.16.1.11.post1") == (10, 16, 1, 11)
    assert release_tuple("n/a") == ()


# --- wheel_cuda_major -----------------------------------------------------------------


def names(*items):
    return lambda: list(items)


@pytest.mark.parametrize("module, installed, expected", [
    ("tensorrt", ("tensorrt", "tensorrt_cu13", "tensorrt_cu13_bindings", "tensorrt_cu13_libs"), 13),
    ("tensorrt", ("tensorrt-cu13",), 13),
    ("tensorrt", ("tensorrt_cu13_libs",), 13),
    ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu12-bindings", "tensorrt-cu12-libs"), 12),
    ("tensorrt", ("tensorrt_cu11",), 11),
    ("tensorrt", ("Tensorrt.CU12.Bindings",), 12),  # names normalised as PEP 503 does
    ("tensorrt", ("tensorrt",), None),  # metapackage alone: unknown
    ("tensorrt", (), None),
    ("tensorrt", ("tensorrt_rtx_cu13", "tensorrt_rtx_cu13_bindings"), None),  # RTX is not TensorRT
    ("tensorrt", ("tensorrt-cu12-libs", "tensorrt-cu13-bindings", "tensorrt-cu13-libs"), 13),  # bindings decide
    ("tensorrt", ("tensorrt-cu12-bindings", "tensorrt-cu13-bindings"), None),  # ambiguous
    ("tensorrt_rtx", ("tensorrt_rtx", "tensorrt_rtx_cu13", "tensorrt_rtx_cu13_bindings", "tensorrt_rtx_cu13_libs"), 13),
    ("tensorrt_rtx", ("tensorrt-rtx-cu13",), 13),
    ("tensorrt_rtx", ("tensorrt_rtx_cu12_bindings",), 12),
    ("tensorrt_rtx", ("tensorrt_cu13_bindings",), None),
    ("onnxruntime", ("tensorrt_cu13_bindings",), None),
])
def test_wheel_cuda_major(module, installed, expected):
    assert wheel_cuda_major(module, distributions=names(*installed)) == expected


def test_wheel_cuda_major_reads_this_environment():
    # This venv holds tensorrt_rtx_cu13*; the default lookup reads real metadata.
    from importlib import metadata

    installed = {d.metadata["Name"] for d in metadata.distributions()}
    if "tensorrt_rtx_cu13_bindings" not in installed:
        pytest.skip("tensorrt_rtx_cu13 is not installed here")
    assert wheel_cuda_major("tensorrt_rtx") == 13


# --- check_driver_for_wheel ------------------------------------------------------------


def test_minimum_drivers_are_the_cuda_ga_floors():
    assert MIN_DRIVER_FOR_CUDA == {12: (525, 60, 13), 13: (580, 65, 6)}


def test_old_driver_for_a_cuda13_wheel_is_no_gpu_with_the_fix():
    with pytest.raises(NoGpuError) as caught:
        check_driver_for_wheel(gpu("535.104.05"), "tensorrt", cuda_major=13)
    assert str(caught.value) == (
        "driver 535.104.05 is too old for this CUDA 13 wheel of TensorRT (needs 580.65.06 or newer); "
        "update the driver or install the cu12 extra: pip install 'provisioning[tensorrt-cu12]'"
    )
    assert caught.value.exit_code == 69


def test_old_driver_for_a_cuda13_rtx_wheel_names_the_rtx_extra():
    with pytest.raises(NoGpuError, match=r"wheel of TensorRT-RTX .*pip install 'provisioning\[tensorrt-rtx-cu12\]'"):
        check_driver_for_wheel(gpu("570.133.07"), "tensorrt_rtx", cuda_major=13)


def test_old_driver_for_a_cuda12_wheel_says_update_only():
    with pytest.raises(NoGpuError) as caught:
        check_driver_for_wheel(gpu("470.256.02"), "tensorrt", cuda_major=12)
    message = str(caught.value)
    assert "needs 525.60.13 or newer" in message and "update the driver to 525.60.13 or newer" in message
    assert "cu12 extra" not in message


@pytest.mark.parametrize("driver, major", [
    ("580.65.06", 13),   # exactly the floor
    ("580.95.05", 13),
    ("590.44.01", 13),
    ("535.104.05", 12),
    ("525.60.13", 12),
    ("unknown", 13),     # unparseable: CUDA decides
    ("", 13),
    ("535.104.05", None),  # unknown wheel major
    ("535.104.05", 11),    # no floor recorded
])
def test_driver_new_enough_or_unknown_passes(driver, major, monkeypatch):
    monkeypatch.setattr(gpu_module, "wheel_cuda_major", lambda module: None)
    check_driver_for_wheel(gpu(driver), "tensorrt", cuda_major=major)


def test_driver_check_defaults_to_the_installed_wheel(monkeypatch):
    monkeypatch.setattr(gpu_module, "wheel_cuda_major", lambda module: 13 if module == "tensorrt_rtx" else None)
    with pytest.raises(NoGpuError, match="CUDA 13 wheel of TensorRT-RTX"):
        check_driver_for_wheel(gpu("535.104.05"), "tensorrt_rtx")
    check_driver_for_wheel(gpu("535.104.05"), "tensorrt")  # major unknown: no error


# --- no_gpu_reason ---------------------------------------------------------------------

# What tensorrt_rtx 1.7 logs on a machine without a driver (recorded here, without a GPU).
RTX_NO_DRIVER = (
    "Severity.INFO: Detected 1 inputs and 1 output network tensors.\n"
    "Severity.ERROR: IBuilder::buildSerializedNetwork: Error Code 1: Cuda Runtime (In generateForCurrent at "
    "/_src/runtime/core/cudaDeviceProfile.cpp:221 (cudaError 35: CUDA driver version is insufficient for "
    "CUDA runtime version))"
)
TRT_INIT = (
    "[TRT] [W] CUDA initialization failure with error: 35. Please check your CUDA installation: "
    "http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html\n"
    "[TRT] [E] createInferBuilder: Error Code 6: API Usage Error (CUDA initialization failure with error: 35.)"
)


def test_error_35_with_a_known_old_driver_names_both_versions():
    reason = no_gpu_reason(RTX_NO_DRIVER, gpu("535.104.05"), module="tensorrt_rtx", cuda_major=13)
    assert reason == (
        "no usable GPU (CUDA error 35: the driver is missing or older than this CUDA 13 wheel needs; "
        "driver 535.104.05 < 580.65.06)"
    )


@pytest.mark.parametrize("text", [RTX_NO_DRIVER, TRT_INIT, "CUDA driver version is insufficient for CUDA runtime version",
                                  "cudaErrorInsufficientDriver"])
def test_error_35_without_a_known_old_driver(text):
    reason = no_gpu_reason(text, gpu("580.65.06"), cuda_major=13)
    assert reason == "no usable GPU (CUDA error 35: the driver is missing or older than this CUDA 13 wheel needs)"
    assert no_gpu_reason(text, None, cuda_major=None) == (
        "no usable GPU (CUDA error 35: the driver is missing or older than this CUDA wheel needs)"
    )


@pytest.mark.parametrize("text, fragment", [
    ("CUDA initialization failure with error: 100", "CUDA error 100: no CUDA-capable device is visible"),
    ("cudaError 34: CUDA driver is a stub library", "CUDA error 34: libcuda is a stub library"),
    ("CUDA error 803: system has unsupported display driver / cuda driver combination", "CUDA error 803"),
    ("all CUDA-capable devices are busy or unavailable", "CUDA error 46: the GPU is busy"),
    ("CUDA initialization failure with error: 222", "no usable GPU (CUDA initialization failed with error 222)"),
    ("CUDA initialization failure", "no usable GPU (CUDA initialization failed)"),
])
def test_other_cuda_start_failures(text, fragment):
    reason = no_gpu_reason(text, gpu("535.104.05"), cuda_major=13)
    assert fragment in reason and "\n" not in reason
    if "35" not in text:
        assert "535.104.05" not in reason  # the driver is only blamed for error 35


@pytest.mark.parametrize("text", [
    "",
    "[TRT] [E] ModelImporter.cpp:951: While parsing node number 0 [Conv]: unsupported",
    "[TRT] [E] Error Code 1: Cuda Runtime (cudaError 700: an illegal memory access was encountered)",
    "[TRT] [E] Error Code 2: OutOfMemory (Requested size was 4294967296 bytes.)",
])
def test_failures_that_are_not_a_missing_gpu_give_none(text):
    assert no_gpu_reason(text, gpu("535.104.05"), cuda_major=13) is None


# --- check_cuda_device_matches ----------------------------------------------------------


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's spelling
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


def fake_cudart(uuid_bytes=H200_BYTES, *, set_device=cudaError_t.cudaSuccess, props=cudaError_t.cudaSuccess):
    """cuda.bindings.runtime's shape: every call returns (err, *values)."""
    cudart = types.SimpleNamespace(cudaError_t=cudaError_t, calls=[])

    def set_dev(index):
        cudart.calls.append(("cudaSetDevice", index))
        return (set_device,)

    def get_props(index):
        cudart.calls.append(("cudaGetDeviceProperties", index))
        prop = types.SimpleNamespace(name=b"NVIDIA H200", uuid=types.SimpleNamespace(bytes=uuid_bytes))
        return (props, prop)

    cudart.cudaSetDevice, cudart.cudaGetDeviceProperties = set_dev, get_props
    return cudart


def test_cuda_uuid_text_is_nvml_format():
    assert cuda_uuid_text(H200_BYTES) == H200_UUID
    signed = [b - 256 if b > 127 else b for b in H200_BYTES]  # a char array read as signed values
    assert cuda_uuid_text(signed) == H200_UUID
    assert cuda_uuid_text(H200_BYTES.decode("latin-1")) == H200_UUID
    with pytest.raises(HostProbeError, match="16"):
        cuda_uuid_text(b"\x01" * 8)


def test_cuda_device_0_is_the_nvml_gpu():
    cudart = fake_cudart()
    check_cuda_device_matches(cudart, gpu())
    check_cuda_device_matches(cudart, gpu(uuid=H200_UUID.upper().replace("GPU-", "gpu-")))
    assert cudart.calls[:2] == [("cudaSetDevice", 0), ("cudaGetDeviceProperties", 0)]


def test_cuda_device_0_is_another_gpu():
    other = bytes.fromhex("ffffffff000000000000000000000000")
    with pytest.raises(HostProbeError) as caught:
        check_cuda_device_matches(fake_cudart(other), gpu())
    message = str(caught.value)
    assert "GPU-ffffffff-0000-0000-0000-000000000000" in message and H200_UUID in message
    assert "select the GPU by UUID in CUDA_VISIBLE_DEVICES" in message and "\n" not in message


def test_mig_instance_is_not_compared():
    check_cuda_device_matches(fake_cudart(b"\x00" * 16), gpu(uuid="MIG-dddd4444-0000-0000-0000-000000000000"))


@pytest.mark.parametrize("failing", ["set_device", "props"])
def test_cuda_call_failure_is_no_gpu_with_the_error_name(failing):
    with pytest.raises(NoGpuError) as caught:
        check_cuda_device_matches(fake_cudart(**{failing: cudaError_t.cudaErrorInsufficientDriver}), gpu())
    message = str(caught.value)
    assert "cudaErrorInsufficientDriver: the driver is missing or older than this CUDA wheel needs" in message
    assert caught.value.exit_code == 69 and "\n" not in message
