"""Numerical validation shared by backends: random inputs and a precision-aware comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import BackendError

# (rtol, atol) by precision: reduced precisions are compared loosely, fp32 tightly. "tf32" is
# TensorRT fp32 on compute capability 8.0+, where BuilderFlag.TF32 (on by default) lets
# matmul and convolution round inputs to a 10-bit mantissa (about 5e-4 relative per
# product): the strict fp32 tolerance would reject correct engines.
TOLERANCES = {"fp32": (1e-3, 1e-4), "tf32": (1e-2, 1e-3), "fp16": (2e-2, 2e-2), "bf16": (5e-2, 5e-2),
              "int8": (1e-1, 1e-1)}

_NUMPY_TYPES = {
    "FLOAT": "float32", "DOUBLE": "float64", "FLOAT16": "float16",
    "INT8": "int8", "UINT8": "uint8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "BOOL": "bool",
}


def random_inputs(inputs: Sequence[Any], shapes: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """One random feed for ``inputs`` (OnnxInput records), at each profile's ``opt`` shape."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feed = {}
    for item in inputs:
        profile = shapes.get(item.name)
        dims = list(profile.opt) if profile is not None else [d if isinstance(d, int) else 1 for d in item.dims]
        dtype = _NUMPY_TYPES.get(item.elem_type)
        if dtype is None:
            raise ValueError(f"input {item.name!r} has element type {item.elem_type}, which validation cannot feed")
        if dtype == "bool":
            feed[item.name] = rng.integers(0, 2, size=dims).astype(bool)
        elif dtype.startswith(("int", "uint")):
            feed[item.name] = rng.integers(0, 4, size=dims).astype(dtype)
        else:
            feed[item.name] = rng.standard_normal(size=dims).astype(dtype)
    return feed


def compare_outputs(names: Sequence[str], expected: Sequence[Any], actual: Sequence[Any], precision: str) -> list[str]:
    """Mismatch descriptions (empty when every output matches within the precision's tolerance)."""
    import numpy as np

    rtol, atol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    problems = []
    for name, want, got in zip(names, expected, actual):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            problems.append(f"output {name}: shape {got.shape} != {want.shape}")
            continue
        if want.dtype.kind in "fc":
            if not np.allclose(got.astype("float64"), want.astype("float64"), rtol=rtol, atol=atol, equal_nan=True):
                worst = float(np.max(np.abs(got.astype("float64") - want.astype("float64"))))
                problems.append(f"output {name}: max abs difference {worst:.3g} over rtol={rtol}, atol={atol}")
        elif not np.array_equal(want, got):
            problems.append(f"output {name}: values differ")
    return problems


def run_reference(onnx_path: Path, feed: Mapping[str, Any], where: str) -> tuple[list[str], list[Any]]:
    """The source model's outputs for ``feed`` on ONNX Runtime's CPU provider, unoptimised.

    When the source model itself cannot run on the random feed (a shape it does not accept,
    an input whose values matter, such as a sample rate), validation cannot judge the
    engine: that is a clear failure of the build, never a silent pass.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return names, session.run(names, dict(feed))
    except Exception as exc:  # onnxruntime raises its own InvalidArgument/Fail/... types
        shapes = ", ".join(f"{k} {list(getattr(v, 'shape', []))}" for k, v in feed.items())
        raise BackendError(
            f"{where}: validation cannot run the source model on random inputs ({shapes}): "
            f"{_first_line(exc)}; give 'inputs' shapes the model accepts, or set validate: false"
        ) from None


def run_engine(session: Any, names: Sequence[str], feed: Mapping[str, Any], where: str) -> list[Any]:
    """Run a compiled ONNX Runtime engine; a failure is a BackendError (the engine is not published)."""
    try:
        return session.run(list(names), dict(feed))
    except Exception as exc:
        raise BackendError(f"{where}: validation: the compiled engine failed to run: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
