"""RemoteCache in-process against a real file:// remote: what mutation testing of remote/cache.py needs pinned.

The S3 tests (test_roundtrip.py, test_faults.py, test_security.py) start a moto server per
run, far too slow to run per mutant. Here every test drives :class:`RemoteCache` directly:
the remote is a real folder served by LocalRemoteStore, keys are real (Ed25519 PEM files,
an HMAC secret in the environment), the engine is a real ONNX Runtime build made once per
module, and entries are seeded by ``RemoteCache.publish``. A few tests wrap the real store
to play a server that fails at one call (a transport error, no conditional writes, content
that cannot be used) or a second host acting between two of our calls.

Each test checks what a user sees: which engine is installed locally (bytes, manifest,
commit record, sidecar), whether a build is needed (``fetch`` returns None), which objects
the shared folder holds afterwards, byte for byte, and the lines logged.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from provisioning import EngineCompiler, Sha256Sidecar, build_compile_request, load_config
from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.cache import EngineCacheEntry, check_entry, engine_lock, ensure_cache_dir
from provisioning.manifest import BuildInputs, make_manifest, manifest_bytes, manifest_path_for
from provisioning.remote import key_ring, make_remote_cache, parse_remote_config
from provisioning.remote import cache as remote_cache
from provisioning.remote import commit_or_wait as remote_wait
from provisioning.remote import fetch as remote_fetch
from provisioning.remote import publish as remote_publish
from provisioning.remote.cache import RemoteCache, RunState, commit_path_for, run_state, shared_manifest
from provisioning.remote.layout import EntryPaths, inputs_digest
from provisioning.remote.localstore import LocalRemoteStore
from provisioning.remote.run_state import RETRY_AFTER_S
from provisioning.remote.signing import entry_message, split_record, unsigned_record
from provisioning.remote.store import (
    ConditionalWriteUnsupported, RemoteContentError, RemoteStore, RemoteUnavailable,
)
from provisioning.sidecar import is_temp_name
from tests.conftest import CORPUS, DEFAULT_BACKBONES, recording, write_corpus_yaml

from .conftest import make_ed25519_keys

MIB = 1 << 20
HINT = "remote cache off for the rest of this run (check remote.endpoint_url, the network and AWS_* credentials)"


# --- the engine, the fleet, the shared folder ----------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> EngineCacheEntry:
    """One real ONNX Runtime engine (det), built once for the module; tests only read it."""
    folder = tmp_path_factory.mktemp("builder")
    shutil.copytree(CORPUS / "models", folder / "models")
    config = load_config(write_corpus_yaml(folder, [dict(DEFAULT_BACKBONES[0])]))
    summary = EngineCompiler(OnnxRuntimeBackend(), heartbeat_s=0).compile_engines_for_corpus(
        build_compile_request(config))
    return summary.results[0].entry


@pytest.fixture
def logs():
    """Every record of provisioning.remote, whatever levels and handlers other tests left."""
    with recording("provisioning.remote") as handler:
        yield handler


class Scripted(LocalRemoteStore):
    """The real file:// store, where a test may act around one call (a server failing, another host)."""

    def __init__(self, config):
        super().__init__(config.url[len("file://"):], url=config.url)
        self.calls: list[tuple[str, str]] = []
        self.around: dict[str, object] = {}

    def _via(self, method, path, call):
        self.calls.append((method, path))
        hook = self.around.get(method)
        return hook(path, call) if hook is not None else call()

    def count(self, method: str, suffix: str = "") -> int:
        return sum(1 for m, p in self.calls if m == method and p.endswith(suffix))

    def read_small_tagged(self, path, limit, timeout):
        return self._via("read", path, lambda: LocalRemoteStore.read_small_tagged(self, path, limit, timeout))

    def download(self, path, fd, size, sha256_hex, stall_s, *, progress=None):
        return self._via("download", path,
                         lambda: LocalRemoteStore.download(self, path, fd, size, sha256_hex, stall_s, progress=progress))

    def size(self, path, timeout):
        return self._via("size", path, lambda: LocalRemoteStore.size(self, path, timeout))

    def put_bytes(self, path, data, timeout):
        return self._via("put_bytes", path, lambda: LocalRemoteStore.put_bytes(self, path, data, timeout))

    def put_file(self, path, local, timeout):
        return self._via("put_file", path, lambda: LocalRemoteStore.put_file(self, path, local, timeout))

    def put_file_exclusive(self, path, local, timeout):
        return self._via("put_file_exclusive", path,
                         lambda: LocalRemoteStore.put_file_exclusive(self, path, local, timeout))

    def create_exclusive(self, path, data, timeout):
        return self._via("create_exclusive", path, lambda: LocalRemoteStore.create_exclusive(self, path, data, timeout))

    def delete(self, paths, timeout):
        return self._via("delete", ",".join(paths), lambda: LocalRemoteStore.delete(self, paths, timeout))

    def delete_if_match(self, path, etag, timeout):
        return self._via("delete_if_match", path, lambda: LocalRemoteStore.delete_if_match(self, path, etag, timeout))

    def list_dir(self, path, timeout):
        return self._via("list_dir", path, lambda: LocalRemoteStore.list_dir(self, path, timeout))


def fail(exc: BaseException, *, times: int | None = None, suffix: str = ""):
    """A hook: the server answers ``exc`` (the first ``times`` calls on paths ending in ``suffix``)."""
    done = [0]

    def hook(path, call):
        if path.endswith(suffix) and (times is None or done[0] < times):
            done[0] += 1
            raise exc
        return call()

    return hook


def transport(cause: BaseException) -> RemoteUnavailable:
    """A transport failure as the stores raise it (the original as ``__cause__``)."""
    text = str(cause).splitlines()[0] if str(cause) else ""
    error = RemoteUnavailable(f"{type(cause).__name__}: {text}" if text else type(cause).__name__)
    error.__cause__ = cause
    return error


class Clock:
    """A virtual monotonic clock for cache.py's retry and wait loops: sleeping advances it at once."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    @staticmethod
    def time() -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    virtual = Clock()
    for module in (remote_cache, remote_wait, remote_fetch, remote_publish):
        monkeypatch.setattr(module, "time", virtual)
    return virtual


class Site:
    """The shared folder (a file:// remote) and the hosts of a fleet around it."""

    def __init__(self, tmp_path: Path, built: EngineCacheEntry, monkeypatch):
        self.tmp = tmp_path
        self.root = tmp_path / "shared"
        self.url = f"file://{self.root}"
        self.built = built
        self.inputs = BuildInputs(**built.inputs)
        self.host_key = built.inputs["host"]["host_key"]
        self.name = built.file_name
        self.digest = inputs_digest(built.inputs)
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("CACHE_KEY", "k" * 32)
        monkeypatch.setenv("OTHER_KEY", "o" * 32)

    # hosts
    def config(self, host: str = "a", **extra):
        raw = {"url": self.url, "timeout_s": 2, "lease_s": 0.5, "wait_s": 1, **extra}
        return parse_remote_config(raw, self.tmp / host / "corpus.yaml")

    def cache(self, host: str = "a", *, store=None, run=None, **extra) -> RemoteCache:
        cfg = self.config(host, **extra)
        return RemoteCache(cfg, store if store is not None else RemoteStore.open(cfg), key_ring(cfg), run)

    def scripted(self, host: str = "a", **extra) -> tuple[RemoteCache, Scripted]:
        cfg = self.config(host, **extra)
        store = Scripted(cfg)
        return RemoteCache(cfg, store, key_ring(cfg)), store

    def keys(self, name: str):
        return make_ed25519_keys(self.tmp / "keys", name, key_id=name)

    # the entry in the shared folder
    @property
    def entry(self) -> Path:
        return self.root / self.host_key / self.name / self.digest

    def commit(self, key_id: str = "unsigned") -> Path:
        return self.entry / "commit" / key_id

    @property
    def engine_part(self) -> Path:
        return self.entry / "engine" / self.built.sha256

    @property
    def lease(self) -> Path:
        return self.entry / "lease"

    def manifest_blob(self, **kwargs) -> bytes:
        """The manifest as uploaded (what a fetching host installs)."""
        return shared_manifest(manifest_path_for(self.built.path).read_bytes(), **kwargs)

    @property
    def manifest_part(self) -> Path:
        return self.entry / "manifest" / sha(self.manifest_blob())

    def body(self, **fields) -> bytes:
        values = dict(namespace="default", host_key=self.host_key, engine_name=self.name, inputs_digest=self.digest,
                      engine_sha256=self.built.sha256, size=self.built.size,
                      manifest_sha256=sha(self.manifest_blob()))
        values.update(fields)
        return entry_message(**values)

    def plant(self, manifest: bytes | None = None, record=None, **fields) -> bytes:
        """Write a manifest part and an unsigned commit record naming it (the parts of a publish stay)."""
        if manifest is not None:
            part = self.entry / "manifest" / sha(manifest)
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(manifest)
            fields.setdefault("manifest_sha256", sha(manifest))
        blob = unsigned_record(self.body(**fields)) if record is None else record
        self.commit().parent.mkdir(parents=True, exist_ok=True)
        self.commit().write_bytes(blob)
        return blob

    def objects(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}

    def tags(self) -> dict[str, tuple[bytes, int, int]]:
        """Bytes, inode and mtime of every object: a rewrite with the same bytes shows too."""
        return {rel: (data, (self.root / rel).stat().st_ino, (self.root / rel).stat().st_mtime_ns)
                for rel, data in self.objects().items()}

    # a host's local cache
    def engine_path(self, host: str = "b") -> Path:
        cache_dir = self.tmp / host / "cache"
        ensure_cache_dir(cache_dir)
        return cache_dir / self.name

    def fetch(self, cache: RemoteCache, host: str = "b", expected: BuildInputs | None = None):
        engine = self.engine_path(host)
        with engine_lock(engine):  # as the compiler calls it
            return cache.fetch(engine, "det", expected or self.inputs)

    def installed(self, host: str = "b") -> dict[str, bytes]:
        folder = self.tmp / host / "cache"
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}

    def assert_installed(self, record: bytes, host: str = "b", manifest: bytes | None = None) -> None:
        engine = self.engine_path(host)
        assert engine.read_bytes() == self.built.path.read_bytes()
        assert manifest_path_for(engine).read_bytes() == (manifest if manifest is not None else self.manifest_blob())
        assert commit_path_for(engine).read_bytes() == record
        assert Sha256Sidecar.path_for(engine).read_text() == Sha256Sidecar.format_line(self.built.sha256, self.name)
        assert check_entry(engine, "det", self.inputs).hit
        assert not [p for p in engine.parent.iterdir() if is_temp_name(p.name)]

    def assert_not_installed(self, host: str = "b") -> None:
        folder = self.tmp / host / "cache"
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        assert [n for n in names if n.startswith(self.name) or is_temp_name(n)] == [], names


def sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def lease_of(path: Path) -> dict:
    return json.loads(path.read_bytes())


@pytest.fixture
def site(tmp_path, built, monkeypatch) -> Site:
    return Site(tmp_path, built, monkeypatch)


def other_build(site: Site, folder: Path, payload: bytes, edit=None) -> EngineCacheEntry:
    """Another build of the same engine name and inputs (other bytes), published locally for real."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = folder / site.name

    def manifest(sha256: str, size: int) -> dict[Path, bytes]:
        document = make_manifest(model_name="det", engine_path=engine, sha256=sha256, size=size, inputs=site.inputs,
                                 onnx_path=Path("/models/det.onnx"), compile_duration_s=0.5)
        if edit is not None:
            edit(document)
        return {manifest_path_for(engine): manifest_bytes(document)}

    Sha256Sidecar.write_atomic_and_sidecar(engine, payload, before_commit=manifest)
    check = check_entry(engine, "det", site.inputs)
    assert check.hit, check.reasons
    return check.entry


def upload_line(logs) -> logging.LogRecord:
    """The last upload's line (the builders that seeded the remote logged theirs before)."""
    found = logs.events("remote_upload")
    assert found, [r.getMessage() for r in logs.records]
    return found[-1]


# --- start-up warnings, policy ------------------------------------------------------------------

UNSIGNED_LINE = ("remote cache {url}: entries are unsigned, so anyone who can write to the bucket can replace the "
                 "engines every host runs; set remote.signing_key (README, Fleet)")


def test_an_unsigned_fleet_warns_once_per_run_and_commits_as_unsigned(site, logs):
    first = site.cache()
    second = site.cache()  # doit builds one RemoteCache per task: the run warns once
    assert logs.warnings() == [UNSIGNED_LINE.format(url=site.url)]
    assert [r.event for r in logs.records] == ["remote_unsigned"]
    assert first.accepts_unsigned and second.commit_id == "unsigned" and first.keys is None
    assert repr(first) == f"RemoteCache({site.url!r}, mode=read-write, keys=None)"
    assert first.disabled_reason is None


def test_an_optional_signature_warns_once_and_installs_unsigned_entries(site, logs):
    site.cache("builder").publish(site.built)
    reader = site.cache(signing_key={"env": "CACHE_KEY"}, require_signature=False, mode="read-only")
    site.cache(signing_key={"env": "CACHE_KEY"}, require_signature=False, mode="read-only")
    optional = logs.events("remote_signature_optional")
    assert [r.getMessage() for r in optional] == [
        f"remote cache {site.url}: require_signature is false, so unsigned entries are installed too and the key "
        "protects nothing; remove remote.require_signature: false"]
    assert optional[0].levelno == logging.WARNING
    assert reader.accepts_unsigned and reader.commit_id == reader.keys.signing_id != "unsigned"
    fetched = site.fetch(reader)
    assert fetched is not None and fetched.key_id == "unsigned" and fetched.bytes == site.built.size
    site.assert_installed(site.commit().read_bytes())


def test_a_required_signature_refuses_unsigned_entries(site, logs):
    site.cache("builder").publish(site.built)
    reader = site.cache(signing_key={"env": "CACHE_KEY"}, mode="read-only")
    assert not reader.accepts_unsigned and not logs.events("remote_signature_optional")
    assert site.fetch(reader) is None
    site.assert_not_installed()
    untrusted = logs.events("remote_untrusted")
    assert [r.getMessage() for r in untrusted] == [
        f"remote cache: file://{site.entry} has only commit records this host does not trust ('unsigned'); "
        "building det locally (a key rotation? add the key to remote.trusted_keys)"]
    assert untrusted[0].model_name == "det" and untrusted[0].levelno == logging.WARNING


def test_an_hmac_key_on_a_read_only_host_is_named_once(site, logs):
    block = {"signing_key": {"env": "CACHE_KEY", "id": "h1"},
             "trusted_keys": [{"id": "h2", "env": "OTHER_KEY"}], "mode": "read-only"}
    site.cache(**block)
    site.cache(**block)
    lines = logs.events("remote_hmac_reader")
    assert [r.getMessage() for r in lines] == [
        f"remote cache {site.url}: this read-only host holds the HMAC key h1 (env CACHE_KEY), and with HMAC every "
        "verifier can sign: whoever controls this host can forge entries for the whole fleet; give readers an "
        "Ed25519 public key instead (signing_key: {algorithm: ed25519, public_key: ...})"]
    assert lines[0].levelno == logging.WARNING


def test_an_hmac_key_is_named_even_behind_an_ed25519_key(site, logs):
    ed = site.keys("ed")
    site.cache(signing_key=ed.reader, trusted_keys=[{"id": "hm", "env": "OTHER_KEY"}], mode="read-only")
    assert [r.getMessage().split(", and with")[0] for r in logs.events("remote_hmac_reader")] == [
        f"remote cache {site.url}: this read-only host holds the HMAC key hm (env OTHER_KEY)"]


@pytest.mark.parametrize("setup", ["hmac read-write", "ed25519 read-only"])
def test_no_hmac_warning_where_the_key_cannot_forge_more_than_the_host_may(site, logs, setup):
    if setup == "hmac read-write":  # it signs anyway
        site.cache(signing_key={"env": "CACHE_KEY"})
    else:  # a public key only verifies
        site.cache(signing_key=site.keys("ed").reader, mode="read-only")
    assert logs.warnings() == []


@pytest.mark.parametrize("kind, block", [
    ("unsigned", {}),
    ("signature_optional", {"signing_key": {"env": "CACHE_KEY"}, "require_signature": False}),
    ("hmac_reader", {"signing_key": {"env": "CACHE_KEY"}, "mode": "read-only"}),
])
def test_a_run_that_gave_a_warning_does_not_repeat_it(site, logs, kind, block):
    site.cache(run=RunState(1.0, {kind}), **block)
    assert logs.warnings() == []
    site.cache(run=RunState(1.0), **block)
    assert len(logs.warnings()) == 1


