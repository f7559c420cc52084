"""HostCapabilities: what ties an engine to the machine that built it.

Probed once by the composition root, in milliseconds, from package metadata,
``/proc/cpuinfo`` and NVML; nothing here imports ONNX Runtime or TensorRT.

- ONNX Runtime: its version, the machine architecture and the instruction-set flags
  that select its kernels (not the CPU model, core count or clock).
- TensorRT: its full version, the GPU model and compute capability, or the
  hardware-compatibility level that replaces them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Protocol

from .errors import HostProbeError


class CompatibilitySettings(Protocol):
    """What of a backbone changes where its engine can run (a BackboneSpec has these)."""

    hardware_compatibility: str
    version_compatible: bool
    compute_capabilities: tuple[str, ...]

ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-qnn",
    "ort-nightly",
)
# The bindings distributions first: they carry the version the module reports, while a
# metapackage may add a ``.postN`` of its own (tensorrt 10.x: 10.16.1.11.post1).
TRT_DISTRIBUTIONS = (
    "tensorrt_cu13_bindings",
    "tensorrt_cu12_bindings",
    "tensorrt_cu11_bindings",
    "tensorrt",
    "tensorrt-cu13",
    "tensorrt-cu12",
)
RTX_DISTRIBUTIONS = (
    "tensorrt_rtx_cu13_bindings",
    "tensorrt_rtx_cu12_bindings",
    "tensorrt_rtx",
    "tensorrt_rtx_cu13",
    "tensorrt_rtx_cu12",
)
# Flags that change which kernels ONNX Runtime (MLAS) picks, x86 and Arm.
_ISA_EXACT = {
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
    "asimd", "asimddp", "asimdhp", "fphp", "sve", "sve2", "i8mm", "bf16", "sme",
}
_ISA_PATTERN = re.compile(r"avx512.*|.*vnni.*|.*bf16.*|amx_.*|avx_.*")
_BACKEND_TAGS = {"onnxruntime": "ort", "tensorrt": "trt", "tensorrt-rtx": "trtrtx"}


@dataclass(frozen=True)
class GpuInfo:
    """The GPU a TensorRT build runs on (the one CUDA will use)."""

    name: str
    uuid: str
    compute_capability: tuple[int, int]
    driver_version: str
    nvml_index: int

    @property
    def sm(self) -> str:
        """``sm90`` style compute capability tag."""
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def slug(self) -> str:
        """The GPU model as a short file-name-safe tag: ``NVIDIA H200`` -> ``h200``."""
        name = re.sub(r"^nvidia\s+", "", self.name.strip(), flags=re.IGNORECASE)
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
        if len(slug) > 32:
            slug = slug[:25].rstrip("-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:6]
        return slug


@dataclass(frozen=True)
class HostIdentity:
    """The host part of an engine's identity, as it appears in names and manifests."""

    backend: str
    backend_tag: str
    version_tag: str
    host_key: str
    details: dict = field(compare=False, hash=False, default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-friendly form recorded in the manifest and compared on reuse."""
        return {
            "backend": self.backend,
            "version_tag": self.version_tag,
            "host_key": self.host_key,
            **self.details,
        }


@dataclass(frozen=True)
class HostCapabilities:
    """What this host is, for the backend that will build on it."""

    backend: str
    backend_version: str
    machine: str
    cpu_flags: tuple[str, ...] = ()
    gpu: GpuInfo | None = None
    # TensorRT-RTX: the config's default targets (sorted ``sm86`` tags), for identity() without a spec
    compute_capabilities: tuple[str, ...] = ()

    def identity_for(self, spec: CompatibilitySettings) -> HostIdentity:
        """The identity ``spec``'s engine carries here (its compatibility settings applied)."""
        return self.identity(
            hardware_compatibility=spec.hardware_compatibility, version_compatible=spec.version_compatible,
            compute_capabilities=spec.compute_capabilities,
        )

    def identity(self, *, hardware_compatibility: str = "none", version_compatible: bool = False,
                 compute_capabilities: tuple[str, ...] = ()) -> HostIdentity:
        """The identity an engine built here with these compatibility settings carries."""
        tag = _BACKEND_TAGS.get(self.backend, re.sub(r"[^a-z0-9]+", "", self.backend.lower()) or "x")
        if self.backend == "tensorrt":
            return self._trt_identity(tag, hardware_compatibility, version_compatible)
        if self.backend == "tensorrt-rtx":
            return self._rtx_identity(tag, compute_capabilities or self.compute_capabilities)
        return HostIdentity(
            backend=self.backend,
            backend_tag=tag,
            version_tag=self.backend_version,
            host_key=self.cpu_key,
            details={"machine": self.machine, "cpu_flags": list(self.cpu_flags)},
        )

    @property
    def cpu_key(self) -> str:
        """``x86_64-avx512-1a2b3c``: architecture, top ISA tier, digest of every ISA flag."""
        machine = re.sub(r"[^a-z0-9_]+", "", self.machine.lower()) or "unknown"
        flags = set(self.cpu_flags)
        if any(f.startswith("avx512") for f in flags):
            tier = "avx512"
        elif "avx2" in flags:
            tier = "avx2"
        elif "sve" in flags:
            tier = "sve"
        elif "asimd" in flags:
            tier = "neon"
        else:
            tier = "base"
        digest = hashlib.sha256(",".join(sorted(flags)).encode()).hexdigest()[:6]
        return f"{machine}-{tier}-{digest}"

    def _rtx_identity(self, tag: str, targets: tuple[str, ...]) -> HostIdentity:
        """TensorRT-RTX: the version and the target list, never the machine that built it.

        A CPU-only builder (CI, ``docker build``) and a GPU host of one of the targets
        compute the same name, so they share the engine.
        """
        if not targets:
            raise HostProbeError("a TensorRT-RTX engine needs compute_capabilities targets; list them in the config")
        ordered = sort_targets(targets)
        details = {"compute_capabilities": list(ordered), "tensorrt_rtx_version": self.backend_version}
        return HostIdentity("tensorrt-rtx", tag, self.backend_version, "-".join(ordered), details)

    def _trt_identity(self, tag: str, hwc: str, version_compatible: bool) -> HostIdentity:
        if self.gpu is None:
            raise HostProbeError("the TensorRT host has no GPU recorded; probe the host with a visible GPU")
        major = self.backend_version.split(".")[0]
        version_tag = f"{major}-vc" if version_compatible else self.backend_version
        if hwc == "ampere_plus":
            host_key = "ampere-plus"
        elif hwc == "same_compute_capability":
            host_key = self.gpu.sm
        else:
            host_key = f"{self.gpu.sm}-{self.gpu.slug}"
        details = {
            "hardware_compatibility": hwc,
            "version_compatible": version_compatible,
        }
        if hwc == "none":
            details["gpu_name"] = self.gpu.name
        if hwc != "ampere_plus":
            details["compute_capability"] = list(self.gpu.compute_capability)
        if not version_compatible:
            details["tensorrt_version"] = self.backend_version
        return HostIdentity("tensorrt", tag, version_tag, host_key, details)


def sort_targets(targets) -> tuple[str, ...]:
    """``sm`` tags deduplicated and in numeric order: sm86, sm89, sm120 (not sm120, sm86)."""
    def number(tag: str) -> int:
        digits = tag.lower().removeprefix("sm")
        return int(digits) if digits.isdigit() else 1 << 30
    return tuple(sorted({t.lower() for t in targets}, key=lambda t: (number(t), t)))


def installed_version(distributions: tuple[str, ...]) -> str | None:
    """The version of the first installed distribution among ``distributions``."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def read_cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The kernel-relevant ISA flags of this CPU, sorted (empty where cpuinfo is absent)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags = value.split()
                    return tuple(sorted(f for f in set(flags) if f in _ISA_EXACT or _ISA_PATTERN.fullmatch(f)))
    except OSError:
        pass
    return ()
