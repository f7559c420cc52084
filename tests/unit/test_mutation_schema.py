"""What mutation testing of provisioning/schema.py found unpinned (benchmarks/mutation.sh).

Engine names are stable across releases and host configs (a change would rebuild every
cached engine, and fleet hosts would stop sharing), odd version strings still give a
name that parses back, and a name that cannot be made says which field is at fault.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provisioning import BackboneSpec, EngineFilenameSchema, HostCapabilities
from provisioning.schema import ParsedEngineName, settings_digest

CPU = HostCapabilities("onnxruntime", "1.23.2", "x86_64", ("avx2", "fma"))


def _fields(**over) -> ParsedEngineName:
    values = dict(model_name="det", precision="fp16", backend_tag="trt", version_tag="10.16.1.11",
                  host_key="sm90-h200", settings_digest="3f2a9c1b")
    values.update(over)
    return ParsedEngineName(**values)


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_the_name_of_an_engine_is_the_same_in_every_release():
    # an upgrade that renamed engines would rebuild every cached one, and a fleet on two releases
    # would stop sharing entries
    spec = BackboneSpec(model_name="det", onnx_path=Path("/m/det.onnx"))
    assert EngineFilenameSchema.build(spec, CPU) == "det.fp32.ort-1.23.2.x86_64-avx2-37308d.94483059.engine"
    assert settings_digest({"precision": "fp16", "inputs": {"x": [1, 2]}, "workspace_mb": 1024}) == "37d9f0db"


def test_the_settings_digest_does_not_depend_on_the_order_settings_are_written_in():
    assert settings_digest({"precision": "fp16", "workspace_mb": 1024, "inputs": {"x": [1], "y": [2]}}) == \
        settings_digest({"inputs": {"y": [2], "x": [1]}, "workspace_mb": 1024, "precision": "fp16"})


@pytest.mark.parametrize("version, shown", [("1.2.3/local build", "1.2.3_local_build"), ("2.0.0RC1", "2.0.0RC1")])
def test_an_odd_backend_version_gives_a_name_that_parses_back(version, shown):
    name = EngineFilenameSchema.compose(_fields(version_tag=version))
    assert name == f"det.fp16.trt-{shown}.sm90-h200.3f2a9c1b.engine"
    assert EngineFilenameSchema.parse(name).version_tag == shown


@pytest.mark.parametrize("field, value, label", [
    ("model_name", "det v2", "model name"),
    ("precision", "fp 16", "precision"),
    ("backend_tag", "t/rt", "backend tag"),
    ("host_key", "SM90", "host key"),
    ("settings_digest", "xyz", "settings digest"),
])
def test_a_field_that_cannot_be_in_a_name_is_named_in_the_error(field, value, label):
    with pytest.raises(ValueError, match=_exactly(f"{label} {value!r} cannot be part of an engine file name")):
        EngineFilenameSchema.compose(_fields(**{field: value}))


def test_a_backend_tag_with_a_dash_is_refused_since_the_name_would_not_parse_back():
    with pytest.raises(ValueError, match=_exactly("backend tag 'trt-rtx' must not contain '-'")):
        EngineFilenameSchema.compose(_fields(backend_tag="trt-rtx"))


def test_a_name_of_200_bytes_is_made_and_one_of_201_is_refused_with_its_length():
    def fields(host_key_length: int) -> ParsedEngineName:  # the longest model name and precision
        return _fields(model_name="m" * 64, precision="p" * 64, host_key="h" * host_key_length)

    base = len(EngineFilenameSchema.compose(fields(1)))
    at_limit = fields(1 + 200 - base)
    assert len(EngineFilenameSchema.compose(at_limit)) == 200
    assert EngineFilenameSchema.parse(EngineFilenameSchema.compose(at_limit)) == at_limit
    with pytest.raises(ValueError, match=_exactly("engine file name would be 201 bytes, over 200")):
        EngineFilenameSchema.compose(fields(2 + 200 - base))