def test_a_run_is_one_process_and_one_config(site, logs):
    config = site.config()
    state = run_state(config)
    assert run_state(config) is state and state.wait_left_s == 1.0 and state.warned == set()
    assert run_state(site.config("other")) is not state  # another corpus.yaml
    moved = parse_remote_config({"url": f"file://{site.tmp / 'elsewhere'}"}, site.tmp / "a" / "corpus.yaml")
    assert run_state(moved) is not state
    RemoteCache(config, RemoteStore.open(config), None)
    assert state.warned == {"unsigned"} and len(logs.warnings()) == 1
    pid = os.fork()  # a forked doit worker starts its own run, so it warns again
    if pid == 0:
        try:
            RemoteCache(config, RemoteStore.open(config), None)
            os._exit(0 if len(logs.warnings()) == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    RemoteCache(config, RemoteStore.open(config), None)
    assert len(logs.warnings()) == 1


def test_make_remote_cache_wires_a_file_remote_from_corpus_yaml(site, logs):
    keys = site.keys("fleet")
    folder = site.tmp / "host"
    folder.mkdir()
    spec = {**DEFAULT_BACKBONES[0], "onnx": str(CORPUS / "models" / "det.onnx")}
    path = write_corpus_yaml(folder, [spec], remote={"url": site.url, "signing_key": keys.builder, "timeout_s": 2})
    cache = make_remote_cache(load_config(path))
    assert isinstance(cache, RemoteCache) and isinstance(cache.store, LocalRemoteStore)
    assert cache.commit_id == "fleet" and not cache.accepts_unsigned
    assert repr(cache) == f"RemoteCache({site.url!r}, mode=read-write, keys=KeyRing(signs='fleet', trusts=['fleet']))"
    cache.publish(site.built)
    record = site.commit("fleet").read_bytes()
    body, algorithm, key_id, _ = split_record(record)
    assert (body, algorithm, key_id) == (site.body(), "ed25519", "fleet")
    assert logs.warnings() == []


# --- a fetch that works ---------------------------------------------------------------------------

def test_a_published_entry_is_installed_byte_for_byte(site, logs):
    keys = site.keys("fleet")
    site.cache("builder", signing_key=keys.builder).publish(site.built)
    record = site.commit("fleet").read_bytes()
    assert site.objects() == {
        str(site.engine_part.relative_to(site.root)): site.built.path.read_bytes(),
        str(site.manifest_part.relative_to(site.root)): site.manifest_blob(),
        str(site.commit("fleet").relative_to(site.root)): record,
    }
    line = upload_line(logs)
    assert line.getMessage() == f"remote cache: uploaded {site.name}" and line.levelno == logging.INFO
    assert (line.engine, line.uploaded, line.attempts, line.key_id) == (site.name, True, 1, "fleet")
    before = site.objects()
    reader = site.cache(signing_key=keys.reader, mode="read-only")
    fetched = site.fetch(reader)
    assert (fetched.bytes, fetched.key_id) == (site.built.size, "fleet") and 0 <= fetched.seconds < 60
    site.assert_installed(record)
    assert site.objects() == before  # a read-only host writes nothing: no lease, no _seen.json
    assert logs.warnings() == []


def test_a_read_write_host_marks_its_host_key_seen_once_per_cache(site, logs):
    site.cache("builder").publish(site.built)
    reader = site.cache()
    started = time.time()
    assert site.fetch(reader) is not None
    seen = site.root / site.host_key / "_seen.json"
    document = json.loads(seen.read_bytes())
    assert list(document) == ["seen"] and started - 1 <= document["seen"] <= time.time() + 1
    tag = seen.stat().st_ino
    assert site.fetch(reader, host="c") is not None
    assert seen.stat().st_ino == tag  # not written again by the same cache
    assert site.fetch(site.cache(), host="d") is not None
    assert seen.stat().st_ino != tag  # a new cache (the next task) marks it again
    assert not site.lease.exists()


def test_a_miss_on_a_read_only_host_needs_a_build_and_writes_nothing(site, logs):
    reader = site.cache(mode="read-only")
    assert site.fetch(reader) is None
    assert site.objects() == {} and logs.warnings() == [UNSIGNED_LINE.format(url=site.url)]
    site.assert_not_installed()
    reader.publish(site.built)
    assert site.objects() == {}


# --- transport failures: the remote goes off for the run -----------------------------------------

def test_a_dead_remote_turns_the_cache_off_for_the_run(site, logs):
    site.root.write_bytes(b"not a folder")  # the mount is gone: the path is a file
    reader = site.cache(mode="read-only")
    assert site.fetch(reader) is None
    reason = (f"fetch of file://{site.entry} failed (NotADirectoryError: [Errno 20] Not a directory: "
              f"'{site.root}')")
    assert reader.disabled_reason == reason
    down = logs.events("remote_unavailable")
    assert [r.getMessage() for r in down] == [f"remote cache {site.url}: {reason}; building locally, {HINT}"]
    assert (down[0].model_name, down[0].reason, down[0].levelno) == ("det", reason, logging.WARNING)
    site.root.unlink()
    site.cache("builder").publish(site.built)  # the remote is back, with the entry
    before = site.objects()
    assert site.fetch(reader) is None  # but this run does not look again
    site.assert_not_installed()
    assert site.objects() == before and len(logs.events("remote_unavailable")) == 1


def test_the_runs_verdict_holds_an_hour_for_its_later_caches_then_they_try_again(site, logs, clock, monkeypatch):
    """A later task of the run (a new RemoteCache, the same config) finds the remote off without calling
    it, for RETRY_AFTER_S after the failure (exactly an hour still counts); after that it tries again."""
    monkeypatch.setattr(sys.modules[RunState.__module__], "time", clock)
    first, store = site.scripted(mode="read-only")
    store.around["read"] = fail(transport(ConnectionResetError("reset by peer")))
    assert site.fetch(first) is None
    reason = f"fetch of file://{site.entry} failed (ConnectionResetError: reset by peer)"
    site.cache("builder").publish(site.built)  # the remote is back, with the entry
    clock.now += RETRY_AFTER_S
    later, later_store = site.scripted(mode="read-only")
    assert later.run is first.run and later.disabled_reason == reason
    assert site.fetch(later) is None and later_store.calls == []
    clock.now += 0.5
    again, again_store = site.scripted(mode="read-only")
    assert again.disabled_reason is None
    assert site.fetch(again) is not None and again_store.count("read") >= 1
    site.assert_installed(site.commit().read_bytes())
    assert len(logs.events("remote_unavailable")) == 1


def test_a_cache_held_past_the_hour_tries_the_remote_again_too(site, logs, clock, monkeypatch):
    """A process that keeps one compiler (build_engine_compiler) for its life: the cache that met the
    failure is itself back on after RETRY_AFTER_S, as the run's new caches are."""
    monkeypatch.setattr(sys.modules[RunState.__module__], "time", clock)
    held, store = site.scripted(mode="read-only")
    store.around["read"] = fail(transport(ConnectionResetError("reset by peer")), times=1)
    assert site.fetch(held) is None and held.disabled_reason is not None
    site.cache("builder").publish(site.built)
    assert site.fetch(held) is None and store.count("read") == 1  # off: not asked again
    clock.now += RETRY_AFTER_S + 0.5
    assert held.disabled_reason is None
    assert site.fetch(held) is not None
    site.assert_installed(site.commit().read_bytes())


def test_a_read_write_host_fails_at_marking_itself_seen(site, logs):
    site.root.write_bytes(b"not a folder")
    cache = site.cache()
    assert site.fetch(cache) is None
    assert cache.disabled_reason == (f"fetch of file://{site.entry} failed (FileExistsError: [Errno 17] File exists: "
                                     f"'{site.root}')")
    site.root.unlink()  # back, but this run does not use it any more
    cache.publish(site.built)
    assert not site.root.exists() and len(logs.events("remote_unavailable")) == 1


def test_a_hung_mount_is_reported_as_no_progress_within_timeout(site, logs):
    cache, store = site.scripted(mode="read-only", timeout_s=0.2)
    store.around["read"] = lambda path, call: store._bounded(lambda ticker: time.sleep(1.0), 0.2, "read")
    assert site.fetch(cache) is None
    assert cache.disabled_reason == f"fetch of file://{site.entry} failed (no progress for timeout_s 0.2 s)"


@pytest.mark.parametrize("error, shown", [
    (transport(OSError("bad \x1b[2J gateway\nsecond line")), "OSError: bad \\x1b[2J gateway"),
    (transport(ConnectionError("r\u00e9seau coup\u00e9")), "ConnectionError: r\\xe9seau coup\\xe9"),
    (transport(OSError("x" * 300)), "OSError: " + "x" * 200),
    (transport(OSError()), "OSError"),
    (transport(OSError("share \\\\srv\\engines unreachable")), "OSError: share \\\\srv\\engines unreachable"),
    (transport(OSError('a "quoted" it\'s')), 'OSError: a "quoted" it\'s'),
    (RemoteUnavailable("plain words"), "RemoteUnavailable: plain words"),
    (RemoteUnavailable(), "RemoteUnavailable"),
    (transport(TimeoutError("read timed out")), "no progress for timeout_s 2 s"),
])
def test_a_transport_failure_is_summarised_with_the_servers_words_escaped(site, logs, error, shown):
    cache, store = site.scripted(mode="read-only")
    store.around["read"] = fail(error)
    assert site.fetch(cache) is None
    assert cache.disabled_reason == f"fetch of file://{site.entry} failed ({shown})"
    assert store.count("read") == 1
    assert site.fetch(cache) is None and store.count("read") == 1  # off: not asked again


# --- which record is trusted ----------------------------------------------------------------------

def _two_key_fleet(site):
    alpha, beta = site.keys("alpha"), site.keys("beta")
    site.cache("builder-a", signing_key=alpha.builder).publish(site.built)
    site.cache("builder-b", signing_key=beta.builder).publish(site.built)
    reader = site.cache(signing_key=alpha.builder, trusted_keys=[beta.reader])
    return alpha, beta, reader


def test_the_own_key_is_read_first_then_the_trusted_ones(site, logs):
    alpha, beta, reader = _two_key_fleet(site)
    assert site.fetch(reader).key_id == "alpha"
    site.assert_installed(site.commit("alpha").read_bytes())
    site.commit("alpha").unlink()
    fetched = site.fetch(reader, host="c")
    assert fetched.key_id == "beta"
    site.assert_installed(site.commit("beta").read_bytes(), host="c")
    assert logs.events("remote_discard") == []


def test_a_bad_record_of_the_own_key_falls_back_to_a_trusted_one(site, logs):
    alpha, beta, reader = _two_key_fleet(site)
    record = site.commit("alpha").read_bytes()
    site.commit("alpha").write_bytes(record.replace(b" ed25519 alpha ", b" ed25519 beta "))
    fetched = site.fetch(reader)
    assert fetched.key_id == "beta" and logs.events("remote_discard") == []
    site.assert_installed(site.commit("beta").read_bytes())


def test_when_no_record_verifies_the_first_keys_problem_is_reported_and_only_the_own_record_is_repaired(site, logs):
    alpha, beta, reader = _two_key_fleet(site)
    good_alpha = site.commit("alpha").read_bytes()
    site.commit("alpha").write_bytes(good_alpha.replace(b" ed25519 alpha ", b" ed25519 beta "))
    bad_beta = site.commit("beta").read_bytes().replace(b"\nengine ", b"\nengine  ", 1)
    site.commit("beta").write_bytes(bad_beta)
    assert site.fetch(reader) is None
    discard = logs.events("remote_discard")
    reason = "commit record of key 'alpha' is signed by 'beta'"
    assert [r.getMessage() for r in discard] == [
        f"remote cache: discarded file://{site.entry} ({reason}); building det locally"]
    assert (discard[0].reason, discard[0].model_name, discard[0].levelno) == (reason, "det", logging.WARNING)
    site.assert_not_installed()
    reader.publish(site.built)  # the local build: the own record is replaced, the other key's is never touched
    assert site.commit("alpha").read_bytes() == good_alpha
    assert site.commit("beta").read_bytes() == bad_beta
    assert upload_line(logs).uploaded is True


def test_a_key_limited_to_other_host_keys_is_not_trusted_here(site, logs):
    fleet = site.keys("fleet")
    site.cache("builder", signing_key=fleet.builder).publish(site.built)
    reader = site.cache(trusted_keys=[{**fleet.reader, "host_key_prefixes": ["elsewhere-"]}], mode="read-only")
    assert site.fetch(reader) is None
    assert logs.warnings() == [
        f"remote cache: file://{site.entry} has only commit records this host does not trust ('fleet'); building det "
        "locally (a key rotation? add the key to remote.trusted_keys)"]


def test_the_untrusted_note_names_at_most_four_records_sorted(site, logs):
    site.cache("builder").publish(site.built)
    record = site.commit().read_bytes()
    for name in ("e5", "b2", "d4", "a1", "c3"):
        site.commit(name).write_bytes(record)
    site.commit().unlink()
    reader = site.cache(signing_key={"env": "CACHE_KEY"}, mode="read-only")
    assert site.fetch(reader) is None
    assert logs.events("remote_untrusted")[0].getMessage() == (
        f"remote cache: file://{site.entry} has only commit records this host does not trust ('a1', 'b2', 'c3', "
        "'d4'); building det locally (a key rotation? add the key to remote.trusted_keys)")


def test_the_untrusted_note_cuts_a_long_planted_name(site, logs):
    site.cache("builder").publish(site.built)
    site.commit().rename(site.commit("k" * 70))
    assert site.fetch(site.cache(signing_key={"env": "CACHE_KEY"}, mode="read-only")) is None
    assert f"does not trust ('{'k' * 64}'...); building" in logs.events("remote_untrusted")[0].getMessage()


def test_no_note_when_the_entry_is_absent_or_its_commit_folder_cannot_be_listed(site, logs):
    fleet = site.keys("fleet")
    block = {"trusted_keys": [{**fleet.reader, "host_key_prefixes": ["elsewhere-"]}], "mode": "read-only"}
    assert site.fetch(site.cache(**block)) is None
    outside = site.tmp / "outside"
    (outside / "commit").mkdir(parents=True)
    (outside / "commit" / "fleet").write_bytes(b"x")
    site.entry.mkdir(parents=True)
    (site.entry / "commit").symlink_to(outside / "commit")
    assert site.fetch(site.cache(**block), host="c") is None
    assert logs.warnings() == []
    site.assert_not_installed()
    site.assert_not_installed("c")


def test_an_unsigned_record_that_carries_a_signature_is_discarded(site, logs):
    fleet = site.keys("fleet")
    site.cache("builder", signing_key=fleet.builder).publish(site.built)
    site.commit().write_bytes(site.commit("fleet").read_bytes())
    site.commit("fleet").unlink()
    assert site.fetch(site.cache(mode="read-only")) is None
    assert [r.reason for r in logs.events("remote_discard")] == ["unsigned commit record carries a signature"]


def test_a_record_copied_to_another_entry_is_discarded(site, logs):
    site.cache("builder").publish(site.built)
    expected = BuildInputs(**{**site.built.inputs, "onnx_sha256": "0" * 64})
    moved = site.entry.parent / inputs_digest(expected)
    shutil.copytree(site.entry, moved)
    assert site.fetch(site.cache(mode="read-only"), expected=expected) is None
    assert [r.getMessage() for r in logs.events("remote_discard")] == [
        f"remote cache: discarded file://{moved} (commit record names another entry (moved or copied)); building det "
        "locally"]


@pytest.mark.parametrize("field", ["host_key", "engine_name", "inputs_digest"])
def test_a_record_naming_another_entry_in_any_field_is_discarded(site, logs, field):
    site.cache("builder").publish(site.built)
    other = {"host_key": "other-host", "engine_name": "other.engine", "inputs_digest": "f" * 32}[field]
    site.plant(**{field: other})
    assert site.fetch(site.cache(mode="read-only")) is None
    assert [r.reason for r in logs.events("remote_discard")] == ["commit record names another entry (moved or copied)"]


def test_an_entry_of_another_namespace_is_discarded(site, logs):
    site.cache("builder", namespace="staging").publish(site.built)
    assert site.fetch(site.cache(mode="read-only", namespace="prod")) is None
    assert [r.reason for r in logs.events("remote_discard")] == [
        "entry belongs to namespace 'staging', this host's is 'prod'"]
    assert site.fetch(site.cache(mode="read-only", namespace="staging"), host="c") is not None


def test_an_oversized_commit_record_is_discarded_then_replaced(site, logs):
    site.cache("builder").publish(site.built)
    good = site.commit().read_bytes()
    site.commit().write_bytes(b"x" * 4097)
    reader = site.cache()
    assert site.fetch(reader) is None
    assert [r.reason for r in logs.events("remote_discard")] == ["commit record 'unsigned' larger than 4096 bytes"]
    reader.publish(site.built)
    assert site.commit().read_bytes() == good and upload_line(logs).uploaded is True
    assert site.fetch(site.cache(mode="read-only"), host="c") is not None


def test_an_unreadable_record_repaired_by_another_host_meanwhile_is_kept(site, logs, clock):
    site.cache("builder").publish(site.built)
    good = site.commit().read_bytes()
    site.commit().write_bytes(b"x" * 4097)
    reader = site.cache()
    assert site.fetch(reader) is None
    site.commit().write_bytes(good)  # another host repaired it while this one built
    logs.records.clear()
    reader.publish(site.built)
    assert upload_line(logs).uploaded is False and reader.disabled_reason is None
    assert site.commit().read_bytes() == good


def test_a_fifo_as_commit_record_is_discarded_without_blocking(site, logs):
    site.cache("builder").publish(site.built)
    site.commit().unlink()
    os.mkfifo(site.commit())
    assert site.fetch(site.cache(mode="read-only")) is None
    assert [r.reason for r in logs.events("remote_discard")] == [
        "commit record 'unsigned' is not a regular file (a FIFO, device or folder); not read"]


# --- leases: each engine built once in the fleet --------------------------------------------------

def test_a_miss_claims_the_lease_and_publish_releases_it(site, logs):
    cache = site.cache()
    engine = site.engine_path("b")
    with engine_lock(engine):
        assert cache.fetch(engine, "det", site.inputs) is None
        lease = lease_of(site.lease)
        assert lease["owner"].split(":")[1] == str(os.getpid()) and lease["expires"] > time.time()
        assert list(cache._leases) == [site.name]
    cache.publish(site.built)
    assert not site.lease.exists() and cache._leases == {}
    assert site.commit().is_file() and upload_line(logs).uploaded is True


def test_a_failed_upload_still_releases_the_lease(site, logs):
    cache, store = site.scripted()
    engine = site.engine_path("b")
    with engine_lock(engine):
        assert cache.fetch(engine, "det", site.inputs) is None
        assert site.lease.exists()
    store.around["put_file_exclusive"] = fail(RemoteContentError("is not a regular file"))
    cache.publish(site.built)
    assert not site.lease.exists()
    assert [r.getMessage() for r in logs.events("remote_upload_skipped")] == [
        f"remote cache: upload of {site.name} skipped ('is not a regular file'); the local engine is published"]
    assert cache.disabled_reason is None and store.count("put_file_exclusive") == 1


def test_an_entry_committed_while_the_lease_was_claimed_is_installed(site, logs):
    cache, store = site.scripted()
    builder = site.cache("builder")

    def meanwhile(path, call):  # the previous builder commits and releases just before our claim
        if path.endswith("/lease") and not site.commit().exists():
            builder.publish(site.built)
        return call()

    store.around["create_exclusive"] = meanwhile
    fetched = site.fetch(cache)
    assert fetched is not None and fetched.key_id == "unsigned"
    site.assert_installed(site.commit().read_bytes())
    assert not site.lease.exists() and cache._leases == {}
    assert store.count("create_exclusive", "/lease") == 1


@pytest.mark.parametrize("mode", ["read-write", "read-only"])
def test_a_host_waits_for_another_hosts_build(site, logs, mode):
    site.lease.parent.mkdir(parents=True)
    site.lease.write_bytes(json.dumps({"owner": "builder-b:42:abc", "expires": time.time() + 30}).encode())
    builder = site.cache("builder")
    cache, store = site.scripted(mode=mode, wait_s=20)

    def published_after_three_polls(path, call):
        found = call()
        if path.endswith("/lease") and store.count("read", "/lease") == 3:  # it still held the lease at this read
            builder.publish(site.built)
            site.lease.unlink()
        return found

    store.around["read"] = published_after_three_polls
    logs.records.clear()
    fetched = site.fetch(cache)
    assert fetched is not None
    site.assert_installed(site.commit().read_bytes())
    waits = logs.events("remote_wait")
    assert [r.getMessage() for r in waits] == [
        f"remote cache: 'builder-b:42:abc' is building {site.name}; waiting for its upload"]
    assert waits[0].engine == site.name and waits[0].levelno == logging.INFO
    assert logs.warnings() == []


@pytest.mark.parametrize("lease_s, polls", [(0.5, (40, 41)), (1.25, (32, 32)), (5.0, (8, 8)), (60.0, (2, 2))])
def test_the_wait_budget_bounds_a_run_and_is_spent_once(site, logs, clock, lease_s, polls):
    site.lease.parent.mkdir(parents=True)
    site.lease.write_bytes(json.dumps({"owner": "builder-b:42:abc", "expires": time.time() + 30}).encode())
    cache = site.cache(wait_s=2, lease_s=lease_s)
    assert site.fetch(cache) is None
    assert polls[0] <= len(clock.slept) <= polls[1]  # polls every lease_s/20, within 0.05-1 s
    assert abs(sum(clock.slept) - 2.0) < 1e-6
    budget = logs.events("remote_wait_budget")
    assert [r.getMessage() for r in budget] == [
        f"remote cache {site.url}: waited 2 s in total for other hosts' builds; building {site.name} and the rest of "
        "this run locally without waiting (raise remote.wait_s if builds take longer)"]
    assert budget[0].engine == site.name and budget[0].levelno == logging.WARNING
    assert lease_of(site.lease)["owner"] == "builder-b:42:abc"
    clock.slept.clear()
    assert site.fetch(site.cache(wait_s=2, lease_s=lease_s), host="c") is None  # the same run: no more waiting
    assert sum(clock.slept) == 0 and len(logs.events("remote_wait_budget")) == 1
    assert len(logs.events("remote_wait")) == 2


def test_a_given_run_state_carries_the_budget(site, logs, clock):
    site.lease.parent.mkdir(parents=True)
    site.lease.write_bytes(json.dumps({"owner": "b:1:x", "expires": time.time() + 30}).encode())
    assert site.fetch(site.cache(run=RunState(0.1), wait_s=50)) is None
    assert abs(sum(clock.slept) - 0.1) < 1e-6
    assert site.fetch(site.cache(run=RunState(0.0, {"wait_budget"}), wait_s=50), host="c") is None
    assert len(logs.events("remote_wait_budget")) == 1


def test_an_expired_lease_is_taken_over(site, logs):
    site.lease.parent.mkdir(parents=True)
    site.lease.write_bytes(json.dumps({"owner": "dead-host:7:abc", "expires": time.time() - 60}).encode())
    cache, store = site.scripted()
    engine = site.engine_path("b")
    with engine_lock(engine):
        assert cache.fetch(engine, "det", site.inputs) is None
        assert lease_of(site.lease)["owner"].split(":")[1] == str(os.getpid())
    assert f"remote cache: lease of {site.name} by 'dead-host:7:abc' expired or invalid; taking over" in \
        logs.lines(logging.INFO)
    assert store.count("delete_if_match", "/lease") == 1 and store.count("delete", "/lease") == 0
    cache.publish(site.built)
    assert not site.lease.exists() and logs.warnings() == [UNSIGNED_LINE.format(url=site.url)]


def test_an_expired_lease_renewed_meanwhile_is_not_taken(site, logs, clock):
    site.lease.parent.mkdir(parents=True)
    site.lease.write_bytes(json.dumps({"owner": "slow-host:7:abc", "expires": time.time() - 60}).encode())
    renewed = json.dumps({"owner": "slow-host:7:abc", "expires": time.time() + 30}).encode()
    cache, store = site.scripted(wait_s=0.2)

    def renew_first(path, call):  # the holder renews between our read and our conditional delete
        time.sleep(0.01)
        site.lease.write_bytes(renewed)
        return call()

    store.around["delete_if_match"] = renew_first
    assert site.fetch(cache) is None
    assert site.lease.read_bytes() == renewed
    assert len(logs.events("remote_wait")) == 1 and len(logs.events("remote_wait_budget")) == 1


def test_an_unreadable_lease_is_deleted_without_a_tag_and_taken_over(site, logs):
    site.lease.parent.mkdir(parents=True)
    site.lease.write_bytes(b"x" * 5000)  # over the lease size limit: invalid, and no ETag to match
    cache, store = site.scripted()
    engine = site.engine_path("b")
    with engine_lock(engine):
        assert cache.fetch(engine, "det", site.inputs) is None
        assert lease_of(site.lease)["owner"].split(":")[1] == str(os.getpid())
    assert f"remote cache: lease of {site.name} by '?' expired or invalid; taking over" in logs.lines(logging.INFO)
    assert store.count("delete_if_match") == 0 and store.count("delete", "/lease") == 1
    cache.publish(site.built)


def test_a_read_only_host_never_takes_a_lease_over(site, logs):
    site.lease.parent.mkdir(parents=True)
    planted = json.dumps({"owner": "dead-host:7:abc", "expires": time.time() - 60}).encode()
    site.lease.write_bytes(planted)
    cache, store = site.scripted(mode="read-only")
    assert site.fetch(cache) is None
    assert site.lease.read_bytes() == planted and logs.lines(logging.INFO) == []
    assert store.count("read", "/lease") == 1 and store.count("create_exclusive") == 0


def test_a_lease_released_between_our_claim_and_our_read_is_claimed_again(site, logs):
    cache, store = site.scripted()
    other = json.dumps({"owner": "quick-host:1:abc", "expires": time.time() + 30}).encode()

    def held_then_released(path, call):
        if path.endswith("/lease") and store.count("create_exclusive", "/lease") == 1:
            site.lease.parent.mkdir(parents=True, exist_ok=True)
            site.lease.write_bytes(other)
            try:
                return call()  # refused: the other host holds it...
            finally:
                site.lease.unlink()  # ...and releases it before we read it
        return call()

    store.around["create_exclusive"] = held_then_released
    engine = site.engine_path("b")
    with engine_lock(engine):
        assert cache.fetch(engine, "det", site.inputs) is None
        assert lease_of(site.lease)["owner"].split(":")[1] == str(os.getpid())
    assert store.count("create_exclusive", "/lease") == 2 and logs.events("remote_wait") == []
    cache.publish(site.built)


NO_CONDITIONAL = ("remote cache {url} refuses conditional writes ('hard links refused (Operation not permitted)'); "
                  "hosts may build the same engine concurrently and an upload race is settled by the last writer")


def _no_links(store: Scripted) -> None:
    """A mount that refuses hard links: every conditional call is refused."""
    refused = ConditionalWriteUnsupported("hard links refused (Operation not permitted)")
    for method in ("create_exclusive", "put_file_exclusive", "delete_if_match"):
        store.around[method] = fail(refused)


def test_a_store_without_conditional_writes_builds_without_a_lease_and_uploads_plainly(site, logs):
    cache, store = site.scripted()
    _no_links(store)
    assert site.fetch(cache) is None
    assert not site.lease.exists() and cache._leases == {}
    lines = logs.events("remote_no_conditional")
    assert [r.getMessage() for r in lines] == [NO_CONDITIONAL.format(url=site.url)]
    assert lines[0].levelno == logging.WARNING
    assert site.fetch(cache, host="c") is None
    assert store.count("create_exclusive") == 1  # never retried by this cache
    cache.publish(site.built)
    assert store.count("put_file_exclusive") == 0 and store.count("create_exclusive") == 1
    assert store.count("put_file") == 1 and store.count("put_bytes", "/commit/unsigned") == 1
    assert not [line for line in logs.lines(logging.DEBUG) if "already present" in line]
    assert site.commit().read_bytes() == unsigned_record(site.body())
    assert site.engine_part.read_bytes() == site.built.path.read_bytes()
    assert site.manifest_part.read_bytes() == site.manifest_blob()
    assert upload_line(logs).uploaded is True
    again, store2 = site.scripted()  # another cache of the same run: refused too, but warned once
    _no_links(store2)
    elsewhere = BuildInputs(**{**site.built.inputs, "onnx_sha256": "2" * 64})
    assert site.fetch(again, host="d", expected=elsewhere) is None
    assert store2.count("create_exclusive") == 1 and len(logs.events("remote_no_conditional")) == 1


def test_a_run_that_was_told_about_conditional_writes_is_not_told_again(site, logs):
    cfg = site.config()
    store = Scripted(cfg)
    _no_links(store)
    cache = RemoteCache(cfg, store, None, RunState(1.0, {"no_conditional"}))
    assert site.fetch(cache) is None and logs.events("remote_no_conditional") == []
    assert store.count("create_exclusive") == 1 and not site.lease.exists()


def test_a_long_refusal_is_cut_at_200_characters(site, logs):
    cache, store = site.scripted()
    store.around["create_exclusive"] = fail(ConditionalWriteUnsupported("NotImplemented " + "x" * 300))
    assert site.fetch(cache) is None
    assert logs.events("remote_no_conditional")[0].getMessage() == (
        f"remote cache {site.url} refuses conditional writes ('NotImplemented {'x' * 185}'...); hosts may build the "
        "same engine concurrently and an upload race is settled by the last writer")


def test_without_conditional_writes_an_expired_lease_is_deleted_plainly(site, logs):
    site.lease.parent.mkdir(parents=True)
    site.lease.write_bytes(json.dumps({"owner": "dead-host:7:abc", "expires": time.time() - 60}).encode())
    cache, store = site.scripted()
    store.around["delete_if_match"] = fail(ConditionalWriteUnsupported("hard links refused (Operation not permitted)"))
    assert site.fetch(cache) is None
    assert not site.lease.exists() and store.count("delete", "/lease") == 1
    assert store.count("create_exclusive", "/lease") == 1  # claimed once, before the refusal was known
    assert [r.getMessage() for r in logs.events("remote_no_conditional")] == [NO_CONDITIONAL.format(url=site.url)]


def test_without_conditional_writes_present_parts_are_not_rewritten(site, logs):
    site.cache("builder").publish(site.built)
    site.commit().unlink()  # the builder died before its commit record
    before = site.tags()
    cache, store = site.scripted()
    _no_links(store)
    cache.publish(site.built)
    after = site.tags()
    assert {k: v for k, v in after.items() if "/commit/" not in k} == before
    assert site.commit().read_bytes() == unsigned_record(site.body()) and upload_line(logs).uploaded is True
    assert f"remote cache: engine part of {site.name} already present" in logs.lines(logging.DEBUG)
    assert [r.getMessage() for r in logs.events("remote_no_conditional")] == [NO_CONDITIONAL.format(url=site.url)]
    logs.records.clear()
    site.cache("c").publish(site.built)
    assert upload_line(logs).uploaded is False


def test_without_conditional_writes_a_wrong_part_is_replaced(site, logs):
    site.cache("builder").publish(site.built)
    site.commit().unlink()
    site.engine_part.write_bytes(b"truncated")
    site.manifest_part.write_bytes(b"{}")
    cache, store = site.scripted()
    _no_links(store)
    cache.publish(site.built)
    assert site.engine_part.read_bytes() == site.built.path.read_bytes()
    assert site.manifest_part.read_bytes() == site.manifest_blob()
    assert site.fetch(site.cache(mode="read-only")) is not None


def test_a_refusal_first_met_at_a_small_part_is_named(site, logs):
    cache, store = site.scripted()
    store.around["create_exclusive"] = fail(ConditionalWriteUnsupported("hard links refused (Operation not permitted)"))
    cache.publish(site.built)
    assert [r.getMessage() for r in logs.events("remote_no_conditional")] == [NO_CONDITIONAL.format(url=site.url)]
    assert store.count("put_file_exclusive") == 1 and store.count("create_exclusive") == 1
    assert site.commit().read_bytes() == unsigned_record(site.body()) and upload_line(logs).uploaded is True


def _with_manifest_of(site, size: int) -> EngineCacheEntry:
    """A build whose manifest, as uploaded, is exactly ``size`` bytes (padded in its build notes)."""
    def build(pad: int, where: str) -> EngineCacheEntry:
        return other_build(site, site.tmp / where, b"plan" * 100, edit=lambda d: d["build"]["notes"].update(pad="p" * pad))

    def shared(entry):
        return len(shared_manifest(manifest_path_for(entry.path).read_bytes()))

    first = build(100, "pad-100")
    entry = build(100 + size - shared(first), "pad-exact")
    assert shared(entry) == size
    return entry


@pytest.mark.parametrize("size", [None, 4096])
def test_without_conditional_writes_an_oversized_object_at_a_small_parts_name_stops_the_upload(site, logs, size):
    entry = site.built if size is None else _with_manifest_of(site, size)
    blob = shared_manifest(manifest_path_for(entry.path).read_bytes())
    assert len(blob) <= 4096
    part = site.entry / "manifest" / sha(blob)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 5000)  # planted under the part's name: never read whole
    cache, store = site.scripted()
    _no_links(store)
    cache.publish(entry)
    assert [r.getMessage() for r in logs.events("remote_upload_skipped")] == [
        f"remote cache: upload of {site.name} skipped ('larger than 4096 bytes'); the local engine is published"]
    assert part.read_bytes() == b"x" * 5000 and not site.commit().exists()


