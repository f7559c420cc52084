"""``doit engines-doctor [--json]``: is this host ready to build and cache engines, and if not, what to do.

Each check is ok, warn or fail, with a one-line fix for the last two. Exit code 0 unless a
check fails (then 1). Nothing is written to the real cache folder: its writability and its
locks are tried on a temporary file removed at once, and the trial build goes to a
temporary folder. The checks take seconds: a one-node model, built by the chosen backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from ..errors import NoGpuError, ProvisioningError
from .commands import _EnginesCommand, opt_config, opt_json
from .corpus import config_origin
from .report import human_bytes

FAIL_EXIT = 1
LOW_SPACE = 1 << 30  # under 1 GiB free: a TensorRT build with its scratch files may not fit
# file systems where flock() may be local to the client or silently succeed
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "lustre", "gpfs", "fuse.s3fs",
              "fuse.gcsfuse", "9p", "afs", "ceph", "glusterfs", "fuse.glusterfs", "beegfs")
GPU_BACKENDS = ("tensorrt",)  # backends that cannot build without a visible GPU


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    state: str  # ok, warn or fail
    detail: str
    fix: str = ""


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


class EnginesDoctor(_EnginesCommand):
    """``doit engines-doctor [--json] [--config PATH]``."""

    name = "engines-doctor"
    doc_purpose = "check this host: config, backend, GPU and driver, cache folder, a trial build, the remote"
    doc_usage = "[--json] [--config PATH]"
    doc_description = ("Each check is ok, warn or fail, with a fix. Exit code 0 unless a check fails. The real "
                       "cache is not written to; the trial build uses a temporary folder.")
    cmd_options = (opt_config, opt_json)

    def run(self, params: dict[str, Any]) -> int:
        path = self.config_path(params)
        checks = list(run_checks(path, config_origin(option=params["config"] or None)))
        failed = any(c.state == "fail" for c in checks)
        if params["json"]:
            print(json.dumps({"config": str(path), "ok": not failed, "checks": [asdict(c) for c in checks]},
                             indent=2))
        else:
            print(render(checks))
        return FAIL_EXIT if failed else 0


def render(checks: list[Check]) -> str:
    """The human table: one row per check, its fix indented below a warn or fail."""
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.state:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    counts = {s: sum(c.state == s for c in checks) for s in ("ok", "warn", "fail")}
    lines.append(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    return "\n".join(lines)


def run_checks(path: Path, origin: str) -> Iterator[Check]:
    """Every check, in order; later ones are skipped when the config does not load."""
    from ..compose import load_config

    try:
        config = load_config(path)
    except ProvisioningError as exc:
        yield Check("config", "fail", str(exc).splitlines()[0], "fix the config named above, or pass --config PATH")
        return
    count = len(config.backbones)
    yield _ok("config", f"{path} (from {origin}; backend {config.backend}, {count} backbone{'' if count == 1 else 's'})")
    backend, installed = yield from _backend_checks(config)
    gpu_ok = yield from _gpu_checks(backend)
    yield from _cache_checks(Path(config.cache_dir))
    if installed and gpu_ok:
        yield _trial_build(config, backend)
    if config.remote is not None:
        yield _remote_check(config)


def _backend_checks(config: Any) -> Any:
    """Which backend ``auto`` chooses and why, and the installed versions; returns (backend, installed)."""
    from ..compose import resolve_backend
    from ..host import ORT_DISTRIBUTIONS, RTX_DISTRIBUTIONS, TRT_DISTRIBUTIONS, installed_version

    versions = {"onnxruntime": installed_version(ORT_DISTRIBUTIONS), "tensorrt": installed_version(TRT_DISTRIBUTIONS),
                "tensorrt-rtx": installed_version(RTX_DISTRIBUTIONS)}
    backend = resolve_backend(config)
    if config.backend != "auto":
        why = "set in the config"
    elif versions["tensorrt"] is None:
        why = "auto: TensorRT is not installed"
    else:
        why = "auto: TensorRT is installed and a GPU is visible" if backend == "tensorrt" else \
            "auto: TensorRT is installed but no GPU is visible"
    yield _ok("backend", f"{backend} ({why})")
    shown = ", ".join(f"{name} {version or 'not installed'}" for name, version in versions.items())
    if versions.get(backend) is None:
        extra = {"onnxruntime": "onnxruntime", "tensorrt": "provisioning[tensorrt]",
                 "tensorrt-rtx": "provisioning[tensorrt-rtx]"}[backend]
        yield Check("versions", "fail", shown, f"pip install '{extra}'")
        return backend, False
    yield _ok("versions", shown)
    return backend, True


def _gpu_checks(backend: str) -> Any:
    """The GPU CUDA would use, its driver against the TensorRT wheel's CUDA major, MIG, the CUDA_* variables.

    Returns False when the backend needs a GPU that is not usable (the trial build is skipped).
    """
    from ..gpu import check_driver_for_wheel, probe_visible_gpu, wheel_cuda_major

    selection = ", ".join(f"{k}={os.environ[k]!r}" for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
                          if k in os.environ) or "CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER unset"
    try:
        gpu = probe_visible_gpu()
    except ProvisioningError as exc:
        reason = str(exc).splitlines()[0].split("; ")[0]
        if backend in GPU_BACKENDS:
            fix = ("run on a GPU host (check the driver, nvidia-smi and CUDA_VISIBLE_DEVICES), "
                   "or set backend: onnxruntime or tensorrt-rtx")
            yield Check("gpu", "fail", f"{reason}; backend {backend} needs one ({selection})", fix)
            return False
        yield _ok("gpu", f"none visible ({reason}); backend {backend} does not need one ({selection})")
        return True
    yield _ok("gpu", f"{gpu.name} {gpu.sm}, NVML index {gpu.nvml_index}, {gpu.uuid} ({selection})")
    mig = "MIG instance" if gpu.uuid.startswith("MIG-") else "not a MIG instance"
    usable = True
    for module in ("tensorrt", "tensorrt_rtx"):
        major = wheel_cuda_major(module)
        if major is None:
            continue
        try:
            check_driver_for_wheel(gpu, module, cuda_major=major)
        except NoGpuError as exc:
            yield Check(f"driver/{module}", "fail", f"driver {gpu.driver_version}, wheel CUDA {major}",
                        str(exc).splitlines()[0])
            usable = usable and module != "tensorrt"
        else:
            yield _ok(f"driver/{module}", f"driver {gpu.driver_version} runs the CUDA {major} wheel; {mig}")
    return usable


def _cache_checks(cache: Path) -> Iterator[Check]:
    """The cache folder: present or creatable, writable, free space, locks, file system type."""
    existing = cache
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        yield Check("cache folder", "fail", f"{cache}: {existing} is not a folder", "set cache_dir to a folder")
        return
    state = "exists" if existing == cache else f"missing; doit engines creates it in {existing}"
    try:
        probe_fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=existing)
    except OSError as exc:
        yield Check("cache folder", "fail", f"{cache} ({state}): cannot write ({exc.strerror or exc})",
                    f"make {existing} writable for this user, or set cache_dir elsewhere")
        return
    try:
        yield _ok("cache folder", f"{cache} ({state}, writable)")
        stat = os.statvfs(existing)
        free = stat.f_bavail * stat.f_frsize
        yield (_ok("free space", human_bytes(free)) if free >= LOW_SPACE else
               Check("free space", "warn", f"{human_bytes(free)} free on {existing}",
                     "free disk space (builds write the engine and scratch files there)"))
        yield _lock_check(probe_fd, probe)
        yield _fs_check(existing)
    finally:
        os.close(probe_fd)
        os.unlink(probe)


_CHILD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(0)
sys.exit(1)
"""


