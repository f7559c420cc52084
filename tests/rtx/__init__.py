"""Real TensorRT for RTX: builds, errors and doit runs with the installed ``tensorrt_rtx``."""
