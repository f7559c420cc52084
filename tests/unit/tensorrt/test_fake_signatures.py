"""The fake refuses what the real bindings refuse, in every recorded version (10.16, 11.4, RTX 1.7).

The rules come from tests/data/tensorrt-api/signatures-*.json through :mod:`signatures`;
test_fake_parity.py shows, against real TensorRT for RTX, that they are the real rules.
"""

from __future__ import annotations

import numpy as np
import pytest

import signatures
from fake_tensorrt import FakeCudaRuntime, FakeWorld, make_fake_tensorrt
from trt_helpers import ALL_VERSIONS, write_onnx_cases, write_qdq_model

VERSIONS = sorted(ALL_VERSIONS.values())


def fake(version, **world):
    """A fake module and its world."""
    w = FakeWorld(version=version, **world)
    return make_fake_tensorrt(w), w


def logger_of(trt):
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.records = []

        def log(self, severity, msg):
            self.records.append((severity.name, msg))

    return Logger()


@pytest.fixture(params=VERSIONS)
def trt(request):
    return fake(request.param, no_gpu=request.param.startswith("1."))[0]


@pytest.fixture
def config(trt):
    return trt.Builder(logger_of(trt)).create_builder_config()


def test_every_public_attribute_of_the_fake_has_the_recorded_kind():
    for version in VERSIONS:
        trt, _ = fake(version)
        recorded = signatures.load_signatures(version)["classes"]
        for name in ("Builder", "IBuilderConfig", "OnnxParser", "ParserError", "IOptimizationProfile", "ITimingCache",
                     "IHostMemory", "Runtime", "ICudaEngine", "IExecutionContext", "INetworkDefinition", "ITensor"):
            assert signatures.check_kinds(getattr(trt, name), recorded[name]["attrs"]) == [], (version, name)


def test_a_fake_attribute_of_the_wrong_kind_is_refused_when_the_module_is_made():
    recorded = signatures.load_signatures("11.4.0.106")["classes"]["OnnxParser"]["attrs"]

    class OnnxParser:
        def num_errors(self):  # a property on the real bindings
            return 0

    with pytest.raises(TypeError, match="num_errors is a method, the bindings have a property"):
        signatures.apply_signatures(OnnxParser, recorded, signatures.Checker(None, "tensorrt_bindings.tensorrt"))


def test_int_parameters_refuse_floats_and_strings(trt, config):
    pool = trt.MemoryPoolType.WORKSPACE
    for bad in (1.5, 1.0, "1", np.float64(2)):
        with pytest.raises(TypeError, match="set_memory_pool_limit\\(\\): incompatible function arguments"):
            config.set_memory_pool_limit(pool, bad)
    config.set_memory_pool_limit(pool, np.int64(1 << 20))
    config.set_memory_pool_limit(pool=pool, pool_size=1 << 20)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        trt.Builder(logger_of(trt)).create_network(0.0)


def test_enum_parameters_refuse_names_and_ints(trt, config):
    for bad in ("WORKSPACE", 0, None):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            config.set_memory_pool_limit(bad, 1)
    for bad in ("TF32", 6):
        with pytest.raises(TypeError, match="set_flag"):
            config.set_flag(bad)
    assert trt.BuilderFlag.TF32 != int(trt.BuilderFlag.TF32)  # pybind11 enums never equal an int


def test_str_parameters_refuse_other_types(trt, tmp_path):
    from pathlib import Path

    network = trt.Builder(logger_of(trt)).create_network(0)
    parser = trt.OnnxParser(network, logger_of(trt))
    with pytest.raises(TypeError, match="parse_from_file"):
        parser.parse_from_file(Path(tmp_path / "x.onnx"))
    with pytest.raises(TypeError, match="set_shape"):
        trt.Builder(logger_of(trt)).create_optimization_profile().set_shape(None, (1,), (1,), (1,))


def test_dims_take_tuples_lists_and_int_arrays_only(trt):
    profile = trt.Builder(logger_of(trt)).create_optimization_profile()
    profile.set_shape("x", (1, 8), [4, 8], np.array([8, 8]))
    for bad in ((1.0, 8), "18", (i for i in [1]), np.array([1.0, 8.0])):
        with pytest.raises(TypeError, match="set_shape"):
            profile.set_shape("x", bad, (4, 8), (8, 8))


