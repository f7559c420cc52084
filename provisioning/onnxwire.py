"""Reading an ONNX file's protobuf wire format directly, without the ``onnx`` parser.

Two uses, both cheaper than parsing the whole model: dropping the bytes of large inline
initialisers before a parse (:func:`_without_inline_weights`), and listing the external
data files the model's tensors name (:func:`external_data_locations`), which binds an
inspection record to the bytes it describes. Field headers are read; a weight's bytes are
skipped by their length, so a 100 MB model costs a few page reads, not a pass over it.
Anything unusual answers None and the caller parses the file with ``onnx`` instead.
"""

from __future__ import annotations

import mmap
from pathlib import Path

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


# Where tensors live in the wire format (onnx.proto): the walk below mirrors
# onnx.external_data_helper._get_all_tensors (initialisers and node attributes, subgraphs,
# functions); a g/graphs field is followed whatever the attribute's type says (a superset).
_MODEL_FUNCTIONS = 25
_GRAPH_NODE = 1
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_MAX_DEPTH = 32  # subgraphs nested deeper than this: let the parser decide
_LOCATION_KEY = bytes([_ENTRY_KEY << 3 | 2, 8]) + b"location"  # StringStringEntryProto.key = "location"


def external_data_locations(path: Path | str) -> frozenset[str] | None:
    """The ``location`` of every tensor stored outside the model, read from the file's bytes.

    None when the file cannot be mapped or walked (too many fields, malformed, nested too
    deeply): the caller then parses it with ``onnx``.
    """
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            with memoryview(mapped) as view:
                walk = _Walk(mapped, view)
                for number, wire, _, value_at, value_end in _fields(view, 0, len(view), walk.budget):
                    if wire != 2:
                        continue
                    if number == _MODEL_GRAPH:
                        walk.graph(value_at, value_end, _GRAPH_NODE, 0)
                    elif number == _MODEL_FUNCTIONS:
                        walk.graph(value_at, value_end, _FUNCTION_NODE, 0)
                return frozenset(walk.found)
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


class _Walk:
    """One file's walk: the mapping (searched in C), its view (read), the field budget, what was found."""

    def __init__(self, mapped: mmap.mmap, view: memoryview) -> None:
        self.mapped = mapped
        self.view = view
        self.budget = _Budget(_MAX_FIELDS)
        self.found: set[str] = set()

    def graph(self, start: int, end: int, node_field: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ValueError("subgraphs nested too deeply")
        for number, wire, _, value_at, value_end in _fields(self.view, start, end, self.budget):
            if wire != 2:
                continue
            if number == _GRAPH_INITIALIZER and node_field == _GRAPH_NODE:
                _walk_tensor(self.view, value_at, value_end, self.budget, self.found)
            elif number == node_field and self.mapped.find(_LOCATION_KEY, value_at, value_end) >= 0:
                # a node whose bytes hold no "location" key stores no tensor outside (nor its subgraphs)
                for a_number, a_wire, _, a_at, a_end in _fields(self.view, value_at, value_end, self.budget):
                    if a_number == _NODE_ATTRIBUTE and a_wire == 2:
                        self.attribute(a_at, a_end, depth)

    def attribute(self, start: int, end: int, depth: int) -> None:
        for number, wire, _, value_at, value_end in _fields(self.view, start, end, self.budget):
            if wire != 2:
                continue
            if number in (_ATTR_T, _ATTR_TENSORS):
                _walk_tensor(self.view, value_at, value_end, self.budget, self.found)
            elif number in (_ATTR_G, _ATTR_GRAPHS):
                self.graph(value_at, value_end, _GRAPH_NODE, depth + 1)


def _walk_tensor(view: memoryview, start: int, end: int, budget: _Budget, found: set[str]) -> None:
    external, location = False, None
    for number, wire, _, value_at, value_end in _fields(view, start, end, budget):
        if number == _TENSOR_DATA_LOCATION and wire == 0:
            external = _varint(view, value_at)[0] == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2 and location is None:
            key = value = None
            for e_number, e_wire, _, e_at, e_end in _fields(view, value_at, value_end, budget):
                if e_wire == 2 and e_number == _ENTRY_KEY:
                    key = bytes(view[e_at:e_end])
                elif e_wire == 2 and e_number == _ENTRY_VALUE:
                    value = bytes(view[e_at:e_end])
            if key == b"location":
                location = (value or b"").decode("utf-8")
    if external:
        if location is None:
            raise ValueError("a tensor stored outside the model names no location")
        found.add(location)
