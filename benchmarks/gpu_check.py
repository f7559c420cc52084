"""What works on this GPU machine: NVML, CUDA through cuda-python, a TensorRT-RTX engine, tests/gpu.

    sh benchmarks/gpu_check.sh [--no-install] [--no-pytest]     (or python3 benchmarks/gpu_check.py)

Made for a lent machine with the NVIDIA driver but no network and no TensorRT: wheels
carried in ``wheels/`` (or ``$WHEELS``) are installed into ``build/gpu_check_site`` with
``pip --no-index`` (or, where pip is missing, unzipped there), then every check runs on
what is importable. Each check is one row, PASS, FAIL or SKIP with the reason; a failing
check never stops the others. Exit status 0 when nothing FAILED, 1 otherwise.
Importable without pynvml, cuda-python or TensorRT (the unit tests run it without a GPU).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import re
import subprocess
import sys
import sysconfig
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("GPU_CHECK_SITE", ROOT / "build" / "gpu_check_site"))
PACKAGES = ["nvidia-ml-py", "cuda-python", "tensorrt-rtx", "numpy", "onnx"]
# Installed too when a wheel is carried: what tests/gpu and the provisioning package need.
OPTIONAL = ["pytest", "pyyaml", "doit", "filelock", "onnxruntime", "onnxconverter-common", "tensorrt"]
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class Report:
    """The rows of the final table; a step that raises becomes one FAIL row."""

    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, check: str, result: str, detail: str = "") -> None:
        self.rows.append((check, result, " ".join(str(detail).split())))

    def step(self, check: str, function, *args):
        try:
            return function(self, *args)
        except Exception as exc:  # noqa: BLE001 - a diagnostic: report and go on
            self.add(check, FAIL, _one_line(exc))
            return None

    def table(self) -> str:
        rows = [("check", "result", "detail"), *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        return "\n".join(f"{c:<{widths[0]}} | {r:<{widths[1]}} | {d}".rstrip() for c, r, d in rows)

    @property
    def failed(self) -> bool:
        return any(result == FAIL for _, result, _ in self.rows)


# --- (a) install from carried wheels ----------------------------------------------------


def wheels_folder() -> Path | None:
    for candidate in (os.environ.get("WHEELS"), Path.cwd() / "wheels", ROOT / "wheels"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _compatible(wheel: Path) -> bool:
    """A loose tag check for the unzip fallback: this Python (or py3) and this OS/arch."""
    parts = wheel.stem.split("-")
    python, platform = parts[-3], parts[-1]
    ours = f"cp{sys.version_info.major}{sys.version_info.minor}"
    machine = sysconfig.get_platform().split("-")[-1]  # linux-x86_64 -> x86_64
    return (ours in python or "py3" in python or "abi3" in parts[-2]) and (
        platform == "any" or machine in platform)


def _unzip(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            target = member
            match = re.match(r"[^/]+\.data/(purelib|platlib)/(.+)", member)
            if match:
                target = match.group(2)
            elif re.match(r"[^/]+\.data/", member):
                continue  # scripts and headers: not needed to import
            path = SITE / target
            if member.endswith("/"):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(member))
            if (archive.getinfo(member).external_attr >> 16) & 0o111:
                path.chmod(0o755)


def install(report: Report, folder: Path | None) -> None:
    if folder is None:
        report.add("install", SKIP, "no wheels/ folder (set WHEELS=...); using what is importable")
        return
    carried = {_norm(wheel.name.split("-")[0]): wheel for wheel in folder.glob("*.whl")}
    wanted = [name for name in PACKAGES + OPTIONAL if _norm(name) in carried]
    missing = [name for name in PACKAGES if _norm(name) not in carried]
    SITE.mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        for name in wanted:  # one at a time: one broken wheel must not block the others
            run = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                 "--find-links", str(folder), "--target", str(SITE), "--upgrade", name],
                capture_output=True, text=True, timeout=900)
            (done if run.returncode == 0 else failed).append(name)
    else:  # no pip: a wheel is a zip, so every compatible one (dependencies included) is unpacked
        for wheel in sorted(folder.glob("*.whl")):
            try:
                if _compatible(wheel):
                    _unzip(wheel)
                    done.append(wheel.name.split("-")[0])
            except Exception:  # noqa: BLE001
                failed.append(wheel.name.split("-")[0])
    how = "pip --no-index --target" if has_pip else "unzipped (no pip)"
    detail = f"{how} into {SITE}: {', '.join(done) or 'nothing'}"
    if failed or missing:
        detail += f"; failed: {', '.join(failed) or '-'}; no wheel: {', '.join(missing) or '-'}"
    report.add("install", PASS if done and not (failed or missing) else SKIP, detail)


# --- provisioning.gpu, even without the package's dependencies ---------------------------


def import_provisioning_gpu():
    """``provisioning.gpu`` (stdlib only) even where yaml/doit are missing for the package root."""
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("provisioning.gpu")
    except ImportError:
        # The package __init__ pulls in the whole plugin; gpu.py needs only errors and host.
        for name in [n for n in sys.modules if n == "provisioning" or n.startswith("provisioning.")]:
            del sys.modules[name]
        package = types.ModuleType("provisioning")
        package.__path__ = [str(ROOT / "provisioning")]
        sys.modules["provisioning"] = package
        try:
            return importlib.import_module("provisioning.gpu")
        except ImportError:
            return None


# --- (b) NVML -----------------------------------------------------------------------------


def _text(value) -> str:
    return value.decode(errors="replace").rstrip("\0") if isinstance(value, bytes) else str(value)


def nvml(report: Report) -> list[dict]:
    try:
        import pynvml
    except ImportError:
        report.add("nvml", FAIL, "nvidia-ml-py (pynvml) is not importable; carry its wheel in wheels/")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        report.add("nvml", FAIL, f"no GPU: NVML is unavailable ({_one_line(exc)})")
        return []
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        report.add("nvml driver", PASS, f"driver {driver}, supports CUDA {cuda // 1000}.{cuda % 1000 // 10}")
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            try:
                mig = "on" if pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE else "off"
            except Exception:  # noqa: BLE001 - NotSupported: not MIG capable
                mig = "n/a"
            gpu = {"name": _text(pynvml.nvmlDeviceGetName(handle)), "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                   "cc": (int(major), int(minor)), "mig": mig, "driver": driver,
                   "mib": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20}
            gpus.append(gpu)
            report.add(f"nvml gpu{index}", PASS, "{name} {uuid} sm{cc[0]}{cc[1]} MIG {mig} {mib} MiB".format(**gpu))
        if not gpus:
            report.add("nvml", FAIL, "no GPU: NVML sees no device")
        return gpus
    finally:
        pynvml.nvmlShutdown()


def provisioning_probe(report: Report, gpu_module):
    if gpu_module is None:
        report.add("provisioning probe", SKIP, "provisioning.gpu is not importable")
        return None
    gpu = gpu_module.probe_visible_gpu()
    report.add("provisioning probe", PASS, f"{gpu.name} {gpu.uuid} {gpu.sm} driver {gpu.driver_version}")
    return gpu


def driver_vs_wheels(report: Report, gpu_module, gpu) -> None:
    for module in ("tensorrt", "tensorrt_rtx"):
        major = gpu_module.wheel_cuda_major(module)
        if major is None:
            report.add(f"driver vs {module}", SKIP, "no wheel with a known CUDA major installed")
            continue
        try:
            gpu_module.check_driver_for_wheel(gpu, module, cuda_major=major)
        except Exception as exc:  # noqa: BLE001 - NoGpuError: the one-line reason and fix
            report.add(f"driver vs {module}", FAIL, str(exc))
        else:
            report.add(f"driver vs {module}", PASS, f"driver {gpu.driver_version} runs the CUDA {major} wheel")


# --- (c) CUDA through cuda-python --------------------------------------------------------


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python before 12.6
    return cudart


def _ok(cudart, what: str, result):
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else values


def cuda(report: Report, gpus: list[dict], gpu_module, probed):
    try:
        cudart = import_cudart()
    except ImportError:
        report.add("cuda", SKIP, "cuda-python is not importable; carry its wheel in wheels/")
        return None, None
    count = _ok(cudart, "cudaGetDeviceCount", cudart.cudaGetDeviceCount())
    props = _ok(cudart, "cudaGetDeviceProperties(0)", cudart.cudaGetDeviceProperties(0))
    raw = bytes(b & 0xFF for b in props.uuid.bytes)
    uuid = "GPU-{0[0]}-{0[1]}-{0[2]}-{0[3]}-{0[4]}".format(
        [raw.hex()[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))])
    cc = (props.major, props.minor)
    report.add("cuda device 0", PASS, f"{count} device(s); 0 is {_text(props.name)} {uuid} sm{cc[0]}{cc[1]}")
    if probed is not None:
        try:
            gpu_module.check_cuda_device_matches(cudart, probed)
        except Exception as exc:  # noqa: BLE001 - another GPU: report it, the memcpy still runs
            report.add("cuda uuid vs nvml", FAIL, str(exc))
        else:
            compared = "not compared (MIG instance)" if probed.uuid.upper().startswith("MIG-") else "same UUID"
            report.add("cuda uuid vs nvml", PASS, f"NVML's {probed.uuid}: {compared}")
    else:
        nvml_index = next((i for i, g in enumerate(gpus) if g["uuid"].lower() == uuid.lower()), None)
        report.add("cuda uuid vs nvml", SKIP if nvml_index is None else PASS,
                   "not in NVML's list (MIG?)" if nvml_index is None else f"NVML gpu{nvml_index}")
    size = 1 << 20
    pattern = bytes(range(256)) * (size // 256)
    src, back = ctypes.create_string_buffer(pattern, size), ctypes.create_string_buffer(size)
    device = _ok(cudart, "cudaMalloc", cudart.cudaMalloc(size))
    try:
        kind = cudart.cudaMemcpyKind
        _ok(cudart, "cudaMemcpy H2D", cudart.cudaMemcpy(device, ctypes.addressof(src), size, kind.cudaMemcpyHostToDevice))
        _ok(cudart, "cudaMemcpy D2H", cudart.cudaMemcpy(ctypes.addressof(back), device, size, kind.cudaMemcpyDeviceToHost))
    finally:
        cudart.cudaFree(device)
    same = back.raw == pattern
    report.add("cuda memcpy 1 MiB", PASS if same else FAIL, "round trip identical" if same else "bytes differ")
    return cudart, cc


# --- (d) a TensorRT-RTX engine for this GPU -----------------------------------------------


def rtx(report: Report, cudart, cc, gpu_module):
    try:
        import tensorrt_rtx as trt
    except ImportError as exc:
        report.add("rtx engine", SKIP, f"tensorrt_rtx is not importable ({_one_line(exc)})")
        return
    targets = sorted(n for n in trt.ComputeCapability.__members__ if n.startswith("SM"))
    if cudart is None or cc is None:
        report.add("rtx engine", SKIP, "no CUDA device (see the cuda rows)")
        return
    if f"SM{cc[0]}{cc[1]}" not in targets:
        report.add("rtx engine", SKIP, f"sm{cc[0]}{cc[1]} is not an RTX target (TensorRT-RTX {trt.__version__} "
                   f"targets {', '.join(t.lower() for t in targets)})")
        return
    try:
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        report.add("rtx engine", SKIP, f"numpy and onnx are needed to make the model ({_one_line(exc)})")
        return
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["s"]),
         helper.make_node("Relu", ["s"], ["y"])], "gpu_check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines = []

        def log(self, severity, message):
            self.lines.append(str(message))

    logger = Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        raise RuntimeError(f"the ONNX parser refused the model: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        log = "\n".join(logger.lines)
        reason = gpu_module.no_gpu_reason(log, None, module="tensorrt_rtx") if gpu_module else None
        raise RuntimeError(reason or f"build failed: {logger.lines[-1] if logger.lines else 'no log'}")
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise RuntimeError(f"deserialize failed: {logger.lines[-1] if logger.lines else 'no log'}")
    context = engine.create_execution_context()
    x = rng.standard_normal((2, 4)).astype(np.float32)
    y = np.zeros((2, 3), np.float32)
    d_x = _ok(cudart, "cudaMalloc", cudart.cudaMalloc(x.nbytes))
    d_y = _ok(cudart, "cudaMalloc", cudart.cudaMalloc(y.nbytes))
    stream = _ok(cudart, "cudaStreamCreate", cudart.cudaStreamCreate())
    try:
        kind = cudart.cudaMemcpyKind
        _ok(cudart, "cudaMemcpy H2D", cudart.cudaMemcpy(d_x, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice))
        context.set_tensor_address("x", int(d_x))
        context.set_tensor_address("y", int(d_y))
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError(f"execute_async_v3 failed: {logger.lines[-1] if logger.lines else 'no log'}")
        _ok(cudart, "cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream))
        _ok(cudart, "cudaMemcpy D2H", cudart.cudaMemcpy(y.ctypes.data, d_y, y.nbytes, kind.cudaMemcpyDeviceToHost))
    finally:
        cudart.cudaFree(d_x), cudart.cudaFree(d_y), cudart.cudaStreamDestroy(stream)
    want = np.maximum(x @ weight + bias, 0)
    error = float(np.abs(y - want).max())
    ok = np.allclose(y, want, rtol=1e-3, atol=1e-4)
    report.add("rtx engine", PASS if ok else FAIL,
               f"TensorRT-RTX {trt.__version__} built for CURRENT (sm{cc[0]}{cc[1]}), {plan.nbytes} B plan, "
               f"max |error| vs numpy {error:.2e}")


# --- (e) tests/gpu ------------------------------------------------------------------------


def gpu_tests(report: Report):
    try:
        import pytest  # noqa: F401
    except ImportError:
        report.add("pytest -m gpu", SKIP, "pytest is not importable")
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-v", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    lines = [line.strip("= ") for line in run.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else (run.stderr.strip().splitlines() or ["no output"])[-1]
    print(run.stdout[-6000:])  # the per-test lines, for whoever reads the log
    if run.returncode == 0 and " passed" not in summary:
        result = SKIP  # everything skipped: the reasons are in the output above
    else:
        result = PASS if run.returncode == 0 else SKIP if run.returncode == 5 else FAIL
    report.add("pytest -m gpu", result, summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-install", action="store_true", help="use what is importable; install nothing")
    parser.add_argument("--no-pytest", action="store_true", help="skip the tests/gpu run")
    args = parser.parse_args(argv)
    report = Report()
    if not args.no_install:
        report.step("install", install, wheels_folder())
    if SITE.is_dir() and str(SITE) not in sys.path:  # this run's installs, or an earlier run's
        sys.path.insert(0, str(SITE))
        importlib.invalidate_caches()
    gpu_module = import_provisioning_gpu()
    gpus = report.step("nvml", nvml) or []
    probed = report.step("provisioning probe", provisioning_probe, gpu_module) if gpus else None
    if not gpus:
        report.add("provisioning probe", SKIP, "no GPU in NVML")
    if probed is not None:
        report.step("driver vs wheels", driver_vs_wheels, gpu_module, probed)
    cudart, cc = report.step("cuda", cuda, gpus, gpu_module, probed) or (None, None)
    report.step("rtx engine", rtx, cudart, cc, gpu_module)
    if not args.no_pytest:
        report.step("pytest -m gpu", gpu_tests)
    print(report.table())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
