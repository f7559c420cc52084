"""A real S3 server (moto's standalone server, a subprocess on 127.0.0.1) and host helpers.

Every test talks to it through s3fs over HTTP; nothing is patched in-process. Each test
gets its own bucket; tests that stop the server get a private one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioning import EngineCompiler, build_compile_request, load_config
from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.cache import read_events
from provisioning.remote import make_remote_cache
from tests.conftest import DEFAULT_BACKBONES, write_corpus_yaml

LOOPBACK = "127.0.0.1"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class MotoServer:
    """moto's S3 server in its own process, so stopping it drops every connection at once."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "MotoServer":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=0.5).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("moto server exited at start-up")
                time.sleep(0.05)
        raise RuntimeError("moto server did not answer within 20 s")

    def stop(self) -> None:
        """SIGKILL: the way a crashed or partitioned server disappears."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture(scope="session")
def s3_server():
    """One moto server for the session (loopback only)."""
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def private_server():
    """A moto server this test may stop."""
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def s3_env(monkeypatch):
    """Dummy credentials, no profile or endpoint from the developer's own environment."""
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)


def s3fs_client(endpoint: str):
    """A plain s3fs client, used by tests to inspect and damage the bucket."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket on the session server."""
    name = "engines-" + uuid.uuid4().hex[:12]
    s3fs_client(s3_server.endpoint).mkdir(name)
    return name


def make_bucket(endpoint: str) -> str:
    name = "engines-" + uuid.uuid4().hex[:12]
    s3fs_client(endpoint).mkdir(name)
    return name


@dataclass
class Host:
    """One simulated host: its own folder, corpus.yaml and local cache."""

    folder: Path
    config_path: Path

    @property
    def cache_dir(self) -> Path:
        return self.folder / "cache"

    def events(self) -> list[dict]:
        return read_events(self.cache_dir)

    def compiler(self):
        """(compiler, remote cache) built from this host's config, as the library wires them."""
        config = load_config(self.config_path)
        remote = make_remote_cache(config)
        return EngineCompiler(OnnxRuntimeBackend(), heartbeat_s=0, remote=remote), remote, config

    def provision(self, compiler=None):
        """Run the compiler on the corpus; returns the summary."""
        config = load_config(self.config_path)
        if compiler is None:
            compiler = self.compiler()[0]
        return compiler.compile_engines_for_corpus(build_compile_request(config))


def make_host(root: Path, name: str, corpus_dir: Path, remote: dict | None, backbones=None) -> Host:
    """A host folder whose corpus.yaml points at the shared models and its own cache."""
    folder = root / name
    folder.mkdir(parents=True)
    specs = []
    for backbone in backbones or DEFAULT_BACKBONES:
        spec = dict(backbone)
        spec["onnx"] = str(corpus_dir / backbone["onnx"])
        specs.append(spec)
    top = {"remote": remote} if remote is not None else {}
    return Host(folder, write_corpus_yaml(folder, specs, **top))


def remote_block(endpoint: str, bucket: str, **extra) -> dict:
    """A remote: block for the test server, with short timeouts and leases."""
    return {"url": f"s3://{bucket}/engines", "endpoint_url": endpoint, "timeout_s": 3, "lease_s": 2, **extra}


POLICY_EVENTS = ("remote_unsigned", "remote_signature_optional", "remote_hmac_reader")


def warnings_of(caplog) -> list[str]:
    """Warning and error lines from the remote cache about this run's entries.

    The start-up warnings about the key set-up (an unsigned fleet, ...) are left out here:
    each run gives them once, whatever happens, and :func:`policy_warnings_of` checks them.
    """
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("provisioning.remote") and r.levelno >= logging.WARNING
            and getattr(r, "event", None) not in POLICY_EVENTS]


def policy_warnings_of(caplog) -> list[tuple[str, str]]:
    """(event, line) of the start-up warnings about the key set-up."""
    return [(r.event, r.getMessage()) for r in caplog.records
            if r.name.startswith("provisioning.remote") and getattr(r, "event", None) in POLICY_EVENTS]