def test_class_parameters_refuse_none_unless_the_bindings_take_it(trt, config):
    with pytest.raises(TypeError, match="incompatible constructor arguments"):
        trt.Builder(None)
    with pytest.raises(TypeError, match="set_timing_cache"):
        config.set_timing_cache(None, False)
    assert config.add_optimization_profile(None) == -1  # a raw pointer: None is taken, and refused as invalid


def test_assigning_unknown_or_read_only_attributes_fails_like_pybind11(trt, config):
    with pytest.raises(AttributeError, match="has no attribute 'max_workspace_size'"):
        config.max_workspace_size = 1 << 30
    with pytest.raises(AttributeError, match="has no setter"):
        config.num_optimization_profiles = 1
    with pytest.raises(AttributeError, match="has no setter"):  # recorded read-only, not modelled by the fake
        trt.Builder(logger_of(trt)).num_DLA_cores = 1
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.hardware_compatibility_level = "NONE"
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.progress_monitor = "x"
    config.progress_monitor = None


@pytest.mark.parametrize("where", ["Builder", "Runtime", "OnnxParser", "progress_monitor"])
def test_subclasses_that_skip_the_base_init_are_refused(trt, config, where):
    class BadLogger(trt.ILogger):
        def __init__(self):
            pass

        def log(self, severity, msg):
            pass

    class BadMonitor(trt.IProgressMonitor):
        def __init__(self):
            pass

    base = "IProgressMonitor" if where == "progress_monitor" else "ILogger"
    with pytest.raises(TypeError, match=f"\\.{base}\\.__init__\\(\\) must be called when overriding __init__"):
        if where == "progress_monitor":
            config.progress_monitor = BadMonitor()
        elif where == "OnnxParser":
            trt.OnnxParser(trt.Builder(logger_of(trt)).create_network(0), BadLogger())
        else:
            getattr(trt, where)(BadLogger())


def _plan(trt, models):
    logger = logger_of(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(models / "cls.onnx"))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("features", (1, 64), (8, 64), (32, 64))
    assert config.add_optimization_profile(profile) == 0
    return builder.build_serialized_network(network, config), logger


def test_host_memory_is_a_buffer_not_bytes(models):
    for version in VERSIONS:
        trt, _ = fake(version)
        plan, _ = _plan(trt, models)
        assert not isinstance(plan, (bytes, bytearray)) and memoryview(plan).itemsize == 1
        assert plan.nbytes == memoryview(plan).nbytes == len(bytes(plan)) and plan.dtype == trt.DataType.INT8
        for operation in (lambda: len(plan), lambda: plan[0:4], lambda: plan[0], lambda: iter(plan)):
            with pytest.raises(TypeError):
                operation()
        assert memoryview(plan) != bytes(plan)  # as on the real one: the view's items are not bytes


def test_bad_profiles_are_minus_one_and_negative_dims_raise(trt):
    logger = logger_of(trt)
    builder = trt.Builder(logger)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (4, 8), (1, 8), (8, 8))  # accepted here, refused when added
    assert not profile and builder.create_builder_config().add_optimization_profile(profile) == -1
    assert any("MIN<=OPT<=MAX" in m for s, m in logger.records if s == "ERROR")
    with pytest.raises(RuntimeError, match="Shape provided for opt is inconsistent"):
        profile.set_shape("x", (1, 8), (-1, 8), (8, 8))


def test_corrupt_timing_cache_is_empty_and_logged_as_a_warning(trt):
    logger = logger_of(trt)
    cache = trt.Builder(logger).create_builder_config().create_timing_cache(b"\x00garbage")
    assert cache is not None
    assert ("WARNING", "Failed to deserialize timing cache. Returning an empty timing cache.") in logger.records


def test_classic_timing_cache_of_another_device_is_refused():
    trt, world = fake("10.16.1.11")
    config = trt.Builder(logger_of(trt)).create_builder_config()
    blob = bytes(config.create_timing_cache(b"").serialize())
    world.gpu_uuid = "GPU-99999999-0000-0000-0000-000000000000"
    assert config.set_timing_cache(config.create_timing_cache(blob), False) is False


