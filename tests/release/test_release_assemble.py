"""``doit engines-release`` on a real ``file://`` bucket, with engines built by real ONNX Runtime.

Two CPU host identities build into one bucket; the release lists exactly the entries of
today's inputs whose commit record verifies under today's keys, uploads this host's
engines the bucket lacks, reads no engine object, and gives the same bytes for the same
inputs. ``--require`` gates on missing (backbone, host) pairs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from provisioning import load_config
from provisioning.compose import probe_host_for
from provisioning.release import load_release
from provisioning.release.assemble import assemble_release
from provisioning.release.format import BackboneVariants, Release
from provisioning.remote.localstore import LocalRemoteStore
from provisioning.remote.store import RemoteStore
from tests.remote.conftest import forged_record, free_port

from .conftest import CREATED, KEY_ID, doit, file_remote, make_builder, make_ed25519_keys, reader
from .test_release_format import _variant

AVX2_ONLY = ("avx", "avx2", "fma", "sse4_2")  # a second CPU identity: another host key, same ONNX Runtime


@pytest.fixture
def fleet(tmp_path, models, fleet_keys):
    """Two CPU builders (this CPU, and an AVX2-only identity) that built into one file:// bucket."""
    bucket = tmp_path / "bucket"
    block = file_remote(bucket, fleet_keys)
    here = make_builder(tmp_path, "here", models, block)
    other = make_builder(tmp_path, "avx2", models, block)
    assert here.build().built == 2
    host = probe_host_for(load_config(other.config_path), "onnxruntime")
    assert other.build(host=replace(host, cpu_flags=AVX2_ONLY)).built == 2
    return here, other, bucket


def _release_of(builder, tmp_path, *extra, name="engines.release.json", env=None):
    out = tmp_path / name
    done = doit("engines-release", str(out), "--config", str(builder.config_path), "--created", CREATED, *extra,
                cwd=tmp_path, env=env)
    return done, out


def _host_keys(release) -> dict[str, list[str]]:
    return {b.model_name: [v.host_key for v in b.variants] for b in release.backbones}


