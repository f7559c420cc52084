"""The same scenarios against real TensorRT for RTX 1.7 (``tensorrt_rtx``) and the fake of 1.7.1.116.

Each scenario takes a ``trt`` module and returns what a caller can observe (return values,
exception types and key texts, logged severities and key texts); the real module and the
fake must give equal results. The real builder runs here without a GPU, so the fake world
has ``no_gpu=True``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fake_tensorrt import FakeWorld, make_fake_tensorrt
from signatures import load_signatures
from tests.rtx_guard import import_rtx, rtx_required  # noqa: F401 - the fixture of pytestmark
from provisioning.backends.trt_logging import process_logger
from trt_helpers import RTX, write_onnx_cases

real_trt, _ = import_rtx()
pytestmark = pytest.mark.usefixtures("rtx_required")  # skip without tensorrt_rtx, fail under CI=true


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """The ONNX cases of :func:`write_onnx_cases`, once per module."""
    return write_onnx_cases(tmp_path_factory.mktemp("onnx"))


def parity(scenario):
    """A test that runs ``scenario`` on real tensorrt_rtx and on the fake, and wants equal results."""

    def test(onnx_files, capfd):
        try:
            real = scenario(real_trt, onnx_files, capfd)
            fake = scenario(make_fake_tensorrt(FakeWorld(version=RTX, no_gpu=True)), onnx_files, capfd)
        finally:
            _detach_sinks(real_trt)
        assert real == fake

    test.__name__, test.__doc__ = scenario.__name__, scenario.__doc__
    return test


class _Records:
    """A sink of the process-wide logger that keeps ``(severity, message)`` pairs (or raises)."""

    def __init__(self, raising: bool) -> None:
        self.records: list[tuple[str, str]] = []
        self.raising = raising

    def add(self, severity: str, message: str) -> None:
        self.records.append((severity, message))
        if self.raising:
            raise RuntimeError("logger boom")


def _detach_sinks(trt) -> None:
    logger = process_logger(trt)
    with logger.lock:
        logger.sinks[:] = [s for s in logger.sinks if not isinstance(s, _Records)]


def make_logger(trt, raising=False):
    """The process's one logger with a fresh record of what it receives from now on.

    TensorRT sends every message of a process to the first ILogger it was given, so a
    scenario's own logger would see nothing once any other test built an engine (and would
    take the messages from later ones): the scenarios use the product's process logger.
    """
    logger = process_logger(trt)
    _detach_sinks(trt)
    sink = _Records(raising)
    with logger.lock:
        logger.sinks.append(sink)
    logger.records = sink.records
    return logger


def outcome(function):
    """('ok', value) or (exception type name, first line) for one call."""
    try:
        return "ok", function()
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""


def _kinds(result):
    """An outcome reduced to what both sides can share: the kind of refusal, or the plain value."""
    kind, value = result
    if kind == "ok":
        return kind, value if value is None or isinstance(value, (bool, int, str)) else type(value).__name__
    for key in ("incompatible function arguments", "incompatible constructor arguments",
                "must be called when overriding __init__", "has no setter", "has no attribute"):
        if key in value:
            return kind, key
    return kind, value


@parity
def test_argument_types_are_refused_like_pybind11(trt, onnx_files, capfd):
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    pool = trt.MemoryPoolType.WORKSPACE
    calls = {
        "pool float": lambda: config.set_memory_pool_limit(pool, 1.5),
        "pool str enum": lambda: config.set_memory_pool_limit("WORKSPACE", 1),
        "pool int enum": lambda: config.set_memory_pool_limit(0, 1),
        "pool kwargs": lambda: config.set_memory_pool_limit(pool=pool, pool_size=1 << 20),
        "pool np.int64": lambda: config.set_memory_pool_limit(pool, np.int64(3)),
        "pool np.float64": lambda: config.set_memory_pool_limit(pool, np.float64(3)),
        "pool bool": lambda: config.set_memory_pool_limit(pool, True),
        "pool missing": lambda: config.set_memory_pool_limit(pool),
        "pool extra": lambda: config.set_memory_pool_limit(pool, 1, 2),
        "pool bad kw": lambda: config.set_memory_pool_limit(pool, pool_sz=1),
        "flag str": lambda: config.set_flag("TF32"),
        "flag int": lambda: config.set_flag(6),
        "flag None": lambda: config.set_flag(None),
        "network float": lambda: builder.create_network(0.0),
        "network default": lambda: type(builder.create_network()).__name__,
        "shape tuple": lambda: builder.create_optimization_profile().set_shape("x", (1, 8), (4, 8), (8, 8)),
        "shape list": lambda: builder.create_optimization_profile().set_shape("x", [1, 8], [4, 8], [8, 8]),
        "shape numpy": lambda: builder.create_optimization_profile().set_shape("x", np.array([1, 8]), (4, 8), (8, 8)),
        "shape float": lambda: builder.create_optimization_profile().set_shape("x", (1.0, 8), (4, 8), (8, 8)),
        "shape str": lambda: builder.create_optimization_profile().set_shape("x", "18", (4, 8), (8, 8)),
        "shape generator": lambda: builder.create_optimization_profile().set_shape("x", (i for i in [1]), (1,), (1,)),
        "shape name None": lambda: builder.create_optimization_profile().set_shape(None, (1,), (1,), (1,)),
        "builder str": lambda: trt.Builder("x"),
        "builder None": lambda: trt.Builder(None),
        "runtime None": lambda: trt.Runtime(None),
        "build None": lambda: builder.build_serialized_network(None, config),
        "timing str": lambda: config.create_timing_cache("str"),
        "timing None": lambda: config.create_timing_cache(None),
        "timing bool str": lambda: config.set_timing_cache(config.create_timing_cache(b""), "x"),
        "timing bool int": lambda: _quiet(lambda: config.set_timing_cache(config.create_timing_cache(b""), 0)),
        "set_timing None": lambda: config.set_timing_cache(None, False),
        "add profile None": lambda: config.add_optimization_profile(None),
        "cc float": lambda: config.set_compute_capability(trt.ComputeCapability.SM86, 0.0),
        "cc str": lambda: config.set_compute_capability("SM86", 0),
        "cc int": lambda: config.set_compute_capability(86, 0),
        "plugins": lambda: trt.init_libnvinfer_plugins(logger, ""),
        "plugins None": lambda: trt.init_libnvinfer_plugins(None, ""),
        "plugins str": lambda: trt.init_libnvinfer_plugins("str", ""),
        "plugins int ns": lambda: trt.init_libnvinfer_plugins(logger, 1),
        "deserialize str": lambda: trt.Runtime(logger).deserialize_cuda_engine("str"),
    }
    return ({name: _kinds(outcome(call)) for name, call in calls.items()})


def _quiet(function):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function()


@parity
def test_attribute_assignment_is_refused_like_pybind11(trt, onnx_files, capfd):
    config = trt.Builder(make_logger(trt)).create_builder_config()
    calls = {
        "max_workspace_size": lambda: setattr(config, "max_workspace_size", 1),
        "unknown": lambda: setattr(config, "nonexistent", 3),
        "read-only": lambda: setattr(config, "num_optimization_profiles", 1),
        "hwc str": lambda: setattr(config, "hardware_compatibility_level", "NONE"),
        "hwc int": lambda: setattr(config, "hardware_compatibility_level", 0),
        "monitor str": lambda: setattr(config, "progress_monitor", "x"),
        "monitor None": lambda: setattr(config, "progress_monitor", None),
        "ncc float": lambda: setattr(config, "num_compute_capabilities", 1.0),
        "ncc str": lambda: setattr(config, "num_compute_capabilities", "1"),
        "ncc enum": lambda: setattr(config, "num_compute_capabilities", trt.ComputeCapability.SM75),
        "ncc negative": lambda: setattr(config, "num_compute_capabilities", -1),
        "property call": lambda: config.num_optimization_profiles(),
    }
    return ({name: _kinds(outcome(call)) for name, call in calls.items()})


# The classes real RTX makes without a GPU; every property their recording marks settable is probed.
PROBED_CLASSES = ("Builder", "IBuilderConfig", "INetworkDefinition", "ITensor", "IOptimizationProfile", "OnnxParser",
                  "Runtime")


def _settable(name):
    attrs = load_signatures(RTX)["classes"][name]["attrs"]
    return sorted(a for a, r in attrs.items() if r.get("kind") == "property" and r.get("settable"))


def _probe_values(trt):
    return {"str": "x", "float": 1.5, "int": 0, "negative": -1, "bool": True, "None": None, "object": object(),
            "enum": trt.DataType.FLOAT, "np.int64": np.int64(1), "np.float64": np.float64(2.0), "tuple": (1, 8),
            "list of str": ["a"], "list of float": [1.0, 8.0]}


def test_every_settable_property_of_the_probed_classes_is_probed():
    assert sum(len(_settable(name)) for name in PROBED_CLASSES) >= 30
    assert {"builder_optimization_level", "progress_monitor", "hardware_compatibility_level",
            "num_compute_capabilities", "build_route"} <= set(_settable("IBuilderConfig"))


@parity
def test_every_settable_property_types_its_value_like_pybind11(trt, onnx_files, capfd):
    """Each settable property of the classes made without a GPU, given a value of each kind."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(onnx_files["relu"]))
    objects = {"Builder": builder, "IBuilderConfig": builder.create_builder_config(), "INetworkDefinition": network,
               "ITensor": network.get_input(0), "IOptimizationProfile": builder.create_optimization_profile(),
               "OnnxParser": parser, "Runtime": trt.Runtime(logger)}
    seen = {}
    for name in PROBED_CLASSES:
        target = objects[name]
        for attribute in _settable(name):
            for kind, value in _probe_values(trt).items():
                result = _kinds(outcome(lambda: setattr(target, attribute, value)))
                seen[f"{name}.{attribute} = {kind}"] = "refused" if result[0] == "TypeError" else "taken"
    assert seen["IBuilderConfig.builder_optimization_level = str"] == "refused"  # issue 22 item 21
    return seen


