#!/bin/sh
# What works on this GPU machine (NVML, CUDA, a TensorRT-RTX engine, tests/gpu): one table,
# exit 0 when nothing FAILED. Needs only python3 and the NVIDIA driver; wheels carried in
# wheels/ (or $WHEELS) are installed first without network. See benchmarks/gpu_check.py.
#   sh benchmarks/gpu_check.sh [--no-install] [--no-pytest]
set -u
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    python=$(command -v python3 || command -v python || true)
fi
if [ -z "$python" ]; then
    echo "gpu_check: no python3 on PATH; install python3 or set PYTHON=/path/to/python" >&2
    exit 2
fi
exec "$python" "$here/gpu_check.py" "$@"