def _lock_check(fd: int, path: str) -> Check:
    """Hold flock() here and let a second process try it: it must be refused."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return Check("locks", "warn", f"flock() fails here ({exc.strerror or exc})", _LOCK_FIX)
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD_LOCK, path], capture_output=True, timeout=20)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
    if child.returncode == 0:
        return _ok("locks", "flock() excludes a second process")
    return Check("locks", "warn", "a second process took a lock this one holds", _LOCK_FIX)


_LOCK_FIX = ("put cache_dir on a local disk; correctness does not depend on locks (engines are published "
             "atomically and verified), the worst case is two hosts building the same engine")


def _fs_check(folder: Path) -> Check:
    """The file system type of ``folder``'s mount, from /proc/mounts (longest matching mount point)."""
    real = os.path.realpath(folder)
    best, fstype = "", ""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fields[2]
    except OSError:
        return _ok("file system", "unknown (no /proc/mounts)")
    if fstype in NETWORK_FS or fstype.startswith("nfs"):
        return Check("file system", "warn", f"{fstype} at {best}: a network file system, where locks may "
                     "silently succeed", _LOCK_FIX)
    return _ok("file system", f"{fstype or 'unknown'} at {best or '?'} (local)")


def _trial_build(config: Any, backend: str) -> Check:
    """Build a one-node model with the chosen backend into a temporary folder (never the real cache)."""
    import time

    from ..compiler import BackboneSpec, EngineCompiler, EngineCompileRequest
    from ..compose import make_backend, probe_host_for

    name = "trial build"
    with tempfile.TemporaryDirectory(prefix="engines-doctor-") as scratch:
        try:
            host = probe_host_for(replace(config, backbones=()), backend)
            targets: tuple[str, ...] = ()
            if backend == "tensorrt-rtx":
                targets = _rtx_target(config, host)
                host = replace(host, compute_capabilities=targets)
            spec = BackboneSpec(model_name="doctor", onnx_path=_tiny_model(Path(scratch)),
                                workspace_mb=256, compute_capabilities=targets)
            request = EngineCompileRequest(backbones=(spec,), cache_dir=Path(scratch) / "cache", host=host)
            started = time.monotonic()
            result = EngineCompiler(make_backend(backend), heartbeat_s=0).compile_engines_for_corpus(request)
        except Exception as exc:  # any failure here is the finding, reported in one line
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            fix = getattr(exc, "fix", "") or "see the line above; doit engines would fail the same way"
            return Check(name, "fail", f"{backend}: {text}", fix)
        seconds = time.monotonic() - started
        target = f" for {', '.join(targets)}" if targets else ""
        return _ok(name, f"{backend}{target}: a one-node model {result.results[0].outcome.value.lower()} in "
                         f"{seconds:.1f} s")


