"""Fixtures: the fake TensorRT (10.16 and 11.4) injected as ``tensorrt``, and the test models."""

from __future__ import annotations

from pathlib import Path

import pytest

from fake_tensorrt import FakeWorld
from trt_helpers import RTX, VERSIONS, install_fake, write_bf16_model, write_qdq_model


@pytest.fixture(params=sorted(VERSIONS), ids=sorted(VERSIONS))
def world(request, monkeypatch) -> FakeWorld:
    """A fake TensorRT of each recorded major, installed as ``tensorrt`` with a fake cuda-python."""
    return install_fake(monkeypatch, FakeWorld(version=VERSIONS[request.param]))


@pytest.fixture
def models(corpus_dir: Path) -> Path:
    """The example corpus models (a private copy), plus a Q/DQ model and a bf16-typed model."""
    folder = corpus_dir / "models"
    write_qdq_model(folder / "qdq.onnx")
    write_bf16_model(folder / "bf16.onnx")
    return folder


@pytest.fixture
def world10(monkeypatch) -> FakeWorld:
    """The fake TensorRT 10.16 only (for 10.x-specific behaviour)."""
    return install_fake(monkeypatch, FakeWorld(version=VERSIONS["trt10"]))


@pytest.fixture
def world11(monkeypatch) -> FakeWorld:
    """The fake TensorRT 11.4 only (for 11.x-specific behaviour)."""
    return install_fake(monkeypatch, FakeWorld(version=VERSIONS["trt11"]))


@pytest.fixture
def world_rtx(monkeypatch) -> FakeWorld:
    """The fake TensorRT for RTX 1.7 (``tensorrt_rtx``), on a machine without a GPU like the real one here."""
    return install_fake(monkeypatch, FakeWorld(version=RTX, no_gpu=True))
