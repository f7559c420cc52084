"""Issue 22 item 33 with the real TensorRT-RTX parser: a model with many unsupported nodes.

TensorRT-RTX reports one parser error per unsupported node, and the backend joins them
into one message (thousands of characters for an old model). The FAILED line keeps the
first error and the count of the others; the build log gets the whole text.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests.conftest import DoitProject

from .conftest import DODO, write_rtx_config

NODES = 40


def _many_unsupported(path: Path) -> Path:
    """x[1,4] feeding NODES nodes of unknown ops, each its own output: one parser error each."""
    nodes = [helper.make_node(f"NoSuchOp{i}", ["x"], [f"y{i}"], name=f"unsupported_node_{i:02d}")
             for i in range(NODES)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 4]) for i in range(NODES)]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outputs)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_failed_line_with_every_unsupported_node_is_cut_to_the_first_and_the_count(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    (folder / "models").mkdir(parents=True)
    _many_unsupported(folder / "models" / "old.onnx")
    write_rtx_config(folder, [{"model_name": "old", "onnx": "models/old.onnx"}], compute_capabilities=["sm86"])
    (tmp_path / "dodo.py").write_text(DODO)
    project = DoitProject(tmp_path)
    result = project.doit("engines")
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = [line for line in result.stdout.splitlines() if line.startswith("FAILED old:")]
    (log,) = project.cache.glob("old.*.engine.build.log")
    assert failed.startswith("FAILED old: backbone old: TensorRT-RTX could not parse old.onnx: "
                             "node unsupported_node_00 (NoSuchOp0): "), failed
    assert failed.endswith(f" (and {NODES - 1} more; the whole text is in {log.name})"), failed
    assert len(failed) < 600 and "unsupported_node_01" not in failed, failed
    text = log.read_text()
    whole = text[text.index("# FAILED old: BackendError\n"):]  # after TensorRT-RTX's own log of the build
    assert all(f"node unsupported_node_{i:02d} (NoSuchOp{i})" in whole for i in range(NODES))
    assert len(whole) > 3200
    (event,) = project.events()
    assert event["outcome"] == "FAILED" and event["reason"] == failed.removeprefix("FAILED old: ")
