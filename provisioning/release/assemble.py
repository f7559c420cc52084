"""Assemble a release from what the builders committed to the bucket (``doit engines-release``).

For every backbone of the config, every variant in the bucket that was built from
today's inputs (the ONNX hashed now, today's settings for the entry's backend) and whose
commit record verifies under today's trusted keys. Local engines of today's inputs that
the bucket lacks are uploaded first (through :meth:`RemoteCache.publish`, exactly as after
a build) when the remote is writable.

It reads only listings, commit records and manifests (both small, the manifest checked
against the SHA-256 its signed record names), never an engine: a release of 200
backbones x 4 host identities costs one listing plus two small GETs per entry. The
requests are counted (:attr:`Assembly.requests`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import EngineCacheEntry
from ..config import ProvisioningConfig
from ..errors import ProvisioningError
from ..manifest import read_manifest
from ..qualification import validation_of
from ..remote import RemoteCache, RemoteStore, key_ring, remote_config_of
from ..remote.config import RemoteConfig
from ..remote.layout import COMMIT_DIR, ENGINE_DIR, MANIFEST_DIR, inputs_digest
from ..remote.signing import MAX_COMMIT_BYTES, KeyRing, Unverified, parse_body
from ..remote.store import RemoteContentError, RemoteUnavailable, shown
from ..schema import ENGINE_SUFFIX, EngineFilenameSchema, canonical_sha256
from ..sidecar import Sha256Sidecar
from .format import (BackboneVariants, Compatibility, EntryRef, Release, ReleaseError, TiedTo, Variant)
from .today import TodayInputs, today_inputs

log = logging.getLogger("provisioning.release")
_MAX_MANIFEST = 1 << 20
_WORKERS = 16
_NETWORK_CALLS = frozenset({
    "read_small", "read_small_tagged", "read_small_info", "download", "size", "read_range", "put_bytes",
    "put_file", "put_file_exclusive", "create_exclusive", "delete_if_match", "delete", "list_dir", "find",
})


class ReleaseUnavailable(ProvisioningError, RuntimeError):
    """The bucket could not be read (network, server, credentials): no release was written."""

    exit_code = 1


class CountingStore:
    """A RemoteStore that counts the calls that reach the bucket, and the objects they touch."""

    def __init__(self, store: RemoteStore) -> None:
        self._store = store
        self.calls: dict[str, int] = {}
        self.paths: list[str] = []  # every object path a call named (tests: no engine object is read)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in _NETWORK_CALLS or not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if args and isinstance(args[0], str):
                self.paths.append(args[0])
            return attr(*args, **kwargs)

        return counted

    @property
    def requests(self) -> int:
        return sum(self.calls.values())


@dataclass
class Assembly:
    """A release and how it was made."""

    release: Release
    requests: int
    uploaded: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # one line per entry or local engine left out, with why
    seconds: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)


def created_now() -> str:
    """``created`` when none is given: $SOURCE_DATE_EPOCH, else now (UTC, seconds)."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        epoch = int(raw) if raw else int(time.time())
    except ValueError:
        raise ReleaseError(f"SOURCE_DATE_EPOCH={raw[:40]!r} is not whole seconds since 1970; unset it or fix it") \
            from None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def release_keys(config: ProvisioningConfig) -> tuple[RemoteConfig, KeyRing]:
    """The config's remote and its keys; ReleaseError unless it can sign a release."""
    remote = remote_config_of(config)
    if remote is None or not remote.enabled:
        raise ReleaseError(f"{config.config_path}: field 'remote': a release is assembled from the bucket; add a "
                           "remote: block (url, signing_key) or set its mode to read-only or read-write")
    keys = key_ring(remote)
    if keys is None or keys.signing_id is None:
        raise ReleaseError(f"{config.config_path}: field 'remote.signing_key': a release must be signed; set "
                           "remote.signing_key (an Ed25519 private_key, or the fleet's HMAC secret)")
    return remote, keys


def assemble_release(config: ProvisioningConfig, created: str, *, store: RemoteStore | None = None,
                     upload_local: bool = False) -> Assembly:
    """The release of ``config``'s backbones as the bucket holds them now (see the module docstring).

    ``upload_local``: upload (and so sign) this cache folder's engines of today's inputs that the
    bucket lacks. Off by default: nothing shows that this host built those bytes, and whoever can
    write the cache folder would get them signed. ``doit engines`` uploads what it builds itself.
    """
    started = time.monotonic()
    remote, keys = release_keys(config)
    today = today_inputs(config)
    counting = CountingStore(store if store is not None else RemoteStore.open(remote))
    notes: list[str] = []
    try:
        listing = _entries(counting, remote)
        uploaded = _upload_local(config, remote, keys, counting, today, listing, notes, upload_local)
        if uploaded:
            listing = _entries(counting, remote)
            committed = {name for (_, name, _), parts in listing.items() if any(p.startswith(COMMIT_DIR + "/")
                                                                                for p in parts)}
            for name in [n for n in uploaded if n not in committed]:
                uploaded.remove(name)
                notes.append(f"{name}: its upload did not complete (see the warning above); not in the release")
        backbones = _collect(remote, keys, counting, today, listing, notes)
    except RemoteUnavailable as exc:
        raise ReleaseUnavailable(f"remote {remote.url}: cannot be read ({shown(str(exc), 200)}); no release written "
                                 "(check remote.endpoint_url, the network and AWS_* credentials)") from None
    release = Release(created, remote.namespace, remote.url, remote.corpus, backbones)
    return Assembly(release, counting.requests, tuple(uploaded), tuple(notes), time.monotonic() - started,
                    dict(counting.calls))


