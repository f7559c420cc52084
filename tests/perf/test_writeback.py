"""The optimised model is written back to disk while ONNX Runtime is still writing it.

ONNX Runtime writes a 100 MB model in ~0.2 s of its own build; writing it back only at
publish made every cold build wait that long again. ``writing_back`` fsyncs the file as it
grows, from a thread; the publish's own fsync stays the durability point.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from provisioning.backends import base, onnxruntime as ort_backend
from provisioning.backends.base import EngineOutput, writing_back
from provisioning import build_backbone_specs, load_config
from provisioning.host import HostCapabilities

HOST = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2", "fma"))


def test_a_file_is_written_back_while_it_grows_and_the_thread_ends_with_the_block(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    synced = []
    real = base._fsync
    monkeypatch.setattr(base, "_fsync", lambda fd: synced.append(os.fstat(fd).st_size) or real(fd))
    chunk = b"w" * (1 << 20)
    with writing_back(target):
        time.sleep(0.05)  # the library is still optimising: no file yet
        with open(target, "wb") as handle:  # then it writes, releasing the GIL between chunks
            for _ in range(5):
                handle.write(chunk)
                handle.flush()
                time.sleep(0.05)
    assert synced, "nothing was written back while the file was written"
    assert min(synced) < 5 * len(chunk)  # some of it while the file was still growing
    assert not [t for t in threading.enumerate() if t.name == "engine-writeback"]


def test_no_file_means_no_write_back_and_no_thread_left(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(base, "_fsync", synced.append)
    with writing_back(tmp_path / "never.onnx"):
        time.sleep(0.03)
    assert synced == [] and not [t for t in threading.enumerate() if t.name == "engine-writeback"]


def test_the_onnx_runtime_build_writes_its_optimised_model_back_as_it_is_written(corpus_dir, monkeypatch):
    wrapped = []

    @contextlib.contextmanager
    def recording(path):
        wrapped.append(Path(path))
        with writing_back(path):
            yield
        assert Path(path).is_file()  # ONNX Runtime wrote it inside the block

    monkeypatch.setattr(ort_backend, "writing_back", recording)
    config = load_config(corpus_dir / "corpus.yaml")
    spec = build_backbone_specs(config, "onnxruntime")[0]
    scratch = corpus_dir / "scratch"
    scratch.mkdir()
    published = []
    output = EngineOutput(corpus_dir / "det.engine", scratch, lambda payload, notes: published.append(payload))
    ort_backend.OnnxRuntimeBackend().compile_engine(spec, HOST, output)
    assert wrapped == [scratch / "optimized.onnx"] and published == [scratch / "optimized.onnx"]
