"""Real TensorRT on a real GPU: build, cache, reuse, validate, reject a foreign plan.

Run with: ``.venv/bin/python -m pytest -m gpu tests/gpu -v`` (needs the tensorrt extra and
a visible CUDA GPU; skipped with the reason otherwise). The TensorRT-RTX test at the end
needs ``tensorrt_rtx``, cuda-python and a GPU that is one of RTX's targets instead.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from provisioning.compiler import BackboneSpec, CompileOutcome, EngineCompiler, EngineCompileRequest
from provisioning.config import InputShape
from provisioning.errors import BackendError, ProvisioningError
from provisioning.manifest import manifest_path_for, read_manifest
from provisioning.sidecar import Sha256Sidecar

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "models"


def _gpu_host():
    try:
        from provisioning.backends.tensorrt import import_tensorrt
        from provisioning.probe import probe_host

        import_tensorrt()
        return probe_host("tensorrt"), None
    except ProvisioningError as exc:
        return None, str(exc)


HOST, WHY = _gpu_host()
pytestmark = [pytest.mark.gpu]
needs_trt = pytest.mark.skipif(HOST is None, reason=f"needs TensorRT and a GPU: {WHY}")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(CORPUS, folder)
    return folder


def backbone(models: Path, name: str, **overrides) -> BackboneSpec:
    values = {"model_name": name, "onnx_path": models / f"{name}.onnx", "workspace_mb": 1024, "validate": True}
    if name == "cls":
        values["inputs"] = (("features", InputShape((1, 64), (8, 64), (32, 64))),)
    if name == "emb":
        values["external_data"] = (models / "emb.onnx.data",)
    values.update(overrides)
    return BackboneSpec(**values)


def compile_all(cache: Path, *specs: BackboneSpec):
    from provisioning.backends.tensorrt import TensorRTBackend

    request = EngineCompileRequest(backbones=specs, cache_dir=cache, host=HOST)
    return EngineCompiler(TensorRTBackend(), heartbeat_s=5).compile_engines_for_corpus(request)


@needs_trt
def test_build_validate_cache_and_reuse(models, tmp_path):
    cache = tmp_path / "cache"
    first = compile_all(cache, backbone(models, "det"), backbone(models, "cls"))
    assert first.built == 2
    for result in first:
        assert Sha256Sidecar.verify(result.entry.path)
        notes = read_manifest(result.entry.path)["build"]["notes"]
        assert notes["validated"] is True and notes["timing_cache"].endswith("saved")
        assert Path(str(result.entry.path) + ".build.log").stat().st_size > 0
    again = compile_all(cache, backbone(models, "det"), backbone(models, "cls"))
    assert again.reused == 2


@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_builds_and_validates(models, tmp_path, precision):
    try:
        summary = compile_all(tmp_path / "cache", backbone(models, "det", precision=precision))
    except BackendError as exc:
        if "strongly typed" in str(exc):  # 11.x without onnxconverter-common, or bf16 on 11.x
            pytest.skip(str(exc))
        raise
    assert summary.results[0].outcome is CompileOutcome.BUILT


@needs_trt
def test_loaded_engine_matches_onnx_runtime(models, tmp_path):
    import onnxruntime as ort
    import numpy as np

    from provisioning.backends.tensorrt import import_tensorrt, load_verified_engine
    from provisioning.backends.trt_runtime import run_inference

    engine_path = compile_all(tmp_path / "cache", backbone(models, "det")).results[0].entry.path
    loaded = load_verified_engine(engine_path)
    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    got = run_inference(import_tensorrt(), loaded.engine, feed, "gpu test")
    session = ort.InferenceSession(str(models / "det.onnx"), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=1e-4)


@needs_trt
def test_foreign_and_damaged_plans_are_rejected(models, tmp_path):
    from provisioning.backends.tensorrt import load_verified_engine

    engine = compile_all(tmp_path / "cache", backbone(models, "det", validate=False)).results[0].entry.path
    # A manifest from another TensorRT version: refused before TensorRT sees the bytes.
    manifest = read_manifest(engine)
    manifest["inputs"]["backend_version"] = "10.0.0.6"
    manifest_path_for(engine).write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="a foreign plan"):
        load_verified_engine(engine)
    # Bytes TensorRT cannot read, with a sidecar that vouches for them: TensorRT returns None.
    damaged = engine.with_name("damaged.engine")
    damaged.write_bytes(b"\x00" * 64 + engine.read_bytes()[64:])
    Sha256Sidecar.write_atomic_and_sidecar(damaged, damaged.read_bytes())
    shutil.copy(manifest_path_for(engine), manifest_path_for(damaged))
    manifest["inputs"]["backend_version"] = HOST.backend_version
    manifest_path_for(damaged).write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="could not deserialize"):
        load_verified_engine(damaged)


@needs_trt
def test_version_compatible_and_hardware_compatible_engines(models, tmp_path):
    spec = backbone(models, "det", version_compatible=True)
    if HOST.gpu.compute_capability >= (8, 0):
        spec = replace(spec, hardware_compatibility="ampere_plus")
    result = compile_all(tmp_path / "cache", spec).results[0]
    from provisioning.backends.tensorrt import load_verified_engine

    assert load_verified_engine(result.entry.path).runtime.engine_host_code_allowed is True


def _rtx_target():
    """(tensorrt_rtx, cudart, compute capability) when device 0 is an RTX target, else (None, None, why)."""
    try:
        import tensorrt_rtx as trt
    except ImportError as exc:
        return None, None, f"tensorrt_rtx is not installed ({exc})"
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python before 12.6
        except ImportError as exc:
            return None, None, f"cuda-python is not installed ({exc})"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        return None, None, f"no CUDA GPU ({getattr(err, 'name', err)}, {count} devices)"
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        return None, None, f"cudaGetDeviceProperties(0) failed ({getattr(err, 'name', err)})"
    sm = f"SM{props.major}{props.minor}"
    if sm not in trt.ComputeCapability.__members__:
        targets = sorted(n.lower() for n in trt.ComputeCapability.__members__ if n.startswith("SM"))
        return None, None, f"{sm.lower()} is not a TensorRT-RTX {trt.__version__} target ({', '.join(targets)})"
    return trt, cudart, sm


def _cuda_ok(cudart, result):
    err, *values = result
    assert err == cudart.cudaError_t.cudaSuccess, getattr(err, "name", err)
    return values[0] if values else None


def test_rtx_engine_for_the_current_gpu_matches_onnx_runtime():
    """TensorRT-RTX directly: build det for CURRENT, deserialize, run once, compare with ONNX Runtime."""
    trt, cudart, why = _rtx_target()
    if trt is None:
        pytest.skip(f"needs TensorRT-RTX and a GPU it targets: {why}")
    import numpy as np
    import onnxruntime as ort

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines = []

        def log(self, severity, message):
            self.lines.append(f"{severity}: {message}")

    logger = Logger()
    onnx_path = CORPUS / "det.onnx"
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(onnx_path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 for the comparison, not TF32's 10-bit mantissa
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, logger.lines[-5:]
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    assert engine is not None, logger.lines[-5:]
    context = engine.create_execution_context()

    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    host, device = {}, {}
    stream = _cuda_ok(cudart, cudart.cudaStreamCreate())
    try:
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                host[name] = np.ascontiguousarray(feed[name])
            else:
                shape = tuple(engine.get_tensor_shape(name))
                host[name] = np.zeros(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            device[name] = _cuda_ok(cudart, cudart.cudaMalloc(max(host[name].nbytes, 1)))
            context.set_tensor_address(name, int(device[name]))
        kind = cudart.cudaMemcpyKind
        for name, value in feed.items():
            _cuda_ok(cudart, cudart.cudaMemcpy(device[name], value.ctypes.data, value.nbytes, kind.cudaMemcpyHostToDevice))
        assert context.execute_async_v3(int(stream)), logger.lines[-5:]
        _cuda_ok(cudart, cudart.cudaStreamSynchronize(stream))
        for name, value in host.items():
            if name not in feed:
                _cuda_ok(cudart, cudart.cudaMemcpy(value.ctypes.data, device[name], value.nbytes, kind.cudaMemcpyDeviceToHost))
    finally:
        for pointer in device.values():
            cudart.cudaFree(pointer)
        cudart.cudaStreamDestroy(stream)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    assert set(want) <= set(host)
    for name, value in want.items():
        np.testing.assert_allclose(host[name], value, rtol=1e-3, atol=1e-4)
