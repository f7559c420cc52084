"""``validate:`` in the config: every bad field is one ConfigError line naming the field.

Form errors come from :func:`provisioning.load_config`; facts only the ONNX knows (input
names, element types, shapes) from :func:`provisioning.build_backbone_specs`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from provisioning import ConfigError, build_backbone_specs, load_config
from provisioning.config import DEFAULT_MIN_COSINE, DEFAULT_VALIDATION_RUNS, ValidationCriteria
from tests.conftest import shipped_file

DET = {"model_name": "det", "onnx": "models/det.onnx"}  # images FLOAT [1, 3, 32, 32], static
CLS_PROFILE = {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}  # features FLOAT [batch, 64]


def _silero_onnx() -> Path:
    return shipped_file("silero_vad", "data/silero_vad.onnx")


def _write(folder: Path, document) -> Path:
    path = folder / "corpus.yaml"
    if not isinstance(document, str):
        document = yaml.safe_dump({"cache_dir": "cache", "backend": "onnxruntime", **document})
    path.write_text(document)
    return path


def _det(validate, **extra) -> dict:
    return {"backbones": [{**DET, **extra, "validate": validate}]}


def _error(folder: Path, document, *, specs: bool = False) -> str:
    path = _write(folder, document)
    with pytest.raises(ConfigError) as info:
        config = load_config(path)
        if specs:
            build_backbone_specs(config)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


def _criteria(folder: Path, document) -> ValidationCriteria:
    config = load_config(_write(folder, document))
    specs = build_backbone_specs(config)  # the ONNX-level checks pass too
    assert specs[0].criteria == config.backbones[0].validate
    return config.backbones[0].validate


FORM_ERRORS = [
    # (validate value, the field named, fragments of the message)
    ("yes", "validate", ["true, false or a mapping"]),
    (1, "validate", ["true, false or a mapping"]),
    ([1, 2], "validate", ["true, false or a mapping"]),
    ({"rtoll": 0.1}, "validate", ["unknown key(s) rtoll", "allowed keys are inputs, rtol"]),
    ({"rtol": -0.1}, "validate.rtol", ["-0.1 must be at least 0"]),
    ({"rtol": [0.1]}, "validate.rtol", ["must be a number"]),
    ({"rtol": True}, "validate.rtol", ["must be a number"]),
    ({"rtol": ".nan"}, "validate.rtol", ["must be a number"]),
    ({"atol": "abc"}, "validate.atol", ["must be a number, got 'abc'"]),
    ({"atol": "inf"}, "validate.atol", ["must be a number"]),
    ({"metric": "l2"}, "validate.metric", ["unknown value 'l2'", "allclose, cosine"]),
    ({"min_cosine": 0.9}, "validate.min_cosine", ["applies only to metric: cosine"]),
    ({"metric": "cosine", "min_cosine": 1.5}, "validate.min_cosine", ["1.5 must be at least -1 and at most 1"]),
    ({"metric": "cosine", "min_cosine": "x"}, "validate.min_cosine", ["must be a number"]),
    ({"runs": 0}, "validate.runs", ["from 1 to 10000, got 0"]),
    ({"runs": 1.5}, "validate.runs", ["got 1.5"]),
    ({"runs": True}, "validate.runs", ["got True"]),
    ({"runs": 10001}, "validate.runs", ["from 1 to 10000"]),
    ({"seed": -1}, "validate.seed", ["got -1"]),
    ({"seed": 2**32}, "validate.seed", ["2**32-1"]),
    ({"seed": "0"}, "validate.seed", ["got '0'"]),
    ({"max_latency_ms": 0}, "validate.max_latency_ms", ["0 must be greater than 0"]),
    ({"max_latency_ms": -5}, "validate.max_latency_ms", ["-5 must be greater than 0"]),
    ({"max_latency_ms": "fast"}, "validate.max_latency_ms", ["must be a number"]),
    ({"inputs": [1, 2]}, "validate.inputs", ["must map input names to values", ".npz"]),
    ({"inputs": 5}, "validate.inputs", ["must map input names to values"]),
    ({"inputs": "samples.npy"}, "validate.inputs", ["is not an .npz file"]),
    ({"inputs": ""}, "validate.inputs", ["non-empty path"]),
    ({"inputs": "data/missing.npz"}, "validate.inputs", ["not found", "missing.npz"]),
    ({"inputs": {"images": [[1], [2, 3]]}}, "validate.inputs.images", ["not a number or a rectangular nested list"]),
    ({"inputs": {"images": []}}, "validate.inputs.images", ["rectangular"]),
    ({"inputs": {"images": "zeros"}}, "validate.inputs.images", ["rectangular"]),
    ({"inputs": {"images": None}}, "validate.inputs.images", ["rectangular"]),
]


@pytest.mark.parametrize(("validate", "field", "fragments"), FORM_ERRORS,
                         ids=[f"{f}={v!r}"[:60] for v, f, _ in FORM_ERRORS])
def test_a_bad_validate_field_is_one_line_naming_it(corpus_dir: Path, validate, field: str, fragments) -> None:
    message = _error(corpus_dir, _det(validate))
    assert f"backbone det: field '{field}': " in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_an_inputs_path_that_is_a_folder_named_npz_is_refused(corpus_dir: Path) -> None:
    (corpus_dir / "data.npz").mkdir()
    message = _error(corpus_dir, _det({"inputs": "data.npz"}))
    assert "field 'validate.inputs'" in message and "not found" in message


ONNX_ERRORS = [
    # (backbone, validate, the field named, fragments)
    (DET, {"inputs": {"nope": 1.0}}, "validate.inputs.nope", ["the ONNX has no input 'nope'", "its inputs: images"]),
    (DET, {"inputs": {"images": [[1, 2]]}}, "validate.inputs.images",
     ["shape [1, 2] does not fit input 'images'", "[1, 3, 32, 32]"]),
    (DET, {"inputs": {"images": 0.5}}, "validate.inputs.images", ["shape [] does not fit"]),
    ({"model_name": "cls", "onnx": "models/cls.onnx", "inputs": CLS_PROFILE},
     {"inputs": {"features": [[0.0] * 63]}}, "validate.inputs.features",
     ["shape [1, 63] does not fit", "between [1, 64] and [32, 64] (the profile)"]),
    ({"model_name": "cls", "onnx": "models/cls.onnx", "inputs": CLS_PROFILE},
     {"inputs": {"features": [[0.0] * 64] * 33}}, "validate.inputs.features", ["shape [33, 64] does not fit"]),
]


@pytest.mark.parametrize(("backbone", "validate", "field", "fragments"), ONNX_ERRORS,
                         ids=["unknown-input", "det-shape", "det-scalar", "cls-axis", "cls-batch"])
def test_a_fixed_value_the_onnx_cannot_take_is_one_line_naming_it(corpus_dir: Path, backbone, validate, field,
                                                                    fragments) -> None:
    load_config(_write(corpus_dir, {"backbones": [{**backbone, "validate": validate}]}))  # the form is fine
    message = _error(corpus_dir, {"backbones": [{**backbone, "validate": validate}]}, specs=True)
    assert f"backbone {backbone['model_name']}: field '{field}': " in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_validate_false_skips_the_onnx_checks_of_fixed_values(corpus_dir: Path) -> None:
    """``validate: false`` carries no criteria at all: nothing to check against the ONNX."""
    config = load_config(_write(corpus_dir, _det(False)))
    assert build_backbone_specs(config)[0].criteria.enabled is False


@pytest.mark.parametrize(("sr", "fragment"), [
    (16000.5, "input 'sr' is INT64; give whole numbers"),
    (True, "input 'sr' is INT64; give whole numbers"),
    ([16000], "shape [1] does not fit input 'sr'"),
])
def test_silero_sr_must_be_a_whole_scalar(corpus_dir: Path, sr, fragment) -> None:
    onnx = _silero_onnx()
    backbone = {"model_name": "vad", "onnx": str(onnx), "inputs": {"input": [1, 512], "state": [2, 1, 128]},
                "validate": {"inputs": {"sr": sr}}}
    message = _error(corpus_dir, {"backbones": [backbone]}, specs=True)
    assert "backbone vad: field 'validate.inputs.sr': " in message, message
    assert fragment in message, message


def test_silero_with_a_fixed_sr_is_accepted(corpus_dir: Path) -> None:
    onnx = _silero_onnx()
    backbone = {"model_name": "vad", "onnx": str(onnx), "inputs": {"input": [1, 512], "state": [2, 1, 128]},
                "validate": {"inputs": {"sr": 16000}, "runs": 3}}
    criteria = _criteria(corpus_dir, {"backbones": [backbone]})
    assert criteria.enabled and criteria.runs == 3
    assert criteria.as_dict()["inputs"] == {"sr": 16000}


def test_validate_true_and_false_are_the_defaults_or_nothing(corpus_dir: Path) -> None:
    on = _criteria(corpus_dir, _det(True))
    assert on == ValidationCriteria(enabled=True)
    assert (on.rtol, on.atol, on.metric, on.runs, on.seed, on.max_latency_ms) == \
        (None, None, "allclose", DEFAULT_VALIDATION_RUNS, 0, None)
    assert not _criteria(corpus_dir, _det(False))
    assert not _criteria(corpus_dir, {"backbones": [DET]})  # absent: off
    empty = _criteria(corpus_dir, _det({}))  # an empty mapping asks for the defaults
    assert empty.enabled and empty.as_dict() == on.as_dict()


def test_yaml_exponent_without_a_dot_is_read_as_a_number(corpus_dir: Path) -> None:
    """PyYAML (YAML 1.1) reads ``1e-3`` as the string '1e-3'; the config takes it as 0.001."""
    assert yaml.safe_load("rtol: 1e-3")["rtol"] == "1e-3"  # the premise
    text = ("cache_dir: cache\nbackend: onnxruntime\nbackbones:\n  - model_name: det\n    onnx: models/det.onnx\n"
            "    validate: {rtol: 1e-3, atol: 5e-6, max_latency_ms: 2e+1}\n")
    criteria = _criteria(corpus_dir, text)
    assert criteria.rtol == pytest.approx(0.001) and isinstance(criteria.rtol, float)
    assert criteria.atol == pytest.approx(5e-6)
    assert criteria.max_latency_ms == pytest.approx(20.0)


def test_a_full_mapping_is_parsed_and_recorded(corpus_dir: Path) -> None:
    np.savez(corpus_dir / "samples.npz", features=np.zeros((2, 4, 64), np.float32))
    backbone = {"model_name": "cls", "onnx": "models/cls.onnx", "inputs": CLS_PROFILE,
                "validate": {"inputs": "samples.npz", "rtol": 0, "atol": 0.5, "metric": "cosine",
                             "min_cosine": 0.99, "runs": 2, "max_latency_ms": 50, "seed": 7}}
    criteria = _criteria(corpus_dir, {"backbones": [backbone]})
    assert criteria.inputs_file == corpus_dir / "samples.npz"  # relative to the config's folder
    assert criteria.as_dict() == {"inputs": {}, "inputs_file": "samples.npz", "rtol": 0.0, "atol": 0.5,
                                  "metric": "cosine", "min_cosine": 0.99, "runs": 2, "max_latency_ms": 50.0,
                                  "seed": 7}
    spec = build_backbone_specs(load_config(corpus_dir / "corpus.yaml"))[0]
    assert spec.validation_files == (corpus_dir / "samples.npz",)


def test_min_cosine_defaults_only_under_cosine(corpus_dir: Path) -> None:
    cosine = _criteria(corpus_dir, _det({"metric": "cosine"}))
    assert cosine.min_cosine == DEFAULT_MIN_COSINE and cosine.as_dict()["min_cosine"] == DEFAULT_MIN_COSINE
    assert _criteria(corpus_dir, _det({"metric": "allclose"})).as_dict()["min_cosine"] is None


def test_fixed_values_are_frozen_in_name_order(corpus_dir: Path) -> None:
    backbone = {"model_name": "cls", "onnx": "models/cls.onnx", "inputs": CLS_PROFILE,
                "validate": {"inputs": {"features": [[0.25] * 64] * 2}}}
    criteria = _criteria(corpus_dir, {"backbones": [backbone]})
    assert [name for name, _ in criteria.fixed_inputs] == ["features"]
    assert criteria.as_dict()["inputs"] == {"features": [[0.25] * 64] * 2}
    hash(criteria)  # frozen and hashable: part of a picklable task argument
