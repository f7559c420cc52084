"""Which of a release's variants this serving host runs: the probe and the documented ranking.

The probe reads NVML (the GPU CUDA will use, through :mod:`provisioning.gpu`), the installed
runtime versions from package metadata and the CPU's ISA flags from ``/proc/cpuinfo``; it
imports neither onnx, ONNX Runtime nor TensorRT. An explicit runtime (``--runtime
tensorrt==10.8.0.43``, or ``runtime:`` in serving.yaml) replaces the installed ones: a
Triton container carries TensorRT inside it, not as a wheel.

Per backbone the best variant wins, by rank (lower is better):

1. ``exact``: this host's own identity (the GPU model and compute capability, the very
   TensorRT release);
2. ``version-compatible 10.16 <= 10.18``: a version-compatible plan for this GPU model,
   built by a TensorRT of the same major no newer than this host's;
3. ``hardware-compatible ampere_plus sm90 >= sm80``: a hardware-compatible plan
   (``ampere_plus``: compute capability 8.0 or newer; ``same_compute_capability``: equal),
   built by this release or, version-compatible, by an older one of the same major;
4. ``rtx-targets sm89``: a TensorRT-RTX plan whose targets include this GPU's compute
   capability, built by the installed (or given) TensorRT-RTX release;
5. ``cpu-fallback avx2``: an ONNX Runtime engine for this machine and ISA tier, only with
   ``--allow-cpu-fallback`` (``allow_cpu_fallback: true``).

Within a rank: the closest builder release first (the newest not newer than this host's),
``same_compute_capability`` before ``ampere_plus``, an exact CPU key before a same-tier one,
then the engine name. Everything below the probe is a pure function of its arguments.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..gpu import release_tuple
from ..host import (
    ORT_DISTRIBUTIONS, RTX_DISTRIBUTIONS, TRT_DISTRIBUTIONS, GpuInfo, HostCapabilities, installed_version,
    read_cpu_flags,
)

RANKS = {1: "exact", 2: "version-compatible", 3: "hardware-compatible", 4: "rtx-targets", 5: "cpu-fallback"}
_AMPERE = (8, 0)


@dataclass(frozen=True)
class ServingHost:
    """This serving host as a pull sees it: its GPU (or None), its runtimes and its CPU."""

    machine: str
    cpu_flags: tuple[str, ...] = ()
    gpu: GpuInfo | None = None
    runtimes: Mapping[str, str] = field(default_factory=dict)  # backend -> version
    runtime_given: bool = False  # the runtimes came from --runtime / runtime:, not from this host's packages
    gpu_note: str | None = None  # why there is no GPU (the probe's one line)

    @property
    def cpu_key(self) -> str:
        """The ONNX Runtime host key of this CPU (``x86_64-avx2-1a2b3c``)."""
        return HostCapabilities("onnxruntime", "", self.machine, self.cpu_flags).cpu_key

    @property
    def isa(self) -> str:
        """This CPU's ISA tier as host keys carry it: avx512, avx2, sve, neon or base."""
        return self.cpu_key.split("-")[-2]

    def describe(self) -> str:
        """One phrase naming this host's identity: GPU, runtimes (and where they came from), CPU."""
        gpu = (f"{self.gpu.name} {self.gpu.sm}" if self.gpu is not None
               else f"no GPU ({self.gpu_note})" if self.gpu_note else "no GPU")
        given = " (given)" if self.runtime_given else ""
        runtimes = ", ".join(f"{b} {v}" for b, v in sorted(self.runtimes.items())) or "no runtime installed"
        return f"{gpu}, {runtimes}{given}, cpu {self.cpu_key}"


def probe_serving_host(runtime: Any = None) -> ServingHost:
    """Probe this host without importing onnx, ONNX Runtime or TensorRT.

    ``runtime`` (a :class:`~provisioning.release.serving_config.Runtime`) replaces the
    installed GPU runtimes; the installed ONNX Runtime still counts for a CPU fallback.
    """
    from ..errors import HostProbeError, NoGpuError
    from ..gpu import probe_visible_gpu

    gpu, note = None, None
    try:
        gpu = probe_visible_gpu()
    except (NoGpuError, HostProbeError) as exc:
        note = str(exc).splitlines()[0].split(";")[0]
    runtimes: dict[str, str] = {}
    if runtime is not None:
        runtimes[runtime.backend] = runtime.version
    else:
        for backend, names in (("tensorrt", TRT_DISTRIBUTIONS), ("tensorrt-rtx", RTX_DISTRIBUTIONS)):
            version = installed_version(names)
            if version is not None:
                runtimes[backend] = version
    if "onnxruntime" not in runtimes:
        version = installed_version(ORT_DISTRIBUTIONS)
        if version is not None:
            runtimes["onnxruntime"] = version
    return ServingHost(platform.machine() or "unknown", read_cpu_flags(), gpu, runtimes, runtime is not None, note)


@dataclass(frozen=True)
class Choice:
    """The variant picked for one backbone, its rank (1-5) and why."""

    variant: Any
    rank: int
    reason: str


def _release(version: str) -> tuple[int, ...]:
    return release_tuple(version) if isinstance(version, str) else ()


def short_version(version: str, other: str) -> str:
    """``10.16`` (major.minor), or the full release where major.minor cannot tell the two apart."""
    mine, theirs = _release(version), _release(other)
    if len(mine) >= 2 and mine[:2] != theirs[:2]:
        return f"{mine[0]}.{mine[1]}"
    return ".".join(map(str, mine)) or version