def test_rtx_timing_cache_calls_are_deprecated_no_ops():
    trt, _ = fake("1.7.1.116", no_gpu=True)
    config = trt.Builder(logger_of(trt)).create_builder_config()
    cache = config.create_timing_cache(b"")
    with pytest.warns(DeprecationWarning, match="Timing cache operations are no-ops in TensorRT-RTX"):
        assert config.set_timing_cache(cache, False) is True


def test_parse_failures_from_real_onnx_files(trt, tmp_path, models):
    files = write_onnx_cases(tmp_path)
    logger = logger_of(trt)
    expected = {"unknown": ("INVALID_NODE", 1, "fancy_1", "FancyOp"), "matmul": ("INVALID_NODE", 0, "mm0", "MatMul"),
                "trunc": ("MODEL_DESERIALIZE_FAILED", -1, "", ""), "missing": ("INVALID_VALUE", -1, "", "")}
    for name, want in expected.items():
        parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
        assert parser.parse_from_file(files[name]) is False and parser.num_errors == 1
        error = parser.get_error(0)
        assert (error.code().name, error.node(), error.node_name(), error.node_operator()) == want
    write_qdq_model(tmp_path / "qdq.onnx")
    for path in (tmp_path / "qdq.onnx", models / "det.onnx", models / "emb.onnx"):
        assert trt.OnnxParser(trt.Builder(logger).create_network(0), logger).parse_from_file(str(path))


def test_injected_parse_errors_still_work(models):
    trt, world = fake("11.4.0.106")
    world.parse_errors = [{"desc": "boom", "node": 3, "node_name": "n3", "node_operator": "Op", "code": "INVALID_NODE"}]
    parser = trt.OnnxParser(trt.Builder(logger_of(trt)).create_network(0), logger_of(trt))
    assert not parser.parse_from_file(str(models / "det.onnx")) and parser.get_error(0).node_name() == "n3"