@parity
def test_logger_and_monitor_that_skip_the_base_init_are_refused(trt, onnx_files, capfd):
    class BadLogger(trt.ILogger):
        def __init__(self):
            self.records = []

        def log(self, severity, msg):
            pass

    class BadMonitor(trt.IProgressMonitor):
        def __init__(self):
            pass

    good = make_logger(trt)
    config = trt.Builder(good).create_builder_config()
    network = trt.Builder(good).create_network(0)
    calls = {"builder": lambda: trt.Builder(BadLogger()), "runtime": lambda: trt.Runtime(BadLogger()),
             "parser": lambda: trt.OnnxParser(network, BadLogger()),
             "monitor": lambda: setattr(config, "progress_monitor", BadMonitor())}
    results = {name: outcome(call) for name, call in calls.items()}
    for kind, text in results.values():
        assert kind == "TypeError" and text.endswith("__init__() must be called when overriding __init__")
    return (results)


def _parse(trt, logger, path):
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(path)
    errors = []
    for index in range(parser.num_errors):
        e = parser.get_error(index)
        errors.append((e.code().name, e.node(), e.node_name(), e.node_operator(), e.desc().splitlines()[0][:60]))
    return builder, network, ok, errors, parser


@parity
def test_parse_outcomes_agree(trt, onnx_files, capfd):
    logger = make_logger(trt)
    seen = {}
    for name in ("relu", "unknown", "matmul", "trunc", "garbage", "missing"):
        _, network, ok, errors, parser = _parse(trt, logger, onnx_files[name])
        seen[name] = (ok, network.num_inputs, errors, parser.get_error(99))
    assert seen["unknown"][2][0][:4] == ("INVALID_NODE", 1, "fancy_1", "FancyOp")
    assert seen["matmul"][2][0][:4] == ("INVALID_NODE", 0, "mm0", "MatMul")
    assert seen["trunc"][2][0][0] == "MODEL_DESERIALIZE_FAILED"
    _, _, _, _, parser = _parse(trt, logger, onnx_files["matmul"])
    assert "last dimension of input0 = 8 and second to last dimension of input1 = 5" in parser.get_error(0).desc()
    assert callable(parser.get_error(0).code) and not callable(parser.num_errors)
    return (seen)


