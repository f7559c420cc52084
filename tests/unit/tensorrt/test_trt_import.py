"""Without TensorRT: the package, the backend module and ``doit list`` import, and never load tensorrt."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# Nothing is blocked: where TensorRT is not installed (CI) this is the CPU-only case, and
# where it is, "tensorrt not in sys.modules" still proves nothing imported it.
PRELUDE = "import sys\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_package_and_backend_import_without_tensorrt():
    done = run_python("""
        import provisioning, provisioning.backends.tensorrt
        from provisioning.compose import make_backend
        backend = make_backend("tensorrt")
        assert backend.name == "tensorrt"
        assert "tensorrt" not in sys.modules, "tensorrt was imported"
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_backend_says_how_to_install_tensorrt_when_it_compiles():
    done = run_python("""
        sys.modules["tensorrt"] = None  # as if not installed
        from provisioning.backends.tensorrt import import_tensorrt
        from provisioning.errors import BackendUnavailableError
        try:
            import_tensorrt()
        except BackendUnavailableError as exc:
            print(exc)
    """)
    assert "install the tensorrt-cu12 or tensorrt-cu13 extra" in done.stdout, done.stderr
    assert "from NVIDIA's package index" in done.stdout


def test_doit_list_and_engines_status_work_without_tensorrt(corpus_yaml, monkeypatch):
    if not (REPO / "dodo.py").is_file():
        pytest.skip("no dodo.py in this checkout yet")
    corpus_yaml.write_text(corpus_yaml.read_text().replace("backend: onnxruntime", "backend: auto"))
    monkeypatch.setenv("PROVISIONING_CONFIG", str(corpus_yaml))
    done = run_python("""
        from doit.doit_cmd import DoitMain
        from doit.cmd_base import DodoTaskLoader
        listed = DoitMain(DodoTaskLoader()).run(["list"])
        DoitMain(DodoTaskLoader()).run(["engines-status"])  # exit 1: nothing built yet
        assert "tensorrt" not in sys.modules, "doit imported tensorrt"
        sys.exit(listed)
    """)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "engines" in done.stdout and "missing" in done.stdout  # both commands ran
