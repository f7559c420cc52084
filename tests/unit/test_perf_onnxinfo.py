"""ONNX inspection records are a shortcut: written without an fsync each, never left half-made."""

from __future__ import annotations

import errno
import os

import pytest

from provisioning import build_backbone_specs, load_config
from provisioning.onnxinfo import INSPECT_DIR, cached_inspection
from provisioning.sidecar import is_temp_name


def test_recording_inspections_costs_no_fsync(corpus_yaml, monkeypatch):
    config = load_config(corpus_yaml)
    config.cache_dir.mkdir(parents=True)
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    build_backbone_specs(config, "onnxruntime")  # inspects every model and records it
    assert synced == [], "each record's fsync is a journal commit (~4 ms a backbone on a cold build)"
    assert all(cached_inspection(b.onnx, config.cache_dir) is not None for b in config.backbones)


def test_a_failed_record_write_leaves_no_temporary_file_and_no_record(corpus_yaml, monkeypatch):
    config = load_config(corpus_yaml)
    config.cache_dir.mkdir(parents=True)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    build_backbone_specs(config, "onnxruntime")  # best effort: the run goes on
    monkeypatch.undo()
    folder = config.cache_dir / INSPECT_DIR
    assert [p.name for p in folder.iterdir() if is_temp_name(p.name)] == []
    assert all(cached_inspection(b.onnx, config.cache_dir) is None for b in config.backbones)
