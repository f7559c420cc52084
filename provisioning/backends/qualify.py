"""Qualify an engine before it is published or reused: parity with the source model, and latency.

The reference is the source ONNX on ONNX Runtime's ``CPUExecutionProvider`` with graph
optimizations disabled, so it is not itself an optimized engine. Inputs are the values
the config fixes (``validate.inputs``), the samples of an ``.npz`` file, and for the rest
random values from a seeded generator at the profile's ``opt`` shape, so two runs
validate with the same data. Every output is compared; the report (max abs and rel
difference and cosine similarity per output, p50/p90/max latency, the criteria, the seed,
the input file's digest, the machine and its load) goes into the manifest's notes and
into ``events.jsonl``. A criterion that is not met is :class:`ValidationFailed`, one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import BackendError, ConfigError, ValidationFailed
from ..qualification import criteria_record
from .validation import _NUMPY_TYPES, TOLERANCES, _first_line, random_inputs

if TYPE_CHECKING:  # pragma: no cover
    from ..specs import BackboneSpec

RunEngine = Callable[[Mapping[str, Any]], Mapping[str, Any]]
REFERENCE = "source ONNX on ONNX Runtime CPUExecutionProvider, ORT_DISABLE_ALL"
_MAX_SAMPLES = 64


def qualify(spec: "BackboneSpec", run_engine: RunEngine, *, tolerance: str, device: str) -> dict[str, Any]:
    """Run ``run_engine`` next to the reference on the validation inputs; the report, or ValidationFailed."""
    import numpy as np

    where = f"backbone {spec.model_name}"
    criteria = spec.criteria
    rtol_default, atol_default = TOLERANCES.get(tolerance, TOLERANCES["fp32"])
    rtol = criteria.rtol if criteria.rtol is not None else rtol_default
    atol = criteria.atol if criteria.atol is not None else atol_default
    samples, file_digest = _samples(spec, where)
    reference = _reference_session(spec, where)
    names = [o.name for o in reference.get_outputs()]
    stats: dict[str, dict[str, float]] = {}
    failing: dict[str, str] = {}  # output -> what it missed (the last sample's text; replaced below)
    for feed in samples:
        want = _run_reference(reference, names, feed, where)
        got = run_engine(feed)
        for name, expected in zip(names, want):
            if name not in got:
                raise ValidationFailed(f"{where}: validation: the engine has no output {name!r}; "
                                       "the engine was not published")
            problem = _compare(name, np.asarray(expected), np.asarray(got[name]), stats, criteria, rtol, atol)
            if problem and name not in failing:
                failing[name] = problem
    # one line per failing output, with its worst figure over every sample
    failures = [_worst(name, failing[name], stats.get(name), criteria, rtol, atol) for name in names if name in failing]
    latency = _latency(run_engine, samples[0], criteria.runs)
    report = {
        "passed": False,
        "criteria": criteria_record(spec),
        "tolerance": {"basis": tolerance, "rtol": rtol, "atol": atol, "metric": criteria.metric,
                      **({"min_cosine": criteria.min_cosine} if criteria.metric == "cosine" else {})},
        "seed": criteria.seed,
        "samples": len(samples),
        "inputs_file_sha256": file_digest,
        "reference": REFERENCE,
        "outputs": stats,
        "latency_ms": latency,
        "machine": {"device": device, "load_average": round(os.getloadavg()[0], 2)},
    }
    if criteria.max_latency_ms is not None and latency["p90"] > criteria.max_latency_ms:
        failures.append(f"latency p90 {latency['p90']:.3g} ms > max_latency_ms {criteria.max_latency_ms:g} "
                        f"({criteria.runs} runs on {device}, load {report['machine']['load_average']})")
    if failures:
        raise ValidationFailed(f"{where}: validation: {'; '.join(failures)}; the engine was not published")
    report["passed"] = True
    return report


def _compare(name: str, want: Any, got: Any, stats: dict, criteria: Any, rtol: float, atol: float) -> str | None:
    """Update ``stats[name]`` with this sample; the failure text when the output misses its criterion."""
    import numpy as np

    if want.shape != got.shape:
        return f"output {name!r} has shape {list(got.shape)}, the source model {list(want.shape)}"
    entry = stats.setdefault(name, {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "cosine": 1.0})
    if want.dtype.kind not in "fc":
        differ = int(np.count_nonzero(want != got))
        entry["max_abs_diff"] = max(entry["max_abs_diff"], float(differ))
        return f"output {name!r} differs in {differ} of {want.size} values" if differ else None
    a, b = got.astype("float64").ravel(), want.astype("float64").ravel()
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(b), 1e-12)).max()) if diff.size else 0.0
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(np.dot(a, b) / norms) if norms > 0 else (1.0 if max_abs == 0 else 0.0)
    entry["max_abs_diff"] = max(entry["max_abs_diff"], max_abs)
    entry["max_rel_diff"] = max(entry["max_rel_diff"], max_rel)
    entry["cosine"] = min(entry["cosine"], cosine)
    if not np.all(np.isfinite(a) == np.isfinite(b)):
        return f"output {name!r} has NaN or infinite values where the source model has none"
    if criteria.metric == "cosine":
        if cosine < criteria.min_cosine:
            return f"output {name!r} cosine similarity {cosine:.6g} < min_cosine {criteria.min_cosine:g}"
        return None
    if not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        return f"output {name!r} max abs diff {max_abs:.3g} > atol {atol:g} (rtol {rtol:g})"
    return None


def _worst(name: str, first: str, entry: Mapping[str, float] | None, criteria: Any, rtol: float,
           atol: float) -> str:
    """The failure text of one output over all samples (shape and NaN failures stay as found)."""
    if entry is None or "max abs diff" not in first and "cosine similarity" not in first:
        return first
    if criteria.metric == "cosine":
        return f"output {name!r} cosine similarity {entry['cosine']:.6g} < min_cosine {criteria.min_cosine:g}"
    return f"output {name!r} max abs diff {entry['max_abs_diff']:.3g} > atol {atol:g} (rtol {rtol:g})"


def _latency(run_engine: RunEngine, feed: Mapping[str, Any], runs: int) -> dict[str, float]:
    """p50, p90 and max of ``runs`` timed runs, after one warm-up run."""
    run_engine(feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run_engine(feed)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()

    def pick(q: float) -> float:
        return round(times[min(len(times) - 1, int(q * len(times)))], 4)

    return {"p50": pick(0.5), "p90": pick(0.9), "max": round(times[-1], 4), "runs": runs}


def _samples(spec: "BackboneSpec", where: str) -> tuple[list[dict[str, Any]], str | None]:
    """The feeds validation runs: file samples and fixed values over seeded random inputs."""
    import numpy as np

    from ..onnxinfo import inspect_onnx

    criteria = spec.criteria
    inputs = inspect_onnx(spec.onnx_path).inputs
    types = {i.name: _NUMPY_TYPES.get(i.elem_type) for i in inputs}
    fixed = {name: np.asarray(json.loads(text), dtype=types.get(name) or None)
             for name, text in criteria.fixed_inputs}
    columns: dict[str, list[Any]] = {}
    digest = None
    if criteria.inputs_file is not None:
        digest, columns = _file_samples(criteria.inputs_file, inputs, types, where)
    count = max([len(v) for v in columns.values()] + [1])
    rng_seed = criteria.seed
    samples = []
    for index in range(min(count, _MAX_SAMPLES)):
        try:
            feed = random_inputs(inputs, spec.input_shapes, seed=rng_seed + index)
        except ValueError as exc:
            raise BackendError(f"{where}: validation: {exc}; give its values under validate.inputs") from None
        feed.update(fixed)
        for name, values in columns.items():
            feed[name] = values[index % len(values)]
        samples.append(feed)
    return samples, digest


def _file_samples(path: Any, inputs: Any, types: Mapping[str, Any], where: str) -> tuple[str, dict[str, list]]:
    """Per input, the samples of an ``.npz``: an array with one more axis than the input holds several."""
    import numpy as np

    key = f"{where}: field 'validate.inputs'"
    try:
        blob = path.read_bytes()
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read {path} as an .npz of arrays ({_first_line(exc)})") from None
    ranks = {i.name: len(i.dims) for i in inputs}
    columns: dict[str, list] = {}
    for name, array in arrays.items():
        if name not in ranks:
            raise ConfigError(f"{key}: {path.name} has an array {name!r}, which is not an input of the ONNX "
                              f"(its inputs: {', '.join(ranks)})")
        dtype = types.get(name)
        array = array.astype(dtype) if dtype else array
        if array.ndim == ranks[name] + 1:
            columns[name] = [array[i] for i in range(array.shape[0])]
        elif array.ndim == ranks[name]:
            columns[name] = [array]
        else:
            raise ConfigError(f"{key}: array {name!r} in {path.name} has rank {array.ndim}; input {name!r} "
                              f"has rank {ranks[name]} (add a leading samples axis for several)")
    return hashlib.sha256(blob).hexdigest(), columns


def _reference_session(spec: "BackboneSpec", where: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(spec.onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise BackendError(f"{where}: validation cannot load the source model ({_first_line(exc)})") from None


def _run_reference(session: Any, names: list[str], feed: Mapping[str, Any], where: str) -> list[Any]:
    try:
        return session.run(names, dict(feed))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's InvalidArgument/Fail/...
        shapes = ", ".join(f"{k} {list(getattr(v, 'shape', []))}" for k, v in feed.items())
        cause = _first_line(exc)
        cause = cause if len(cause) <= 160 else cause[:157] + "..."  # the fix after it must fit one FAILED line
        raise BackendError(
            f"{where}: validation cannot run the source model on its inputs ({shapes}): {cause}; "
            "give the values the model needs under validate.inputs (for example sr: 16000), shapes under 'inputs', "
            "or set validate: false"
        ) from None


def cpu_name() -> str:
    """This machine's CPU model (for the report's context)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