def _entries(store: CountingStore, remote: RemoteConfig) -> dict[tuple[str, str, str], set[str]]:
    """(host key, engine name, inputs digest) -> the entry's object names (``commit/<id>``, ``engine/<sha>``...)."""
    prefix = store.root + "/"
    found: dict[tuple[str, str, str], set[str]] = {}
    for path, info in store.find(store.root, remote.timeout_s).items():
        rel = path[len(prefix):] if path.startswith(prefix) else path
        parts = rel.split("/")
        if len(parts) == 5 and parts[3] in (COMMIT_DIR, ENGINE_DIR, MANIFEST_DIR) and info.get("type", "file") == "file":
            found.setdefault((parts[0], parts[1], parts[2]), set()).add(f"{parts[3]}/{parts[4]}")
    return found


def _upload_local(config: ProvisioningConfig, remote: RemoteConfig, keys: KeyRing, store: CountingStore,
                  today: tuple[TodayInputs, ...], listing: dict, notes: list[str], upload_local: bool) -> list[str]:
    """Publish the local engines of today's inputs that the bucket lacks (only with ``upload_local``); their names."""
    uploaded: list[str] = []
    cache: RemoteCache | None = None
    for entry in _local_entries(config.cache_dir, today, notes):
        host_key = str(entry.inputs.get("host", {}).get("host_key", ""))
        parts = listing.get((host_key, entry.file_name, inputs_digest(entry.inputs)), set())
        if any(f"{COMMIT_DIR}/{key_id}" in parts for key_id in keys.ids_for(host_key)):
            continue
        if not upload_local:
            notes.append(f"{entry.file_name}: in this cache folder but not in the bucket; not in the release "
                         "(doit engines uploads what it builds; --upload-local uploads this folder's engines, "
                         "trusting whoever can write it)")
            continue
        if not remote.writable:
            notes.append(f"{entry.file_name}: built here but not in the bucket, and remote.mode is {remote.mode}; "
                         "not in the release (run engines-release where the remote is read-write)")
            continue
        if cache is None:
            cache = RemoteCache(remote, store, keys)  # type: ignore[arg-type]
        cache.publish(entry)
        if cache.disabled_reason is not None:
            raise RemoteUnavailable(cache.disabled_reason)
        uploaded.append(entry.file_name)
    return uploaded


def _local_entries(cache_dir: Path, today: tuple[TodayInputs, ...], notes: list[str]) -> list[EngineCacheEntry]:
    """The verified engines in the cache folder built from today's inputs."""
    by_model = {t.model_name: t for t in today}
    try:
        names = sorted(n for n in os.listdir(cache_dir) if n.endswith(ENGINE_SUFFIX))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ReleaseError(f"cache folder {cache_dir}: cannot be listed ({exc.strerror}); check its permissions") \
            from None
    found = []
    for name in names:
        path = cache_dir / name
        try:
            model = EngineFilenameSchema.parse(name).model_name
        except ValueError:
            continue
        inputs = by_model.get(model)
        if inputs is None or inputs.name_matches(name) is None or os.path.islink(path):
            continue
        manifest = read_manifest(path)
        if manifest is None or inputs.mismatch(manifest.get("inputs")) is not None:
            continue
        check = Sha256Sidecar.check(path)
        recorded = manifest.get("engine") if isinstance(manifest.get("engine"), dict) else {}
        if not check.ok or recorded.get("sha256") != check.sha256 or recorded.get("file_name") != name:
            notes.append(f"{name}: local engine does not verify ({check.reason or 'manifest names another engine'}); "
                         "not uploaded")
            continue
        found.append(EngineCacheEntry(model, path, check.sha256 or "", check.size or 0, manifest["inputs"], manifest))
    return found


def _collect(remote: RemoteConfig, keys: KeyRing, store: CountingStore, today: tuple[TodayInputs, ...],
             listing: dict, notes: list[str]) -> tuple[BackboneVariants, ...]:
    """Every variant of today's inputs, read from the commit records and manifests in parallel."""
    jobs = []
    for (host_key, name, digest), parts in sorted(listing.items()):
        for inputs in today:
            backend = inputs.name_matches(name)
            if backend is None:
                continue
            ids = [k for k in keys.ids_for(host_key) if f"{COMMIT_DIR}/{k}" in parts]
            if ids:
                jobs.append((inputs, host_key, name, digest, ids))
            elif any(p.startswith(COMMIT_DIR + "/") for p in parts):
                notes.append(f"{host_key}/{name}/{digest}: committed only by keys this config does not trust; "
                             "left out (add the key to remote.trusted_keys)")
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        results = list(pool.map(lambda job: _variant(remote, keys, store, *job), jobs))
    variants: dict[str, list[Variant]] = {t.model_name: [] for t in today}
    for variant, note in results:
        if variant is not None:
            variants[variant.model_name].append(variant)
        elif note:
            notes.append(note)
    return tuple(
        BackboneVariants(t.model_name, t.onnx_sha256, t.settings_sha256,
                         tuple(sorted(variants[t.model_name], key=lambda v: (v.host_key, v.engine, v.sha256))))
        for t in today
    )


