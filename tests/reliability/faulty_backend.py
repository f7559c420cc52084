"""A fault injector for the reliability suite: the real ONNX Runtime backend, made slow or short of disk.

It is selected by the test projects' ``dodo.py`` through the plugin's ``backend_factory``
injection point (``engine_tasks(backend_factory=make_backend)``), or by running this module
as the library call (``python -m tests.reliability.faulty_backend CONFIG``). Production code
knows nothing about it. Environment variables (all optional, read per process):

- ``RELIABILITY_BUILD_DELAY_S``: sleep this long before compiling (a long TensorRT build),
- ``RELIABILITY_WRITE_DELAY_S``: throttle every cache write to 1 KiB chunks with this pause
  between chunks, so a SIGKILL can land inside the engine, manifest or sidecar write,
- ``RELIABILITY_FSIZE_AT_PUBLISH``: while the compiled engine is published, cap the size of any
  file this process writes (RLIMIT_FSIZE, SIGXFSZ ignored): a disk that is full during publication,
- ``RELIABILITY_PHASE_LOG``: append ``<pid> <model> <phase>`` lines, to tell where a kill landed.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from provisioning.backends.onnxruntime import OnnxRuntimeBackend

BUILD_DELAY = "RELIABILITY_BUILD_DELAY_S"
WRITE_DELAY = "RELIABILITY_WRITE_DELAY_S"
FSIZE_AT_PUBLISH = "RELIABILITY_FSIZE_AT_PUBLISH"
PHASE_LOG = "RELIABILITY_PHASE_LOG"
THROTTLED_CHUNK = 1024


def _phase(model: str, phase: str) -> None:
    path = os.environ.get(PHASE_LOG)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {model} {phase}\n".encode())
        finally:
            os.close(fd)


def _throttle_writes(delay: float) -> None:
    """Make the sidecar module write in small, slow chunks (this process only)."""
    from provisioning import sidecar

    if getattr(sidecar, "_reliability_throttled", False):
        return
    real_write_all = sidecar.write_all

    def slow_write_all(fd: int, data: memoryview) -> None:
        for start in range(0, len(data), THROTTLED_CHUNK):
            real_write_all(fd, data[start : start + THROTTLED_CHUNK])
            time.sleep(delay)

    sidecar.write_all = slow_write_all
    sidecar._reliability_throttled = True


class _PhaseOutput:
    """Wraps the compiler's EngineOutput: records phases and arms the disk limit before publishing."""

    def __init__(self, inner: Any, model: str) -> None:
        self._inner = inner
        self._model = model
        self.scratch_dir = inner.scratch_dir
        self.path = inner.path

    def progress(self, phase: str, detail: str = "") -> None:
        self._inner.progress(phase, detail)

    def write(self, payload: Any, notes: Any = None) -> None:
        limit = os.environ.get(FSIZE_AT_PUBLISH)
        before = resource.getrlimit(resource.RLIMIT_FSIZE)
        slow_writes = bool(os.environ.get(WRITE_DELAY)) and os.getpid() % 2 == 1
        if isinstance(payload, Path) and (limit or slow_writes):
            # Publish bytes, as TensorRT does with its serialized plan. A scratch file is renamed
            # into the cache without a write, so the disk can only fill, and a kill can only land
            # mid-engine-write, when the engine is written: half the kill runs (odd pids) take
            # that path, the other half the rename path ONNX Runtime's scratch files take.
            payload = payload.read_bytes()
        if limit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), before[1]))
        try:
            _phase(self._model, "publish")
            self._inner.write(payload, notes)
            _phase(self._model, "published")
        finally:  # the disk frees up again: what follows (doit's database) is not under test
            resource.setrlimit(resource.RLIMIT_FSIZE, before)

    @property
    def written(self) -> bool:
        return self._inner.written


class FaultyBackend:
    """The real ONNX Runtime backend behind configurable delays and disk limits."""

    name = "onnxruntime"

    def __init__(self) -> None:
        self._inner = OnnxRuntimeBackend()
        delay = float(os.environ.get(WRITE_DELAY) or 0)
        if delay > 0:
            _throttle_writes(delay)

    def compile_engine(self, spec: Any, host: Any, output: Any) -> None:
        """Sleep (a long build), compile with ONNX Runtime, publish through the real protocol."""
        _phase(spec.model_name, "compile")
        time.sleep(float(os.environ.get(BUILD_DELAY) or 0))
        self._inner.compile_engine(spec, host, _PhaseOutput(output, spec.model_name))


def make_backend(name: str) -> FaultyBackend:
    """The ``backend_factory`` for test dodo files (module level, so it pickles for ``doit -n``)."""
    assert name == "onnxruntime", name
    return FaultyBackend()


def main(argv: list[str]) -> int:
    """The library call: compile a corpus with the faulty backend; one line per backbone."""
    from provisioning import EngineCompiler, ProvisioningError
    from provisioning.compose import build_compile_request, load_config

    try:
        config = load_config(argv[0])
        request = build_compile_request(config)
        summary = EngineCompiler(make_backend(request.host.backend), heartbeat_s=0).compile_engines_for_corpus(request)
    except ProvisioningError as exc:
        print(f"ERROR: {str(exc).splitlines()[0]}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    for result in summary:
        print(result.outcome.value, result.model_name, result.entry.file_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
