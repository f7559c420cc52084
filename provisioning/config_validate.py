"""The ``validate:`` criteria of a backbone: what an engine must show before it is published.

``validate: true`` means the defaults: random inputs from seed 0, the precision's
tolerances, ``allclose``. A mapping sets any of the criteria: fixed input values (or an
``.npz`` of samples), tolerances, the cosine metric, the number of runs, a latency bound and
the seed. :func:`parse_validate` checks one backbone's field; :class:`ValidationCriteria` is
the frozen result the specs, the manifest and the qualification read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_fields import Where, choice, names, nested_shape, path_field, shown

VALIDATION_METRICS = ("allclose", "cosine")
VALIDATE_KEYS = ("inputs", "rtol", "atol", "metric", "min_cosine", "runs", "max_latency_ms", "seed")
DEFAULT_VALIDATION_RUNS = 10
DEFAULT_MIN_COSINE = 0.999


@dataclass(frozen=True)
class ValidationCriteria:
    """What ``validate:`` asks of an engine before it is published (or reused).

    ``validate: true`` is the defaults: random inputs from seed 0, the precision's
    tolerances, ``allclose``. ``fixed_inputs`` holds values given in the YAML as JSON text
    (frozen and comparable); ``inputs_file`` an ``.npz`` of samples.
    """

    enabled: bool = False
    fixed_inputs: tuple[tuple[str, str], ...] = ()
    inputs_file: Path | None = None
    rtol: float | None = None
    atol: float | None = None
    metric: str = "allclose"
    min_cosine: float = DEFAULT_MIN_COSINE
    runs: int = DEFAULT_VALIDATION_RUNS
    max_latency_ms: float | None = None
    seed: int = 0

    def __bool__(self) -> bool:
        return self.enabled

    def as_dict(self) -> dict[str, Any]:
        """The criteria as recorded in the manifest (the input file by name; its digest is added by the caller)."""
        return {
            "inputs": {name: json.loads(value) for name, value in self.fixed_inputs},
            "inputs_file": self.inputs_file.name if self.inputs_file else None,
            "rtol": self.rtol, "atol": self.atol, "metric": self.metric,
            "min_cosine": self.min_cosine if self.metric == "cosine" else None,
            "runs": self.runs, "max_latency_ms": self.max_latency_ms, "seed": self.seed,
        }


def criteria_of(validate: "ValidationCriteria | bool") -> ValidationCriteria:
    """``validate`` as criteria (a plain bool means the defaults, or nothing)."""
    if isinstance(validate, ValidationCriteria):
        return validate
    return ValidationCriteria(enabled=bool(validate))


def parse_validate(raw: Any, base: Path, where: Where, name: str) -> ValidationCriteria:
    """``validate: true | false`` or a mapping of criteria; each bad field is one line."""
    if isinstance(raw, bool):
        return ValidationCriteria(enabled=raw)
    if not isinstance(raw, dict):
        raise where.error(f"must be true, false or a mapping (inputs, rtol, atol, metric, runs, ...), got {shown(raw)}",
                          backbone=name, key="validate")
    unknown = [k for k in raw if k not in VALIDATE_KEYS]
    if unknown:
        raise where.error(f"unknown key(s) {names(unknown)}; allowed keys are {', '.join(VALIDATE_KEYS)}",
                          backbone=name, key="validate")

    def number(key: str, *, low: float, high: float | None = None, strict: bool = False) -> float | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise where.error(f"must be a number, got {shown(raw.get(key))}", backbone=name, key=f"validate.{key}")
        if value < low or (strict and value == low) or (high is not None and value > high):
            bound = f"greater than {low:g}" if strict else f"at least {low:g}"
            bound += f" and at most {high:g}" if high is not None else ""
            raise where.error(f"{value:g} must be {bound}", backbone=name, key=f"validate.{key}")
        return float(value)

    metric = choice(raw.get("metric", "allclose"), VALIDATION_METRICS, where, backbone=name, key="validate.metric")
    min_cosine = number("min_cosine", low=-1.0, high=1.0)
    if min_cosine is not None and metric != "cosine":
        raise where.error("applies only to metric: cosine", backbone=name, key="validate.min_cosine")
    runs = raw.get("runs", DEFAULT_VALIDATION_RUNS)
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= 10000:
        raise where.error(f"must be a whole number of runs from 1 to 10000, got {shown(runs)}",
                          backbone=name, key="validate.runs")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise where.error(f"must be a whole number from 0 to 2**32-1, got {shown(seed)}",
                          backbone=name, key="validate.seed")
    fixed: list[tuple[str, str]] = []
    inputs_file = None
    values = raw.get("inputs")
    if isinstance(values, str):
        inputs_file = path_field(values, base, where, backbone=name, key="validate.inputs")
        if inputs_file.suffix != ".npz":
            raise where.error(f"{values} is not an .npz file (one array per input name, numpy.savez)",
                              backbone=name, key="validate.inputs")
        if not inputs_file.is_file():
            raise where.error(f"file {inputs_file} not found; fix the path or write it with numpy.savez",
                              backbone=name, key="validate.inputs")
    elif isinstance(values, dict):
        for input_name, value in values.items():
            key = f"validate.inputs.{input_name}"
            if not isinstance(input_name, str) or not input_name:
                raise where.error("input names must be non-empty strings", backbone=name, key="validate.inputs")
            if nested_shape(value) is None:
                raise where.error(f"{shown(value)} is not a number or a rectangular nested list of numbers",
                                  backbone=name, key=key)
            fixed.append((input_name, json.dumps(value)))
    elif values is not None:
        raise where.error("must map input names to values (sr: 16000) or name an .npz file",
                          backbone=name, key="validate.inputs")
    return ValidationCriteria(
        enabled=True, fixed_inputs=tuple(sorted(fixed)), inputs_file=inputs_file,
        rtol=number("rtol", low=0.0), atol=number("atol", low=0.0), metric=metric,
        min_cosine=DEFAULT_MIN_COSINE if min_cosine is None else min_cosine, runs=runs,
        max_latency_ms=number("max_latency_ms", low=0.0, strict=True), seed=seed,
    )
