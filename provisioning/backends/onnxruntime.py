"""The ONNX Runtime CPU backend: the embedded default where no GPU is present.

The "engine" is the model as ONNX Runtime optimises it at ``ORT_ENABLE_ALL``, saved with
``optimized_model_filepath``. That file contains layouts chosen for this CPU (ONNX
Runtime itself warns it must only be used in the same environment), which is why its
host key carries the CPU's instruction-set flags. int8 goes through ONNX Runtime's own
dynamic quantization first. onnxruntime is imported only here, and only when building.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackendError, BackendUnavailableError, CacheError
from .base import EngineOutput, writing_back
from .validation import run_engine

if TYPE_CHECKING:  # pragma: no cover
    from ..specs import BackboneSpec
    from ..host import HostCapabilities


class OnnxRuntimeBackend:
    """Compiles a backbone into an ONNX Runtime optimised model for this CPU."""

    name = "onnxruntime"

    def compile_engine(self, spec: "BackboneSpec", host: "HostCapabilities", output: EngineOutput) -> None:
        """Optimise (and for int8 quantise) ``spec``'s model, optionally validate, then publish it."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(f"onnxruntime cannot be imported ({exc}); pip install onnxruntime") from None
        source = spec.onnx_path
        notes = {"optimization": "ORT_ENABLE_ALL", "precision_mode": "fp32", "providers": ["CPUExecutionProvider"]}
        if spec.precision == "int8":
            output.progress("quantize", "dynamic int8 weights")
            source = self._quantize(source, output.scratch_dir / "quantized.onnx", spec.model_name)
            notes["precision_mode"] = "int8 dynamic quantization (onnxruntime.quantization, QInt8 weights)"
        elif spec.precision != "fp32":
            raise BackendError(
                f"backbone {spec.model_name}: the onnxruntime backend builds fp32 and int8, not {spec.precision}"
            )
        optimised = output.scratch_dir / "optimized.onnx"
        output.progress("optimize", "ORT_ENABLE_ALL")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimised)
        options.log_severity_level = 3
        build_session_threads(options)
        try:
            with writing_back(optimised):  # ~0.2 s of a 100 MB model's build is ONNX Runtime writing it
                ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            cause = _write_failure(optimised, exc)
            if cause is not None:  # the model loaded; saving the optimised copy failed
                raise CacheError(
                    f"backbone {spec.model_name}: cannot write the optimised {spec.onnx_path.name} into "
                    f"{output.scratch_dir.parent} ({cause}); free disk space or raise the file size limit, "
                    "then run again") from exc
            raise BackendError(
                f"backbone {spec.model_name}: ONNX Runtime could not load {spec.onnx_path.name}: {_first_line(exc)}"
            ) from exc
        if not optimised.is_file() or optimised.stat().st_size == 0:
            raise BackendError(f"backbone {spec.model_name}: ONNX Runtime wrote no optimised model")
        if spec.validate:
            output.progress("validate", "the engine next to the source model")
            notes["validation"] = self._qualify(ort, optimised, spec)
            notes["validated"] = True
        output.progress("publish")
        output.write(optimised, notes)

    @staticmethod
    def _quantize(source: Path, target: Path, model_name: str) -> Path:
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as exc:  # pragma: no cover - part of the onnxruntime wheel
            raise BackendUnavailableError(f"onnxruntime.quantization is unavailable ({exc})") from None
        root = logging.getLogger()
        quiet = _QuantizerAdvice()
        root.addFilter(quiet)
        try:
            import onnx

            # A ModelProto, not a path: given a path, the quantizer writes '<model>-inferred.onnx'
            # beside the source, which collides between processes and fails in read-only folders.
            quantize_dynamic(onnx.load_model(str(source)), str(target), weight_type=QuantType.QInt8)
        except Exception as exc:
            raise BackendError(f"backbone {model_name}: int8 dynamic quantization failed: {_first_line(exc)}") from exc
        finally:
            root.removeFilter(quiet)
        return target

    def validate_engine(self, spec: "BackboneSpec", host: "HostCapabilities", engine: Path) -> dict:
        """Qualify a cached engine under today's criteria (no rebuild); ValidationFailed when it misses them."""
        import onnxruntime as ort

        return self._qualify(ort, engine, spec)

    @staticmethod
    def _qualify(ort, engine: Path, spec: "BackboneSpec") -> dict:
        from .qualify import cpu_name, qualify

        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
        compiled = ort.InferenceSession(str(engine), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in compiled.get_outputs()]
        where = f"backbone {spec.model_name}"

        def run(feed):
            return dict(zip(names, run_engine(compiled, names, feed, where)))

        tolerance = "int8" if spec.precision == "int8" else "fp32"
        return qualify(spec, run, tolerance=tolerance, device=f"CPU {cpu_name()}")


THREADS_ENV = "PROVISIONING_ORT_THREADS"


def build_session_threads(options) -> int:
    """One intra-op and one inter-op thread for a build's session (``$PROVISIONING_ORT_THREADS`` overrides).

    A build only optimises the graph, which ONNX Runtime does on the calling thread; by
    default a session also starts one intra-op thread per core, which spin while idle. With
    ``doit -n N`` running N builds at once, N x cores threads would fight over N cores: one
    thread each lets N builds run on N cores. Returns the intra-op count set.
    """
    try:
        threads = max(1, int(os.environ.get(THREADS_ENV, "1")))
    except ValueError:
        threads = 1
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return threads


class _QuantizerAdvice(logging.Filter):
    """Drops the quantizer's generic advice, logged on the root logger, from a build's output."""

    _marker = os.sep + os.path.join("onnxruntime", "quantization") + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self._marker not in record.pathname


_LOW_SPACE = 1 << 20  # below 1 MiB free, a failed write is the disk's fault, not the model's
_WRITE_WORDS = ("serialization failed", "no space left", "file too large", "disk quota")


def _write_failure(target: Path, exc: BaseException) -> str | None:
    """Why ONNX Runtime failed to *write* ``target`` (None: it failed to load the model).

    A full disk or the file-size limit (RLIMIT_FSIZE) surfaces from ONNX Runtime as
    "Protobuf serialization failed" with the file begun but short: tell it from a bad
    model by the limit, the free space of the folder and the message.
    """
    import resource

    written = target.stat().st_size if target.exists() else None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if written is not None and soft != resource.RLIM_INFINITY and written >= soft:
        return f"the file size limit (ulimit -f) of {soft} bytes was reached"
    try:
        stat = os.statvfs(target.parent)
        free = stat.f_bavail * stat.f_frsize
    except OSError:
        free = None
    if free is not None and free < _LOW_SPACE and (written is not None or _says_write(exc)):
        return f"the disk is full: {free} bytes free"
    if _says_write(exc):
        return f"the write failed: {_first_line(exc)}"
    return None


def _says_write(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in _WRITE_WORDS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
