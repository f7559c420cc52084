"""What differs between the TensorRT majors this backend supports, as one table.

The backend asks :func:`features_for` once per build and never compares versions
itself. Every ``tensorrt`` name the backend touches is listed in :data:`USED_API`, which
a unit test checks against the recorded 10.16 and 11.4 Python surfaces (and against the
backend's source, so the list cannot fall behind the code). This module imports nothing
from TensorRT.

Member names, never integers, are used for enums: their values changed between 10 and 11
(``BuilderFlag.VERSION_COMPATIBLE`` is 13 on 10.x and 12 on 11.x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..errors import BackendUnavailableError

# hardware_compatibility setting -> HardwareCompatibilityLevel member (same on 10 and 11)
HARDWARE_COMPATIBILITY_LEVELS: Mapping[str, str] = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
# AMPERE_PLUS engines only build (and run) on compute capability 8.0 and newer.
AMPERE_PLUS_MIN_CC = (8, 0)

# ONNX element types that show a graph already carries a reduced precision (11.x: built as exported).
PRECISION_ONNX_TYPES: Mapping[str, str] = {"fp16": "FLOAT16", "bf16": "BFLOAT16"}


@dataclass(frozen=True)
class TrtFeatures:
    """How one TensorRT major builds: flags for precisions, or a strongly typed graph."""

    major: int
    # precision -> BuilderFlag member; empty where the network is always strongly typed
    precision_flags: Mapping[str, str] = field(default_factory=dict)
    # True where TensorRT ignores builder precision flags and takes types from the graph
    strongly_typed: bool = False
    # precisions the backend can produce by converting the ONNX graph before parsing
    graph_conversions: tuple[str, ...] = ()

    def precision_route(self, precision: str) -> str:
        """'none' (fp32), 'flag', 'qdq' (int8: Q/DQ in the graph) or 'convert' (11.x fp16/bf16)."""
        if precision == "fp32":
            return "none"
        if precision == "int8":
            return "qdq"
        if precision in self.precision_flags:
            return "flag"
        return "convert"


FEATURES: Mapping[int, TrtFeatures] = {
    10: TrtFeatures(
        major=10,
        precision_flags={"fp16": "FP16", "bf16": "BF16", "int8": "INT8"},
        strongly_typed=False,
    ),
    # 11.x removed BuilderFlag.FP16/BF16/INT8: every network is strongly typed.
    11: TrtFeatures(major=11, strongly_typed=True, graph_conversions=("fp16",)),
}


def features_for(version: str) -> TrtFeatures:
    """The feature row for a TensorRT version string; BackendUnavailableError when unsupported."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        major = -1
    row = FEATURES.get(major)
    if row is None:
        supported = ", ".join(f"{m}.x" for m in sorted(FEATURES))
        raise BackendUnavailableError(
            f"TensorRT {version} is not supported (this backend builds with {supported}); "
            "install the tensorrt extra: pip install 'provisioning[tensorrt]' from NVIDIA's package index"
        )
    return row


# Every tensorrt name the backend uses: top-level classes with the attributes called on
# their instances, and enums with the members used. Version-specific members sit in
# USED_ENUMS_BY_MAJOR. A unit test checks all of it against the recorded surfaces.
USED_CLASSES: Mapping[str, tuple[str, ...]] = {
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"),
    "IBuilderConfig": ("set_memory_pool_limit", "add_optimization_profile", "set_flag",
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
USED_ENUMS: Mapping[str, tuple[str, ...]] = {
    "MemoryPoolType": ("WORKSPACE",),
    "HardwareCompatibilityLevel": tuple(HARDWARE_COMPATIBILITY_LEVELS.values()),
    "TensorIOMode": ("INPUT", "OUTPUT"),
    "DataType": ("FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8"),
    "BuilderFlag": ("VERSION_COMPATIBLE",),
}
USED_ENUMS_BY_MAJOR: Mapping[int, Mapping[str, tuple[str, ...]]] = {
    major: {"BuilderFlag": tuple(row.precision_flags.values())} for major, row in FEATURES.items()
}
