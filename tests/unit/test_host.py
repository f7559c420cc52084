"""HostCapabilities: the identity of a CPU host comes from its ISA flags, fast."""

from __future__ import annotations

import subprocess
import sys

from provisioning.host import HostCapabilities, read_cpu_flags
from provisioning.probe import probe_host

X86 = """processor\t: 0
model name\t: Some CPU @ 3.0GHz
cpu MHz\t\t: 2999.998
flags\t\t: fpu vme sse sse2 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni amx_tile amx_bf16 hypervisor
processor\t: 1
model name\t: Some CPU @ 3.0GHz
flags\t\t: fpu vme sse sse2 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni amx_tile amx_bf16 hypervisor
"""
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve i8mm bf16\n"


def test_only_kernel_relevant_flags_are_kept(tmp_path):
    (tmp_path / "cpuinfo").write_text(X86)
    flags = read_cpu_flags(str(tmp_path / "cpuinfo"))
    assert flags == ("amx_bf16", "amx_tile", "avx", "avx2", "avx512_vnni", "avx512bw", "avx512f", "f16c", "fma",
                     "sse4_1", "sse4_2")
    (tmp_path / "arm").write_text(ARM)
    assert read_cpu_flags(str(tmp_path / "arm")) == ("asimd", "asimddp", "asimdhp", "bf16", "fphp", "i8mm", "sve")


def test_model_name_and_clock_do_not_change_the_key(tmp_path):
    (tmp_path / "a").write_text(X86)
    (tmp_path / "b").write_text(X86.replace("Some CPU @ 3.0GHz", "Other CPU @ 2.1GHz").replace("2999.998", "2100"))
    a = HostCapabilities("onnxruntime", "1.2", "x86_64", read_cpu_flags(str(tmp_path / "a")))
    b = HostCapabilities("onnxruntime", "1.2", "x86_64", read_cpu_flags(str(tmp_path / "b")))
    assert a.cpu_key == b.cpu_key
    assert a.cpu_key.startswith("x86_64-avx512-")
    without_amx = HostCapabilities("onnxruntime", "1.2", "x86_64", tuple(f for f in a.cpu_flags if "amx" not in f))
    assert without_amx.cpu_key != a.cpu_key


def test_missing_cpuinfo_gives_no_flags(tmp_path):
    assert read_cpu_flags(str(tmp_path / "absent")) == ()


PROBE_CHILD = """
import sys, time
from provisioning.probe import probe_host
started = time.perf_counter()
probe_host("onnxruntime")
probe_s = time.perf_counter() - started
heavy = sorted(m for m in ("onnx", "onnxruntime", "tensorrt", "numpy") if m in sys.modules)
started = time.perf_counter()
import onnxruntime
import_s = time.perf_counter() - started
print(heavy, probe_s, import_s)
"""


def test_probe_is_fast_and_reads_versions_from_metadata():
    # fast means: it imports no backend (checked in a fresh process), and costs a fraction of
    # importing one, measured there too (a ratio holds on a loaded machine; a fixed bound does not)
    child = subprocess.run([sys.executable, "-c", PROBE_CHILD], capture_output=True, text=True, check=True)
    *heavy, probe_s, import_s = child.stdout.split()
    assert " ".join(heavy) == "[]", child.stdout  # nothing heavy was imported by the probe itself
    assert float(probe_s) < max(0.05, float(import_s) / 2), child.stdout
    host = probe_host("onnxruntime")
    from importlib.metadata import version
    assert host.backend_version == version("onnxruntime")
    assert host.identity().host_key == host.cpu_key
