"""What the compiler needs to know about an ONNX file, read without running it.

The graph's real inputs (initialisers excluded) with their dims, and the external data
files the weights live in: those are build inputs too, so they go into ``file_dep`` and
into the digest that decides reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .onnxwire import _STRIP_FROM, _without_inline_weights, external_data_locations
from .sidecar import create_temp, hash_fd, open_nofollow, stat_signature, write_all

INSPECT_DIR = ".inspect"

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class OnnxInput:
    """One graph input: its name, element type name and dims."""

    name: str
    elem_type: str
    dims: tuple[Dim, ...]

    @property
    def is_static(self) -> bool:
        """True when every dim is a fixed positive size."""
        return all(isinstance(d, int) and d > 0 for d in self.dims)


@dataclass(frozen=True)
class OnnxInfo:
    """The facts about one ONNX file that configuration checks and caching rely on."""

    path: Path
    inputs: tuple[OnnxInput, ...]
    external_data: tuple[Path, ...]

    def input(self, name: str) -> OnnxInput | None:
        """The graph input with this name, or None."""
        return next((i for i in self.inputs if i.name == name), None)


def inspect_onnx(path: Path, *, where: str = "") -> OnnxInfo:
    """Parse the model's structure (not its external weights); ConfigError if it is not ONNX."""
    prefix = f"{where}: " if where else ""
    try:
        import onnx  # heavy; only needed when a spec is built
        from google.protobuf.message import DecodeError
    except ImportError as exc:  # pragma: no cover - onnx is a hard dependency
        raise ConfigError(f"{prefix}the 'onnx' package is missing ({exc}); reinstall provisioning") from None
    if not path.exists():
        raise ConfigError(f"{prefix}ONNX file {path} not found; fix the 'onnx' path in the config")
    if not path.is_file():
        raise ConfigError(f"{prefix}{path} is not a regular file; point 'onnx' at a .onnx file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{prefix}ONNX file {path} is not readable; check its permissions")
    if path.stat().st_size == 0:
        raise ConfigError(f"{prefix}ONNX file {path} is empty; re-export the model")
    try:
        model = _parse_model(onnx, path, DecodeError)
    except (DecodeError, ValueError, RuntimeError, TypeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{prefix}{path} is not a valid ONNX model ({reason}); re-export it") from None
    except OSError as exc:
        raise ConfigError(f"{prefix}cannot read ONNX file {path} ({exc.strerror})") from None
    graph = model.graph
    if not graph.node and not graph.output:
        raise ConfigError(f"{prefix}{path} holds no ONNX graph (no nodes, no outputs); is it an ONNX model?")
    initialisers = {t.name for t in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initialisers:
            continue
        tensor_type = value.type.tensor_type
        dims: list[Dim] = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        elem = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "UNDEFINED"
        inputs.append(OnnxInput(value.name, elem, tuple(dims)))
    external = _external_data_files(model, path, prefix)
    return OnnxInfo(path=path, inputs=tuple(inputs), external_data=external)


def _parse_model(onnx, path: Path, decode_error: type[Exception]):
    """``onnx.load_model(path, load_external_data=False)`` without reading the file into a copy.

    Inline weights make an ONNX hundreds of MB; parsing straight from a read-only mapping
    halves the time of a first run's inspection (the parser copies what it keeps).
    """
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        with memoryview(mapped) as view:
            reduced = _without_inline_weights(view) if len(view) >= _STRIP_FROM else None
            if reduced is not None:
                try:
                    model = onnx.ModelProto()
                    model.ParseFromString(reduced)
                    return model
                except Exception:  # noqa: BLE001 - the full parse below gives the authoritative answer
                    pass
            model = onnx.ModelProto()
            decoded = model.ParseFromString(view)
            if decoded is not None and decoded != len(view):  # what onnx.load_model checks too
                raise decode_error(f"protobuf decoding consumed {decoded} of {len(view)} bytes")
    return model


def _stat_signature(path: Path) -> list[int] | None:
    try:
        return stat_signature(os.stat(path))
    except OSError:
        return None


def _record_path(cache_dir: Path, path: Path) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:24]
    return cache_dir / INSPECT_DIR / f"{key}.json"


def _inspect_dir_is_planted(cache_dir: Path) -> bool:
    """True (and a warning) when the records folder is a symlink: never read or written through."""
    folder = Path(cache_dir) / INSPECT_DIR
    if not os.path.islink(folder):
        return False
    logging.getLogger("provisioning.onnxinfo").warning(
        "%s is a symlink; not followed (ONNX inspections are not cached); remove it", folder
    )
    return True


def cached_inspection(path: Path, cache_dir: Path) -> OnnxInfo | None:
    """A previous inspection of ``path`` if the file is unchanged (same size, mtimes, inode).

    Parsing a large ONNX costs far more than a warm run should; the record is only a
    shortcut: any change of the file means re-inspecting. Anyone who can write the cache
    folder can write a record, so its external data files are checked on every use, as an
    inspection checks them (inside the model's folder, present, regular files), and must be
    exactly those the model's bytes name (:func:`~provisioning.onnxwire.external_data_locations`,
    a walk of field headers): a record cannot add a file outside, nor drop one.
    """
    if _inspect_dir_is_planted(cache_dir):
        return None
    try:
        fd = open_nofollow(_record_path(cache_dir, path))
        with os.fdopen(fd, "rb") as handle:
            record = json.loads(handle.read())
    except (OSError, ValueError, RecursionError):  # a record nested too deeply to decode is no record
        return None
    if not isinstance(record, dict) or record.get("signature") != _stat_signature(path):
        return None
    try:
        inputs = tuple(OnnxInput(i["name"], i["elem_type"], tuple(i["dims"])) for i in record["inputs"])
        names = [name for name in record["external_data"] if isinstance(name, str)]
        if len(names) != len(record["external_data"]):
            return None
    except (KeyError, TypeError):
        return None
    base = path.parent.resolve()
    for name in names:
        try:
            outside, present = _located(base, name)
        except (OSError, RuntimeError, ValueError):  # a NUL, a loop of links, a name too long
            return None
        if outside or not present:
            return None
    named = external_data_locations(path)
    if named is None or {os.path.normpath(n) for n in named} != {os.path.normpath(n) for n in names}:
        return None  # the record does not describe these bytes (or they cannot be read cheaply): inspect
    return OnnxInfo(path=path, inputs=inputs, external_data=tuple(path.parent / name for name in names))


# Inspections made before the cache folder existed (a first run): written by
# write_pending_inspections once a build created it, so the next run skips importing onnx.
_PENDING: dict[str, list[tuple[OnnxInfo, list[int] | None]]] = {}


def remember_inspection(info: OnnxInfo, cache_dir: Path, signature: list[int] | None = None) -> None:
    """Store an inspection for :func:`cached_inspection` (best effort, never fails a run).

    Without a cache folder yet (task generation must not create it), the inspection waits in
    this process for :func:`write_pending_inspections`, with the file's signature of now.
    """
    signature = signature or _stat_signature(info.path)
    if signature is None:
        return  # the file is gone: nothing to vouch for
    if not Path(cache_dir).is_dir():
        _PENDING.setdefault(os.path.abspath(cache_dir), []).append((info, signature))
        return
    record = {
        "signature": signature,
        "inputs": [{"name": i.name, "elem_type": i.elem_type, "dims": list(i.dims)} for i in info.inputs],
        "external_data": [os.path.relpath(e, info.path.parent) for e in info.external_data],
    }
    target = _record_path(cache_dir, info.path)
    if _inspect_dir_is_planted(cache_dir):
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_unsynced(target, json.dumps(record).encode())
    except OSError:
        pass


def _replace_unsynced(target: Path, data: bytes) -> None:
    """Replace ``target`` by ``data`` atomically (temp file, rename) without an fsync.

    A record is only a shortcut, checked against the file's stat signature: one lost or
    emptied by a power cut means one re-inspection. An fsync per record cost ~4 ms per
    backbone of a cold build (a journal commit each), as much as a small model's build.
    """
    fd, tmp = create_temp(target)
    try:
        try:
            write_all(fd, memoryview(data))
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_pending_inspections(cache_dir: Path) -> None:
    """Write the inspections this process kept while ``cache_dir`` did not exist yet."""
    if not Path(cache_dir).is_dir():
        return
    for info, signature in _PENDING.pop(os.path.abspath(cache_dir), []):
        remember_inspection(info, cache_dir, signature)


def _external_data_files(model, path: Path, prefix: str) -> tuple[Path, ...]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    base = path.parent.resolve()
    files: dict[str, Path] = {}
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if not location:
            raise ConfigError(f"{prefix}{path}: tensor {tensor.name!r} uses external data without a location")
        shown = location if len(location) <= 80 else location[:77] + "..."
        if "\x00" in location:
            raise ConfigError(
                f"{prefix}{path}: external data location {shown!r} of tensor {tensor.name!r} contains a NUL "
                "byte; re-export the model"
            )
        try:  # a hostile model can name anything: over-long names, loops of symlinks
            outside, present = _located(base, location)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(
                f"{prefix}{path}: external data location {shown!r} of tensor {tensor.name!r} cannot be "
                f"used ({getattr(exc, 'strerror', None) or exc}); re-export the model"
            ) from None
        if outside:
            raise ConfigError(
                f"{prefix}{path}: external data location {shown!r} of tensor {tensor.name!r} "
                "points outside the model's folder; refusing to read it"
            )
        if not present:
            raise ConfigError(
                f"{prefix}{path}: external data file {shown!r} (tensor {tensor.name!r}) is missing; "
                "copy it next to the model"
            )
        files.setdefault(location, path.parent / location)
    return tuple(files[k] for k in sorted(files))


def _located(base: Path, location: str) -> tuple[bool, bool]:
    """``(outside, present)`` of an external data location: outside the model's (resolved) folder, a regular file."""
    candidate = (base / location).resolve()
    outside = os.path.isabs(location) or base not in candidate.parents
    return outside, not outside and candidate.is_file()


def onnx_digest(path: Path, external_data: tuple[Path, ...] = ()) -> str:
    """SHA-256 over the model file and its external data files (names and bytes).

    A model without external data gets exactly the file's own SHA-256, so
    ``sha256sum model.onnx`` shows the same value.
    """
    model_digest = _hash_and_remember(path)
    if not external_data:
        return model_digest
    combined = hashlib.sha256(model_digest.encode())
    for extra in external_data:
        combined.update(b"\0" + os.path.relpath(extra, path.parent).encode() + b"\0")
        combined.update(_hash_and_remember(extra).encode())
    return combined.hexdigest()


# Digests this process computed for the reuse key, so that doit's file_dep check right after
# the action (see provisioning.doit.filedep) does not read the same bytes a second time.
_KNOWN_DIGESTS: dict[str, tuple[list[int], str]] = {}
_RACY_NS = 2_000_000_000  # a file written this recently may change again within one mtime tick


def _hash_and_remember(path: Path) -> str:
    fd = open_nofollow(path)
    try:
        started = time.time_ns()
        before = stat_signature(os.fstat(fd))
        digest, _ = hash_fd(fd)
        # Like git's racy-clean rule: remember only files that were not just written, and
        # that did not change while they were read.
        if stat_signature(os.fstat(fd)) == before and max(before[1], before[2]) < started - _RACY_NS:
            _KNOWN_DIGESTS[os.path.abspath(path)] = (before, digest)
    finally:
        os.close(fd)
    return digest


def remember_known_digest(path: str | os.PathLike[str], signature: list[int], digest: str) -> None:
    """Enter a digest this process computed of a settled file (see :func:`known_sha256`)."""
    _KNOWN_DIGESTS[os.path.abspath(path)] = (signature, digest)


def known_sha256(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 this process computed for ``path`` when its stat signature is unchanged, else None."""
    known = _KNOWN_DIGESTS.get(os.path.abspath(path))
    if known is None:
        return None
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if stat_signature(st) != known[0]:
        return None
    return known[1]
