"""The GPU probe (NVML via a fake pynvml): which GPU CUDA will use, and the no-GPU cases."""

from __future__ import annotations

import sys
import types

import pytest

from provisioning.errors import HostProbeError, NoGpuError
from provisioning.gpu import gpu_visible, probe_visible_gpu
from provisioning.probe import probe_host

H200 = ("NVIDIA H200", "GPU-aaaa1111-0000-0000-0000-000000000000", (9, 0))
L4 = ("NVIDIA L4", "GPU-bbbb2222-0000-0000-0000-000000000000", (8, 9))
A100 = ("NVIDIA A100-SXM4-40GB", "GPU-cccc3333-0000-0000-0000-000000000000", (8, 0))
MIG = ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "MIG-dddd4444-0000-0000-0000-000000000000")


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's spelling
    pass


def fake_pynvml(devices, *, init_error=None, migs=None, mig_enabled=()):
    """A pynvml over ``devices`` (name, uuid, cc); ``migs`` maps a device index to its MIG instances.

    Devices in ``migs`` are MIG capable (mode disabled unless their index is in
    ``mig_enabled``); the others raise NVMLError_NotSupported for the MIG mode, as real GPUs do.
    """
    nvml = types.ModuleType("pynvml")
    nvml.calls = []
    nvml.NVMLError = NVMLError
    nvml.NVMLError_NotSupported = NVMLError_NotSupported
    nvml.NVML_DEVICE_MIG_DISABLE, nvml.NVML_DEVICE_MIG_ENABLE = 0, 1

    def init():
        if init_error:
            raise RuntimeError(init_error)

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    nvml.nvmlSystemGetDriverVersion = lambda: b"580.65.06"

    def lookup(handle):
        kind, *where = handle
        return devices[where[0]] if kind == "gpu" else (*(migs[where[0]][where[1]]), None)

    nvml.nvmlDeviceGetName = lambda h: lookup(h)[0].encode()
    nvml.nvmlDeviceGetUUID = lambda h: lookup(h)[1]
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: lookup(h)[2]

    def max_migs(handle):
        if not migs or handle[1] not in migs:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 7

    def mig_handle(handle, slot):
        if slot >= len(migs[handle[1]]):
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return ("mig", handle[1], slot)

    def mig_mode(handle):
        if handle[1] in mig_enabled:
            return (nvml.NVML_DEVICE_MIG_ENABLE, nvml.NVML_DEVICE_MIG_ENABLE)
        if not migs or handle[1] not in migs:
            raise NVMLError_NotSupported("Not Supported")
        return (nvml.NVML_DEVICE_MIG_DISABLE, nvml.NVML_DEVICE_MIG_DISABLE)

    nvml.nvmlDeviceGetMigMode = mig_mode
    nvml.nvmlDeviceGetMaxMigDeviceCount = max_migs
    nvml.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    return nvml


@pytest.fixture
def nvml(monkeypatch):
    def install(*devices, **kwargs):
        module = fake_pynvml(list(devices), **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return install


def test_first_gpu_when_nothing_is_selected(nvml):
    nvml(H200, H200)
    gpu = probe_visible_gpu()
    assert (gpu.name, gpu.uuid, gpu.compute_capability, gpu.driver_version) == (H200[0], H200[1], (9, 0), "580.65.06")


def test_cuda_visible_devices_index_picks_that_gpu(nvml, monkeypatch):
    nvml(L4, H200)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert probe_visible_gpu().name == "NVIDIA H200"


def test_cuda_visible_devices_uuid_prefix_picks_that_gpu(nvml, monkeypatch):
    nvml(L4, H200)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa1111")
    gpu = probe_visible_gpu()
    assert gpu.uuid == H200[1] and gpu.nvml_index == 1


def test_mixed_gpus_without_pci_bus_order_are_refused_not_guessed(nvml, monkeypatch):
    nvml(L4, H200)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(HostProbeError, match="set CUDA_DEVICE_ORDER=PCI_BUS_ID or select the GPU by UUID"):
        probe_visible_gpu()
    assert gpu_visible() is True  # backend auto still sees a GPU; the TensorRT probe explains


def test_mig_instance_is_described_by_its_own_name_and_uuid(nvml, monkeypatch):
    nvml(A100, migs={0: [(MIG[0], MIG[1])]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-dddd4444")
    gpu = probe_visible_gpu()
    assert (gpu.name, gpu.uuid, gpu.compute_capability) == (MIG[0], MIG[1], (8, 0))


@pytest.mark.parametrize("env", [None, "0", "GPU-cccc3333"])
def test_mig_enabled_gpu_without_a_mig_selector_is_refused_not_described_as_the_whole_gpu(nvml, monkeypatch, env):
    nvml(A100, migs={0: [(MIG[0], MIG[1])]}, mig_enabled={0})
    if env is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    with pytest.raises(HostProbeError) as caught:
        probe_visible_gpu()
    message = str(caught.value)
    assert "\n" not in message and A100[0] in message and A100[1] in message and "MIG mode enabled" in message
    assert "CUDA_VISIBLE_DEVICES=MIG-<uuid>" in message and "nvidia-smi -L" in message
    assert gpu_visible() is True  # a GPU is there; the probe says how to select it


def test_mig_capable_gpu_with_mig_disabled_is_the_whole_gpu(nvml):
    nvml(A100, migs={0: [(MIG[0], MIG[1])]})
    assert probe_visible_gpu().uuid == A100[1]


def test_only_the_selected_gpu_matters_for_mig(nvml, monkeypatch):
    nvml(A100, A100, migs={1: [(MIG[0], MIG[1])]}, mig_enabled={1})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert probe_visible_gpu().nvml_index == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-dddd4444")
    assert probe_visible_gpu().uuid == MIG[1]


@pytest.mark.parametrize("setup, env, message", [
    ("none", "", "CUDA_VISIBLE_DEVICES is empty"),
    ("none", "-1", "CUDA_VISIBLE_DEVICES is empty"),
    ("empty", None, "NVML sees no device"),
    ("broken", None, "NVML is unavailable (NVML Shared Library Not Found)"),
    ("missing", None, "nvidia-ml-py (pynvml) is not installed"),
    ("one", "3", "names device 3 but only 1 exist"),
    ("one", "GPU-ffff", "'GPU-ffff', which NVML does not list"),
])
def test_no_usable_gpu_is_no_gpu_error_with_the_hint(nvml, monkeypatch, setup, env, message):
    if setup == "missing":
        monkeypatch.setitem(sys.modules, "pynvml", None)
    elif setup == "broken":
        nvml(init_error="NVML Shared Library Not Found")
    else:
        nvml(*([] if setup == "empty" else [H200]))
    if env is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    with pytest.raises(NoGpuError) as caught:
        probe_visible_gpu()
    assert message in str(caught.value)
    assert "run the engine build on a GPU host" in str(caught.value) and caught.value.exit_code == 69
    assert gpu_visible() is False


def test_tensorrt_host_probe_stops_with_no_gpu_when_cuda_sees_none(world, nvml, monkeypatch):
    nvml(H200)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(NoGpuError, match="CUDA_VISIBLE_DEVICES is empty"):
        probe_host("tensorrt")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    host = probe_host("tensorrt")
    assert (host.backend_version, host.gpu.uuid) == (world.version, H200[1])
