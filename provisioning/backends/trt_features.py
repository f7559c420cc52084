"""What differs between the TensorRT builders this backend supports, as one table.

TensorRT 10.x, TensorRT 11.x and TensorRT for RTX 1.x (API of 11.4) share one build path
(:mod:`provisioning.backends.tensorrt`). The backend asks :func:`features_for` once per
build and never compares versions itself: every difference is a field of
:class:`TrtFeatures`. Every ``trt`` name the backend touches is listed in
:data:`USED_CLASSES` / :data:`USED_ENUMS`, which a unit test checks against the recorded
10.16, 11.4 and RTX 1.7 Python surfaces (and against the backend's source, so the list
cannot fall behind the code). This module imports nothing from TensorRT.

Member names, never integers, are used for enums: their values changed between 10 and 11
(``BuilderFlag.VERSION_COMPATIBLE`` is 13 on 10.x and 12 on 11.x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..errors import BackendUnavailableError
from ..versions import release_tuple

# hardware_compatibility setting -> HardwareCompatibilityLevel member (same on 10 and 11)
HARDWARE_COMPATIBILITY_LEVELS: Mapping[str, str] = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
# The oldest GPU each setting builds for (NVIDIA's TensorRT developer guide).
MIN_COMPUTE_CAPABILITY: Mapping[str, tuple[int, int]] = {
    "ampere_plus": (8, 0),
    "same_compute_capability": (7, 5),
    "bf16": (8, 0),  # BuilderFlag.BF16 on 10.x: no bf16 kernels before Ampere
}
AMPERE_PLUS_MIN_CC = MIN_COMPUTE_CAPABILITY["ampere_plus"]
# TF32 is on by default and used for fp32 matmul/convolution from compute capability 8.0.
TF32_MIN_CC = (8, 0)

# ONNX element types that show a graph already carries a reduced precision (11.x: built as exported).
PRECISION_ONNX_TYPES: Mapping[str, str] = {"fp16": "FLOAT16", "bf16": "BFLOAT16"}

# backend name -> the Python module that provides it
MODULES: Mapping[str, str] = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
PRODUCT_NAMES: Mapping[str, str] = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}


@dataclass(frozen=True)
class TrtFeatures:
    """How one TensorRT builder works: precision, caches, targets, compatibility settings."""

    backend: str
    major: int
    # precision -> BuilderFlag member; empty where the network is always strongly typed
    precision_flags: Mapping[str, str] = field(default_factory=dict)
    # True where TensorRT ignores builder precision flags and takes types from the graph
    strongly_typed: bool = False
    # precisions the backend can produce by converting the ONNX graph before parsing
    graph_conversions: tuple[str, ...] = ()
    # True: kernels are timed on the GPU (a real timing cache, one build per GPU at a time);
    # False: timing-cache calls are deprecated no-ops and nothing is measured or written
    timing_cache: bool = True
    # True: the plan targets a list of compute capabilities (IBuilderConfig.set_compute_capability)
    compute_capability_targets: bool = False
    # hardware_compatibility settings the builder honours (read back after setting)
    hardware_compatibility: tuple[str, ...] = tuple(HARDWARE_COMPATIBILITY_LEVELS)
    # True where BuilderFlag.VERSION_COMPATIBLE builds (a lean runtime ships with the library)
    version_compatible: bool = True
    # True where Builder() and build_serialized_network work without a GPU
    builds_without_gpu: bool = False

    @property
    def product(self) -> str:
        """``TensorRT`` or ``TensorRT-RTX``, for messages."""
        return PRODUCT_NAMES[self.backend]

    @property
    def module(self) -> str:
        """The Python module of this builder."""
        return MODULES[self.backend]

    def precision_route(self, precision: str) -> str:
        """'none' (fp32), 'flag', 'qdq' (int8: Q/DQ in the graph) or 'convert' (strongly typed fp16/bf16)."""
        if precision == "fp32":
            return "none"
        if precision == "int8":
            return "qdq"
        if precision in self.precision_flags:
            return "flag"
        return "convert"


FEATURES: Mapping[tuple[str, int], TrtFeatures] = {
    ("tensorrt", 10): TrtFeatures(
        backend="tensorrt", major=10,
        precision_flags={"fp16": "FP16", "bf16": "BF16", "int8": "INT8"},
    ),
    # 11.x removed BuilderFlag.FP16/BF16/INT8: every network is strongly typed.
    ("tensorrt", 11): TrtFeatures(backend="tensorrt", major=11, strongly_typed=True, graph_conversions=("fp16",)),
    # TensorRT for RTX: the 11.4 API, ahead-of-time builds for listed compute capabilities
    # on a machine without a GPU; no timing cache, no compatibility levels, no lean runtime.
    ("tensorrt-rtx", 1): TrtFeatures(
        backend="tensorrt-rtx", major=1, strongly_typed=True, graph_conversions=("fp16",),
        timing_cache=False, compute_capability_targets=True, hardware_compatibility=("none",),
        version_compatible=False, builds_without_gpu=True,
    ),
}


def features_for(version: str, backend: str = "tensorrt") -> TrtFeatures:
    """The feature row for a TensorRT (or TensorRT-RTX) version; BackendUnavailableError when unsupported."""
    release = release_tuple(version)
    row = FEATURES.get((backend, release[0] if release else -1))
    if row is None:
        supported = ", ".join(f"{m}.x" for b, m in sorted(FEATURES) if b == backend)
        extra = "tensorrt-rtx" if backend == "tensorrt-rtx" else "tensorrt-cu12 or tensorrt-cu13"
        raise BackendUnavailableError(
            f"{PRODUCT_NAMES.get(backend, backend)} {version} is not supported (this backend builds with "
            f"{supported}); install a supported version: pip install 'provisioning[{extra}]'"
        )
    return row


# Every trt name the backend uses: top-level classes with the attributes called on
# their instances, and enums with the members used. Builder-specific members sit in
# USED_ENUMS_BY_ROW. A unit test checks all of it against the recorded surfaces.
USED_FUNCTIONS: tuple[str, ...] = ("init_libnvinfer_plugins",)
USED_CLASSES: Mapping[str, tuple[str, ...]] = {
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"),
    "IBuilderConfig": ("set_memory_pool_limit", "add_optimization_profile", "set_flag", "get_flag",
                       "hardware_compatibility_level", "progress_monitor", "create_timing_cache",
                       "set_timing_cache", "get_timing_cache"),
    "INetworkDefinition": ("num_inputs", "get_input"),
    "ITensor": ("name", "shape", "is_shape_tensor"),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
    "ParserError": ("code", "desc", "node", "node_name", "node_operator"),
    "IOptimizationProfile": ("set_shape",),
    "ITimingCache": ("combine", "serialize"),
    "IHostMemory": ("nbytes",),
    "Runtime": ("deserialize_cuda_engine", "engine_host_code_allowed"),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
                    "create_execution_context"),
    "IExecutionContext": ("set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"),
    "ILogger": ("log", "INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"),
    "IProgressMonitor": ("phase_start", "step_complete", "phase_finish"),
}
# Only where the row says so (compute-capability targets: TensorRT-RTX).
USED_CLASSES_FOR_TARGETS: Mapping[str, tuple[str, ...]] = {
    "IBuilderConfig": ("num_compute_capabilities", "set_compute_capability", "get_compute_capability"),
}
USED_ENUMS: Mapping[str, tuple[str, ...]] = {
    "MemoryPoolType": ("WORKSPACE",),
    "HardwareCompatibilityLevel": tuple(HARDWARE_COMPATIBILITY_LEVELS.values()),
    "TensorIOMode": ("INPUT", "OUTPUT"),
    "DataType": ("FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8"),
    "BuilderFlag": ("VERSION_COMPATIBLE", "TF32"),
    "ComputeCapability": (),  # members are read from the installed module (TensorRT-RTX only)
}
USED_ENUMS_BY_ROW: Mapping[tuple[str, int], Mapping[str, tuple[str, ...]]] = {
    key: {"BuilderFlag": tuple(row.precision_flags.values())} for key, row in FEATURES.items()
}