def test_without_conditional_writes_the_loser_of_a_race_reports_already_has(site, logs):
    rival = site.cache("rival")
    cache, store = site.scripted()
    _no_links(store)

    def rival_first(path, call):  # the other host of the same key commits while we upload the engine
        if not site.commit().exists():
            rival.publish(site.built)
        return call()

    store.around["put_file"] = rival_first
    cache.publish(site.built)
    assert [r.uploaded for r in logs.events("remote_upload")] == [True, False]
    assert site.commit().read_bytes() == unsigned_record(site.body())


def test_without_conditional_writes_a_large_present_manifest_is_not_rewritten(site, logs):
    big = other_build(site, site.tmp / "big", b"plan" * 300, edit=lambda d: d["build"]["notes"].update(log="n" * 6000))
    builder = site.cache("builder")
    builder.publish(big)
    manifest = next((site.entry / "manifest").iterdir())
    assert manifest.stat().st_size > 4096
    site.commit().unlink()
    before = (manifest.stat().st_ino, manifest.stat().st_mtime_ns)
    cache, store = site.scripted()
    _no_links(store)
    logs.records.clear()
    cache.publish(big)
    assert (manifest.stat().st_ino, manifest.stat().st_mtime_ns) == before
    assert upload_line(logs).uploaded is True and site.commit().is_file()


