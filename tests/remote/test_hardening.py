"""Issue 22's attacks on the remote cache, performed for real (file:// folders, moto over HTTP, FIFOs).

Each test plays one attacker or mistake from the outside review and checks what a user
sees: what is installed, what the shared folder holds afterwards, whether the remote
stays on, and the lines logged. The engine is a real ONNX Runtime build (the ``built``
fixture of test_mutation_cache.py, with its ``Site`` helpers).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from provisioning import load_config
from provisioning.manifest import manifest_bytes
from provisioning.remote.localstore import LocalRemoteStore
from provisioning.remote.report import remote_gc
from provisioning.remote.signing import split_record, unsigned_record
from tests.conftest import CORPUS, DEFAULT_BACKBONES, write_corpus_yaml

from .conftest import forged_record, make_ed25519_keys
from .test_mutation_cache import Site, built, logs, site  # noqa: F401  (fixtures)


def _folder_with_a_file(path: Path) -> None:
    """A folder (not empty) where an object belongs: what a careless sync or an attacker leaves."""
    if path.exists():
        path.unlink()
    path.mkdir(parents=True)
    (path / "inside").write_bytes(b"x")


def _discarded(logs) -> list[str]:
    return [r.reason for r in logs.events("remote_discard")]


# --- item 5: a folder where a file:// object belongs ----------------------------------------------

def test_a_folder_as_seen_json_is_replaced_and_the_remote_stays_on(site, logs):
    site.cache("builder").publish(site.built)
    seen = site.root / site.host_key / "_seen.json"
    _folder_with_a_file(seen)
    reader = site.cache()
    fetched = site.fetch(reader)
    assert fetched is not None and reader.disabled_reason is None, logs.warnings()
    assert seen.is_file() and json.loads(seen.read_bytes())["seen"] > time.time() - 60
    assert not logs.events("remote_unavailable")


def test_a_folder_as_commit_record_is_discarded_and_repaired(site, logs):
    site.cache("builder").publish(site.built)
    good = site.objects()
    _folder_with_a_file(site.commit())
    reader = site.cache()
    assert site.fetch(reader) is None
    assert _discarded(logs) == ["commit record 'unsigned' is not a regular file (a FIFO, device or folder); not read"]
    reader.publish(site.built)
    assert reader.disabled_reason is None and not logs.events("remote_unavailable"), logs.warnings()
    assert site.commit().is_file()
    assert {k: v for k, v in site.objects().items() if not k.endswith("_seen.json")} == {
        k: v for k, v in good.items() if not k.endswith("_seen.json")}
    assert site.fetch(site.cache(mode="read-only"), host="c") is not None


def test_a_folder_as_engine_part_is_discarded_and_repaired(site, logs):
    site.cache("builder").publish(site.built)
    good = site.objects()
    _folder_with_a_file(site.engine_part)
    reader = site.cache()
    assert site.fetch(reader) is None
    assert _discarded(logs) == ["engine part: is not a regular file (a FIFO, device or folder); not read"]
    reader.publish(site.built)
    assert reader.disabled_reason is None and not logs.events("remote_unavailable"), logs.warnings()
    assert site.engine_part.is_file()
    assert {k: v for k, v in site.objects().items() if not k.endswith("_seen.json")} == {
        k: v for k, v in good.items() if not k.endswith("_seen.json")}
    assert site.fetch(site.cache(mode="read-only"), host="c") is not None


def test_a_folder_as_manifest_part_is_discarded_and_repaired(site, logs):
    site.cache("builder").publish(site.built)
    good = site.objects()
    _folder_with_a_file(site.manifest_part)
    reader = site.cache()
    assert site.fetch(reader) is None
    assert _discarded(logs) == ["manifest part is not a regular file (a FIFO, device or folder); not read"]
    reader.publish(site.built)
    assert reader.disabled_reason is None and not logs.events("remote_unavailable"), logs.warnings()
    assert site.manifest_part.is_file()
    assert site.fetch(site.cache(mode="read-only"), host="c") is not None
    assert {k: v for k, v in site.objects().items() if not k.endswith("_seen.json")} == {
        k: v for k, v in good.items() if not k.endswith("_seen.json")}


def test_a_folder_is_removed_without_following_a_link_inside_it(site, tmp_path):
    """The repair deletes the planted folder's own entries only: a link inside it is removed, not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"precious")
    store = LocalRemoteStore(str(site.root), url=site.url)
    target = site.root / "h" / "_seen.json"
    _folder_with_a_file(target)
    (target / "link").symlink_to(outside, target_is_directory=True)
    store.put_bytes(f"{site.root}/h/_seen.json", b"{}", 2)
    assert target.read_bytes() == b"{}" and (outside / "keep").read_bytes() == b"precious"


