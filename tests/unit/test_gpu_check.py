"""benchmarks/gpu_check.py without a GPU: one table, SKIP/FAIL rows with reasons, never a traceback.

A fake ``nvidia-ml-py`` wheel (a pynvml describing an H200 on driver 535) is carried in a
``wheels/`` folder to exercise the offline install (pip, and the unzip path without pip)
and the NVML, provisioning-probe and driver rows.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

FAKE_PYNVML = '''
NVML_DEVICE_MIG_ENABLE = 1
class NVMLError(Exception): pass
class NVMLError_NotSupported(NVMLError): pass
class _Memory: total = 143771 * 2**20
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlSystemGetDriverVersion(): return "535.104.05"
def nvmlSystemGetCudaDriverVersion(): return 12020
def nvmlDeviceGetCount(): return 1
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetName(h): return b"NVIDIA H200"
def nvmlDeviceGetUUID(h): return "GPU-0123abcd-4567-89ef-0123-456789abcdef"
def nvmlDeviceGetCudaComputeCapability(h): return (9, 0)
def nvmlDeviceGetMigMode(h): raise NVMLError_NotSupported("Not Supported")
def nvmlDeviceGetMemoryInfo(h): return _Memory()
'''


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_fake_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "nvidia_ml_py-99.0-py3-none-any.whl"
    info = "nvidia_ml_py-99.0.dist-info"
    files = {
        "pynvml.py": FAKE_PYNVML,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: nvidia-ml-py\nVersion: 99.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def run_script(tmp_path: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WHEELS", "GPU_CHECK_SITE", "PYTHONPATH")}
    env.update(PYTHON=sys.executable, GPU_CHECK_SITE=str(tmp_path / "site"), **env_extra)
    return subprocess.run(["sh", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def rows(stdout: str) -> dict[str, tuple[str, str]]:
    table = {}
    for line in stdout.splitlines():
        parts = [part.strip() for part in line.split(" | ", 2)]
        if len(parts) == 3 and parts[1] in ("PASS", "FAIL", "SKIP"):
            table[parts[0]] = (parts[1], parts[2])
    return table


def test_importable_and_runs_without_pynvml_cuda_or_tensorrt(monkeypatch, capsys):
    for name in ("pynvml", "cuda", "cuda.bindings", "tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, name, None)
    script = load_script()
    assert script.main(["--no-install", "--no-pytest"]) == 1  # NVML missing is a FAIL on a GPU machine
    out = capsys.readouterr().out
    table = rows(out)
    assert out.splitlines()[0].split(" | ")[0].strip() == "check"
    assert table["nvml"] == ("FAIL", "nvidia-ml-py (pynvml) is not importable; carry its wheel in wheels/")
    assert table["cuda"][0] == "SKIP" and "cuda-python is not importable" in table["cuda"][1]
    assert table["rtx engine"][0] == "SKIP" and "tensorrt_rtx is not importable" in table["rtx engine"][1]
    assert "Traceback" not in out


def test_the_shell_script_here_says_no_gpu_and_never_a_traceback(tmp_path):
    run = run_script(tmp_path, "--no-pytest")
    table = rows(run.stdout)
    assert run.returncode == 1, run.stdout + run.stderr
    assert table["install"][0] == "SKIP" and "no wheels/ folder" in table["install"][1]
    assert table["nvml"][0] == "FAIL" and table["nvml"][1].startswith("no GPU: NVML is unavailable")
    assert table["provisioning probe"] == ("SKIP", "no GPU in NVML")
    assert "Traceback" not in run.stdout + run.stderr


@pytest.mark.parametrize("pip", ["pip", "no pip"])
def test_carried_wheels_are_installed_offline_and_used(tmp_path, pip):
    write_fake_wheel(tmp_path / "wheels")
    env = {}
    if pip == "no pip":  # a `pip` package without __main__ shadows the real one: `-m pip` fails
        (tmp_path / "shadow" / "pip").mkdir(parents=True)
        (tmp_path / "shadow" / "pip" / "__init__.py").write_text("")
        env["PYTHONPATH"] = str(tmp_path / "shadow")
    run = run_script(tmp_path, "--no-pytest", **env)
    table = rows(run.stdout)
    assert "Traceback" not in run.stdout + run.stderr
    assert table["install"][0] == "SKIP"  # the fake wheel installed, the other four are not carried
    assert ("unzipped (no pip)" if pip == "no pip" else "pip --no-index") in table["install"][1]
    assert "nvidia_ml_py" in table["install"][1] or "nvidia-ml-py" in table["install"][1]
    assert "no wheel: cuda-python, tensorrt-rtx, numpy, onnx" in table["install"][1]
    assert (tmp_path / "site" / "pynvml.py").is_file()
    assert table["nvml driver"] == ("PASS", "driver 535.104.05, supports CUDA 12.2")
    assert table["nvml gpu0"] == ("PASS", "NVIDIA H200 GPU-0123abcd-4567-89ef-0123-456789abcdef sm90 MIG n/a 143771 MiB")
    assert table["provisioning probe"][0] == "PASS" and "NVIDIA H200" in table["provisioning probe"][1]
    # This venv carries tensorrt_rtx_cu13: driver 535 is too old for it, and the row says how to fix it.
    if "driver vs tensorrt_rtx" in table and table["driver vs tensorrt_rtx"][0] == "FAIL":
        assert "driver 535.104.05 is too old for this CUDA 13 wheel of TensorRT-RTX" in table["driver vs tensorrt_rtx"][1]
        assert run.returncode == 1
    assert table["cuda"][0] in ("SKIP", "FAIL")


def test_a_step_that_raises_is_one_fail_row():
    script = load_script()
    report = script.Report()

    def broken(report):
        raise RuntimeError("line one\nline two")

    assert report.step("broken", broken) is None
    report.add("fine", script.SKIP, "a reason")
    assert report.rows == [("broken", "FAIL", "RuntimeError: line one line two"), ("fine", "SKIP", "a reason")]
    assert report.failed
    assert report.table().splitlines()[1] == "broken | FAIL   | RuntimeError: line one line two"


def test_wheel_tag_check_for_the_unzip_fallback():
    script = load_script()
    ours = f"cp{sys.version_info.major}{sys.version_info.minor}"
    machine = __import__("sysconfig").get_platform().split("-")[-1]
    assert script._compatible(Path("onnx-1.0-py3-none-any.whl"))
    assert script._compatible(Path(f"numpy-2.0-{ours}-{ours}-manylinux_2_28_{machine}.whl"))
    assert not script._compatible(Path(f"numpy-2.0-cp27-cp27mu-manylinux_2_28_{machine}.whl"))
    assert not script._compatible(Path(f"numpy-2.0-{ours}-{ours}-win_amd64.whl"))


def test_an_h200_is_reported_as_not_an_rtx_target():
    pytest.importorskip("tensorrt_rtx")
    script = load_script()
    report = script.Report()
    script.rtx(report, object(), (9, 0), None)
    (check, result, detail), = report.rows
    assert (check, result) == ("rtx engine", "SKIP") and detail.startswith("sm90 is not an RTX target (TensorRT-RTX ")
    assert "sm86" in detail


def test_rtx_build_without_a_driver_fails_with_the_cuda_reason():
    # tensorrt_rtx is real here (no GPU): the model, parser and config calls run, and the
    # build's "cudaError 35" comes back as provisioning.gpu's one-line reason.
    pytest.importorskip("tensorrt_rtx")
    pytest.importorskip("onnx")
    script = load_script()
    report = script.Report()
    from provisioning import gpu as gpu_module

    assert report.step("rtx engine", script.rtx, object(), (8, 6), gpu_module) is None
    (check, result, detail), = report.rows
    assert (check, result) == ("rtx engine", "FAIL")
    assert detail.startswith("RuntimeError: no usable GPU (CUDA error 35: the driver is missing or older than this CUDA")


def test_provisioning_gpu_is_importable_without_the_package_dependencies(tmp_path):
    # A bare GPU machine may lack yaml/doit: the script still reaches provisioning.gpu.
    # ``-S``: no site-packages, so neither yaml nor the editable install's finder helps.
    code = (
        f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import gpu_check\n"
        "module = gpu_check.import_provisioning_gpu(); print(module.probe_visible_gpu.__name__)\n"
        "import importlib.util; print(importlib.util.find_spec('yaml'))\n"
    )
    run = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.stdout.split() == ["probe_visible_gpu", "None"], run.stderr