def test_a_release_lists_every_committed_variant_and_is_byte_identical_for_the_same_inputs(fleet, tmp_path,
                                                                                           fleet_keys):
    here, other, bucket = fleet
    done, out = _release_of(here, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    release = load_release(out, [reader(fleet_keys)], "prod")
    keys = sorted({v.host_key for v in release.variants()})
    assert len(keys) == 2 and any("-avx2-" in k for k in keys)
    assert _host_keys(release) == {"cls": keys, "det": keys}
    assert release.created == CREATED and release.namespace == "prod" and release.remote == f"file://{bucket}"
    for variant in release.variants():
        base = bucket / variant.entry.base
        assert (base / variant.entry.engine).stat().st_size == variant.size
        assert (base / variant.entry.commit).is_file() and variant.entry.commit == f"commit/{KEY_ID}"
        manifest = json.loads((base / variant.entry.manifest).read_bytes())
        assert manifest["engine"]["sha256"] == variant.sha256
        assert variant.tied_to.kind == "cpu" and variant.backend == "onnxruntime"
    assert "2 backbone(s), 4 variant(s), 0 uploaded first" in done.stdout
    # Same bucket, config and created time: the same bytes, whichever folder it runs in.
    again, second = _release_of(other, tmp_path, name="again.json")
    assert again.returncode == 0, again.stderr
    assert second.read_bytes() == out.read_bytes()
    dated = doit("engines-release", str(tmp_path / "dated.json"), "--config", str(here.config_path), cwd=tmp_path,
                 env={"SOURCE_DATE_EPOCH": "1796601600"})  # 2026-12-07T00:00:00Z
    assert dated.returncode == 0, dated.stderr
    assert (tmp_path / "dated.json").read_bytes() == out.read_bytes()


def test_assembly_reads_commit_records_and_manifests_never_an_engine(fleet, monkeypatch):
    here, _, _ = fleet

    def refuse(self, path, *args, **kwargs):
        raise AssertionError(f"engines-release read {path}")

    for cls in (RemoteStore, LocalRemoteStore):
        monkeypatch.setattr(cls, "download", refuse)
        monkeypatch.setattr(cls, "read_range", refuse)
    assembly = assemble_release(load_config(here.config_path), CREATED)
    assert sum(len(b.variants) for b in assembly.release.backbones) == 4
    # one listing, then one commit record and one manifest per entry
    assert assembly.calls == {"find": 1, "read_small": 8} and assembly.requests == 9
    assert assembly.uploaded == () and assembly.notes == ()


def test_local_engines_are_uploaded_first_only_when_asked_and_the_remote_is_writable(tmp_path, models, fleet_keys):
    local = make_builder(tmp_path, "local", models, None)
    assert local.build().built == 2
    bucket = tmp_path / "bucket"
    config = local.config_path.read_text()
    import yaml

    document = yaml.safe_load(config)
    document["remote"] = file_remote(bucket, fleet_keys, mode="read-only")
    local.config_path.write_text(yaml.safe_dump(document))
    done, out = _release_of(local, tmp_path, "--upload-local")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("NOTE: ")]
    assert len(notes) == 2 and all("built here but not in the bucket, and remote.mode is read-only" in n
                                   for n in notes)
    assert "0 variant(s)" in done.stdout
    document["remote"] = file_remote(bucket, fleet_keys)
    local.config_path.write_text(yaml.safe_dump(document))
    done, out = _release_of(local, tmp_path)  # without --upload-local: nothing of the cache folder is signed
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("NOTE: ")]
    assert len(notes) == 2 and all("not in the bucket; not in the release" in n and "--upload-local" in n
                                   for n in notes), notes
    assert "0 variant(s), 0 uploaded first" in done.stdout and not list(bucket.rglob("commit/*"))
    done, out = _release_of(local, tmp_path, "--upload-local")
    assert done.returncode == 0, done.stderr
    assert "2 variant(s), 2 uploaded first" in done.stdout
    release = load_release(out, [reader(fleet_keys)], "prod")
    engines = {v.engine: v for v in release.variants()}
    for engine in local.cache_dir.glob("*.engine"):
        variant = engines[engine.name]
        assert (bucket / variant.entry.base / variant.entry.commit).is_file()
        import hashlib

        assert hashlib.sha256(engine.read_bytes()).hexdigest() == variant.sha256
    done, again = _release_of(local, tmp_path, name="again.json")
    assert "0 uploaded first" in done.stdout and again.read_bytes() == out.read_bytes()


