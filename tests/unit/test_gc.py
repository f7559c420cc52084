"""GC and clean treat an engine's build log and trusted-stat record as part of the entry."""

from __future__ import annotations

from pathlib import Path

from provisioning import Sha256Sidecar
from provisioning.cache import BUILD_LOG_SUFFIX, COMMIT_SUFFIX, entry_files
from provisioning.gc import plan_gc, scan_cache
from provisioning.manifest import manifest_path_for
from provisioning.verify import verify_engine

NAME = "det.fp16.trt-10.16.1.11.sm90-h200.3f2a9c1b.engine"


def _entry(cache: Path, name: str = NAME) -> Path:
    engine = cache / name
    Sha256Sidecar.write_atomic_and_sidecar(engine, b"plan" * 100,
                                           before_commit=lambda s, n: {manifest_path_for(engine): b"{}"})
    engine.with_name(name + BUILD_LOG_SUFFIX).write_text("[TRT] build log\n")
    engine.with_name(name + COMMIT_SUFFIX).write_bytes(b"provisioning-remote-entry/2\n")  # a fetched entry's record
    assert verify_engine(engine, "stat").ok  # leaves a .verified record
    return engine


def test_entry_files_unpublish_first_and_include_every_companion(tmp_path):
    engine = _entry(tmp_path)
    files = entry_files(engine)
    assert files[0] == Sha256Sidecar.path_for(engine) and files[1] == engine
    assert all(p.exists() for p in files)
    assert {p.name for p in files} >= {NAME + ".manifest.json", NAME + BUILD_LOG_SUFFIX, NAME + COMMIT_SUFFIX}


def test_gc_of_a_superseded_engine_removes_its_build_log_and_record(tmp_path):
    engine = _entry(tmp_path)
    scan = scan_cache(tmp_path)
    plan = plan_gc(scan, current=[], host_keys=["sm90-h200"])
    assert plan.bytes_freed == sum(p.stat().st_size for p in entry_files(engine))
    plan.execute()
    assert not any(p.exists() for p in entry_files(engine))


def test_an_orphan_build_log_is_planned_for_deletion(tmp_path):
    orphan = tmp_path / ("cls.fp16.trt-10.16.1.11.sm90-h200.0badc0de.engine" + BUILD_LOG_SUFFIX)
    orphan.write_text("log of a failed build\n")
    plan = plan_gc(scan_cache(tmp_path), current=[], host_keys=["sm90-h200"])
    assert [item.paths for item in plan.items] == [(orphan,)]