def _rtx_target(config: Any, host: Any) -> tuple[str, ...]:
    """One TensorRT-RTX target: the config's first, else the visible GPU's, else the first known."""
    from ..backends.tensorrt import compute_capability_targets

    listed = [t for b in config.backbones for t in (b.compute_capabilities or ())] + \
        list(config.compute_capabilities or ())
    listed = [t for t in listed if t != "current"]
    if listed:
        return (listed[0],)
    if host.gpu is not None:
        return (host.gpu.sm,)
    return (compute_capability_targets("tensorrt_rtx")[0],)


def _tiny_model(folder: Path) -> Path:
    """A static one-node ONNX (Relu on [1, 8]) that every backend builds in well under a second."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "doctor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="engines-doctor")
    model.ir_version = 8  # readable by every supported onnxruntime and TensorRT parser
    path = folder / "doctor.onnx"
    onnx.save_model(model, path)
    return path


def _remote_check(config: Any) -> Check:
    """The remote: the block parses, the signing key loads (its id), the bucket answers a listing."""
    name = "remote"
    try:
        from ..remote import key_ring, remote_config_of
        from ..remote.store import RemoteStore

        remote = remote_config_of(config)
        if remote is None or not remote.enabled:
            return _ok(name, "configured, mode off")
        ring = key_ring(remote)
        key = ""
        if ring is not None:
            signs = f"signs as key id {ring.signing_id}, " if ring.signing_id else ""
            key = f", {signs}trusts key id(s) {', '.join(ring.keys)}, namespace {remote.namespace}"
        store = RemoteStore.open(remote)
        store.list_dir(store.root, timeout=10)
    except ProvisioningError as exc:
        return Check(name, "fail", str(exc).splitlines()[0], "fix the remote: block or its key files")
    except Exception as exc:  # network, credentials, a missing bucket: reported, never raised
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Check(name, "fail", f"{getattr(remote, 'url', '?')}: {type(exc).__name__}: {text}",
                     "check the URL, the network and the credentials (e.g. AWS_* variables)")
    return _ok(name, f"{remote.url} reachable{key}")
