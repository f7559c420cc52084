"""Fixtures of the pull tests: a bucket with committed entries (layout 2) and a signed release of them.

The entries are written as a builder's upload leaves them (engine and manifest parts named
by their SHA-256, a commit record), into a real ``file://`` folder or a moto bucket over
HTTP; the release is signed with R1's :func:`provisioning.release.sign_release` and an
Ed25519 fleet key on disk. Engine bytes are random: a pull never runs them.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from provisioning.host import GpuInfo, HostCapabilities, read_cpu_flags
from provisioning.manifest import manifest_bytes
from provisioning.release.format import (BackboneVariants, Compatibility, EntryRef, Release, TiedTo, Variant,
                                         sign_release)
from provisioning.release.select import ServingHost
from provisioning.remote.config import KeySource, SigningKeyConfig
from provisioning.remote.layout import inputs_digest
from provisioning.remote.signing import EntrySigner, entry_message
from provisioning.schema import EngineFilenameSchema, ParsedEngineName
from tests.remote.conftest import make_ed25519_keys

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "GPU-11111111-0000-0000-0000-000000000000", (9, 0), "580.65.06", 0)
L4 = GpuInfo("NVIDIA L4", "GPU-22222222-0000-0000-0000-000000000000", (8, 9), "580.65.06", 0)
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "GPU-33333333-0000-0000-0000-000000000000", (8, 0), "580.65.06", 0)
T4 = GpuInfo("Tesla T4", "GPU-44444444-0000-0000-0000-000000000000", (7, 5), "580.65.06", 0)
ONNX_SHA = {"det": "d" * 64, "cls": "c" * 64, "emb": "e" * 64}
SETTINGS = "5" * 64


def serving_host(gpu: GpuInfo | None = H100, **runtimes: str) -> ServingHost:
    """A serving host with this machine's CPU, ``gpu`` and runtimes (tensorrt="10.16.1.11", ...)."""
    named = {k.replace("_", "-"): v for k, v in runtimes.items()}
    return ServingHost(platform.machine(), read_cpu_flags(), gpu, named)


def cpu_key() -> str:
    return HostCapabilities("onnxruntime", "", platform.machine(), read_cpu_flags()).cpu_key


def _name(model: str, tag: str, version_tag: str, host_key: str) -> str:
    return EngineFilenameSchema.compose(ParsedEngineName(model, "fp16", tag, version_tag, host_key, "0a1b2c3d"))


def trt(model: str, gpu: GpuInfo, version: str, *, vc: bool = False, hwc: str = "none") -> dict:
    """The identity fields of a TensorRT variant (see :meth:`ReleaseKit.add`)."""
    host = HostCapabilities("tensorrt", version, platform.machine(), (), gpu).identity(
        hardware_compatibility=hwc, version_compatible=vc)
    cc = None if hwc == "ampere_plus" else f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    return dict(engine=_name(model, "trt", host.version_tag, host.host_key), host_key=host.host_key,
                backend="tensorrt", backend_version=version, host=host.as_dict(),
                tied_to=TiedTo("gpu", gpu.name if hwc == "none" else None, cc),
                compatibility=Compatibility(vc, hwc, ()))


def rtx(model: str, targets: tuple[str, ...], version: str = "1.2.0.54") -> dict:
    host_key = "-".join(targets)
    return dict(engine=_name(model, "trtrtx", version, host_key), host_key=host_key, backend="tensorrt-rtx",
                backend_version=version, host={"backend": "tensorrt-rtx", "host_key": host_key},
                tied_to=TiedTo("gpu", None, None), compatibility=Compatibility(False, "none", targets))


def ort(model: str, version: str = "1.23.2", key: str | None = None) -> dict:
    key = key or cpu_key()
    machine, isa = key.rsplit("-", 2)[0], key.rsplit("-", 2)[1]
    return dict(engine=_name(model, "ort", version, key), host_key=key, backend="onnxruntime",
                backend_version=version, host={"backend": "onnxruntime", "host_key": key},
                tied_to=TiedTo("cpu", machine=machine, isa=isa), compatibility=Compatibility())


