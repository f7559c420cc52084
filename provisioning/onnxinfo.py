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


# Models at least this big are parsed without the bytes of their large inline initialisers:
# the inspection reads only the graph's inputs, the initialisers' names and their external
# data entries, and parsing (copying) 100 MB of weights took ~0.16 s per model of a cold run.
_STRIP_FROM = 16 << 20
_BIG_TENSOR = 4096  # an initialiser message longer than this loses its data fields
_TENSOR_DATA_FIELDS = frozenset({4, 5, 6, 7, 9, 10, 11})  # TensorProto float/int32/string/int64/raw/double/uint64
_MAX_FIELDS = 200_000  # beyond this the walk in Python (~1 us a field) would cost more than it saves
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5  # ModelProto.graph, GraphProto.initializer
_GRAPH_KEY, _INITIALIZER_KEY = bytes([_MODEL_GRAPH << 3 | 2]), bytes([_GRAPH_INITIALIZER << 3 | 2])


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Budget:
    """Fields the walk may still visit: past that it stops, and the file is parsed in full."""

    def __init__(self, fields: int) -> None:
        self.left = fields

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ValueError("too many fields to walk")


def _fields(buf: memoryview, start: int, end: int, budget: _Budget):
    """``(number, wire type, field start, value start, value end)`` of each field in ``buf[start:end]``."""
    pos = start
    while pos < end:
        budget.spend()
        key, value_at = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value_end = _varint(buf, value_at)[1]
        elif wire == 1:
            value_end = value_at + 8
        elif wire == 2:
            length, value_at = _varint(buf, value_at)
            value_end = value_at + length
        elif wire == 5:
            value_end = value_at + 4
        else:  # groups (3, 4) or garbage: let the real parser decide
            raise ValueError(f"wire type {wire}")
        if number == 0 or value_end > end:
            raise ValueError("truncated field")
        yield number, wire, pos, value_at, value_end
        pos = value_end


def _without_inline_weights(view: memoryview) -> bytearray | None:
    """The model's bytes with the data fields of its large initialisers left out; None: parse it all.

    Every other byte is kept in order, so the parse gives the same inputs, initialiser names
    and external data entries. Anything unusual (a repeated graph field, groups, a malformed
    field, more than 200,000 fields) answers None, and the whole file is parsed as before.
    """
    try:
        out, graphs, budget = bytearray(), 0, _Budget(_MAX_FIELDS)
        for number, wire, start, value_at, value_end in _fields(view, 0, len(view), budget):
            if number != _MODEL_GRAPH or wire != 2:
                out += view[start:value_end]
                continue
            graphs += 1
            graph = _graph_without_weights(view, value_at, value_end, budget)
            if graphs > 1:
                return None
            out += _GRAPH_KEY + _varint_bytes(len(graph)) + graph
        return out
    except (IndexError, ValueError):
        return None


def _graph_without_weights(view: memoryview, start: int, end: int, budget: _Budget) -> bytearray:
    out = bytearray()
    for number, wire, field_start, value_at, value_end in _fields(view, start, end, budget):
        if number != _GRAPH_INITIALIZER or wire != 2 or value_end - value_at <= _BIG_TENSOR:
            out += view[field_start:value_end]
            continue
        tensor = bytearray()
        for t_number, t_wire, t_start, _, t_end in _fields(view, value_at, value_end, budget):
            if not (t_number in _TENSOR_DATA_FIELDS and t_wire == 2):
                tensor += view[t_start:t_end]
        out += _INITIALIZER_KEY + _varint_bytes(len(tensor)) + tensor
    return out


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
    shortcut: any change of the file, or a missing external data file, means re-inspecting.
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
        external = tuple(path.parent / name for name in record["external_data"])
    except (KeyError, TypeError):
        return None
    if not all(e.is_file() for e in external):
        return None
    return OnnxInfo(path=path, inputs=inputs, external_data=external)


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
            candidate = (base / location).resolve()
            outside = os.path.isabs(location) or base not in candidate.parents
            present = not outside and candidate.is_file()
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
