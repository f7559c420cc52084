"""How a backbone's precision is produced on the installed TensorRT major.

10.x: builder flags (``FP16``/``BF16``/``INT8``). 11.x: networks are strongly typed, so
the precision must be in the ONNX graph: an fp16 graph is produced by converting it with
``onnxconverter-common`` (I/O types kept) when that package is installed; a graph that
already carries the type is built as exported. int8 always means explicit quantization
(Q/DQ nodes in the graph; no calibrators on either major). What was done goes into the
manifest's notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from .trt_features import PRECISION_ONNX_TYPES, TrtFeatures

if TYPE_CHECKING:  # pragma: no cover
    from ..specs import BackboneSpec

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_PROTOBUF_LIMIT = 1_800_000_000  # below protobuf's 2 GiB: larger models keep external data
FP16_MAX = 65504.0  # the largest finite fp16: weights beyond it would be clamped (converter default 1e4)
# How to get Q/DQ that TensorRT accepts: symmetric int8 (ONNX Runtime's default is asymmetric
# uint8 activations, which TensorRT refuses), or NVIDIA's Model Optimizer.
INT8_HINT = ("quantize it with NVIDIA Model Optimizer (modelopt.onnx.quantization), or with "
             "onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ, "
             "activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, "
             "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}): ONNX Runtime's default "
             "asymmetric uint8 activations are refused by TensorRT")


@dataclass(frozen=True)
class PreparedModel:
    """The ONNX file the parser reads, the builder flags to set, and manifest notes."""

    onnx_path: Path
    flags: tuple[str, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphFacts:
    """What the precision decision needs to know about an ONNX graph."""

    qdq_nodes: int
    elem_types: frozenset[str]
    # Q/DQ nodes with an asymmetric zero point (uint8, or nonzero): TensorRT refuses them
    asymmetric_qdq_nodes: tuple[str, ...] = ()


def graph_facts(path: Path) -> GraphFacts:
    """Count Q/DQ nodes and collect the element types the graph uses (weights not loaded)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    names = onnx.TensorProto.DataType.Name
    qdq, types, uint8_nodes = 0, set(), []

    def walk(graph: Any) -> None:
        nonlocal qdq
        initialisers = {t.name: t for t in graph.initializer}
        for tensor in graph.initializer:
            types.add(names(tensor.data_type))
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types.add(names(value.type.tensor_type.elem_type))
        for node in graph.node:
            qdq += node.op_type in QDQ_OPS
            if node.op_type in QDQ_OPS and len(node.input) > 2 and _asymmetric(initialisers.get(node.input[2])):
                uint8_nodes.append(node.name or node.output[0])
            for attribute in node.attribute:
                if node.op_type == "Cast" and attribute.name == "to":
                    types.add(names(attribute.i))
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)
                for sub in attribute.graphs:
                    walk(sub)

    walk(model.graph)
    return GraphFacts(qdq, frozenset(types), tuple(uint8_nodes))


def _asymmetric(zero_point: Any) -> bool:
    """A zero point TensorRT cannot build: uint8, or any nonzero value (TensorRT quantizes symmetrically)."""
    if zero_point is None:
        return False
    from onnx import TensorProto, numpy_helper

    if zero_point.data_type == TensorProto.UINT8:
        return True
    if zero_point.data_location == TensorProto.EXTERNAL:
        return False  # weights not loaded here; TensorRT will say so itself
    return bool(numpy_helper.to_array(zero_point).any())


