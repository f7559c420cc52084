"""TensorRT-RTX in a fleet: a GPU-less CI builder fills the bucket, a GPU host of a target fetches.

The RTX host key is the target list, not the build machine, so a plan built ahead of time
on a CPU-only runner is the one every GPU host of those compute capabilities uses. Real
TensorRT-RTX builder, real S3 server (moto) on the loopback interface.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from provisioning import load_config
from provisioning.compiler import CompileOutcome, EngineCompiler, EngineCompileRequest
from provisioning.compose import build_backbone_specs, make_backend, probe_host_for
from provisioning.host import GpuInfo
from provisioning.remote import make_remote_cache
from tests.conftest import write_corpus_yaml
from tests.rtx_guard import rtx_required  # noqa: F401 - the fixture of pytestmark

from .conftest import remote_block

pytestmark = pytest.mark.usefixtures("rtx_required")  # skip without tensorrt_rtx, fail under CI=true


def _host_config(root, name, corpus_dir, block):
    folder = root / name
    folder.mkdir()
    backbones = [{"model_name": "det", "onnx": str(corpus_dir / "models/det.onnx")},
                 {"model_name": "cls", "onnx": str(corpus_dir / "models/cls.onnx"),
                  "inputs": {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}}]
    return write_corpus_yaml(folder, backbones, backend="tensorrt-rtx", compute_capabilities=["sm86", "sm89"],
                             remote=block)


def _provision(config_path, host=None):
    config = load_config(config_path)
    host = host or probe_host_for(config)
    specs = build_backbone_specs(config, host=host)
    compiler = EngineCompiler(make_backend("tensorrt-rtx"), heartbeat_s=0, remote=make_remote_cache(config))
    return compiler.compile_engines_for_corpus(EngineCompileRequest(specs, config.cache_dir, host))


def test_a_gpu_host_fetches_what_a_gpu_less_builder_published(tmp_path, corpus_dir, s3_server, bucket):
    block = remote_block(s3_server.endpoint, bucket)
    builder = _provision(_host_config(tmp_path, "ci", corpus_dir, block))
    assert builder.built == 2
    assert all(r.entry.manifest["build"]["notes"]["deserialized"].startswith("false") for r in builder)

    inference_config = _host_config(tmp_path, "rtx4090-box", corpus_dir, block)
    cpu_host = probe_host_for(load_config(inference_config))
    gpu_host = replace(cpu_host, machine="aarch64", cpu_flags=("asimd",),
                       gpu=GpuInfo("NVIDIA RTX A6000", "GPU-6a6a6a6a-0000-1111-2222-333333333333", (8, 6),
                                   "580.65.06", 0))
    # A build on this host would deserialize (sm86 is a target) and fail without a real GPU:
    # every engine must come from the bucket.
    fetched = _provision(inference_config, gpu_host)
    assert fetched.built == 0 and fetched.reused == 2
    assert {r.source for r in fetched} == {"remote"}
    assert all(r.outcome is CompileOutcome.REUSED for r in fetched)
    assert sorted(r.entry.file_name for r in fetched) == sorted(r.entry.file_name for r in builder)
    assert {r.entry.sha256 for r in fetched} == {r.entry.sha256 for r in builder}