# --- what a fetch checks, in order ---------------------------------------------------------------

def _discarded(logs) -> list[str]:
    return [r.reason for r in logs.events("remote_discard")]


@pytest.mark.parametrize("limit, ok", [(0, True), (-1, False)])
def test_an_engine_over_max_engine_bytes_is_not_downloaded(site, logs, limit, ok):
    site.cache("builder").publish(site.built)
    cache, store = site.scripted(mode="read-only", max_engine_bytes=site.built.size + limit)
    fetched = site.fetch(cache)
    assert (fetched is not None) is ok
    if not ok:
        assert _discarded(logs) == [f"engine is {site.built.size} bytes, over remote.max_engine_bytes "
                                    f"{site.built.size - 1}"]
        assert store.count("read", "/manifest/" + sha(site.manifest_blob())) == 0 and store.count("download") == 0


def _padded(blob: bytes, size: int) -> bytes:
    """The same JSON document, ``size`` bytes long (spaces before the final newline)."""
    return blob[:-1] + b" " * (size - len(blob)) + b"\n"


@pytest.mark.parametrize("size, ok", [(MIB, True), (MIB + 1, False)])
def test_a_manifest_over_one_mib_is_refused_unparsed(site, logs, size, ok):
    site.cache("builder").publish(site.built)
    manifest = _padded(site.manifest_blob(), size)
    record = site.plant(manifest)
    fetched = site.fetch(site.cache(mode="read-only"))
    if ok:
        assert fetched is not None
        site.assert_installed(record, manifest=manifest)
    else:
        assert fetched is None and _discarded(logs) == ["manifest part larger than 1048576 bytes"]