def prepare_precision(spec: "BackboneSpec", features: TrtFeatures, scratch_dir: Path) -> PreparedModel:
    """Decide how ``spec.precision`` is built here; BackendError says what to do when it cannot be."""
    where = f"backbone {spec.model_name}"
    precision = spec.precision
    route = features.precision_route(precision)
    if route == "none":
        return PreparedModel(spec.onnx_path, (), {"precision_mode": "fp32"})
    facts = graph_facts(spec.onnx_path)
    if route == "qdq":
        if facts.qdq_nodes == 0:
            raise BackendError(
                f"{where}: precision int8 needs Q/DQ nodes (QuantizeLinear/DequantizeLinear) in the ONNX and "
                f"{spec.onnx_path.name} has none; {INT8_HINT}; or choose fp16/fp32"
            )
        if facts.asymmetric_qdq_nodes:
            nodes = facts.asymmetric_qdq_nodes
            shown = ", ".join(nodes[:3]) + (" ..." if len(nodes) > 3 else "")
            raise BackendError(
                f"{where}: {spec.onnx_path.name} has {len(nodes)} Q/DQ node(s) with asymmetric zero points "
                f"(uint8 or nonzero: {shown}), which TensorRT cannot build (it quantizes symmetrically); "
                f"re-{INT8_HINT}"
            )
        flag = features.precision_flags.get("int8")
        how = f"BuilderFlag.{flag}" if flag else "strongly typed network"
        return PreparedModel(spec.onnx_path, (flag,) if flag else (),
                             {"precision_mode": f"int8 explicit quantization ({facts.qdq_nodes} Q/DQ nodes), {how}"})
    if route == "flag":
        flag = features.precision_flags[precision]
        return PreparedModel(spec.onnx_path, (flag,), {"precision_mode": f"{precision} via BuilderFlag.{flag}"})
    onnx_type = PRECISION_ONNX_TYPES[precision]
    if onnx_type in facts.elem_types:
        return PreparedModel(spec.onnx_path, (), {
            "precision_mode": f"{precision} as exported (the ONNX already carries {onnx_type}; strongly typed)"})
    if precision not in features.graph_conversions:
        raise BackendError(
            f"{where}: TensorRT {features.major}.x builds strongly typed networks and no maintained converter "
            f"to {precision} is wired in; export the ONNX with {precision} casts, choose fp16, or build with TensorRT 10.x"
        )
    return _convert_fp16(spec, scratch_dir, where)


def _convert_fp16(spec: "BackboneSpec", scratch_dir: Path, where: str) -> PreparedModel:
    try:
        from importlib.metadata import version

        from onnxconverter_common import float16
        converter_version = version("onnxconverter-common")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        raise BackendError(
            f"{where}: fp16 on TensorRT 11 needs the ONNX graph in fp16 (networks are strongly typed) and "
            f"onnxconverter-common is not usable ({type(exc).__name__}); pip install onnxconverter-common "
            "(part of the tensorrt extra) or export the model in fp16"
        ) from None
    import onnx

    target = scratch_dir / f"{spec.model_name}.fp16.onnx"
    # Over protobuf's 2 GiB, in-memory shape inference fails before any external-data
    # handling: infer shapes file to file first, then convert without inferring again.
    large = sum(p.stat().st_size for p in spec.source_files if p.exists()) > _PROTOBUF_LIMIT
    try:
        source = spec.onnx_path
        if large:
            inferred = scratch_dir / f"{spec.model_name}.shapes.onnx"
            onnx.shape_inference.infer_shapes_path(str(spec.onnx_path), str(inferred))
            source = inferred
        if large:  # the inferred copy still names its external data relative to the source's folder
            from onnx.external_data_helper import load_external_data_for_model

            model = onnx.load_model(str(source), load_external_data=False)
            load_external_data_for_model(model, str(spec.onnx_path.parent))
        else:
            model = onnx.load_model(str(source))  # with external data: the weights get converted too
        converted = float16.convert_float_to_float16(model, keep_io_types=True, max_finite_val=FP16_MAX,
                                                     disable_shape_infer=large)
        large = large or converted.ByteSize() > _PROTOBUF_LIMIT
        onnx.save_model(converted, str(target), save_as_external_data=large,
                        location=f"{target.name}.data" if large else None)
    except Exception as exc:  # noqa: BLE001 - converter and protobuf raise many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendError(f"{where}: converting {spec.onnx_path.name} to fp16 failed ({first}); "
                           "export the model in fp16 instead") from None
    return PreparedModel(target, (), {
        "precision_mode": f"fp16 by converting the ONNX graph with onnxconverter-common {converter_version} "
                          f"(keep_io_types=True, max_finite_val={FP16_MAX:g}"
                          + (", shapes inferred file to file (over 2 GB)" if large else "") + "); strongly typed"})
