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
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioning import ConfigError, load_config
from provisioning.manifest import manifest_bytes
from provisioning.remote import make_remote_cache
from provisioning.remote.lease import BuilderLease, read_lease
from provisioning.remote.localstore import LocalRemoteStore
from provisioning.remote.report import remote_gc
from provisioning.remote.run_state import RETRY_AFTER_S, RunState
from provisioning.remote.signing import split_record, unsigned_record
from tests.conftest import CORPUS, DEFAULT_BACKBONES, write_corpus_yaml

from .conftest import forged_record, make_ed25519_keys, make_host, s3fs_client
from . import test_mutation_cache as cache_tests
from .test_mutation_cache import Scripted, Site
from .test_mutation_cache import transport as _transport

# test_mutation_cache.py's fixtures: one real ONNX Runtime engine (det), logs, the shared folder
built, logs, site = cache_tests.built, cache_tests.logs, cache_tests.site


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


def test_gc_in_a_signed_fleet_removes_this_corpus_superseded_entry(site):
    keys = make_ed25519_keys(site.tmp / "keys", "fleet", key_id="fleet")
    site.cache("a-builder", signing_key=keys.builder, corpus="A").publish(site.built)
    config_a = _corpus_config(site, "a-gc", {"url": site.url, "signing_key": keys.builder, "timeout_s": 2,
                                             "corpus": "A"})
    items, _ = _gc_plan(site, config_a)
    assert items == [str(site.entry)]


def test_gc_says_when_a_claim_of_this_corpus_does_not_verify(site):
    config_a, record_path = _corpus_b_entry(site)
    part = _manifest_part(site, record_path)
    planted = json.loads(part.read_bytes())
    planted["build"]["corpus"] = "A"
    part.write_bytes(manifest_bytes(planted))
    _, kept = _gc_plan(site, config_a)
    assert [line.split(": ", 1)[1] for line in kept] == [
        "other inputs for a model of this corpus, kept (its record names corpus 'A' but does not verify under this "
        "host's keys (or its manifest part is not the one the record names))"]


def test_gc_in_an_unsigned_fleet_still_removes_this_corpus_superseded_entry(site):
    site.cache("b-builder", corpus="A").publish(site.built)
    config_a = _corpus_config(site, "a-gc", {"url": site.url, "timeout_s": 2, "corpus": "A"})
    items, _ = _gc_plan(site, config_a)
    assert items == [str(site.entry)]


# --- item 7: plain http from the AWS shared config file ------------------------------------------

AWS_CONFIGS = {
    "default": "[default]\nendpoint_url = {endpoint}\n",
    "services": "[default]\nservices = engines\n\n[services engines]\ns3 =\n  endpoint_url = {endpoint}\n",
}


def _aws_config(tmp_path: Path, monkeypatch, kind: str, endpoint: str) -> Path:
    path = tmp_path / f"aws-config-{kind}"
    path.write_text(AWS_CONFIGS[kind].format(endpoint=endpoint))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(path))
    return path


@pytest.mark.parametrize("kind", sorted(AWS_CONFIGS))
def test_plain_http_from_the_aws_config_file_is_refused(tmp_path, monkeypatch, corpus_dir, kind):
    path = _aws_config(tmp_path, monkeypatch, kind, "http://192.0.2.10:9000")
    host = make_host(tmp_path, "h", corpus_dir, {"url": "s3://engines/prefix", "timeout_s": 1})
    with pytest.raises(ConfigError) as caught:
        make_remote_cache(load_config(host.config_path))
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{host.config_path}: field 'remote.endpoint_url': ")
    assert f"botocore resolved http://192.0.2.10:9000 from the AWS shared config ({path}" in line
    assert "plain http to 192.0.2.10 lets anyone on the network read and replace engines" in line


def test_plain_http_from_the_aws_config_file_needs_signatures_when_allowed(tmp_path, monkeypatch, corpus_dir):
    _aws_config(tmp_path, monkeypatch, "default", "http://192.0.2.10:9000")
    host = make_host(tmp_path, "h", corpus_dir, {"url": "s3://engines/prefix", "allow_insecure_http": True})
    with pytest.raises(ConfigError, match="plain http to 192.0.2.10 needs signed entries"):
        make_remote_cache(load_config(host.config_path))
    monkeypatch.setenv("ENGINE_KEY", "k" * 32)
    signed = make_host(tmp_path, "s", corpus_dir, {"url": "s3://engines/prefix", "allow_insecure_http": True,
                                                   "signing_key": {"env": "ENGINE_KEY"}})
    assert make_remote_cache(load_config(signed.config_path)) is not None