def _variant(remote: RemoteConfig, keys: KeyRing, store: CountingStore, inputs: TodayInputs, host_key: str,
             name: str, digest: str, ids: list[str]) -> tuple[Variant | None, str | None]:
    """The variant of one entry, or (None, why) when it is not today's or does not verify (None: silently stale)."""
    base = f"{store.root}/{host_key}/{name}/{digest}"
    label = f"{host_key}/{name}/{digest}"
    problems = []
    for key_id in ids:
        try:
            record = store.read_small(f"{base}/{COMMIT_DIR}/{key_id}", MAX_COMMIT_BYTES, remote.timeout_s)
            if record is None:
                continue
            body, _ = keys.verify(record, key_id)
            commit = parse_body(body, record, key_id)
            if (commit.host_key, commit.engine_name, commit.inputs_digest) != (host_key, name, digest):
                raise Unverified("commit record names another entry (moved or copied)")
            if commit.namespace != remote.namespace:
                raise Unverified(f"entry belongs to namespace {shown(commit.namespace)}, not {remote.namespace!r}")
            blob = store.read_small(f"{base}/{MANIFEST_DIR}/{commit.manifest_sha256}", _MAX_MANIFEST,
                                    remote.timeout_s)
            if blob is None or hashlib.sha256(blob).hexdigest() != commit.manifest_sha256:
                raise Unverified("manifest part is missing or does not match its commit record")
            manifest = json.loads(blob)
        except (Unverified, RemoteContentError) as exc:
            problems.append(str(exc))
            continue
        except (ValueError, RecursionError):
            problems.append("manifest is not JSON")
            continue
        manifest_inputs = manifest.get("inputs") if isinstance(manifest, dict) else None
        stale = inputs.mismatch(manifest_inputs)
        if stale is not None:
            return None, None  # another ONNX or other settings: an older entry, not an error
        recorded = manifest.get("engine") if isinstance(manifest.get("engine"), dict) else {}
        host = manifest_inputs.get("host") if isinstance(manifest_inputs.get("host"), dict) else {}
        if (inputs_digest(manifest_inputs) != digest or host.get("host_key") != host_key
                or recorded.get("sha256") != commit.engine_sha256 or recorded.get("file_name") != name
                or recorded.get("size") != commit.size):
            problems.append("manifest describes another entry than its commit record")
            continue
        try:
            return _make_variant(inputs.model_name, manifest_inputs, commit, host_key, name, digest,
                                 validation_of(manifest)), None
        except (TypeError, ValueError, KeyError) as exc:
            problems.append(f"manifest fields unexpected ({type(exc).__name__})")
    if problems:
        return None, f"{label}: left out, it does not verify ({problems[0][:200]})"
    return None, None


def _make_variant(model: str, inputs: dict, commit, host_key: str, name: str, digest: str,
                  validation: Any) -> Variant:
    host = inputs["host"]
    backend = inputs["backend"]
    if backend == "onnxruntime":
        tier = host_key.split("-")[1] if host_key.count("-") >= 2 else "base"
        tied = TiedTo("cpu", machine=str(host.get("machine")), isa=tier)
        compat = Compatibility()
    elif backend == "tensorrt-rtx":
        tied = TiedTo("gpu")
        compat = Compatibility(rtx_targets=tuple(str(t) for t in host.get("compute_capabilities") or ()))
    else:
        cc = host.get("compute_capability")
        tied = TiedTo("gpu", gpu_model=host.get("gpu_name"),
                      compute_capability=f"{int(cc[0])}.{int(cc[1])}" if cc else None)
        compat = Compatibility(bool(host.get("version_compatible")), str(host.get("hardware_compatibility", "none")))
    return Variant(
        engine=name, sha256=commit.engine_sha256, size=commit.size, model_name=model, host_key=host_key,
        backend=backend, backend_version=str(inputs["backend_version"]), tied_to=tied, compatibility=compat,
        manifest_sha256=commit.manifest_sha256, settings_sha256=canonical_sha256(inputs["build_settings"]),
        entry=EntryRef(f"{host_key}/{name}/{digest}", digest, f"{ENGINE_DIR}/{commit.engine_sha256}",
                       f"{MANIFEST_DIR}/{commit.manifest_sha256}", f"{COMMIT_DIR}/{commit.key_id}"),
        validation=json.loads(json.dumps(validation)) if validation is not None else None,
    )
