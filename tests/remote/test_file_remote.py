"""Attacks on a file:// remote (a shared mount): planted symlinks and a FIFO, for real.

A link planted below the remote root must never be followed (no file outside changes, no
foreign bytes are installed) and a FIFO must never hang a host; the next writable host
replaces every planted object with a regular one.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from .conftest import make_host, warnings_of
from .test_faults import assert_cache_clean
from .test_security import snapshot


def file_block(root):
    return {"url": f"file://{root}", "timeout_s": 3, "lease_s": 2}


def provision_within(host, seconds):
    """Run the host in a thread, so a hang (a FIFO opened for reading) fails the test instead."""
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("summary", host.provision()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the run did not end within {seconds} s (blocked on a planted object?)"
    return box["summary"]


def _entries(root, summary):
    """Each result's entry folder in the remote (layout 2), by model name, and the host key."""
    import fsspec

    from .conftest import RemoteEntry

    fs = fsspec.filesystem("file")
    entries = {r.model_name: RemoteEntry(fs, str(root), r) for r in summary}
    return next(iter(entries.values())).host_key, entries


def _outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"precious bytes")
    (outside / "folder").mkdir()
    return outside


def test_links_and_a_fifo_in_existing_entries_are_not_followed(tmp_path, corpus_dir, caplog):
    root = tmp_path / "shared"
    host_key, entries = _entries(root, make_host(tmp_path, "a", corpus_dir, file_block(root)).provision())
    outside = _outside(tmp_path)
    det, cls, emb = (Path(entries[m].base) for m in ("det", "cls", "emb"))
    (root / host_key / "_seen.json").unlink()
    (root / host_key / "_seen.json").symlink_to(outside / "precious")  # the builder writes here first
    (det / "commit" / "unsigned").unlink()
    os.mkfifo(det / "commit" / "unsigned")  # a reader that opens it blocks forever
    cls_engine = Path(entries["cls"].engine_key())
    cls_engine.unlink()
    cls_engine.symlink_to(outside / "precious")
    shutil.move(emb, outside / "emb-copy")  # a valid entry, but outside the root
    emb.symlink_to(outside / "emb-copy")
    before = snapshot(tmp_path, skip=[tmp_path / "b", root])
    b = make_host(tmp_path, "b", corpus_dir, file_block(root))
    with caplog.at_level(logging.WARNING):
        summary = provision_within(b, 30)
    assert summary.built == 3 and all(r.source == "local" for r in summary)
    assert_cache_clean(b, summary)
    lines = warnings_of(caplog)
    assert len(lines) == 3 and all("discarded" in line for line in lines), lines
    assert "not a regular file" in lines[0] and "symlink" in lines[1] and "link or not a folder" in lines[2]
    assert snapshot(tmp_path, skip=[tmp_path / "b", root]) == before, "a file outside the remote changed"
    planted = [root / host_key / "_seen.json", det / "commit" / "unsigned", cls_engine, emb]
    assert not any(p.is_symlink() for p in planted) and (det / "commit" / "unsigned").is_file()
    c = make_host(tmp_path, "c", corpus_dir, file_block(root))
    assert [r.source for r in provision_within(c, 30)] == ["remote"] * 3


def test_links_planted_at_upload_paths_are_replaced_not_written_through(tmp_path, corpus_dir, caplog):
    root = tmp_path / "shared"
    host_key, entries = _entries(root, make_host(tmp_path, "a", corpus_dir, None).provision())  # learn the paths
    outside = _outside(tmp_path)
    det, cls, emb = (Path(entries[m].base) for m in ("det", "cls", "emb"))
    for folder in (det, cls.parent, emb):
        folder.mkdir(parents=True)
    (root / host_key / "_seen.json").symlink_to(outside / "precious")
    (det / "engine").symlink_to(outside / "folder")  # where the engine part is written
    cls.symlink_to(outside / "folder")  # a whole entry folder
    (emb / "lease").symlink_to(outside / "precious")
    before = snapshot(tmp_path, skip=[tmp_path / "b", root])
    b = make_host(tmp_path, "b", corpus_dir, file_block(root))
    with caplog.at_level(logging.WARNING):
        summary = provision_within(b, 30)
    assert summary.built == 3
    assert_cache_clean(b, summary)
    assert snapshot(tmp_path, skip=[tmp_path / "b", root]) == before, "a file outside the remote changed"
    assert list((outside / "folder").iterdir()) == []
    lines = warnings_of(caplog)  # the linked entry folder reads as a bad entry; the others as absent
    assert len(lines) == 1 and entries["cls"].name in lines[0] and "link or not a folder" in lines[0], lines
    c = make_host(tmp_path, "c", corpus_dir, file_block(root))
    assert [r.source for r in provision_within(c, 30)] == ["remote"] * 3