def test_a_missing_manifest_is_reported(site, logs):
    site.cache("builder").publish(site.built)
    site.manifest_part.unlink()
    assert site.fetch(site.cache(mode="read-only")) is None
    assert _discarded(logs) == ["manifest part is missing"]


def test_a_manifest_that_does_not_hash_to_its_name_is_discarded_then_replaced(site, logs):
    site.cache("builder").publish(site.built)
    good = site.objects()
    site.manifest_part.write_bytes(site.manifest_blob().replace(b"det", b"DET", 1))
    reader = site.cache()
    assert site.fetch(reader) is None
    assert _discarded(logs) == ["manifest part does not match its commit record"]
    reader.publish(site.built)  # the garbage part is deleted first, so the real one can be created
    assert {k: v for k, v in site.objects().items() if not k.endswith("_seen.json")} == good
    assert site.fetch(site.cache(mode="read-only"), host="c") is not None


def test_an_oversized_object_at_the_manifests_name_is_discarded_then_replaced(site, logs, clock):
    site.cache("builder").publish(site.built)
    good = site.objects()
    site.manifest_part.write_bytes(b"x" * (MIB + 1))  # planted under the name the record gives: never read whole
    reader = site.cache()
    assert site.fetch(reader) is None
    assert _discarded(logs) == ["manifest part larger than 1048576 bytes"]
    reader.publish(site.built)  # the oversized part is deleted first, so the real one can be created
    assert {k: v for k, v in site.objects().items() if not k.endswith("_seen.json")} == good
    assert reader.disabled_reason is None and upload_line(logs).uploaded is True
    assert logs.events("remote_upload_skipped") == [] and logs.events("remote_unavailable") == []
    assert site.fetch(site.cache(mode="read-only"), host="c") is not None


@pytest.mark.parametrize("blob, reason", [
    (b"not json", "manifest is not JSON"),
    (b"\xff\xfe\x00garbage", "manifest is not JSON"),
    (b"[" * 100000 + b"]" * 100000, "manifest is nested too deeply"),
    (b"[]", "manifest does not match this build: manifest missing or unreadable"),
    (b'{"schema_version": 1}', "manifest does not match this build: manifest has no inputs block"),
])
def test_a_manifest_that_is_not_a_manifest_is_discarded(site, logs, blob, reason):
    site.cache("builder").publish(site.built)
    site.plant(blob)
    assert site.fetch(site.cache(mode="read-only")) is None
    assert _discarded(logs) == [reason]
    site.assert_not_installed()


def _edited_manifest(site, edit) -> bytes:
    document = json.loads(site.manifest_blob())
    edit(document)
    return manifest_bytes(document)


def test_a_manifest_for_other_inputs_names_what_differs(site, logs):
    site.cache("builder").publish(site.built)
    site.plant(_edited_manifest(site, lambda d: d["inputs"].update(backend_version="0.0", backend="tvm")))
    assert site.fetch(site.cache(mode="read-only")) is None
    assert _discarded(logs) == [f"manifest does not match this build: backend changed: \"tvm\" -> \"onnxruntime\"; "
                                f"backend_version changed: \"0.0\" -> \"{site.inputs.backend_version}\""]


def test_a_long_reason_is_cut_at_300_characters(site, logs):
    site.cache("builder").publish(site.built)

    def many(document):
        document["inputs"]["build_settings"] = {f"setting_{i:02d}": "x" * 20 for i in range(20)}

    site.plant(_edited_manifest(site, many))
    assert site.fetch(site.cache(mode="read-only")) is None
    [line] = logs.events("remote_discard")
    assert len(line.reason) == 300 and line.reason.startswith("manifest does not match this build: build setting ")
    assert line.getMessage() == f"remote cache: discarded file://{site.entry} ({line.reason}); building det locally"


@pytest.mark.parametrize("edit", [
    lambda d: d["engine"].update(sha256="0" * 64),
    lambda d: d["engine"].update(file_name="other.engine"),
    lambda d: d["engine"].update(size=d["engine"]["size"] + 1),
    lambda d: d.update(engine="not a mapping"),
    lambda d: d.pop("engine"),
])
def test_a_manifest_describing_another_engine_is_discarded(site, logs, edit):
    site.cache("builder").publish(site.built)
    site.plant(_edited_manifest(site, edit))
    cache, store = site.scripted(mode="read-only")
    assert site.fetch(cache) is None
    assert _discarded(logs) == ["manifest describes another engine than its commit record"]
    assert store.count("download") == 0


Usage = namedtuple("Usage", "total used free")


@pytest.mark.parametrize("spare, ok", [(0, True), (-1, False)])
def test_a_download_needs_room_for_the_engine_and_a_margin(site, logs, monkeypatch, spare, ok):
    site.cache("builder").publish(site.built)
    engine = site.engine_path("b")
    free = site.built.size + (64 << 20) + spare
    seen = []

    def disk_usage(path):
        seen.append(Path(path))
        return Usage(1 << 40, 0, free)

    monkeypatch.setattr(remote_fetch.shutil, "disk_usage", disk_usage)
    cache, store = site.scripted(mode="read-only")
    fetched = site.fetch(cache)
    assert seen == [engine.parent] and (fetched is not None) is ok
    if not ok:
        [line] = logs.events("remote_local_write")
        assert line.getMessage() == (f"remote cache: could not write file://{site.entry} into {engine.parent} "
                                     f"(64 MiB free, the engine needs 64 MiB; free disk space); building det locally")
        assert line.model_name == "det" and line.levelno == logging.WARNING
        assert store.count("download") == 0 and cache.disabled_reason is None


def test_the_free_space_line_in_mib(site, logs, monkeypatch):
    site.cache("builder").publish(site.built)
    monkeypatch.setattr(remote_fetch.shutil, "disk_usage", lambda path: Usage(1 << 40, 0, 10 * MIB + MIB // 2 + 1))
    assert site.fetch(site.cache(mode="read-only")) is None
    assert "(11 MiB free, the engine needs 64 MiB; free disk space)" in logs.events("remote_local_write")[0].getMessage()


def test_a_missing_cache_folder_is_a_local_write_error(site, logs):
    site.cache("builder").publish(site.built)
    cache = site.cache(mode="read-only")
    folder = site.tmp / "gone" / "cache"
    assert cache.fetch(folder / site.name, "det", site.inputs) is None
    assert [r.getMessage() for r in logs.events("remote_local_write")] == [
        f"remote cache: could not write file://{site.entry} into {folder} (No such file or directory); building det "
        "locally"]
    assert cache.disabled_reason is None and logs.events("remote_discard") == []


def test_a_cache_path_under_a_file_is_a_local_write_error(site, logs):
    site.cache("builder").publish(site.built)
    folder = site.tmp / "file"
    folder.write_bytes(b"x")
    assert site.cache(mode="read-only").fetch(folder / site.name, "det", site.inputs) is None
    assert [r.getMessage() for r in logs.events("remote_local_write")] == [
        f"remote cache: could not write file://{site.entry} into {folder} (Not a directory); building det locally"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_missing_engine_part_is_discarded_and_repaired(site, logs):
    site.cache("builder").publish(site.built)
    good = site.objects()
    site.engine_part.unlink()
    reader = site.cache()
    fds = _open_fds()
    assert site.fetch(reader) is None
    assert _open_fds() == fds
    assert _discarded(logs) == ["engine part is missing"]
    site.assert_not_installed()
    reader.publish(site.built)  # the record verified but its part did not: the record is replaced too
    assert {k: v for k, v in site.objects().items() if not k.endswith("_seen.json")} == good
    assert upload_line(logs).uploaded is True
    assert site.fetch(site.cache(mode="read-only"), host="c") is not None


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "engine part: engine bytes do not match the sidecar (corrupt or truncated)"),
    (lambda b: b[:-10], "engine part: is {short} bytes, expected {size}"),
])
def test_an_engine_part_with_other_bytes_is_discarded_deleted_and_replaced(site, logs, damage, reason):
    site.cache("builder").publish(site.built)
    good = site.objects()
    site.engine_part.write_bytes(damage(site.built.path.read_bytes()))
    reader = site.cache()
    fds = _open_fds()
    assert site.fetch(reader) is None
    assert _open_fds() == fds
    assert _discarded(logs) == [reason.format(short=site.built.size - 10, size=site.built.size)]
    site.assert_not_installed()
    reader.publish(site.built)
    assert {k: v for k, v in site.objects().items() if not k.endswith("_seen.json")} == good
    assert site.fetch(site.cache(mode="read-only"), host="c") is not None