def _build(trt, onnx, logger, shapes=(("x", (1, 8), (4, 8), (8, 8)),), monitor=None, flags=()):
    builder, network, ok, _, _ = _parse(trt, logger, onnx)
    assert ok
    config = builder.create_builder_config()
    added = None
    if shapes is not None:
        profile = builder.create_optimization_profile()
        for shape in shapes:
            profile.set_shape(*shape)
        added = config.add_optimization_profile(profile)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if monitor is not None:
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    errors = [m for s, m in logger.records if s in ("ERROR", "INTERNAL_ERROR")]
    return added, plan, errors


@parity
def test_profiles_and_build_validation_agree(trt, onnx_files, capfd):
    seen = {}
    cases = {"good": (("x", (1, 8), (4, 8), (8, 8)),), "min>opt": (("x", (4, 8), (1, 8), (8, 8)),),
             "opt>max": (("x", (1, 8), (8, 8), (4, 8)),), "unknown input": (("nope", (1, 8), (4, 8), (8, 8)),),
             "wrong static dim": (("x", (1, 9), (4, 9), (8, 9)),), "no profile": None}
    for name, shapes in cases.items():
        logger = make_logger(trt)
        added, plan, errors = _build(trt, onnx_files["relu"], logger, shapes)
        key = next((k for k in ("MIN<=OPT<=MAX", "no optimization profile has been defined", "is missing dimensions",
                                "Dimension mismatch for tensor x") if any(k in e for e in errors)), None)
        seen[name] = (added, plan is None, key)
    logger = make_logger(trt)
    seen["static, no profile"] = _build(trt, onnx_files["static"], logger, None)[1] is None
    profile = trt.Builder(logger).create_optimization_profile()
    seen["negative"] = outcome(lambda: profile.set_shape("x", (-1, 8), (4, 8), (8, 8)))
    seen["valid"] = [bool(_profile(trt, logger, *s[0][1:])) for s in (cases["good"], cases["min>opt"])]
    return (seen)