def test_a_planted_engine_in_the_cache_folder_is_not_signed_by_default(tmp_path, models, fleet_keys):
    """The cache folder's writer swaps an engine's bytes and rewrites its sidecar and manifest to match.

    engines-release must not upload (and so sign) it: nothing shows this host built those bytes.
    """
    import hashlib
    import json

    import yaml

    local = make_builder(tmp_path, "local", models, None)
    assert local.build().built == 2
    engine = sorted(local.cache_dir.glob("*.engine"))[0]
    forged = b"not the engine this ONNX compiles to" * 100
    engine.write_bytes(forged)
    digest = hashlib.sha256(forged).hexdigest()
    (engine.parent / (engine.name + ".sha256")).write_text(f"{digest}  {engine.name}\n")
    manifest_path = engine.parent / (engine.name + ".manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["engine"]["sha256"], manifest["engine"]["size"] = digest, len(forged)
    manifest_path.write_text(json.dumps(manifest))
    bucket = tmp_path / "bucket"
    document = yaml.safe_load(local.config_path.read_text())
    document["remote"] = file_remote(bucket, fleet_keys)
    local.config_path.write_text(yaml.safe_dump(document))
    done, out = _release_of(local, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"NOTE: {engine.name}: in this cache folder but not in the bucket; not in the release" in done.stderr
    release = load_release(out, [reader(fleet_keys)], "prod")
    assert digest not in {v.sha256 for v in release.variants()}
    assert not [p for p in bucket.rglob("*") if p.is_file() and p.read_bytes() == forged]


def test_entries_of_other_onnx_other_keys_or_bad_records_are_left_out(fleet, tmp_path, models, fleet_keys):
    here, other, bucket = fleet
    # An entry committed only by a key this config does not trust (another fleet's builder).
    stranger_keys = make_ed25519_keys(tmp_path / "stranger-keys", "stranger", "stranger")
    stranger = make_builder(tmp_path, "stranger", models, file_remote(bucket, stranger_keys))
    host = probe_host_for(load_config(stranger.config_path), "onnxruntime")
    assert stranger.build(host=replace(host, cpu_flags=("sse4_2",))).built == 2
    # A commit record whose fields are intact but whose signature no key made.
    before = load_release(_release_of(here, tmp_path, name="before.json")[1], [reader(fleet_keys)], "prod")
    victim = next(v for v in before.variants() if v.model_name == "cls" and "-avx2-" in v.host_key)
    record = bucket / victim.entry.base / victim.entry.commit
    body = record.read_bytes()
    record.write_bytes(forged_record(body[:body.rfind(b"signature ")], KEY_ID, b"\0" * 64))
    # det's ONNX changes: every det entry is of yesterday's inputs now.
    model = onnx.load(str(models / "det.onnx"))
    model.doc_string = "retrained"
    onnx.save(model, str(models / "det.onnx"))

    done, out = _release_of(here, tmp_path)
    assert done.returncode == 0, done.stderr
    release = load_release(out, [reader(fleet_keys)], "prod")
    assert _host_keys(release) == {"cls": [v.host_key for v in before.backbone("cls").variants
                                           if v.host_key != victim.host_key], "det": []}
    notes = [line for line in done.stderr.splitlines() if line.startswith("NOTE: ")]
    assert len(notes) == 3, notes
    assert sum("committed only by keys this config does not trust" in n for n in notes) == 2
    assert sum(f"{victim.host_key}/{victim.engine}" in n and "does not verify" in n for n in notes) == 1


def test_require_passes_or_names_each_missing_backbone_and_host(fleet, tmp_path):
    here, _, _ = fleet
    done, out = _release_of(here, tmp_path, "--require", "x86_64")
    assert done.returncode == 0, done.stderr
    out.unlink()
    done, out = _release_of(here, tmp_path, "--require", "x86_64,sm90,NVIDIA L4")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("MISSING")] == [
        "MISSING cls", "MISSING cls", "MISSING det", "MISSING det"]
    assert "MISSING det: no variant for NVIDIA L4 (the bucket has x86_64-" in done.stderr
    assert lines[-1].startswith("ERROR: engines-release: 4 required (backbone, host) pair(s) have no variant;")
    assert not out.exists(), "a failed gate writes no release"


def test_require_matches_host_keys_prefixes_and_gpu_models():
    from provisioning.doit.release import missing_pairs

    release = Release(CREATED, "prod", "s3://b", None, (
        BackboneVariants("det", "e" * 64, "f" * 64, tuple(_variant(h) for h in (
            "sm90-nvidia-h100-80gb-hbm3", "sm86-sm89", "x86_64-avx2-1a2b3c"))),
        BackboneVariants("cls", "e" * 64, "f" * 64, (_variant("sm86-sm89", "cls"),)),
    ))
    wanted = ["NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3", "sm90", "sm86-sm89", "x86_64-avx2-1a2b3c", "x86_64"]
    assert missing_pairs(release, wanted) == [
        ("cls", "NVIDIA H100 80GB HBM3"), ("cls", "nvidia-h100-80gb-hbm3"), ("cls", "sm90"),
        ("cls", "x86_64-avx2-1a2b3c"), ("cls", "x86_64")]
    assert missing_pairs(release, ["NVIDIA L4", "sm8"]) == [("cls", "NVIDIA L4"), ("det", "NVIDIA L4")]


def test_bad_input_is_one_line_with_its_exit_code(tmp_path, models, fleet_keys):
    unsigned = make_builder(tmp_path, "unsigned", models, {"url": f"file://{tmp_path / 'bucket'}"})
    done, out = _release_of(unsigned, tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "field 'remote.signing_key': a release must be signed" in done.stderr
    local = make_builder(tmp_path, "local", models, None)
    done, _ = _release_of(local, tmp_path)
    assert done.returncode == 2 and "a release is assembled from the bucket; add a remote: block" in done.stderr
    signed = make_builder(tmp_path, "signed", models, file_remote(tmp_path / "bucket", fleet_keys))
    done = doit("engines-release", str(tmp_path / "x.json"), "--config", str(signed.config_path), "--created",
                "yesterday", cwd=tmp_path)
    assert done.returncode == 2 and "--created 'yesterday' is not an ISO 8601 time" in done.stderr
    done, _ = _release_of(signed, tmp_path, name="no-such-folder/x.json")
    assert done.returncode == 2 and "give a path in a writable folder" in done.stderr
    done = doit("engines-release", "--config", str(signed.config_path), cwd=tmp_path)
    assert done.returncode == 2 and "give exactly one output file" in done.stderr
    dead = make_builder(tmp_path, "dead", models, {
        "url": "s3://engines/prod", "endpoint_url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1,
        "signing_key": fleet_keys.builder})
    done, out = _release_of(dead, tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and not out.exists()
    assert "cannot be read" in done.stderr and "no release written" in done.stderr


def test_created_is_normalised_to_utc_seconds():
    from provisioning.doit.release import parse_created

    assert parse_created("2026-12-07T01:00:00+01:00") == CREATED
    assert parse_created("2026-12-07") == CREATED
    assert parse_created("2026-12-07T00:00:00.999Z") == CREATED


def test_a_release_lists_backbones_without_variants_so_a_pull_can_say_so(tmp_path, models, fleet_keys):
    builder = make_builder(tmp_path, "empty", models, file_remote(tmp_path / "bucket", fleet_keys))
    done, out = _release_of(builder, tmp_path)
    assert done.returncode == 0, done.stderr
    release = load_release(out, [reader(fleet_keys)], "prod")
    assert release.model_names == ("cls", "det") and all(not b.variants for b in release.backbones)
    assert Path(out).read_bytes().endswith(b"}\n")


def test_entries_of_another_namespace_or_with_a_swapped_manifest_are_left_out(fleet, tmp_path, fleet_keys):
    here, _, bucket = fleet
    import yaml

    staging = yaml.safe_load(here.config_path.read_text())
    staging["remote"]["namespace"] = "staging"
    (tmp_path / "staging.yaml").write_text(yaml.safe_dump(staging))
    assembly = assemble_release(load_config(tmp_path / "staging.yaml"), CREATED)
    assert all(not b.variants for b in assembly.release.backbones)
    assert len(assembly.notes) == 4 and all("belongs to namespace 'prod', not 'staging'" in n for n in assembly.notes)

    before = assemble_release(load_config(here.config_path), CREATED).release
    victim = before.backbone("det").variants[0]
    manifest = bucket / victim.entry.base / victim.entry.manifest
    document = json.loads(manifest.read_bytes())
    document["build"]["notes"] = {"validation": {"passed": True}}  # a claim nobody signed
    manifest.write_bytes(json.dumps(document).encode())
    after = assemble_release(load_config(here.config_path), CREATED)
    assert [v.host_key for v in after.release.backbone("det").variants] == [
        v.host_key for v in before.backbone("det").variants if v is not victim]
    assert after.notes == (f"{victim.entry.base}: left out, it does not verify (manifest part is missing or does "
                           "not match its commit record)",)
