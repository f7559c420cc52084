"""What mutation testing of provisioning/manifest.py found unpinned (benchmarks/mutation.sh).

The miss lines a user reads (`miss det: ...`), which recorded manifests are a miss rather
than a crash, the size limit on a manifest, and what the manifest file records for people.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from provisioning.manifest import (
    MANIFEST_SCHEMA_VERSION, BuildInputs, built_by_newer_runtime, explain_mismatch, make_manifest,
    manifest_bytes, manifest_path_for, read_manifest,
)

_LIMIT = 1 << 20  # a manifest larger than 1 MiB is not read


def _inputs(**over) -> BuildInputs:
    fields = dict(onnx_sha256="ab" * 32, build_settings={"precision": "fp16"}, host={"arch": "x86_64"},
                  backend="onnxruntime", backend_version="1.23.2")
    fields.update(over)
    return BuildInputs(**fields)


def _recorded(inputs: BuildInputs | dict, **top) -> dict:
    have = inputs.as_dict() if isinstance(inputs, BuildInputs) else inputs
    return {"schema_version": MANIFEST_SCHEMA_VERSION, "inputs": have, **top}


# --- miss lines, word for word -------------------------------------------------------------------

def test_a_manifest_of_another_schema_names_both_versions():
    assert explain_mismatch({"schema_version": 0, "inputs": _inputs().as_dict()}, _inputs()) == \
        ["manifest schema 0 != 1"]


def test_a_manifest_without_inputs_says_so():
    assert explain_mismatch({"schema_version": MANIFEST_SCHEMA_VERSION}, _inputs()) == \
        ["manifest has no inputs block"]


def test_an_unreadable_settings_block_does_not_hide_a_host_change():
    have = {**_inputs().as_dict(), "build_settings": ["not", "a", "mapping"], "host": {"arch": "aarch64"}}
    assert explain_mismatch(_recorded(have), _inputs()) == [
        "build settings unreadable",
        "host identity 'arch' changed: \"aarch64\" -> \"x86_64\"",
    ]


def test_a_backend_change_names_both_backends():
    assert explain_mismatch(_recorded(_inputs(backend="tensorrt")), _inputs()) == \
        ['backend changed: "tensorrt" -> "onnxruntime"']


def test_a_long_value_is_cut_to_60_characters_and_a_60_character_one_is_shown_whole():
    whole, cut = "a" * 58, "b" * 59  # JSON texts of 60 and 61 characters
    reasons = explain_mismatch(_recorded(_inputs(build_settings={"w": whole, "x": cut})),
                               _inputs(build_settings={}))
    assert reasons == [f"build setting 'w' changed: \"{whole}\" -> null",
                       f"build setting 'x' changed: \"{'b' * 56}... -> null"]


def test_a_recorded_mapping_is_shown_with_sorted_keys_so_both_sides_read_alike():
    # a manifest edited by hand (or by another tool) keeps its own key order when it is read
    have = {**_inputs().as_dict(), "build_settings": {"shape": {"min": 1, "max": 2}}}
    reasons = explain_mismatch(_recorded(have), _inputs(build_settings={"shape": {"min": 1, "max": 4}}))
    assert reasons == ['build setting \'shape\' changed: {"max": 2, "min": 1} -> {"max": 4, "min": 1}']


# --- TensorRT version-compatible plans: odd recorded versions are a miss, never a crash -----------

def _vc(version) -> BuildInputs:
    return _inputs(backend="tensorrt", backend_version=version, host={"version_compatible": True})


@pytest.mark.parametrize("recorded", [None, 10, "not-a-release"])
def test_a_version_compatible_manifest_with_an_odd_backend_version_is_a_plain_miss(recorded):
    reasons = explain_mismatch(_recorded(_vc(recorded)), _vc("10.16.1.11"))
    assert reasons == [f"backend_version changed: {json.dumps(recorded)} -> \"10.16.1.11\""]
    assert not built_by_newer_runtime(_recorded(_vc(recorded)), _vc("10.16.1.11"))


def test_an_older_or_equal_vc_builder_is_reused_and_a_newer_one_is_not_replaced():
    assert explain_mismatch(_recorded(_vc("10.14.0")), _vc("10.16.1.11")) == []
    assert explain_mismatch(_recorded(_vc("10.16.1.11")), _vc("10.16.1.11")) == []
    assert built_by_newer_runtime(_recorded(_vc("10.17.0")), _vc("10.16.1.11"))


# --- reading a manifest: limits and odd content ---------------------------------------------------

def _write(tmp_path: Path, content: bytes) -> Path:
    engine = tmp_path / "det.onnxruntime.engine"
    manifest_path_for(engine).write_bytes(content)
    return engine


def test_a_manifest_of_exactly_1_mib_is_read_and_one_byte_more_is_not(tmp_path):
    document = _recorded(_inputs())
    text = manifest_bytes(document)
    engine = _write(tmp_path, text + b" " * (_LIMIT - len(text)))
    assert read_manifest(engine) == document and explain_mismatch(read_manifest(engine), _inputs()) == []
    _write(tmp_path, text + b" " * (_LIMIT + 1 - len(text)))
    assert explain_mismatch(read_manifest(engine), _inputs()) == ["manifest missing or unreadable"]


@pytest.mark.parametrize("content", [b"[1, 2]", b'"a string"', b'{"schema_version": 1, "x": "\xff\xfe"}'],
                         ids=["list", "string", "invalid-utf8"])
def test_a_manifest_that_is_not_a_json_object_is_a_miss_not_a_crash(tmp_path, content):
    engine = _write(tmp_path, content)
    assert explain_mismatch(read_manifest(engine), _inputs()) == ["manifest missing or unreadable"]


# --- what the file records for people ------------------------------------------------------------

def test_the_manifest_records_what_was_built_when_and_by_whom(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # the time is UTC whatever the host's zone
    time.tzset()
    try:
        before = time.time()
        document = make_manifest(model_name="det", engine_path=tmp_path / "det.engine", sha256="cd" * 32, size=4096,
                                 inputs=_inputs(), onnx_path=Path("/models/det.onnx"), compile_duration_s=1.5)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert document["model_name"] == "det"
    assert document["engine"] == {"file_name": "det.engine", "sha256": "cd" * 32, "size": 4096}
    build = document["build"]
    assert build["onnx_path"] == "/models/det.onnx" and build["compile_duration_s"] == 1.5
    assert build["pid"] > 0 and build["notes"] == {}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", build["created"])
    created = time.mktime(time.strptime(build["created"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(created - before) < 120


def test_the_same_build_gives_the_same_file_whatever_the_key_order_and_diff_shows_one_key_a_line():
    one = {"schema_version": 1, "inputs": {"backend": "onnxruntime", "onnx_sha256": "ab"}}
    other = {"inputs": {"onnx_sha256": "ab", "backend": "onnxruntime"}, "schema_version": 1}
    assert manifest_bytes(one) == manifest_bytes(other)
    lines = manifest_bytes(one).decode().splitlines()
    assert '  "inputs": {' in lines and '    "backend": "onnxruntime",' in lines
    assert manifest_bytes(one).endswith(b"}\n")