def _profile(trt, logger, lo, opt, hi):
    profile = trt.Builder(logger).create_optimization_profile()
    profile.set_shape("x", lo, opt, hi)
    return profile


@parity
def test_host_memory_has_only_the_buffer_protocol(trt, onnx_files, capfd):
    _, plan, _ = _build(trt, onnx_files["relu"], make_logger(trt))
    view = memoryview(plan)
    seen = {"bytes subclass": isinstance(plan, (bytes, bytearray)), "itemsize": view.itemsize,
            "nbytes": plan.nbytes == view.nbytes == len(bytes(plan)), "dtype": plan.dtype.name,
            "len": outcome(lambda: len(plan))[0], "slice": outcome(lambda: plan[0:3])[0],
            "index": outcome(lambda: plan[0])[0], "iter": outcome(lambda: iter(plan))[0],
            "set nbytes": outcome(lambda: setattr(plan, "nbytes", 1))[0],
            "cast": view.cast("B")[0] == bytes(plan)[0], "tobytes": view.tobytes() == bytes(plan)}
    return (seen)


@parity
def test_corrupt_timing_cache_is_an_empty_cache_with_a_warning(trt, onnx_files, capfd):
    logger = make_logger(trt)
    config = trt.Builder(logger).create_builder_config()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = config.create_timing_cache(b"garbage-not-a-cache")
        created = [str(w.message) for w in caught]
        taken = config.set_timing_cache(cache, False)
        got_back = config.get_timing_cache() is cache
        blob = cache.serialize()
        deprecations = sorted({w.category.__name__ for w in caught})
    warned = [m for s, m in logger.records if s == "WARNING"]
    return ({"cache": cache is not None, "created warnings": created, "set": taken, "get": got_back,
                          "serialized": blob is not None, "python warnings": deprecations,
                          "logged": "Failed to deserialize timing cache. Returning an empty timing cache." in warned})