def _cc(text: str | None) -> tuple[int, int] | None:
    """``"8.9"`` -> (8, 9); None for anything else."""
    try:
        major, minor = str(text).split(".")
        return int(major), int(minor)
    except (ValueError, AttributeError):
        return None


def _sm(cc: tuple[int, int]) -> str:
    return f"sm{cc[0]}{cc[1]}"


def _version_fit(variant: Any, runtime: str) -> tuple[bool, str | None]:
    """(usable, version reason or None when the release is this host's own) for a TensorRT plan."""
    have, want = _release(variant.backend_version), _release(runtime)
    if not have or not want:
        return False, None
    if have == want:
        return True, None
    if variant.compatibility.version_compatible and have[0] == want[0] and have < want:
        return True, (f"version-compatible {short_version(variant.backend_version, runtime)} <= "
                      f"{short_version(runtime, variant.backend_version)}")
    return False, None


def rank_variant(variant: Any, host: ServingHost, allow_cpu_fallback: bool = False) -> tuple[int, str] | None:
    """(rank, reason) of ``variant`` on ``host``; None when it cannot run here (or is not allowed)."""
    backend = variant.backend
    if backend == "onnxruntime":
        return _rank_cpu(variant, host, allow_cpu_fallback)
    gpu = host.gpu
    runtime = host.runtimes.get(backend)
    if gpu is None or runtime is None or variant.tied_to.kind != "gpu":
        return None
    if backend == "tensorrt-rtx":
        if gpu.sm in variant.compatibility.rtx_targets and _release(variant.backend_version) == _release(runtime):
            return 4, f"rtx-targets {gpu.sm}"
        return None
    if backend != "tensorrt":
        return None
    fits, version_reason = _version_fit(variant, runtime)
    if not fits:
        return None
    level = variant.compatibility.hardware_compatibility
    if level == "none":
        identity = HostCapabilities("tensorrt", variant.backend_version, host.machine, host.cpu_flags, gpu).identity(
            version_compatible=variant.compatibility.version_compatible)
        same_gpu = (variant.host_key == identity.host_key and variant.tied_to.gpu_model == gpu.name
                    and _cc(variant.tied_to.compute_capability) == gpu.compute_capability)
        if not same_gpu:
            return None
        return (1, "exact") if version_reason is None else (2, version_reason)
    if level == "ampere_plus":
        if gpu.compute_capability < _AMPERE or variant.host_key != "ampere-plus":
            return None
        reason = f"hardware-compatible ampere_plus {gpu.sm} >= {_sm(_AMPERE)}"
    elif level == "same_compute_capability":
        built = _cc(variant.tied_to.compute_capability)
        if built != gpu.compute_capability or variant.host_key != gpu.sm:
            return None
        reason = f"hardware-compatible same_compute_capability {gpu.sm} == {_sm(built)}"
    else:
        return None
    return 3, reason if version_reason is None else f"{reason}, {version_reason}"


def _rank_cpu(variant: Any, host: ServingHost, allow_cpu_fallback: bool) -> tuple[int, str] | None:
    if not allow_cpu_fallback or variant.tied_to.kind != "cpu":
        return None
    if variant.tied_to.machine != host.cpu_key.rsplit("-", 2)[0] or variant.tied_to.isa != host.isa:
        return None
    runtime = host.runtimes.get("onnxruntime")
    if runtime is not None and _release(variant.backend_version) > _release(runtime):
        return None  # an engine optimised by a newer ONNX Runtime than the one that would run it
    return 5, f"cpu-fallback {host.isa}"


def _preference(variant: Any, rank: int, host: ServingHost) -> tuple:
    """Order within a rank: closest builder release, the narrower hardware level, an exact CPU key."""
    newest_first = tuple(-part for part in _release(variant.backend_version))
    narrower = 0 if variant.compatibility.hardware_compatibility == "same_compute_capability" else 1
    own_cpu = 0 if (rank == 5 and variant.host_key == host.cpu_key) else 1
    return (own_cpu, narrower, newest_first, variant.engine, variant.sha256)


def choose(variants: Iterable[Any], host: ServingHost, allow_cpu_fallback: bool = False) -> Choice | None:
    """The best variant for ``host`` (see the module docstring); None when none can run here."""
    best: tuple[tuple, Choice] | None = None
    for variant in variants:
        ranked = rank_variant(variant, host, allow_cpu_fallback)
        if ranked is None:
            continue
        key = (ranked[0], _preference(variant, ranked[0], host))
        if best is None or key < best[0]:
            best = (key, Choice(variant, ranked[0], ranked[1]))
    return None if best is None else best[1]


def describe_variant(variant: Any) -> str:
    """``host key (backend version)`` for the no-usable-variant line."""
    return f"{variant.host_key} ({variant.backend} {variant.backend_version})"


def no_variant_line(model: str, variants: Sequence[Any], host: ServingHost, allow_cpu_fallback: bool) -> str:
    """The one line of a backbone no variant of which runs here: this host, and what the release has."""
    listed = ", ".join(describe_variant(v) for v in sorted(variants, key=lambda v: (v.host_key, v.engine))[:12])
    more = f" and {len(variants) - 12} more" if len(variants) > 12 else ""
    cpu = any(v.backend == "onnxruntime" for v in variants) and not allow_cpu_fallback
    hint = ("; ONNX Runtime engines need --allow-cpu-fallback" if cpu
            else "; build this GPU class with doit engines and release again")
    return (f"NO-VARIANT {model}: none of the release's variants runs on this host ({host.describe()}); "
            f"the release has {listed or 'no variant'}{more}{hint}")
