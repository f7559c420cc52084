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


class RemoteEntry:
    """One remote entry (layout 2) as an attacker with write access sees it: raw objects, no checks.

    ``fs`` is an s3fs client (``root`` = ``bucket/prefix``) or fsspec's local file system
    (``root`` = the folder of a ``file://`` remote).
    """

    def __init__(self, fs, root: str, result):
        from provisioning.remote.layout import inputs_digest

        inputs = result.entry.inputs
        self.fs = fs
        self.model = result.model_name
        self.host_key = inputs["host"]["host_key"]
        self.name = result.entry.file_name
        self.digest = inputs_digest(inputs)
        self.base = f"{root}/{self.host_key}/{self.name}/{self.digest}"

    def commit_ids(self) -> list[str]:
        try:
            return sorted(p.rsplit("/", 1)[1] for p in self.fs.ls(f"{self.base}/commit", detail=False))
        except FileNotFoundError:
            return []

    def commit_key(self, key_id: str | None = None) -> str:
        if key_id is None:
            ids = self.commit_ids()
            assert len(ids) == 1, f"expected one commit record in {self.base}, found {ids}"
            key_id = ids[0]
        return f"{self.base}/commit/{key_id}"

    def record(self, key_id: str | None = None) -> bytes:
        return self.fs.cat_file(self.commit_key(key_id))

    def fields(self, key_id: str | None = None):
        from provisioning.remote.signing import parse_body, split_record

        record = self.record(key_id)
        return parse_body(split_record(record)[0], record, key_id or "")

    def engine_key(self, key_id: str | None = None) -> str:
        return f"{self.base}/engine/{self.fields(key_id).engine_sha256}"

    def manifest_key(self, key_id: str | None = None) -> str:
        return f"{self.base}/manifest/{self.fields(key_id).manifest_sha256}"

    @property
    def lease_key(self) -> str:
        return f"{self.base}/lease"

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(key, data)

    def cat(self, key: str) -> bytes:
        return self.fs.cat_file(key)

    def rm(self, key: str) -> None:
        self.fs.rm_file(key)

    def objects(self) -> dict[str, bytes]:
        """Every object of the entry and its bytes (to prove nothing was overwritten)."""
        return {p: self.fs.cat_file(p) for p in sorted(self.fs.find(self.base))}


def remote_entries(endpoint: str, bucket: str, summary, prefix: str = "engines") -> dict[str, RemoteEntry]:
    """The remote entries of a run's results, by model name."""
    fs = s3fs_client(endpoint)
    return {r.model_name: RemoteEntry(fs, f"{bucket}/{prefix}", r) for r in summary}


def forged_record(body: bytes, key_id: str = "attacker", raw: bytes = b"\0" * 64, algorithm: str = "ed25519") -> bytes:
    """A commit record with a signature line that no key made."""
    import base64

    return body + f"signature {algorithm} {key_id} {base64.b64encode(raw).decode()}\n".encode()


@dataclass
class Ed25519Keys:
    """An Ed25519 key pair on disk, as the remote: block names it."""

    private_file: Path
    public_file: Path
    key_id: str | None = None

    @property
    def builder(self) -> dict:
        block = {"algorithm": "ed25519", "private_key": {"file": str(self.private_file)}}
        return {**block, "id": self.key_id} if self.key_id else block

    @property
    def reader(self) -> dict:
        block = {"algorithm": "ed25519", "public_key": {"file": str(self.public_file)}}
        return {**block, "id": self.key_id} if self.key_id else block


def make_ed25519_keys(folder: Path, name: str = "cache", key_id: str | None = None) -> Ed25519Keys:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    keys = Ed25519Keys(folder / f"{name}.pem", folder / f"{name}.pub", key_id)
    keys.private_file.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    keys.public_file.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return keys


@pytest.fixture
def ed25519_keys(tmp_path) -> Ed25519Keys:
    return make_ed25519_keys(tmp_path / "keys")