@dataclass
class ReleaseKit:
    """Entries put into a bucket through ``put(relative_path, bytes)``, and the release that pins them."""

    put: Callable[[str, bytes], None]
    url: str
    keys_dir: Path
    key_id: str = "fleet"
    variants: dict[str, list[Variant]] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)  # engine name -> bytes

    def __post_init__(self) -> None:
        self.keys = make_ed25519_keys(self.keys_dir, self.key_id, self.key_id)

    def add(self, model: str, fields: dict, size: int = 4096, *, upload: bool = True,
            data: bytes | None = None) -> Variant:
        """Commit one entry to the bucket (engine, manifest, commit record) and list it in the release."""
        data = os.urandom(size) if data is None else data
        size = len(data)
        sha = hashlib.sha256(data).hexdigest()
        inputs = {"onnx_sha256": ONNX_SHA[model], "build_settings": {"precision": "fp16"}, "host": fields["host"],
                  "backend": fields["backend"], "backend_version": fields["backend_version"]}
        digest = inputs_digest(inputs)
        manifest = manifest_bytes({"schema_version": 1, "model_name": model,
                                   "engine": {"file_name": fields["engine"], "sha256": sha, "size": size},
                                   "inputs": inputs, "build": {"onnx_path": f"{model}.onnx"}})
        manifest_sha = hashlib.sha256(manifest).hexdigest()
        base = f"{fields['host_key']}/{fields['engine']}/{digest}"
        if upload:
            self.put(f"{base}/engine/{sha}", data)
            self.put(f"{base}/manifest/{manifest_sha}", manifest)
            body = entry_message("default", fields["host_key"], fields["engine"], digest, sha, size, manifest_sha)
            self.put(f"{base}/commit/{self.key_id}", self.signer().sign(body))
        variant = Variant(
            engine=fields["engine"], sha256=sha, size=size, model_name=model, host_key=fields["host_key"],
            backend=fields["backend"], backend_version=fields["backend_version"], tied_to=fields["tied_to"],
            compatibility=fields["compatibility"], manifest_sha256=manifest_sha, settings_sha256=SETTINGS,
            entry=EntryRef(base, digest, f"engine/{sha}", f"manifest/{manifest_sha}", f"commit/{self.key_id}"))
        self.variants.setdefault(model, []).append(variant)
        self.data[variant.engine] = data
        return variant

    def signer(self) -> EntrySigner:
        config = SigningKeyConfig("ed25519", private_key=KeySource(file=self.keys.private_file), key_id=self.key_id)
        return EntrySigner(config, "test")

    def release(self, namespace: str = "default") -> Release:
        backbones = tuple(BackboneVariants(m, ONNX_SHA[m], SETTINGS, tuple(v)) for m, v in sorted(self.variants.items()))
        return Release("2026-12-07T00:00:00Z", namespace, self.url, None, backbones)

    def write(self, path: Path, namespace: str = "default", signer: EntrySigner | None = None) -> Path:
        """The signed release file at ``path``."""
        path.write_bytes(sign_release(self.release(namespace), signer or self.signer()))
        return path

    def serving_yaml(self, folder: Path, remote_extra: dict | None = None, **top) -> Path:
        """A serving.yaml trusting this kit's public key, with the cache in ``folder/cache``."""
        folder.mkdir(parents=True, exist_ok=True)
        remote = {"url": self.url, "timeout_s": 3,
                  "signing_key": {"algorithm": "ed25519", "id": self.key_id,
                                  "public_key": {"file": str(self.keys.public_file)}},
                  **(remote_extra or {})}
        path = folder / "serving.yaml"
        path.write_text(yaml.safe_dump({"cache_dir": "cache", **top, "remote": remote}, sort_keys=False))
        return path


def file_kit(tmp_path: Path) -> ReleaseKit:
    """A kit over a ``file://`` remote folder."""
    root = tmp_path / "bucket" / "engines"

    def put(relative: str, data: bytes) -> None:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    return ReleaseKit(put, f"file://{root}", tmp_path / "keys")


def s3_kit(tmp_path: Path, endpoint: str, bucket: str) -> ReleaseKit:
    """A kit over a moto bucket (``s3://bucket/engines``) reached over HTTP."""
    from tests.remote.conftest import s3fs_client

    fs = s3fs_client(endpoint)

    def put(relative: str, data: bytes) -> None:
        fs.pipe_file(f"{bucket}/engines/{relative}", data)

    kit = ReleaseKit(put, f"s3://{bucket}/engines", tmp_path / "keys")
    kit.fs = fs  # type: ignore[attr-defined]
    return kit


FAKE_PYNVML = '''
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlSystemGetDriverVersion(): return "580.65.06"
def nvmlDeviceGetCount(): return 1
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetName(h): return {name!r}.encode()
def nvmlDeviceGetUUID(h): return "GPU-55555555-0000-0000-0000-000000000000"
def nvmlDeviceGetCudaComputeCapability(h): return {cc!r}
def nvmlDeviceGetMigMode(h): raise NVMLError_NotSupported("Not Supported")
class NVMLError(Exception): pass
class NVMLError_NotSupported(NVMLError): pass
NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_ENABLE = 0, 1
'''


def fake_nvml_dir(folder: Path, gpu: GpuInfo) -> Path:
    """A folder holding a ``pynvml.py`` that describes ``gpu`` (put it first on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pynvml.py").write_text(FAKE_PYNVML.format(name=gpu.name, cc=gpu.compute_capability))
    return folder


def with_path(folder: Path | None) -> str:
    """PYTHONPATH for a child: ``folder`` (a fake NVML) first, then whatever this process was given.

    Kept, not replaced: the hand-mutant runner puts its mutated copy of the package there.
    """
    given = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([*([str(folder)] if folder is not None else []), *given])