def test_a_part_proved_bad_is_deleted_only_in_its_own_entry(site, logs):
    site.cache("builder").publish(site.built)
    damaged = site.built.path.read_bytes()[:-1] + b"\0"
    site.engine_part.write_bytes(damaged)
    reader = site.cache()
    assert site.fetch(reader) is None
    other = other_build(site, site.tmp / "other", b"another engine")
    elsewhere = EngineCacheEntry("det", other.path, other.sha256, other.size,
                                 {**other.inputs, "onnx_sha256": "1" * 64}, other.manifest)
    reader.publish(elsewhere)  # another entry (other inputs): this entry's bad part is not its business
    assert site.engine_part.read_bytes() == damaged
    reader.publish(site.built)
    assert site.engine_part.read_bytes() == site.built.path.read_bytes()


def test_a_process_without_stdin_does_not_leak_the_temporary_files_descriptor(site, logs):
    site.cache("builder").publish(site.built)
    site.engine_part.unlink()
    cache = site.cache(mode="read-only")
    engine = site.engine_path("b")
    saved = os.dup(0)
    os.close(0)  # a daemon: the temporary file gets descriptor 0
    try:
        assert cache.fetch(engine, "det", site.inputs) is None
        try:
            os.fstat(0)
            leaked = True
        except OSError:
            leaked = False
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert not leaked and _discarded(logs) == ["engine part is missing"]