def test_a_loopback_endpoint_from_the_aws_config_file_is_used(tmp_path, monkeypatch, corpus_dir, s3_server, bucket):
    """The resolved endpoint is really the config file's: the moto server on loopback gets the upload."""
    _aws_config(tmp_path, monkeypatch, "services", s3_server.endpoint)
    host = make_host(tmp_path, "h", corpus_dir, {"url": f"s3://{bucket}/engines", "timeout_s": 3, "lease_s": 2})
    compiler, remote, _ = host.compiler()
    assert remote.store.fs.s3.meta.endpoint_url == s3_server.endpoint
    summary = host.provision(compiler)
    assert remote.disabled_reason is None and summary.built == 3
    assert s3fs_client(s3_server.endpoint).find(f"{bucket}/engines")


# --- item 8: a file:// lease from the future -------------------------------------------------------

def _plant_lease(site: Site, mtime_ahead_s: float, expires: float = 1e300) -> None:
    site.lease.parent.mkdir(parents=True, exist_ok=True)
    site.lease.write_bytes(json.dumps({"owner": "planted", "expires": expires}).encode())
    ahead = time.time() + mtime_ahead_s
    os.utime(site.lease, (ahead, ahead))


def test_a_lease_whose_mtime_is_in_the_future_is_invalid_and_taken_over(site, logs):
    _plant_lease(site, 1e6)
    cache = site.cache(wait_s=12)
    started = time.monotonic()
    assert site.fetch(cache) is None  # this host claims the build
    assert time.monotonic() - started < 6, "held by a lease from the future"
    assert not logs.events("remote_wait_budget") and not logs.events("remote_wait")
    assert any("lease of det" in line and "'?'" in line and "taking over" in line for line in logs.lines(20))
    assert json.loads(site.lease.read_bytes())["owner"] != "planted"
    cache._leases[site.name].release()


def test_read_lease_bounds_a_lease_by_this_hosts_clock(site):
    store = LocalRemoteStore(str(site.root), url=site.url)
    _plant_lease(site, 3600, expires=time.time() + 3600)
    assert read_lease(store, str(site.lease), 2, 30)["expires"] == 0.0  # from the future: invalid
    _plant_lease(site, 0, expires=time.time() + 10)
    assert read_lease(store, str(site.lease), 2, 30)["expires"] > time.time()  # a live lease still holds


# --- item 16: release() deletes only the lease this host wrote --------------------------------------

def test_a_release_after_a_takeover_leaves_the_new_holders_lease(site, logs):
    """Host A reads its own (expired) lease to release it; host B takes the lease over before A's delete."""
    store = Scripted(site.config())
    lease_path = str(site.lease)
    holder = BuilderLease(store, lease_path, site.engine_path("a"), 0.5, 2)
    assert LocalRemoteStore.create_exclusive(store, lease_path, holder.document(), 2)
    taken = {}

    def takeover_after_our_read(path, call):
        found = call()
        if path == lease_path and not taken:  # B: the lease expired, deleted and claimed anew
            os.unlink(site.lease)
            rival = BuilderLease(LocalRemoteStore(str(site.root), url=site.url), lease_path, site.engine_path("b"),
                                 0.5, 2)
            assert rival.store.create_exclusive(lease_path, rival.document(), 2)
            taken["owner"] = rival.owner
        return found

    store.around["read"] = takeover_after_our_read
    holder.release()
    assert json.loads(site.lease.read_bytes())["owner"] == taken["owner"], "A deleted B's lease"


def test_a_release_deletes_this_hosts_own_lease(site):
    store = LocalRemoteStore(str(site.root), url=site.url)
    holder = BuilderLease(store, str(site.lease), site.engine_path("a"), 30, 2)
    assert store.create_exclusive(str(site.lease), holder.document(), 2)
    holder.release()
    assert not site.lease.exists()


