"""Regenerate the example corpus: small, deterministic ONNX models built with onnx.helper.

    python corpus/make_corpus.py            # writes corpus/models/*.onnx

- det: Conv -> Relu -> Conv -> Sigmoid, static input [1, 3, 32, 32]
- cls: MatMul -> Add -> Softmax with a dynamic batch dimension ('batch')
- emb: Gemm -> Tanh with its weights in an external data file (emb.onnx.data)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _weights(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def make_det(rng: np.random.Generator) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 32, 32])
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["scores"], name="sigmoid"),
    ]
    inits = [_weights(rng, "w1", (8, 3, 3, 3)), _weights(rng, "b1", (8,)),
             _weights(rng, "w2", (4, 8, 3, 3)), _weights(rng, "b2", (4,))]
    graph = helper.make_graph(nodes, "det", [x], [y], inits)
    return helper.make_model(graph, opset_imports=OPSET, producer_name="provisioning-corpus")


def make_cls(rng: np.random.Generator) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "b"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(nodes, "cls", [x], [y], [_weights(rng, "w", (64, 10)), _weights(rng, "b", (10,))])
    return helper.make_model(graph, opset_imports=OPSET, producer_name="provisioning-corpus")


def make_emb(rng: np.random.Generator) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [4, 128])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [4, 256])
    nodes = [
        helper.make_node("Gemm", ["tokens", "w", "b"], ["g"], name="proj"),
        helper.make_node("Tanh", ["g"], ["embedding"], name="tanh"),
    ]
    graph = helper.make_graph(nodes, "emb", [x], [y], [_weights(rng, "w", (128, 256)), _weights(rng, "b", (256,))])
    return helper.make_model(graph, opset_imports=OPSET, producer_name="provisioning-corpus")


def write_corpus(models_dir: Path) -> list[Path]:
    """Write the three example models into ``models_dir``; returns the ONNX paths."""
    models_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261128)
    det, cls, emb = make_det(rng), make_cls(rng), make_emb(rng)
    paths = []
    for name, model in (("det", det), ("cls", cls)):
        onnx.checker.check_model(model)
        path = models_dir / f"{name}.onnx"
        onnx.save_model(model, path)
        paths.append(path)
    onnx.checker.check_model(emb)
    emb_path = models_dir / "emb.onnx"
    # onnx appends external tensors to an existing data file: start from none, so that every
    # run writes the same bytes
    (models_dir / "emb.onnx.data").unlink(missing_ok=True)
    onnx.save_model(emb, emb_path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="emb.onnx.data", size_threshold=0)
    paths.append(emb_path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "models"
    for written in write_corpus(target):
        print(written)