def test_a_write_error_during_the_download_is_local(site, logs):
    site.cache("builder").publish(site.built)
    cache = site.cache(mode="read-only")
    engine = site.engine_path("b")
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (site.built.size // 2, hard))
    try:
        fetched = cache.fetch(engine, "det", site.inputs)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert fetched is None
    assert [r.getMessage() for r in logs.events("remote_local_write")] == [
        f"remote cache: could not write file://{site.entry} into {engine.parent} (File too large); building det "
        "locally"]
    site.assert_not_installed()


class _FailingFsync:
    """fetch.py's view of ``os`` on a disk whose fsync fails."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")


def test_an_fsync_error_is_local_and_leaves_nothing_behind(site, logs, monkeypatch):
    site.cache("builder").publish(site.built)
    monkeypatch.setattr(remote_fetch, "os", _FailingFsync())
    fds = _open_fds()
    assert site.fetch(site.cache(mode="read-only")) is None
    assert _open_fds() == fds
    assert "(Input/output error); building det locally" in logs.events("remote_local_write")[0].getMessage()
    site.assert_not_installed()


def test_a_publish_error_in_the_cache_folder_is_local(site, logs):
    site.cache("builder").publish(site.built)
    engine = site.engine_path("b")
    manifest_path_for(engine).mkdir()  # something in the way of the manifest
    assert site.fetch(site.cache(mode="read-only")) is None
    assert [r.getMessage() for r in logs.events("remote_local_write")] == [
        f"remote cache: could not write file://{site.entry} into {engine.parent} (Is a directory); building det "
        "locally"]
    assert not Sha256Sidecar.path_for(engine).exists()
    assert not [p for p in engine.parent.iterdir() if is_temp_name(p.name)]


def test_a_content_error_anywhere_else_condemns_only_the_entry(site, logs):
    cache, store = site.scripted()
    store.around["create_exclusive"] = fail(RemoteContentError("is a symlink; not followed"), times=1, suffix="/lease")
    assert site.fetch(cache) is None
    discard = logs.events("remote_discard")
    assert [r.getMessage() for r in discard] == [
        f"remote cache: discarded file://{site.entry} (entry unreadable (RemoteContentError)); building det locally"]
    assert discard[0].reason == "entry unreadable (RemoteContentError)"
    assert cache.disabled_reason is None
    cache.publish(site.built)
    assert upload_line(logs).uploaded is True and site.commit().is_file()


def test_after_a_content_error_a_record_committed_meanwhile_is_kept(site, logs, clock):
    cache, store = site.scripted()
    store.around["create_exclusive"] = fail(RemoteContentError("is a symlink; not followed"), times=1, suffix="/lease")
    assert site.fetch(cache) is None
    site.cache("builder").publish(site.built)  # another host commits while this one builds
    committed = site.tags()
    logs.records.clear()
    cache.publish(site.built)
    assert upload_line(logs).uploaded is False and cache.disabled_reason is None
    assert {k: v for k, v in site.tags().items() if not k.endswith("_seen.json")} == \
        {k: v for k, v in committed.items() if not k.endswith("_seen.json")}


# --- publish --------------------------------------------------------------------------------------

def test_publish_on_a_read_only_or_disabled_host_uploads_nothing(site, logs):
    site.cache(mode="read-only").publish(site.built)
    cache, store = site.scripted()
    store.around["read"] = fail(transport(ConnectionResetError("reset")))
    assert site.fetch(cache) is None and cache.disabled_reason is not None
    calls, before = len(store.calls), site.objects()
    cache.publish(site.built)
    assert len(store.calls) == calls and site.objects() == before


def test_a_transient_upload_failure_is_retried(site, logs, clock):
    cache, store = site.scripted(signing_key={"env": "CACHE_KEY", "id": "fleet"})
    store.around["put_file_exclusive"] = fail(transport(ConnectionResetError("reset by peer")), times=1)
    cache.publish(site.built)
    line = upload_line(logs)
    assert (line.uploaded, line.attempts, line.key_id) == (True, 2, "fleet") and clock.slept == [0.2]
    assert site.commit("fleet").is_file() and cache.disabled_reason is None and logs.warnings() == []


@pytest.mark.parametrize("timeout_s, attempts, seconds", [(0.2, 1, "0.0"), (0.5, 2, "0.2"), (1.5, 4, "1.4"),
                                                          (5.5, 6, "5.0")])
def test_an_upload_that_keeps_failing_turns_the_cache_off_after_timeout_s(site, logs, clock, timeout_s, attempts,
                                                                         seconds):
    cache, store = site.scripted(timeout_s=timeout_s)
    store.around["put_file_exclusive"] = fail(transport(ConnectionResetError("reset by peer")))
    cache.publish(site.built)
    reason = (f"upload of {site.name} failed after {attempts} attempt(s) in {seconds} s (ConnectionResetError: "
              "reset by peer)")
    assert cache.disabled_reason == reason and store.count("put_file_exclusive") == attempts
    down = logs.events("remote_unavailable")
    assert [r.getMessage() for r in down] == [f"remote cache {site.url}: {reason}; the local engine is published, {HINT}"]
    assert down[0].model_name == "det"
    assert not site.commit().exists() and logs.events("remote_upload") == []
    assert site.fetch(cache) is None


def test_a_long_content_error_on_upload_is_cut_at_200_characters(site, logs):
    cache, store = site.scripted()
    store.around["put_file_exclusive"] = fail(RemoteContentError("is not a regular file " + "y" * 300))
    cache.publish(site.built)
    assert logs.events("remote_upload_skipped")[0].getMessage() == (
        f"remote cache: upload of {site.name} skipped ('is not a regular file {'y' * 178}'...); the local engine is "
        "published")


def test_an_upload_that_stalls_says_so_in_timeout_s_words(site, logs, clock):
    cache, store = site.scripted(timeout_s=0.5)
    store.around["put_file_exclusive"] = fail(transport(TimeoutError("no progress for 0.5 s (upload)")))
    cache.publish(site.built)
    assert cache.disabled_reason == (f"upload of {site.name} failed after 2 attempt(s) in 0.2 s (no progress for "
                                     "timeout_s 0.5 s)")


def test_an_upload_already_there_is_left_as_it_is(site, logs):
    site.cache("builder").publish(site.built)
    before = site.tags()
    logs.records.clear()
    rival = other_build(site, site.tmp / "rival", b"another build of det")
    site.cache("rival").publish(rival)  # same key, same entry: the first commit stays
    assert site.tags() == before
    line = upload_line(logs)
    assert line.getMessage() == f"remote cache: already has {rival.file_name}" and line.uploaded is False
    assert not (site.entry / "engine" / rival.sha256).exists()


def test_parts_already_there_are_not_uploaded_again(site, logs):
    site.cache("builder").publish(site.built)
    site.commit().unlink()
    before = site.tags()
    logs.records.clear()
    site.cache("c").publish(site.built)
    assert {k: v for k, v in site.tags().items() if "/commit/" not in k} == before
    assert f"remote cache: engine part of {site.name} already present" in logs.lines(logging.DEBUG)
    assert upload_line(logs).uploaded is True


def test_a_garbage_record_at_the_own_key_is_replaced(site, logs):
    site.commit().parent.mkdir(parents=True)
    site.commit().write_bytes(b"garbage\nsignature none\n")
    site.cache().publish(site.built)
    assert site.commit().read_bytes() == unsigned_record(site.body())
    assert upload_line(logs).uploaded is True


def test_an_oversized_object_at_the_own_key_is_replaced(site, logs):
    site.commit().parent.mkdir(parents=True)
    site.commit().write_bytes(b"x" * 5000)
    site.cache().publish(site.built)
    assert site.commit().read_bytes() == unsigned_record(site.body())


def test_a_planted_object_that_cannot_be_deleted_does_not_fail_the_upload(site, logs):
    site.commit().parent.mkdir(parents=True)
    site.commit().write_bytes(b"x" * 5000)
    cache, store = site.scripted()
    store.around["delete"] = fail(RemoteContentError("is below a link"))
    cache.publish(site.built)
    assert upload_line(logs).uploaded is False and cache.disabled_reason is None
    assert site.engine_part.is_file() and site.manifest_part.is_file()


def test_a_repair_by_another_host_meanwhile_is_not_undone(site, logs):
    site.cache("builder").publish(site.built)
    site.engine_part.unlink()
    reader, store = site.scripted()
    assert site.fetch(reader) is None and _discarded(logs) == ["engine part is missing"]
    fixer = site.cache("fixer")
    rival = other_build(site, site.tmp / "rival", b"the fixer's own build")

    def repaired_first(path, call):  # another host replaces the record between our read and our delete
        if path.endswith("/commit/unsigned"):
            site.commit().unlink()
            fixer.publish(rival)
        return call()

    store.around["delete_if_match"] = repaired_first
    logs.records.clear()
    reader.publish(site.built)
    assert site.commit().read_bytes() == unsigned_record(site.body(engine_sha256=rival.sha256, size=rival.size,
                                                                   manifest_sha256=sha(shared_manifest(
                                                                       manifest_path_for(rival.path).read_bytes()))))
    assert [r.uploaded for r in logs.events("remote_upload")] == [True, False]  # the fixer's, then ours
    assert not site.engine_part.exists()


def test_a_repaired_entry_published_again_is_left_as_it_is(site, logs):
    site.cache("builder").publish(site.built)
    site.engine_part.unlink()
    reader = site.cache()
    assert site.fetch(reader) is None
    reader.publish(site.built)  # the repair: the record (same bytes) is replaced
    before = site.tags()
    logs.records.clear()
    reader.publish(site.built)  # the same engine again in this run: nothing left to repair
    assert site.tags() == before and upload_line(logs).uploaded is False


def test_a_record_without_an_etag_is_replaced_unconditionally(site, logs):
    site.cache("builder").publish(site.built)
    site.engine_part.unlink()
    reader, store = site.scripted()
    assert site.fetch(reader) is None

    def no_etag(path, call):  # a server that sends no ETag
        found = call()
        return found if found is None or not path.endswith("/commit/unsigned") else (found[0], found[1], None)

    store.around["read"] = no_etag
    reader.publish(site.built)
    assert store.count("delete_if_match") == 0 and store.count("delete", "/commit/unsigned") == 1
    assert site.engine_part.read_bytes() == site.built.path.read_bytes() and upload_line(logs).uploaded is True


def test_a_local_manifest_of_one_mib_and_a_byte_is_read_whole(site, logs):
    folder = site.tmp / "large"
    folder.mkdir()
    engine = folder / site.name
    shutil.copyfile(site.built.path, engine)
    document = json.loads(manifest_path_for(site.built.path).read_bytes())
    document["build"]["notes"] = {"log": ""}
    document["build"]["notes"]["log"] = "n" * (MIB + 1 - len(manifest_bytes(document)))
    manifest_path_for(engine).write_bytes(manifest_bytes(document))
    assert manifest_path_for(engine).stat().st_size == MIB + 1
    entry = EngineCacheEntry("det", engine, site.built.sha256, site.built.size, site.built.inputs, document)
    site.cache().publish(entry)  # as uploaded (no pid, the ONNX file name only) it fits a reader's 1 MiB
    assert upload_line(logs).uploaded is True
    assert site.fetch(site.cache(mode="read-only")) is not None


def test_a_local_manifest_over_one_mib_is_never_uploaded(site, logs, clock):
    folder = site.tmp / "huge"
    folder.mkdir()
    engine = folder / site.name
    shutil.copyfile(site.built.path, engine)
    document = json.loads(manifest_path_for(site.built.path).read_bytes())
    document["build"]["notes"] = {"log": "n" * (MIB + 10)}
    manifest_path_for(engine).write_bytes(manifest_bytes(document))
    entry = EngineCacheEntry("det", engine, site.built.sha256, site.built.size, site.built.inputs, document)
    cache = site.cache(timeout_s=0.5)
    cache.publish(entry)
    assert not site.commit().exists() and not (site.entry / "manifest").exists()
    assert logs.events("remote_upload") == []
    # this host's own file is at fault: one line saying so, no retries, the remote stays on
    assert cache.disabled_reason is None
    (skipped,) = logs.events("remote_upload_skipped")
    assert skipped.getMessage() == (f"remote cache: upload of {site.name} skipped (its local manifest is not a "
                                    "readable manifest of at most 1 MiB (JSONDecodeError)); the local engine is "
                                    "published, the remote stays on")


def test_a_local_manifest_that_cannot_be_read_skips_the_upload_and_keeps_the_remote_on(site, logs):
    folder = site.tmp / "linked"
    folder.mkdir()
    engine = folder / site.name
    shutil.copyfile(site.built.path, engine)
    manifest_path_for(engine).symlink_to(manifest_path_for(site.built.path))  # never followed
    entry = EngineCacheEntry("det", engine, site.built.sha256, site.built.size, site.built.inputs, {})
    cache = site.cache(timeout_s=0.5)
    cache.publish(entry)
    assert cache.disabled_reason is None and not site.commit().exists()
    (skipped,) = logs.events("remote_upload_skipped")
    assert f"remote cache: upload of {site.name} skipped (its local manifest cannot be read: Too many levels of symbolic " \
        "links); the local engine is published, the remote stays on" == skipped.getMessage()
    cache.publish(site.built)  # the next engine still uploads
    assert site.commit().exists()


def test_a_record_repaired_by_another_host_before_our_publish_is_kept(site, logs):
    site.cache("builder").publish(site.built)
    site.engine_part.unlink()
    reader = site.cache()
    assert site.fetch(reader) is None
    site.commit().unlink()
    rival = other_build(site, site.tmp / "rival", b"the fixer's own build")
    site.cache("fixer").publish(rival)
    repaired = site.commit().read_bytes()
    logs.records.clear()
    reader.publish(site.built)
    assert site.commit().read_bytes() == repaired and upload_line(logs).uploaded is False


def test_a_condemned_record_is_replaced_without_if_match_where_unsupported(site, logs):
    site.cache("builder").publish(site.built)
    site.engine_part.unlink()
    reader, store = site.scripted()
    assert site.fetch(reader) is None
    store.around["delete_if_match"] = fail(ConditionalWriteUnsupported("hard links refused (Operation not permitted)"))
    reader.publish(site.built)
    assert site.engine_part.read_bytes() == site.built.path.read_bytes()
    assert store.count("delete", "/commit/unsigned") == 1 and upload_line(logs).uploaded is True
    assert [r.getMessage() for r in logs.events("remote_no_conditional")] == [NO_CONDITIONAL.format(url=site.url)]


def test_a_host_that_only_verifies_commits_unsigned_where_signatures_are_optional(site, logs):
    fleet = site.keys("fleet")
    cache = site.cache(trusted_keys=[fleet.reader], require_signature=False)
    assert cache.commit_id == "unsigned" and cache.accepts_unsigned
    cache.publish(site.built)
    assert site.commit().read_bytes() == unsigned_record(site.body())
    assert upload_line(logs).key_id == "unsigned"


def test_an_hmac_builder_signs_its_record(site, logs):
    cache = site.cache(signing_key={"env": "CACHE_KEY", "id": "fleet"})
    cache.publish(site.built)
    record = site.commit("fleet").read_bytes()
    assert split_record(record)[:3] == (site.body(), "hmac-sha256", "fleet")
    fetched = site.fetch(site.cache(signing_key={"env": "CACHE_KEY", "id": "fleet"}, mode="read-only"))
    assert fetched.key_id == "fleet"


def test_the_upload_records_the_corpus_and_drops_the_builders_details(site, logs):
    site.cache(corpus="vision").publish(site.built)
    [part] = list((site.entry / "manifest").iterdir())
    document = json.loads(part.read_bytes())
    assert document["build"]["corpus"] == "vision" and "pid" not in document["build"]
    assert document["build"]["onnx_path"] == "det.onnx"
    assert part.read_bytes() == site.manifest_blob(corpus="vision")
    local = json.loads(manifest_path_for(site.built.path).read_bytes())
    assert document["inputs"] == local["inputs"] and document["engine"] == local["engine"]


def test_share_build_details_uploads_the_manifest_as_built(site, logs):
    site.cache(share_build_details=True).publish(site.built)
    [part] = list((site.entry / "manifest").iterdir())
    local = json.loads(manifest_path_for(site.built.path).read_bytes())
    assert json.loads(part.read_bytes()) == local and part.read_bytes() == manifest_bytes(local)


# --- shared_manifest -------------------------------------------------------------------------------

def _manifest(**build) -> bytes:
    return manifest_bytes({"schema_version": 1, "inputs": {"a": 1}, "build": build})


@pytest.mark.parametrize("path, name", [
    ("/srv/models/det.onnx", "det.onnx"),
    ("C:\\models\\det.onnx", "det.onnx"),
    ("models/sub\\det.onnx", "det.onnx"),
    ("det.onnx", "det.onnx"),
])
def test_shared_manifest_keeps_the_onnx_file_name_only(path, name):
    shared = json.loads(shared_manifest(_manifest(onnx_path=path, pid=123, created="now")))
    assert shared == {"schema_version": 1, "inputs": {"a": 1}, "build": {"onnx_path": name, "created": "now"}}


def test_shared_manifest_details_corpus_and_odd_shapes():
    blob = _manifest(onnx_path="/srv/det.onnx", pid=123)
    assert shared_manifest(blob, details=True) == blob
    assert json.loads(shared_manifest(blob, details=True, corpus="c1"))["build"] == {
        "onnx_path": "/srv/det.onnx", "pid": 123, "corpus": "c1"}
    assert json.loads(shared_manifest(blob, corpus="c1"))["build"] == {"onnx_path": "det.onnx", "corpus": "c1"}
    assert json.loads(shared_manifest(_manifest(onnx_path=None, pid=1)))["build"] == {"onnx_path": None}
    odd = manifest_bytes({"schema_version": 1, "build": "text"})
    assert shared_manifest(odd, corpus="c1") == odd
    plain = manifest_bytes({"schema_version": 1})
    assert shared_manifest(plain) == plain
    assert shared_manifest(b'{"b": 1, "a": {"build": 2}}') == manifest_bytes({"a": {"build": 2}, "b": 1})


def test_a_local_manifest_rewritten_after_the_build_is_not_signed(site, logs):
    """A writer of the cache folder edits the manifest between the build and its upload (a forged
    validation record, say): the upload signs what this process wrote, or nothing."""
    folder = site.tmp / "raced"
    folder.mkdir()
    engine = folder / site.name
    shutil.copyfile(site.built.path, engine)
    document = json.loads(manifest_path_for(site.built.path).read_bytes())
    manifest_path_for(engine).write_bytes(manifest_bytes(document))
    entry = EngineCacheEntry("det", engine, site.built.sha256, site.built.size, site.built.inputs, document)
    forged = json.loads(json.dumps(document))
    forged["build"]["notes"] = {"validation": {"passed": True, "forged": True}}
    manifest_path_for(engine).write_bytes(manifest_bytes(forged))
    cache = site.cache(timeout_s=0.5)
    cache.publish(entry)
    assert not site.commit().exists()
    assert not [p for p in site.tmp.rglob("manifest/*") if b"forged" in p.read_bytes()]
    (skipped,) = logs.events("remote_upload_skipped")
    assert skipped.getMessage() == (f"remote cache: upload of {site.name} skipped (its local manifest changed since "
                                    "this process wrote it; rebuild it with doit engines); the local engine is "
                                    "published, the remote stays on")
    assert cache.disabled_reason is None
    manifest_path_for(engine).write_bytes(manifest_bytes(document))  # as written: uploaded and signed
    cache.publish(entry)
    assert site.commit().exists()