def test_callback_exceptions_stay_inside_and_step_complete_cancels(trt, models, capfd):
    class Monitor(trt.IProgressMonitor):
        def __init__(self, result):
            trt.IProgressMonitor.__init__(self)
            self.result = result

        def phase_start(self, phase_name, parent_phase, num_steps):
            raise RuntimeError("start boom")

        def step_complete(self, phase_name, step):
            if isinstance(self.result, Exception):
                raise self.result
            return self.result

        def phase_finish(self, phase_name):
            pass

    for result, built in ((True, True), (False, False), (None, False), (RuntimeError("step boom"), False)):
        logger = logger_of(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        trt.OnnxParser(network, logger).parse_from_file(str(models / "det.onnx"))
        config = builder.create_builder_config()
        config.progress_monitor = Monitor(result)
        assert (builder.build_serialized_network(network, config) is not None) is built
    assert "[ERROR] Exception caught in step_complete(): RuntimeError: step boom" in capfd.readouterr().err


def test_classic_builder_without_gpu_raises_and_rtx_builds():
    for version in ("10.16.1.11", "11.4.0.106"):
        trt, _ = fake(version, no_gpu=True)
        logger = logger_of(trt)
        with pytest.raises(TypeError, match="factory function returned nullptr"):
            trt.Builder(logger)
        assert any("CUDA initialization failure with error: 35" in m for _, m in logger.records)
    trt, _ = fake("1.7.1.116", no_gpu=True)
    assert trt.__name__ == "tensorrt_rtx" and trt.Builder(logger_of(trt)) is not None


def test_rtx_compute_capabilities_and_hardware_compatibility():
    trt, _ = fake("1.7.1.116", no_gpu=True)
    logger = logger_of(trt)
    config = trt.Builder(logger).create_builder_config()
    assert config.num_compute_capabilities == 0 and not config.set_compute_capability(trt.ComputeCapability.SM86, 0)
    config.num_compute_capabilities = 1
    assert config.set_compute_capability(trt.ComputeCapability.SM86, 0) is True
    assert config.get_compute_capability(0) == trt.ComputeCapability.SM86
    config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.NONE
    assert ("WARNING", "setHardwareCompatibilityLevel() is unsupported in TensorRT-RTX.") in logger.records
    assert not hasattr(fake("11.4.0.106")[0].IBuilderConfig, "set_compute_capability")


def test_plugins_flags_and_input_shapes(trt, models):
    world_trt, world = fake(trt.__version__)
    logger = logger_of(world_trt)
    assert world_trt.init_libnvinfer_plugins(logger, "") is True and world.plugin_inits == [(logger, "")]
    with pytest.raises(TypeError, match="init_libnvinfer_plugins"):
        world_trt.init_libnvinfer_plugins(logger, 1)
    config = world_trt.Builder(logger).create_builder_config()
    assert config.get_flag(world_trt.BuilderFlag.TF32) is True
    config.clear_flag(world_trt.BuilderFlag.TF32)
    assert config.get_flag(world_trt.BuilderFlag.TF32) is False
    plan, _ = _plan(world_trt, models)
    context = world_trt.Runtime(logger).deserialize_cuda_engine(plan).create_execution_context()
    assert context.set_input_shape("features", (8, 64)) is True
    assert context.set_input_shape("features", (33, 64)) is False  # larger than the profile's max
    with pytest.raises(TypeError, match="execute_async_v3"):
        context.execute_async_v3(1.0)


def test_fake_cuda_runtime_reports_the_device():
    world = FakeWorld(gpu_uuid="GPU-11111111-2222-3333-4444-555555555555")
    cudart = FakeCudaRuntime(world)
    err, props = cudart.cudaGetDeviceProperties(0)
    assert err == cudart.cudaError_t.cudaSuccess and props.uuid.bytes == bytes.fromhex("11111111222233334444555555555555")
    assert props.name == b"NVIDIA H200" and cudart.cudaGetDeviceCount() == (cudart.cudaError_t.cudaSuccess, 1)
    assert cudart.cudaSetDevice(0) == (cudart.cudaError_t.cudaSuccess,)
    assert cudart.cudaDriverGetVersion() == (cudart.cudaError_t.cudaSuccess, 13000)
    world.cuda_uuid = "GPU-aaaaaaaa-2222-3333-4444-555555555555"
    assert cudart.cudaGetDeviceProperties(0)[1].uuid.bytes[:4] == b"\xaa\xaa\xaa\xaa"
    world.no_gpu = True
    assert cudart.cudaSetDevice(0) == (cudart.cudaError_t.cudaErrorInsufficientDriver,)


FAKE_CLASSES = ("Builder", "IBuilderConfig", "OnnxParser", "IOptimizationProfile", "Runtime", "ICudaEngine",
                "IExecutionContext", "INetworkDefinition", "ITensor")


def test_every_settable_property_has_a_recorded_setter_type():
    # issue 22 item 21: the fake typed 5 setters; every settable property is typed from its recording now
    for version in VERSIONS:
        recorded = signatures.load_signatures(version)["classes"]
        for name in FAKE_CLASSES:
            untyped = [a for a, r in recorded[name]["attrs"].items()
                       if r.get("kind") == "property" and r.get("settable") and not signatures.setter_type(r)]
            assert untyped == [], (version, name)


@pytest.mark.parametrize("attribute, value", [
    ("builder_optimization_level", "x"), ("builder_optimization_level", 1.5), ("avg_timing_iterations", None),
    ("max_aux_streams", "2"), ("profiling_verbosity", 0), ("engine_capability", "STANDARD"),
    ("default_device_type", None), ("flags", -1), ("DLA_core", object()),
])
def test_a_property_assignment_of_the_wrong_type_is_refused_in_every_version(config, attribute, value):
    with pytest.raises(TypeError, match="incompatible function arguments"):
        setattr(config, attribute, value)


@pytest.mark.parametrize("attribute, value", [
    ("builder_optimization_level", 3), ("builder_optimization_level", np.int64(3)), ("avg_timing_iterations", True),
    ("DLA_core", 0), ("progress_monitor", None),
])
def test_a_property_assignment_of_the_right_type_is_taken_in_every_version(config, attribute, value):
    setattr(config, attribute, value)


def test_a_setter_type_is_read_from_the_recorded_signature():
    assert signatures.setter_type({"setter": "(arg0: m.IBuilderConfig, arg1: typing.SupportsInt) -> None"}) == \
        "typing.SupportsInt"
    assert signatures.setter_type({"setter": "(self: m.PluginField, arg0: m.Dims) -> None"}) == "m.Dims"
    assert signatures.setter_type({"settable": True}) is None