@parity
def test_rtx_settings_agree(trt, onnx_files, capfd):
    logger = make_logger(trt)
    config = trt.Builder(logger).create_builder_config()
    seen = {"tf32 default": config.get_flag(trt.BuilderFlag.TF32)}
    config.clear_flag(trt.BuilderFlag.TF32)
    seen["tf32 cleared"] = config.get_flag(trt.BuilderFlag.TF32)
    logger.records.clear()
    config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    seen["hwc"] = config.hardware_compatibility_level.name
    seen["hwc warnings"] = [m for s, m in logger.records if s == "WARNING"]
    seen["ncc default"] = config.num_compute_capabilities
    seen["set out of range"] = config.set_compute_capability(trt.ComputeCapability.SM86, 0)
    seen["get out of range"] = config.get_compute_capability(7).name
    config.num_compute_capabilities = 2
    seen["set"] = [config.set_compute_capability(trt.ComputeCapability.SM86, 0),
                   config.set_compute_capability(trt.ComputeCapability.SM120, 1)]
    seen["get"] = [config.get_compute_capability(i).name for i in range(2)]
    seen["enum eq int"] = trt.ComputeCapability.SM86 == 86
    seen["enum int"] = int(trt.ComputeCapability.SM86)
    seen["members"] = "SM86" in trt.ComputeCapability.__members__
    return (seen)


@parity
def test_callbacks_never_raise_out_of_the_builder(trt, onnx_files, capfd):
    class Monitor(trt.IProgressMonitor):
        def __init__(self, mode):
            trt.IProgressMonitor.__init__(self)
            self.mode, self.finished, self.steps = mode, [], 0

        def phase_start(self, phase_name, parent_phase, num_steps):
            if self.mode == "raise start":
                raise RuntimeError("boom start")

        def step_complete(self, phase_name, step):
            self.steps += 1
            if self.mode == "raise step":
                raise RuntimeError("boom step")
            return {"cancel": False, "none": None}.get(self.mode, True)

        def phase_finish(self, phase_name):
            self.finished.append(phase_name)
            if self.mode == "raise finish":
                raise RuntimeError("boom finish")

    seen = {}
    for mode in ("ok", "cancel", "none", "raise start", "raise step", "raise finish"):
        logger, monitor = make_logger(trt), Monitor(mode)
        _, plan, errors = _build(trt, onnx_files["relu"], logger, monitor=monitor)
        # A cancelling step is the last one asked for (the phase layout differs, so only then is the count shared).
        steps = monitor.steps if plan is None else None
        seen[mode] = (plan is None, any("BuildCanceled" in e for e in errors), "Building engine" in monitor.finished,
                      steps)
    printed = capfd.readouterr().err
    seen["printed"] = [text in printed for text in ("[ERROR] Exception caught in phase_start(): RuntimeError: boom start",
                                                    "[ERROR] Exception caught in step_complete(): RuntimeError: boom step",
                                                    "[ERROR] Exception caught in phase_finish(): RuntimeError: boom finish")]
    raising = make_logger(trt, raising=True)
    _, plan, _ = _build(trt, onnx_files["relu"], raising)
    seen["raising logger"] = (plan is not None, "[ERROR] Exception caught in log(): RuntimeError: logger boom"
                              in capfd.readouterr().err)
    return (seen)


@parity
def test_no_gpu_runtime_and_version_compatible_agree(trt, onnx_files, capfd):
    logger = make_logger(trt)
    _, plan, _ = _build(trt, onnx_files["relu"], logger)
    runtime = trt.Runtime(logger)
    logger.records.clear()
    engine = runtime.deserialize_cuda_engine(plan)
    cuda35 = any("cudaError 35" in m for s, m in logger.records if s == "ERROR")
    logger.records.clear()
    empty = runtime.deserialize_cuda_engine(b"")
    empty_said = any("Cannot deserialize with an empty memory buffer" in m for _, m in logger.records)
    vc_logger = make_logger(trt)
    _, vc_plan, vc_errors = _build(trt, onnx_files["relu"], vc_logger, flags=("VERSION_COMPATIBLE",))
    return ({"engine": engine, "cuda35": cuda35, "empty": empty, "empty said": empty_said,
                          "host code": runtime.engine_host_code_allowed, "vc plan": vc_plan,
                          "vc error": any("libnvinfer_lean.so.1" in e for e in vc_errors)})
