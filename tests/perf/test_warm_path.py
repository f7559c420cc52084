"""The warm path's shortcuts never trade correctness: real doit runs on real ONNX Runtime engines.

The shared checker hashes every engine on all cores from the first uptodate check on, and
``doit -n N`` forks its workers while that hashing runs; ``verify: stat`` trusts unchanged
engines; the file_dep checker digests ONNX files with SHA-256 and reuses the action's digest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.sidecar import Sha256Sidecar

from tests.conftest import DEFAULT_BACKBONES, DOIT, write_corpus_yaml

HEAVY = {"onnx", "onnxruntime", "numpy", "tensorrt"}


def _big_model(path: Path, side: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(side).random((side, side), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _retrain_one_weight(path: Path) -> None:
    """Change one weight value in place: same size, same graph, other bytes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model(str(path))
    tensor = model.graph.initializer[0]
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] += 1.0
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    size = path.stat().st_size
    onnx.save_model(model, str(path))
    assert path.stat().st_size == size


def _doit(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PROVISIONING_CONFIG", "PROVISIONING_DOIT_DB")}
    return subprocess.run([DOIT, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _marks(stdout: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^(\.|--) +engines:(\S+)", stdout, re.M)}


def _engine(corpus: Path, model: str) -> Path:
    (path,) = (corpus / "cache").glob(f"{model}.*.engine")
    return path


def _flip_byte_keeping_mtime(path: Path, offset: int = 100) -> None:
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _project(corpus_dir: Path, backbones: list[dict], **top) -> Path:
    write_corpus_yaml(corpus_dir, backbones, **top)
    (corpus_dir.parent / "dodo.py").write_text("from provisioning.doit import DOIT_CONFIG, task_engines  # noqa: F401\n")
    result = _doit(corpus_dir.parent, "engines")
    assert result.returncode == 0, result.stdout + result.stderr
    return corpus_dir.parent


@pytest.fixture
def big_project(corpus_dir: Path) -> Path:
    """det, cls, emb plus two ~16 MB engines, built once."""
    for name in ("big1", "big2"):
        _big_model(corpus_dir / "models" / f"{name}.onnx", 2048)
    backbones = [dict(b) for b in DEFAULT_BACKBONES]
    backbones += [{"model_name": n, "onnx": f"models/{n}.onnx"} for n in ("big1", "big2")]
    return _project(corpus_dir, backbones)


def test_n4_run_forked_while_engines_hash_rebuilds_only_the_corrupt_one(big_project: Path):
    corpus = big_project / "corpus"
    _flip_byte_keeping_mtime(_engine(corpus, "det"))
    result = _doit(big_project, "-n", "4", "engines")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _marks(result.stdout) == {"det": ".", "cls": "--", "emb": "--", "big1": "--", "big2": "--"}
    assert "BUILT  det" in result.stdout
    assert Sha256Sidecar.verify(_engine(corpus, "det"))


def test_a_corrupt_large_engine_is_not_up_to_date_even_when_verified_in_the_background(big_project: Path):
    corpus = big_project / "corpus"
    _flip_byte_keeping_mtime(_engine(corpus, "big2"), offset=10_000_000)
    result = _doit(big_project, "engines")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _marks(result.stdout)["big2"] == "." and "BUILT  big2" in result.stdout
    assert _marks(_doit(big_project, "engines").stdout) == dict.fromkeys(("det", "cls", "emb", "big1", "big2"), "--")


def test_a_no_op_run_imports_no_heavy_library(big_project: Path):
    result = subprocess.run([sys.executable, "-X", "importtime", DOIT, "engines"], cwd=big_project,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_marks(result.stdout).values()) == {"--"}
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "provisioning" in imported
    assert not HEAVY & imported, sorted(HEAVY & imported)


def test_stat_mode_rebuilds_after_a_byte_flip_that_restores_the_mtime(corpus_dir: Path):
    root = _project(corpus_dir, [dict(b) for b in DEFAULT_BACKBONES], verify="stat")
    first = _doit(root, "engines")  # records the stat signatures of fully verified engines
    assert set(_marks(first.stdout).values()) == {"--"}
    assert len(list((corpus_dir / "cache" / ".verified").iterdir())) == 3
    _flip_byte_keeping_mtime(_engine(corpus_dir, "cls"))
    result = _doit(root, "engines")
    assert _marks(result.stdout) == {"det": "--", "cls": ".", "emb": "--"}, result.stdout
    assert Sha256Sidecar.verify(_engine(corpus_dir, "cls"))


def test_touched_onnx_is_not_rebuilt_but_a_same_size_edit_is(corpus_dir: Path):
    root = _project(corpus_dir, [dict(b) for b in DEFAULT_BACKBONES])
    onnx = corpus_dir / "models" / "det.onnx"
    os.utime(onnx)  # a checkout or cache restore: new mtime, same bytes
    assert _marks(_doit(root, "engines").stdout)["det"] == "--"
    _retrain_one_weight(onnx)
    result = _doit(root, "engines")
    assert _marks(result.stdout) == {"det": ".", "cls": "--", "emb": "--"}, result.stdout
    assert "BUILT  det" in result.stdout
