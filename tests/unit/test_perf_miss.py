"""A miss's explanation costs work for that backbone's own entries, not for the whole cache.

A cold build of N backbones misses N times; when each miss scanned the whole folder (every
entry's stat, sizes and lock probe) a 1,000-backbone cold build spent most of its time there.
"""

from __future__ import annotations

import os

import pytest

from provisioning import EngineCompiler, EngineCompileRequest, HostCapabilities, build_backbone_specs, load_config
from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.cache import engine_path_for
from provisioning.compiler import expected_build_inputs
from provisioning.miss import NO_ENGINE, explain_absent
from provisioning.sidecar import Sha256Sidecar

HOST = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2", "fma"))
OTHERS = 300


@pytest.fixture
def cache_with_det(corpus_yaml):
    """A cache holding det's engine and 300 engines of other backbones."""
    config = load_config(corpus_yaml)
    specs = build_backbone_specs(config, "onnxruntime")
    det = next(s for s in specs if s.model_name == "det")
    EngineCompiler(OnnxRuntimeBackend(), heartbeat_s=0).compile_engines_for_corpus(
        EngineCompileRequest(backbones=(det,), cache_dir=config.cache_dir, host=HOST))
    built = engine_path_for(config.cache_dir, det, HOST)
    for i in range(OTHERS):
        other = built.with_name(built.name.replace("det.", f"m{i:03d}.", 1))
        other.write_bytes(b"plan")
        Sha256Sidecar.path_for(other).write_text(Sha256Sidecar.format_line("0" * 64, other.name))
    return config, det, built


def _counting(monkeypatch, cache_dir):
    """Count stat-like calls and folder listings that touch the cache folder."""
    counts = {"stat": 0, "list": 0}
    folder = os.fspath(cache_dir)

    def wrap(name, key):
        real = getattr(os, name)

        def counted(path, *args, **kwargs):
            if os.fspath(path).startswith(folder):
                counts[key] += 1
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, counted)

    for name in ("stat", "lstat"):
        wrap(name, "stat")
    for name in ("scandir", "listdir"):
        wrap(name, "list")
    return counts


def test_a_miss_explanation_touches_only_its_own_backbones_entries(cache_with_det, monkeypatch):
    config, det, built = cache_with_det
    expected = expected_build_inputs(det, HOST)
    wanted = built.with_name(built.name.replace(built.name.split(".")[-2], "0badc0de"))  # a new settings digest
    counts = _counting(monkeypatch, config.cache_dir)
    reasons = explain_absent(wanted, "det", HOST.identity_for(det).host_key, expected)
    assert reasons[0].endswith(f"(cached: {built.name})"), reasons
    assert counts["list"] == 1, counts
    assert counts["stat"] <= 4, f"{counts['stat']} stat calls for one miss among {OTHERS} other engines"


def test_another_hosts_engine_or_a_symlink_is_not_the_previous_one(cache_with_det, tmp_path):
    config, det, built = cache_with_det
    expected = expected_build_inputs(det, HOST)
    host_key = HOST.identity_for(det).host_key
    wanted = built.with_name(built.name.replace(built.name.split(".")[-2], "0badc0de"))
    real = tmp_path / "elsewhere.engine"
    os.replace(built, real)
    os.symlink(real, built)  # a planted link with det's name: never followed, never the explanation
    assert explain_absent(wanted, "det", host_key, expected) == (NO_ENGINE,)
    os.unlink(built)
    os.replace(real, built)
    assert explain_absent(wanted, "det", "another-host", expected) == (NO_ENGINE,)
    assert explain_absent(wanted, "det", host_key, expected) != (NO_ENGINE,)
