"""Fixtures for the Triton export: real ONNX Runtime engines, the fake TensorRT for GPU entries.

Every generated ``config.pbtxt`` is parsed with Triton's own ModelConfig schema
(``tritonclient.grpc.model_config_pb2`` through ``text_format.Parse``), never a copy of it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from provisioning.compiler import EngineCompileRequest
from provisioning.compose import build_engine_compiler
from provisioning.doit.corpus import LoadedCorpus, load_corpus
from tests.conftest import REPO, DoitProject

# The fake TensorRT lives in tests/unit/tensorrt as top-level modules (fake_tensorrt, trt_helpers)
TRT_HELPERS = str(REPO / "tests" / "unit" / "tensorrt")
if TRT_HELPERS not in sys.path:
    sys.path.insert(0, TRT_HELPERS)



def model_config(path: Path):
    """``config.pbtxt`` parsed by Triton's schema (raises on anything Triton would not accept as text)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def complete_versions(model_dir: Path) -> list[int]:
    """Assert every integer version folder is complete (each file its SHA256SUMS names, verifying)."""
    versions = sorted(int(n) for n in os.listdir(model_dir) if n.isdigit())
    for version in versions:
        folder = model_dir / str(version)
        sums = dict(reversed(line.split("  ", 1)) for line in (folder / "SHA256SUMS").read_text().splitlines())
        assert sums, folder
        assert set(os.listdir(folder)) == set(sums) | {"SHA256SUMS", "provisioning.json"}, folder
        for name, digest in sums.items():
            assert sha256_of(folder / name) == digest, folder / name
    return versions


def hidden_leftovers(repo: Path) -> list[str]:
    """Names of interrupted-export leftovers under REPO/<model>/ (all must be '.'-prefixed)."""
    found = []
    for model in repo.iterdir() if repo.is_dir() else ():
        for name in os.listdir(model):
            if name.endswith((".incomplete", ".retired")):
                assert name.startswith("."), name
                found.append(f"{model.name}/{name}")
    return found


def build_engines(config: Path) -> LoadedCorpus:
    """Build (or reuse) every engine of ``config`` through the real compiler; the loaded corpus."""
    corpus = load_corpus(config)
    request = EngineCompileRequest(corpus.specs, corpus.cache_dir, corpus.host)
    build_engine_compiler(corpus.config).compile_engines_for_corpus(request)
    return corpus


def edit_onnx(path: Path, note: str) -> None:
    """Change an ONNX file's bytes (its doc string), same graph: its engine is rebuilt with other bytes."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    model.doc_string = note
    onnx.save_model(model, str(path))


class ExportProject(DoitProject):
    """A project folder (corpus/ with a built cache) and the real ``doit engines-export``."""

    @property
    def repo(self) -> Path:
        return self.root / "triton"

    def export(self, *args: str):
        return self.doit("engines-export", "--triton", str(self.repo), *args)

    def corpus_loaded(self) -> LoadedCorpus:
        return load_corpus(self.config)



@pytest.fixture
def ort_project(corpus_dir: Path) -> ExportProject:
    """The example corpus (det, cls, emb) with its ONNX Runtime engines built."""
    project = ExportProject(corpus_dir.parent)
    build_engines(project.config)
    return project