# --- item 13: the remote: block's error lines are capped (a YAML alias bomb) -------------------------

def _alias_bomb(levels: int = 6) -> str:
    """A YAML flow sequence of anchors, each nine aliases of the one before: 9**levels leaves, a few hundred bytes."""
    parts = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels + 1):
        parts.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


BOMB_BLOCKS = {
    "mode": "{{url: 's3://b/p', mode: {bomb}}}",
    "url": "{{url: {bomb}}}",
    "endpoint_url": "{{url: 's3://b/p', endpoint_url: {bomb}}}",
    "timeout_s": "{{url: 's3://b/p', timeout_s: {bomb}}}",
    "require_signature": "{{url: 's3://b/p', require_signature: {bomb}}}",
    "namespace": "{{url: 's3://b/p', namespace: {bomb}}}",
    "max_engine_bytes": "{{url: 's3://b/p', max_engine_bytes: {bomb}}}",
    "signing_key.algorithm": "{{url: 's3://b/p', signing_key: {{algorithm: {bomb}, env: K}}}}",
    "signing_key.id": "{{url: 's3://b/p', signing_key: {{id: {bomb}, env: K}}}}",
    "signing_key.host_key_prefixes": "{{url: 's3://b/p', signing_key: {{host_key_prefixes: {bomb}, env: K}}}}",
}


@pytest.mark.parametrize("field", list(BOMB_BLOCKS))
def test_an_alias_bomb_in_the_remote_block_gives_a_short_error_line(tmp_path, field):
    folder = tmp_path / "corpus"
    shutil.copytree(CORPUS / "models", folder / "models")
    path = write_corpus_yaml(folder, [dict(DEFAULT_BACKBONES[0])])
    block = BOMB_BLOCKS[field].format(bomb=_alias_bomb())
    text = path.read_text().replace("backbones:", "remote: " + block + "\nbackbones:", 1)
    path.write_text(text)
    assert len(text) < 2000
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = str(caught.value)
    assert f"field 'remote.{field}'" in line and "\n" not in line
    assert len(line) < 600, f"{len(line)} characters"
    assert time.monotonic() - started < 5


# --- item 14: a key file that is /dev/zero, a FIFO or huge ---------------------------------------

_LOAD_KEYS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # /dev/zero read whole would take it all
from provisioning import ConfigError, load_config
from provisioning.remote import make_remote_cache
try:
    make_remote_cache(load_config(sys.argv[1]))
except ConfigError as exc:
    print(exc)
    sys.exit(0)
