"""How long Ctrl-C waits while ONNX Runtime optimises a model (issue 22 item 31).

    .venv/bin/python benchmarks/interrupt_wait.py [--size 2048] [--folds 4] [--delay 0.5] [--again S]

Makes an ONNX model whose optimisation is slow in native code (``--folds`` constant MatMuls
of ``--size`` x ``--size`` that ONNX Runtime folds), measures the optimise call alone, then
runs the real ``doit engines`` on it in its own process group, sends SIGINT to the group
(as a terminal's Ctrl-C does) ``--delay`` seconds after the scratch folder of the build
appears, and prints how long doit took to exit after the signal, its exit code and its
INTERRUPTED line. Python cannot interrupt a native call: the signal is handled when
``InferenceSession(...)`` returns.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOIT = Path(sys.executable).with_name("doit")


def make_model(path: Path, size: int, folds: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(folds):
        for name in (f"a{i}", f"b{i}"):
            inits.append(numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32) / size, name))
        nodes.append(helper.make_node("MatMul", [f"a{i}", f"b{i}"], [f"w{i}"]))  # constant: folded when optimised
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"y{i}"]))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "slow_to_optimise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def optimise_seconds(model: Path, out: Path) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    started = time.monotonic()
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds into the build before SIGINT")
    parser.add_argument("--again", type=float, default=None, help="a second SIGINT this many seconds after the first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interrupt-wait-") as folder:
        work = Path(folder)
        (work / "models").mkdir()
        make_model(work / "models" / "slow.onnx", args.size, args.folds)
        alone = optimise_seconds(work / "models" / "slow.onnx", work / "alone.onnx")
        (work / "alone.onnx").unlink()
        (work / "corpus.yaml").write_text("cache_dir: cache\nbackend: onnxruntime\nverify: stat\n"
                                          "backbones:\n  - {model_name: slow, onnx: models/slow.onnx}\n")
        (work / "dodo.py").write_text("from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n")
        env = {k: v for k, v in os.environ.items() if k != "PROVISIONING_DOIT_DB"}
        env["PROVISIONING_CONFIG"] = str(work / "corpus.yaml")
        child = subprocess.Popen([str(DOIT), "engines"], cwd=work, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        cache = work / "cache"
        while child.poll() is None and not any(p.is_dir() and p.name.endswith(".incomplete")
                                               for p in (cache.iterdir() if cache.is_dir() else ())):
            time.sleep(0.01)
        time.sleep(args.delay)
        if child.poll() is not None:
            sys.exit(f"doit ended before the signal (exit {child.returncode}):\n{child.communicate()[0]}")
        sent = time.monotonic()
        os.killpg(child.pid, signal.SIGINT)
        if args.again is not None:
            time.sleep(args.again)
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGINT)
        output, _ = child.communicate(timeout=600)
        waited = time.monotonic() - sent
    line = next((l for l in output.splitlines() if l.startswith("INTERRUPTED")), "(no INTERRUPTED line)")
    print(f"optimise call alone: {alone:.2f} s ({args.folds} folds of {args.size}x{args.size}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    again = f" (and again {args.again:.1f} s after)" if args.again is not None else ""
    print(f"SIGINT {args.delay:.1f} s into the build{again}: doit exited {waited:.2f} s later, "
          f"exit code {child.returncode}")
    print(line)


if __name__ == "__main__":
    main()