# --- item 6: engines-gc --remote decides ownership only from records that verify ------------------

def _corpus_config(site: Site, host: str, block: dict):
    """A whole corpus.yaml (det only) with this remote: block, loaded as the doit commands load it."""
    folder = site.tmp / host
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CORPUS / "models", folder / "models", dirs_exist_ok=True)
    return load_config(write_corpus_yaml(folder, [dict(DEFAULT_BACKBONES[0])], remote=block))


def _corpus_b_entry(site: Site):
    """Corpus B's signed entry for det in the shared folder; corpus A (same fleet key) builds det from other inputs."""
    keys = make_ed25519_keys(site.tmp / "keys", "fleet", key_id="fleet")
    block = {"url": site.url, "signing_key": keys.builder, "timeout_s": 2}
    builder_b = site.cache("b-builder", signing_key=keys.builder, corpus="B")
    builder_b.publish(site.built)
    config_a = _corpus_config(site, "a-gc", {**block, "corpus": "A"})
    return config_a, site.commit("fleet")


def _manifest_part(site: Site, record_path: Path) -> Path:
    """The manifest part a record names."""
    sha = re.search(rb"\nmanifest ([0-9a-f]{64})\n", record_path.read_bytes()).group(1).decode()
    return site.entry / "manifest" / sha


def _gc_plan(site: Site, config_a):
    report = remote_gc(config_a, [site.host_key], [(site.name, "0" * 32)], apply=False)
    return [item.path for item in report.plan.items], report.plan.kept


def test_gc_keeps_another_corpus_entry(site):
    config_a, _ = _corpus_b_entry(site)
    items, kept = _gc_plan(site, config_a)
    assert items == [] and any("names corpus 'B', not 'A'" in line for line in kept), kept


def test_gc_ignores_a_forged_record_that_names_this_corpus(site):
    """A writer without the key rewrites corpus B's record to name a manifest that says corpus A."""
    config_a, record_path = _corpus_b_entry(site)
    body, _, _, _ = split_record(record_path.read_bytes())
    planted = json.loads(_manifest_part(site, record_path).read_bytes())
    planted["build"]["corpus"] = "A"
    planted_blob = manifest_bytes(planted)
    planted_part = site.entry / "manifest" / hashlib.sha256(planted_blob).hexdigest()
    planted_part.write_bytes(planted_blob)
    forged = re.sub(rb"manifest [0-9a-f]{64}\n", b"manifest " + hashlib.sha256(planted_blob).hexdigest().encode()
                    + b"\n", body)
    record_path.write_bytes(forged_record(forged, key_id="fleet"))
    items, kept = _gc_plan(site, config_a)
    assert items == [], "a forged record made gc delete corpus B's entry"
    assert any(site.digest in line and "kept" in line for line in kept), kept


def test_gc_ignores_a_swapped_manifest_part(site):
    """The record is B's and verifies, but the manifest part's bytes were replaced to name corpus A."""
    config_a, record_path = _corpus_b_entry(site)
    part = _manifest_part(site, record_path)
    planted = json.loads(part.read_bytes())
    planted["build"]["corpus"] = "A"
    part.write_bytes(manifest_bytes(planted))
    items, kept = _gc_plan(site, config_a)
    assert items == [], "a swapped manifest part made gc delete corpus B's entry"


def test_gc_ignores_an_unsigned_record_in_a_signed_fleet(site):
    """Only an unsigned record (planted) names corpus A; a signed fleet does not accept it as the entry's owner."""
    config_a, record_path = _corpus_b_entry(site)
    body, _, _, _ = split_record(record_path.read_bytes())
    planted = json.loads(_manifest_part(site, record_path).read_bytes())
    record_path.unlink()
    planted["build"]["corpus"] = "A"
    planted_blob = manifest_bytes(planted)
    (site.entry / "manifest" / hashlib.sha256(planted_blob).hexdigest()).write_bytes(planted_blob)
    forged = re.sub(rb"manifest [0-9a-f]{64}\n", b"manifest " + hashlib.sha256(planted_blob).hexdigest().encode()
                    + b"\n", body)
    site.commit("unsigned").write_bytes(unsigned_record(forged))
    items, _ = _gc_plan(site, config_a)
    assert items == [], "an unsigned record decided ownership in a signed fleet"


def test_gc_in_an_unsigned_fleet_still_removes_this_corpus_superseded_entry(site):
    site.cache("b-builder", corpus="A").publish(site.built)
    config_a = _corpus_config(site, "a-gc", {"url": site.url, "timeout_s": 2, "corpus": "A"})
    items, _ = _gc_plan(site, config_a)
    assert items == [str(site.entry)]