print("no error")
sys.exit(3)
"""


def _key_file_error(tmp_path: Path, key: Path, algorithm: str) -> str:
    folder = tmp_path / "corpus"
    shutil.copytree(CORPUS / "models", folder / "models")
    source = {"file": str(key)}
    signing = ({"algorithm": "hmac-sha256", **source} if algorithm == "hmac-sha256"
               else {"algorithm": "ed25519", "private_key": source})
    path = write_corpus_yaml(folder, [dict(DEFAULT_BACKBONES[0])],
                             remote={"url": f"file://{tmp_path / 'shared'}", "signing_key": signing})
    result = subprocess.run([sys.executable, "-c", _LOAD_KEYS, str(path)], capture_output=True, text=True, timeout=60,
                            cwd=str(Path(__file__).resolve().parents[2]))
    assert result.returncode == 0, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result
    return lines[0]


@pytest.mark.parametrize("algorithm", ["hmac-sha256", "ed25519"])
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "folder"])
def test_a_key_file_that_is_not_a_regular_file_is_one_config_error(tmp_path, kind, algorithm):
    field = "signing_key" if algorithm == "hmac-sha256" else "signing_key.private_key"
    if kind == "fifo":
        key = tmp_path / "key.fifo"
        os.mkfifo(key)
    elif kind == "folder":
        key = tmp_path / "key.d"
        key.mkdir()
    else:
        key = Path(kind)
    started = time.monotonic()
    line = _key_file_error(tmp_path, key, algorithm)
    assert time.monotonic() - started < 30
    assert line.endswith(f"field 'remote.{field}': key file {key} is not a regular file (a FIFO, device or folder); "
                         "point the field at the key file"), line


def test_a_key_file_over_64_kib_is_refused_unread(tmp_path):
    key = tmp_path / "big.key"
    key.write_bytes(b"a" * (64 << 10) + b"b")
    line = _key_file_error(tmp_path, key, "hmac-sha256")
    assert line.endswith(f"field 'remote.signing_key': key file {key} is larger than 64 KiB, too large for a key; "
                         "point the field at the key file"), line


def test_a_key_file_behind_a_link_still_loads(tmp_path, site):
    """Mounted secrets are links (Kubernetes: key -> ..data/key): following them stays allowed."""
    target = tmp_path / "secret" / "key"
    target.parent.mkdir()
    target.write_text("k" * 32 + "\n")
    link = tmp_path / "key"
    link.symlink_to(target)
    cache = site.cache(signing_key={"algorithm": "hmac-sha256", "file": str(link)})
    assert cache.keys is not None and cache.keys.signing_id


# --- item 20: remote-controlled names reach the logs escaped (ascii, not repr) -----------------------

LOOK_ALIKE = "fl\u0435et"  # "fleet" with a Cyrillic e: the key id a reader would trust at a glance


def test_a_look_alike_key_id_is_logged_escaped(site, logs):
    site.cache("builder").publish(site.built)
    site.commit().rename(site.commit(LOOK_ALIKE))
    assert site.fetch(site.cache(signing_key={"env": "CACHE_KEY"}, mode="read-only")) is None
    [line] = [r.getMessage() for r in logs.events("remote_untrusted")]
    assert "does not trust ('fl\\u0435et'); building det locally" in line, line
    assert line.isascii()


def test_a_look_alike_lease_owner_is_logged_escaped(site, logs):
    _plant_lease(site, 0, expires=0.0)
    site.lease.write_bytes(json.dumps({"owner": "h\u043ast-a:1:\u202eevil\nFAKE LINE", "expires": 0.0}).encode())
    cache = site.cache()
    assert site.fetch(cache) is None
    [line] = [m for m in logs.lines(20) if "taking over" in m]
    assert line.isascii() and "\n" not in line and "\\u043a" in line and "\\u202e" in line, line
    cache._leases[site.name].release()


# --- item 24: the run shares a transport failure's verdict (doit: tests/remote/test_dead_endpoint.py) ----

def test_a_later_cache_of_the_run_finds_the_remote_off_and_never_calls_it(site, logs):
    first, store = site.scripted()
    store.around["read"] = lambda path, call: (_ for _ in ()).throw(_transport(TimeoutError("timed out")))
    assert site.fetch(first) is None and first.disabled_reason is not None
    later, later_store = site.scripted()  # the next task of the run: a new RemoteCache, the same config
    assert later.run is first.run and later.disabled_reason == first.disabled_reason
    assert site.fetch(later) is None
    later.publish(site.built)
    assert later_store.calls == [] and len(logs.events("remote_unavailable")) == 1


def test_the_verdict_expires_for_a_process_that_lives_on(site):
    state = RunState(1.0)
    state.turn_off("fetch failed")
    assert state.off_reason() == "fetch failed"
    state.unavailable_since -= RETRY_AFTER_S + 1
    assert state.off_reason() is None
    cache = site.cache(run=state)
    assert cache.disabled_reason is None


def test_a_link_planted_at_the_build_lock_mid_build_keeps_the_lease_renewing(tmp_path, caplog):
    """The lease's renewal thread probes the build lock; a planted link there is refused by the
    probe, which must not end the thread with a traceback (the lease would lapse mid-build)."""
    from provisioning.remote.lease import BuilderLease

    engine = tmp_path / "cache" / "det.engine"
    (engine.parent / ".locks").mkdir(parents=True)
    (tmp_path / "outside").write_text("someone else's file")
    (engine.parent / ".locks" / "det.engine.lock").symlink_to(tmp_path / "outside")
    lease = BuilderLease(None, "host/det.engine/digest/lease", engine, lease_s=30, timeout_s=1)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="provisioning.remote"):
        assert lease._build_lock_held() is True
    assert "cannot probe the build lock of det.engine" in caplog.text
    assert (tmp_path / "outside").read_text() == "someone else's file"
