"""Engine provisioning: ONNX backbones compiled into hardware-tied, verified, cached engines.

Importing this package loads neither doit, ONNX, ONNX Runtime nor TensorRT.
"""

from .backends.base import CompileEngineCallable, EngineOutput
from .cache import EngineCacheEntry
from .compiler import (
    BackboneSpec,
    CompileOutcome,
    EngineCompiler,
    EngineCompileRequest,
    EngineCompileResult,
    EngineCompileSummary,
)
from .compose import build_backbone_specs, build_compile_request, build_engine_compiler, probe_host_for
from .config import BackboneConfig, InputShape, ProvisioningConfig, load_config
from .errors import (
    BackendError,
    BackendUnavailableError,
    CacheError,
    ConfigError,
    EngineNotReadyError,
    HostProbeError,
    NoGpuError,
    ProvisioningError,
    UnsafePathError,
)
from .host import GpuInfo, HostCapabilities
from .schema import EngineFilenameSchema, ParsedEngineName
from .serving import open_engine, resolve_engine
from .sidecar import Sha256Sidecar

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig",
    "BackboneSpec",
    "BackendError",
    "BackendUnavailableError",
    "CacheError",
    "CompileEngineCallable",
    "CompileOutcome",
    "ConfigError",
    "EngineCacheEntry",
    "EngineCompileRequest",
    "EngineCompileResult",
    "EngineCompileSummary",
    "EngineCompiler",
    "EngineFilenameSchema",
    "EngineNotReadyError",
    "EngineOutput",
    "GpuInfo",
    "HostCapabilities",
    "HostProbeError",
    "InputShape",
    "NoGpuError",
    "ParsedEngineName",
    "ProvisioningConfig",
    "ProvisioningError",
    "Sha256Sidecar",
    "UnsafePathError",
    "build_backbone_specs",
    "build_compile_request",
    "build_engine_compiler",
    "load_config",
    "open_engine",
    "probe_host_for",
    "resolve_engine",
]
