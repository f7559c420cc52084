"""Pieces of validation shared by backends: seeded random inputs, tolerances, running an engine.

The comparison with the source model and the report live in :mod:`.qualify`.
"""

from __future__ import annotations

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
