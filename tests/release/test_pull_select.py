"""The variant ranking of engines-pull: each rank with its reason, and properties over random releases."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning.gpu import release_tuple
from provisioning.release.format import Compatibility, EntryRef, TiedTo, Variant
from provisioning.release.select import choose, no_variant_line, rank_variant, short_version
from provisioning.host import GpuInfo
from tests.release.pull_fixtures import A100, H100, L4, T4, cpu_key, ort, rtx, serving_host, trt


H200 = GpuInfo("NVIDIA H200", "GPU-66666666-0000-0000-0000-000000000000", (9, 0), "580.65.06", 0)


def variant(fields: dict, sha: str = "a" * 64) -> Variant:
    return Variant(engine=fields["engine"], sha256=sha, size=1, model_name="det", host_key=fields["host_key"],
                   backend=fields["backend"], backend_version=fields["backend_version"], tied_to=fields["tied_to"],
                   compatibility=fields["compatibility"], manifest_sha256="b" * 64, settings_sha256="c" * 64,
                   entry=EntryRef("x", "0" * 32, f"engine/{sha}", "manifest/" + "b" * 64, "commit/fleet"))


def test_each_rank_and_its_reason():
    host = serving_host(H100, tensorrt="10.18.0.31", tensorrt_rtx="1.2.0.54", onnxruntime="1.23.2")
    cases = [
        (trt("det", H100, "10.18.0.31"), (1, "exact")),
        (trt("det", H100, "10.18.0.31", vc=True), (1, "exact")),
        (trt("det", H100, "10.16.0.72", vc=True), (2, "version-compatible 10.16 <= 10.18")),
        (trt("det", H100, "10.18.0.31", hwc="ampere_plus"), (3, "hardware-compatible ampere_plus sm90 >= sm80")),
        (trt("det", H100, "10.18.0.31", hwc="same_compute_capability"),
         (3, "hardware-compatible same_compute_capability sm90 == sm90")),
        (trt("det", A100, "10.16.0.72", vc=True, hwc="ampere_plus"),
         (3, "hardware-compatible ampere_plus sm90 >= sm80, version-compatible 10.16 <= 10.18")),
        (rtx("det", ("sm89", "sm90")), (4, "rtx-targets sm90")),
    ]
    for fields, expected in cases:
        assert rank_variant(variant(fields), host) == expected, fields["engine"]
    assert rank_variant(variant(ort("det")), host) is None  # only with the fallback allowed
    isa = cpu_key().split("-")[-2]
    assert rank_variant(variant(ort("det")), host, allow_cpu_fallback=True) == (5, f"cpu-fallback {isa}")


@pytest.mark.parametrize("fields, host", [
    (trt("det", H100, "10.18.0.31"), serving_host(H100, tensorrt="10.16.1.11")),  # built by a newer release
    (trt("det", H100, "10.16.0.72"), serving_host(H100, tensorrt="10.18.0.31")),  # not version-compatible
    (trt("det", H100, "10.19.0.1", vc=True), serving_host(H100, tensorrt="10.18.0.31")),  # newer builder
    (trt("det", H100, "9.3.0.1", vc=True), serving_host(H100, tensorrt="10.18.0.31")),  # another major
    (trt("det", L4, "10.18.0.31"), serving_host(H100, tensorrt="10.18.0.31")),  # another GPU model
    (trt("det", H100, "10.18.0.31"), serving_host(H200, tensorrt="10.18.0.31")),  # another model, same sm90
    (trt("det", H100, "10.18.0.31", hwc="ampere_plus"), serving_host(T4, tensorrt="10.18.0.31")),  # sm75 < sm80
    (trt("det", L4, "10.18.0.31", hwc="same_compute_capability"), serving_host(H100, tensorrt="10.18.0.31")),
    (trt("det", H100, "10.18.0.31"), serving_host(None, tensorrt="10.18.0.31")),  # no GPU
    (trt("det", H100, "10.18.0.31"), serving_host(H100)),  # no TensorRT here
    (rtx("det", ("sm86", "sm89")), serving_host(H100, tensorrt_rtx="1.2.0.54")),  # not a target
    (rtx("det", ("sm89", "sm90")), serving_host(H100, tensorrt="10.18.0.31")),  # no RTX runtime
    (rtx("det", ("sm89", "sm90")), serving_host(H100, tensorrt_rtx="1.3.0.1")),  # another RTX release
])
def test_variants_that_cannot_run_here_are_never_ranked(fields, host):
    assert rank_variant(variant(fields), host, allow_cpu_fallback=True) is None


def test_cpu_fallback_needs_this_machine_and_isa_and_no_newer_runtime():
    host = serving_host(None, onnxruntime="1.23.2")
    other = dataclasses.replace(variant(ort("det")), tied_to=TiedTo("cpu", machine="riscv64", isa="base"))
    assert rank_variant(other, host, True) is None
    assert rank_variant(variant(ort("det", "1.24.0")), host, True) is None
    assert rank_variant(variant(ort("det", "1.22.0")), host, True)[0] == 5


def test_choice_prefers_the_best_rank_then_the_closest_builder_and_the_narrower_level():
    host = serving_host(H100, tensorrt="10.18.0.31", tensorrt_rtx="1.2.0.54", onnxruntime="1.23.2")
    pool = [variant(trt("det", H100, v, vc=True), sha) for v, sha in (("10.12.0.1", "1" * 64),
                                                                       ("10.16.0.72", "2" * 64))]
    pool += [variant(trt("det", H100, "10.18.0.31", hwc="ampere_plus"), "3" * 64),
             variant(trt("det", H100, "10.18.0.31", hwc="same_compute_capability"), "4" * 64),
             variant(rtx("det", ("sm90",)), "5" * 64), variant(ort("det"), "6" * 64)]
    choice = choose(pool, host, allow_cpu_fallback=True)
    assert (choice.rank, choice.reason, choice.variant.sha256) == (2, "version-compatible 10.16 <= 10.18", "2" * 64)
    choice = choose(pool[2:], host, True)
    assert (choice.rank, choice.variant.sha256) == (3, "4" * 64)
    assert choose(pool[4:], host, True).rank == 4
    assert choose(pool[5:], host, True).rank == 5
    assert choose(pool[5:], host, False) is None


def test_no_variant_line_names_this_host_and_every_variant():
    host = serving_host(T4, tensorrt="10.18.0.31")
    pool = [variant(trt("det", H100, "10.18.0.31")), variant(ort("det"))]
    line = no_variant_line("det", pool, host, False)
    assert line.startswith("NO-VARIANT det: ") and "\n" not in line
    assert "Tesla T4 sm75" in line and "tensorrt 10.18.0.31" in line and cpu_key() in line
    assert "sm90-h100-80gb-hbm3 (tensorrt 10.18.0.31)" in line and "--allow-cpu-fallback" in line


def test_short_version_shows_what_tells_two_releases_apart():
    assert short_version("10.16.0.72", "10.18.0.31") == "10.16"
    assert short_version("10.16.0.72", "10.16.1.11") == "10.16.0.72"


# -- properties over random releases --------------------------------------------------------------------------
GPUS = st.sampled_from([H100, L4, A100, T4])
VERSIONS = st.sampled_from(["9.3.0.1", "10.8.0.43", "10.12.0.1", "10.16.0.72", "10.16.1.11", "10.18.0.31", "11.0.0.9"])


@st.composite
def variants(draw):
    kind = draw(st.sampled_from(["trt", "rtx", "ort"]))
    sha = draw(st.sampled_from("0123456789abcdef")) * 64
    if kind == "trt":
        hwc = draw(st.sampled_from(["none", "ampere_plus", "same_compute_capability"]))
        fields = trt("det", draw(GPUS), draw(VERSIONS), vc=draw(st.booleans()), hwc=hwc)
    elif kind == "rtx":
        targets = tuple(sorted(draw(st.sets(st.sampled_from(["sm75", "sm80", "sm89", "sm90"]), min_size=1)),
                               key=lambda t: int(t[2:])))
        fields = rtx("det", targets, draw(st.sampled_from(["1.2.0.54", "1.3.0.1"])))
    else:
        fields = ort("det", draw(st.sampled_from(["1.22.0", "1.23.2", "1.24.0"])))
    return variant(fields, sha)


@st.composite
def hosts(draw):
    gpu = draw(st.one_of(st.none(), GPUS))
    runtimes = {}
    if draw(st.booleans()):
        runtimes["tensorrt"] = draw(VERSIONS)
    if draw(st.booleans()):
        runtimes["tensorrt_rtx"] = draw(st.sampled_from(["1.2.0.54", "1.3.0.1"]))
    if draw(st.booleans()):
        runtimes["onnxruntime"] = draw(st.sampled_from(["1.22.0", "1.23.2", "1.24.0"]))
    return serving_host(gpu, **runtimes)


@settings(max_examples=300, deadline=None)
@given(st.lists(variants(), max_size=8), hosts(), st.booleans())
def test_the_choice_is_the_best_usable_variant_and_never_one_this_host_cannot_load(pool, host, fallback):
    choice = choose(pool, host, fallback)
    ranks = [r[0] for r in (rank_variant(v, host, fallback) for v in pool) if r is not None]
    if choice is None:
        assert ranks == []
        return
    assert choice.rank == min(ranks)
    picked = choice.variant
    runtime = host.runtimes.get(picked.backend)
    if picked.backend in ("tensorrt", "tensorrt-rtx"):
        assert host.gpu is not None and runtime is not None
        built, here = release_tuple(picked.backend_version), release_tuple(runtime)
        assert built <= here and built[0] == here[0]  # never newer than the runtime, never another major
        if built != here:
            assert picked.backend == "tensorrt" and picked.compatibility.version_compatible
            assert f"version-compatible {short_version(picked.backend_version, runtime)} <= " in choice.reason
    if picked.backend == "onnxruntime":
        assert fallback and choice.reason.startswith("cpu-fallback ")
    if picked.compatibility.hardware_compatibility == "ampere_plus":
        assert host.gpu.compute_capability >= (8, 0)
    if choice.rank == 1:
        assert picked.tied_to.gpu_model == host.gpu.name and choice.reason == "exact"


@settings(max_examples=200, deadline=None)
@given(st.lists(variants(), max_size=8), hosts())
def test_the_choice_does_not_depend_on_the_order_of_the_release(pool, host):
    first = choose(pool, host, True)
    again = choose(list(reversed(pool)), host, True)
    assert (first is None) == (again is None)
    if first is not None:
        assert (first.variant, first.rank, first.reason) == (again.variant, again.rank, again.reason)
