"""The fake OnnxParser's reading of a real ONNX file, with the real parser's error codes and texts.

Seen on TensorRT for RTX 1.7.1.116 (the ONNX parser is shared with TensorRT 10/11):

* missing file: ``INVALID_VALUE``, node -1, "Assertion failed: stat(onnxModelFile, &sb) == 0 &&
  S_ISREG(sb.st_mode): Input file cannot be found, or is not a regular file: PATH";
* truncated: ``MODEL_DESERIALIZE_FAILED``, node -1, "Assertion failed:
  model->ParseFromCodedStream(&codedInput): Failed to parse the ONNX model.";
* a file starting with a 0 byte: parses (True) into an empty network, no error;
* unknown op: ``INVALID_NODE``, node = its index, node_name, node_operator = the op, desc
  'creator && "Plugin not found, are the plugin name, version, and namespace correct?"';
* MatMul ``[1,8] x [5,4]``: ``INVALID_NODE`` at parse time, desc "Invalid Node - mm0\\nITensor::
  getDimensions: Error Code 4: API Usage Error (mm0: last dimension of input0 = 8 and second to
  last dimension of input1 = 5 but must match. ...)".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

PLUGIN_NOT_FOUND = 'creator && "Plugin not found, are the plugin name, version, and namespace correct?"'


@dataclass
class ParseResult:
    """What parsing gave: an error (ParserError fields) or the network's inputs and outputs."""

    error: dict | None = None
    log: list[str] = field(default_factory=list)
    inputs: list[tuple[str, tuple, str]] = field(default_factory=list)
    outputs: list[tuple[str, tuple, str]] = field(default_factory=list)
    layers: int = 0
    initializer_types: list[str] = field(default_factory=list)


def _fail(code: str, desc: str, node: int = -1, name: str = "", op: str = "", where: str = "") -> ParseResult:
    error = {"code": code, "desc": desc, "node": node, "node_name": name, "node_operator": op}
    if node < 0:
        return ParseResult(error, [f"In node -1 with name:  and operator:  ({where}): {code}: {desc}"
                                   if where == "parseFromFile" else f"({where}): {code}: {desc}"])
    return ParseResult(error, [f"ModelImporter.cpp:140: While parsing node number {node} [{op}]:",
                               f"ModelImporter.cpp:142: --- Begin node ---\nNode name: {name}",
                               "ModelImporter.cpp:143: --- End node ---",
                               f"ModelImporter.cpp:151: ERROR: {desc}"])


def parse(path: str) -> ParseResult:
    """Read ``path`` as the real parser would (see the module docstring)."""
    import onnx
    from google.protobuf.message import DecodeError

    if not os.path.isfile(path):
        return _fail("INVALID_VALUE", "Assertion failed: stat(onnxModelFile, &sb) == 0 && S_ISREG(sb.st_mode): "
                     f"Input file cannot be found, or is not a regular file: {path}", where="parseFromFile")
    with open(path, "rb") as handle:
        data = handle.read()
    model = onnx.ModelProto()
    if data[:1] != b"\0":  # C++ protobuf reads tag 0 as the end of the message: an empty model
        try:
            model.ParseFromString(data)
        except DecodeError:
            return _fail("MODEL_DESERIALIZE_FAILED", "Assertion failed: model->ParseFromCodedStream(&codedInput): "
                         "Failed to parse the ONNX model.", where="deserializeOnnxModel")
    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    name_of = onnx.TensorProto.DataType.Name

    def tensor(value) -> tuple[str, tuple, str]:
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
        return value.name, dims, name_of(value.type.tensor_type.elem_type)

    # The real parser adds the network inputs first, so a failing node leaves them in the network.
    inputs = [tensor(v) for v in graph.input if v.name not in initialisers]
    shapes = _shapes(model)
    for index, node in enumerate(graph.node):
        problem = None if onnx.defs.has(node.op_type, node.domain or "") else PLUGIN_NOT_FOUND
        if problem is None:
            found = _node_problem(node, shapes)
            problem = found and f"Invalid Node - {node.name}\n{found}"
        if problem:
            failed = _fail("INVALID_NODE", problem, index, node.name, node.op_type)
            failed.inputs = inputs
            return failed
    return ParseResult(inputs=inputs, outputs=[tensor(v) for v in graph.output], layers=len(graph.node),
                       initializer_types=sorted({name_of(t.data_type) for t in graph.initializer}))


def _shapes(model: Any) -> dict[str, tuple]:
    """Static shapes known before building: inputs, initializers, and what ONNX infers."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is only a help here
        pass
    known: dict[str, tuple] = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape"):
            known.setdefault(value.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims))
    return known


def _node_problem(node: Any, shapes: dict[str, tuple]) -> str | None:
    """The builder-API error a node would raise while being added (MatMul's inner dims, for now)."""
    if node.op_type != "MatMul" or len(node.input) != 2:
        return None
    a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
    if not a or not b or len(b) < 2:
        return None
    k_a, k_b = a[-1], b[-2] if len(b) >= 2 else b[-1]
    if k_a >= 0 and k_b >= 0 and k_a != k_b:
        return (f"ITensor::getDimensions: Error Code 4: API Usage Error ({node.name}: last dimension of input0 = "
                f"{k_a} and second to last dimension of input1 = {k_b} but must match. In validate at "
                "/_src/optimizer/api/layers/matrixMultiplyLayer.cpp:192)")
    return None
