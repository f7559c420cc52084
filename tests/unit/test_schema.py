"""EngineFilenameSchema: readable, bounded, host-tied names that parse back."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning import BackboneSpec, EngineFilenameSchema, GpuInfo, HostCapabilities, InputShape

CPU = HostCapabilities("onnxruntime", "1.23.2", "x86_64", ("avx2", "fma"))
GPU = HostCapabilities("tensorrt", "10.16.1.11", "x86_64", (), GpuInfo("NVIDIA H200", "GPU-1", (9, 0), "580.1", 0))


def spec(**kw) -> BackboneSpec:
    return BackboneSpec(**{"model_name": "det", "onnx_path": Path("/m/det.onnx"), **kw})


def test_example_names_are_readable():
    name = EngineFilenameSchema.build(spec(precision="fp16"), GPU)
    assert name.startswith("det.fp16.trt-10.16.1.11.sm90-h200.") and name.endswith(".engine")
    cpu_name = EngineFilenameSchema.build(spec(), CPU)
    assert cpu_name.startswith("det.fp32.ort-1.23.2.x86_64-avx2-")


def test_host_and_setting_changes_give_new_names():
    base = EngineFilenameSchema.build(spec(), CPU)
    assert EngineFilenameSchema.build(spec(), HostCapabilities("onnxruntime", "1.23.2", "x86_64", ("avx2",))) != base
    assert EngineFilenameSchema.build(spec(), HostCapabilities("onnxruntime", "1.24.0", "x86_64", ("avx2", "fma"))) != base
    shaped = spec(inputs=(("x", InputShape((1, 3), (2, 3), (4, 3))),))
    assert EngineFilenameSchema.build(shaped, CPU) != base
    # the ONNX location is a label, not an input
    assert EngineFilenameSchema.build(spec(onnx_path=Path("/elsewhere/det.onnx")), CPU) == base


def test_gpu_model_and_compatibility_levels():
    other_gpu = HostCapabilities("tensorrt", "10.16.1.11", "x86_64", (), GpuInfo("NVIDIA H100 80GB HBM3", "GPU-2", (9, 0), "580.1", 0))
    assert EngineFilenameSchema.build(spec(), GPU) != EngineFilenameSchema.build(spec(), other_gpu)
    same_cc = spec(hardware_compatibility="same_compute_capability")
    assert EngineFilenameSchema.build(same_cc, GPU).split(".")[-3] == "sm90"
    assert EngineFilenameSchema.build(same_cc, GPU) == EngineFilenameSchema.build(same_cc, other_gpu)
    ampere = spec(hardware_compatibility="ampere_plus", version_compatible=True)
    assert ".trt-10-vc.ampere-plus." in EngineFilenameSchema.build(ampere, GPU)


@pytest.mark.parametrize("bad", ["det.engine", "det.fp32.engine", "a.b.c.d.e.txt", "x.fp32.ort1.k.0123abcd.engine",
                                 "det.fp32.ort-1.2.host.NOTHEX!!.engine"])
def test_parse_rejects_foreign_names(bad):
    with pytest.raises(ValueError):
        EngineFilenameSchema.parse(bad)


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)
versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,4}){0,3}", fullmatch=True)
flags = st.lists(st.sampled_from(["avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "asimd", "sve"]))
dims = st.lists(st.integers(1, 4096), min_size=1, max_size=4)


@given(name=names, precision=st.sampled_from(["fp32", "fp16", "bf16", "int8"]), version=versions,
       cpu_flags=flags, machine=st.sampled_from(["x86_64", "aarch64", "ppc64le"]), shape=dims,
       gpu=st.booleans(), hwc=st.sampled_from(["none", "ampere_plus", "same_compute_capability"]),
       gpu_name=st.text(min_size=1, max_size=60), vc=st.booleans())
def test_build_parse_round_trip(name, precision, version, cpu_flags, machine, shape, gpu, hwc, gpu_name, vc):
    if gpu:
        host = HostCapabilities("tensorrt", version, machine, (), GpuInfo(gpu_name, "GPU-x", (8, 6), "1", 0))
    else:
        host = HostCapabilities("onnxruntime", version, machine, tuple(cpu_flags))
        hwc, vc = "none", False
    s = spec(model_name=name, precision=precision, inputs=(("x", InputShape(tuple(shape), tuple(shape), tuple(shape))),),
             hardware_compatibility=hwc, version_compatible=vc)
    built = EngineFilenameSchema.build(s, host)
    parsed = EngineFilenameSchema.parse(built)
    identity = host.identity(hardware_compatibility=hwc, version_compatible=vc)
    assert (parsed.model_name, parsed.precision) == (name, precision)
    assert (parsed.backend_tag, parsed.version_tag, parsed.host_key) == (
        identity.backend_tag, identity.version_tag, identity.host_key)
    assert EngineFilenameSchema.compose(parsed) == built
    assert len(built.encode()) <= 200
