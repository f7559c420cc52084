"""Fixtures of the release tests: a fleet key, hosts that build into a real bucket, doit in a subprocess.

The bucket is a real ``file://`` folder or moto's S3 server over HTTP (the fixtures of
tests/remote, imported here); engines are built by the real compiler with real ONNX
Runtime (and TensorRT-RTX's real builder, or the signature-checked TensorRT fake where a
GPU is simulated).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioning import EngineCompiler, build_compile_request, load_config
from provisioning.compose import build_backbone_specs, make_backend, probe_host_for
from provisioning.compiler import EngineCompileRequest
from provisioning.remote import make_remote_cache
from tests.conftest import CORPUS, DOIT, REPO, write_corpus_yaml
from tests.remote.conftest import (  # noqa: F401 (fixtures, used by name)
    S3_ENV, Ed25519Keys, bucket, make_ed25519_keys, s3_env, s3_server,
)

CREATED = "2026-12-07T00:00:00Z"
KEY_ID = "fleet"
# One set of backbones every builder of the fleet shares (ONNX Runtime, TensorRT and
# TensorRT-RTX builders alike): fp32 so ONNX Runtime builds them too, one workspace.
BACKBONES = [
    {"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"},
    {"model_name": "cls", "onnx": "models/cls.onnx", "precision": "fp32",
     "inputs": {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}},
]


@pytest.fixture
def fleet_keys(tmp_path) -> Ed25519Keys:
    """The fleet's Ed25519 key pair on disk, id ``fleet``."""
    return make_ed25519_keys(tmp_path / "keys", "fleet", KEY_ID)


@pytest.fixture
def models(tmp_path) -> Path:
    """A private copy of the corpus models (tests edit them)."""
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(CORPUS / "models", folder)
    return folder


@dataclass
class Builder:
    """One host of the build farm: its folder, corpus.yaml and cache."""

    folder: Path
    config_path: Path

    @property
    def cache_dir(self) -> Path:
        return self.folder / "cache"

    def build(self, host=None, backend: str | None = None):
        """Build every backbone through the real compiler (remote fetch and upload included)."""
        config = load_config(self.config_path)
        if host is None and backend is None:
            compiler = EngineCompiler(make_backend(config.backend), heartbeat_s=0, remote=make_remote_cache(config))
            return compiler.compile_engines_for_corpus(build_compile_request(config))
        host = host or probe_host_for(config, backend)
        specs = build_backbone_specs(config, host.backend, host=host)
        compiler = EngineCompiler(make_backend(host.backend), heartbeat_s=0, remote=make_remote_cache(config))
        return compiler.compile_engines_for_corpus(EngineCompileRequest(specs, config.cache_dir, host))


def make_builder(root: Path, name: str, models: Path, remote: dict | None, *, backbones=None,
                 **top) -> Builder:
    """A builder folder whose corpus.yaml names ``models`` and the shared bucket."""
    folder = root / name
    folder.mkdir(parents=True)
    specs = []
    for backbone in backbones or BACKBONES:
        spec = dict(backbone)
        spec["onnx"] = str(models / Path(backbone["onnx"]).name)
        specs.append(spec)
    extra = {"workspace_mb": 256, **top}
    if remote is not None:
        extra["remote"] = remote
    return Builder(folder, write_corpus_yaml(folder, specs, **extra))


def file_remote(root: Path, keys: Ed25519Keys, **extra) -> dict:
    """A read-write ``file://`` remote signed with the fleet key."""
    return {"url": f"file://{root}", "timeout_s": 5, "lease_s": 2, "namespace": "prod",
            "signing_key": keys.builder, **extra}


def s3_remote(endpoint: str, bucket_name: str, keys: Ed25519Keys, **extra) -> dict:
    """A read-write moto bucket signed with the fleet key."""
    return {"url": f"s3://{bucket_name}/engines", "endpoint_url": endpoint, "timeout_s": 5, "lease_s": 2,
            "namespace": "prod", "signing_key": keys.builder, **extra}


def doit(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``doit ARGS`` in a subprocess, as a user runs it."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PROVISIONING_CONFIG", "SOURCE_DATE_EPOCH")}
    environment.update(S3_ENV)
    environment["PYTHONPATH"] = str(REPO)
    environment.update(env or {})
    return subprocess.run([DOIT, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def reader(keys: Ed25519Keys, key_id: str = KEY_ID, **config):
    """An EntrySigner that only verifies (the public key), as a serving host holds it."""
    from provisioning.remote.config import KeySource, SigningKeyConfig
    from provisioning.remote.signing import EntrySigner

    return EntrySigner(SigningKeyConfig("ed25519", public_key=KeySource(file=keys.public_file), key_id=key_id,
                                        **config), "test")


def signer(keys: Ed25519Keys, key_id: str = KEY_ID):
    """The builder's EntrySigner (private key)."""
    from provisioning.remote.config import KeySource, SigningKeyConfig
    from provisioning.remote.signing import EntrySigner

    return EntrySigner(SigningKeyConfig("ed25519", private_key=KeySource(file=keys.private_file), key_id=key_id),
                       "test")
