"""Records planted in the cache folder by someone who can write it (not the config, not the ONNX).

A record there (``.verified/index.json``, ``.verified/<engine>.json``, ``.inspect/*``) is a
shortcut for this host's own reuse. It must never decide what this host signs, publishes
or calls verified: each test plants one for real and runs the real ``doit`` in a child.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from provisioning.sidecar import hash_file, stat_signature
from provisioning.verify import INDEX_NAME, VERIFIED_DIR

from tests.conftest import write_corpus_yaml

from tests.integration.conftest import edit_onnx


def _ed25519_key(folder: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True)
    pem = folder / "builder.pem"
    pem.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return pem


def _plant_onnx_record(cache: Path, model: Path, digest: str) -> None:
    """The index entry of ``model`` at its current stat signature, naming ``digest`` (another file's)."""
    folder = cache / VERIFIED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = os.path.abspath(model)
    signature = stat_signature(os.lstat(model))
    (folder / INDEX_NAME).write_text(json.dumps(
        {"engines": {}, "onnx": {path: {"files": [[path, signature, digest]], "sha256": digest}}}))


def _uploaded_manifests(remote: Path) -> list[dict]:
    return [json.loads(p.read_bytes()) for p in sorted(remote.rglob("manifest/*")) if p.is_file()]


def test_a_planted_index_digest_never_reaches_a_signed_upload(project, tmp_path):
    """Issue 22 item 1: v1's digest planted at v2's stat signature; the builder signs v2's digest."""
    remote = tmp_path / "remote"
    key = _ed25519_key(tmp_path / "keys")
    det = {"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"}
    write_corpus_yaml(project.corpus, [det], remote={
        "url": f"file://{remote}", "timeout_s": 3, "signing_key": {"algorithm": "ed25519", "private_key": {"file": str(key)}}})
    model = project.corpus / "models" / "det.onnx"
    v1 = hash_file(model)
    edit_onnx(model, "v2")
    v2 = hash_file(model)
    assert v1 != v2
    _plant_onnx_record(project.cache, model, v1)

    result = project.doit("engines")
    assert result.returncode == 0, result.stdout + result.stderr
    manifests = _uploaded_manifests(remote)
    assert manifests, "nothing was uploaded"
    assert [m["inputs"]["onnx_sha256"] for m in manifests] == [v2]  # the bytes the builder hashed and built
    local = json.loads(next(project.cache.glob("*.engine.manifest.json")).read_text())
    assert local["inputs"]["onnx_sha256"] == v2
    from provisioning.remote.layout import inputs_digest

    digests = {p.parent.parent.name for p in remote.rglob("manifest/*")}
    assert digests == {inputs_digest(local["inputs"])}  # the remote key derives from v2's digest too
    assert hashlib.sha256(model.read_bytes()).hexdigest() == v2


def test_the_compiler_builds_and_records_the_digest_of_bytes_it_hashed(corpus_yaml):
    """In-process: a caller's digest that no bytes back (a record's) is replaced past a local miss."""
    from provisioning import EngineCompiler, EngineCompileRequest, HostCapabilities, build_backbone_specs, load_config
    from provisioning.backends.onnxruntime import OnnxRuntimeBackend
    from provisioning.onnxinfo import onnx_digest

    config = load_config(corpus_yaml)
    specs = build_backbone_specs(config, "onnxruntime")[:1]
    host = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2", "fma"))
    planted = "1" * 64
    compiler = EngineCompiler(OnnxRuntimeBackend(), onnx_sha256=lambda spec: planted)
    result = compiler.compile_engines_for_corpus(
        EngineCompileRequest(backbones=specs, cache_dir=config.cache_dir, host=host)).results[0]
    real = onnx_digest(specs[0].onnx_path, specs[0].external_data)
    assert result.entry.inputs["onnx_sha256"] == real != planted
    assert json.loads(Path(str(result.entry.path) + ".manifest.json").read_text())["inputs"]["onnx_sha256"] == real


def test_full_verify_hashes_an_indexed_engine_even_when_its_stat_matches(project):
    """Issue 22 item 18: same size, mtime, ctime and inode over corrupted bytes; ``verify: full`` still hashes."""
    from provisioning.sidecar import Sha256Sidecar

    from tests.integration.conftest import task_lines

    write_corpus_yaml(project.corpus, [{"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"}])
    assert project.doit("engines").returncode == 0
    time.sleep(2.2)  # the index takes only files unchanged for 2 s (racy-clean)
    second = project.doit("engines")
    assert task_lines(second.stdout) == {"det": "--"}, second.stdout + second.stderr
    engine = project.engine("det")
    index_path = project.cache / VERIFIED_DIR / INDEX_NAME
    index = json.loads(index_path.read_text())
    assert engine.name in index["engines"]  # the entry is indexed: the checker's shortcut applies
    st = os.stat(engine)
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(engine, "r+b") as handle:  # same inode, same size
        handle.write(data)
    os.utime(engine, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(engine)
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert now.st_ctime_ns != st.st_ctime_ns  # ctime cannot be restored from user space: the record is
    index["engines"][engine.name]["files"][0] = stat_signature(os.lstat(engine))  # re-planted over it instead
    index_path.write_text(json.dumps(index))
    assert not Sha256Sidecar.check(engine).ok

    third = project.doit("engines")
    assert third.returncode == 0, third.stdout + third.stderr
    assert task_lines(third.stdout) == {"det": "."}, third.stdout  # not up to date: the engine was hashed
    assert Sha256Sidecar.check(engine).ok  # and rebuilt


def _inspection_record(cache: Path, model: Path) -> Path:
    from provisioning.onnxinfo import INSPECT_DIR

    key = hashlib.sha256(os.fsencode(os.path.abspath(model))).hexdigest()[:24]
    record = cache / INSPECT_DIR / f"{key}.json"
    assert record.is_file(), sorted(p.name for p in (cache / INSPECT_DIR).iterdir())
    return record


def _emb_project(project) -> Path:
    write_corpus_yaml(project.corpus, [{"model_name": "emb", "onnx": "models/emb.onnx", "precision": "fp32"}])
    first = project.doit("engines")
    assert first.returncode == 0, first.stdout + first.stderr
    return project.corpus / "models" / "emb.onnx"


def test_a_planted_inspection_naming_a_file_outside_the_model_folder_is_ignored(project, tmp_path):
    """Issue 22 item 9: a record listing ../../outside-secret.txt as external data."""
    from tests.integration.conftest import task_lines

    model = _emb_project(project)
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("the builder's secret")
    record_path = _inspection_record(project.cache, model)
    record = json.loads(record_path.read_text())
    record["external_data"] = ["../../outside-secret.txt"]
    record_path.write_text(json.dumps(record))
    assert (model.parent / "../../outside-secret.txt").resolve() == secret.resolve()

    info = project.doit("info", "engines:emb")
    assert "outside-secret" not in info.stdout and "emb.onnx.data" in info.stdout, info.stdout
    again = project.doit("engines")
    assert task_lines(again.stdout) == {"emb": "--"}, again.stdout + again.stderr
    assert json.loads(record_path.read_text())["external_data"] == ["emb.onnx.data"]  # inspected and rewritten


def test_a_planted_inspection_that_drops_the_weights_does_not_make_changed_weights_up_to_date(project):
    """Issue 22 item 9: a record without emb.onnx.data; the weights then change."""
    from provisioning.onnxinfo import onnx_digest

    from tests.integration.conftest import task_lines

    model = _emb_project(project)
    data = model.parent / "emb.onnx.data"
    record_path = _inspection_record(project.cache, model)
    record = json.loads(record_path.read_text())
    assert record["external_data"] == ["emb.onnx.data"]
    record["external_data"] = []
    record_path.write_text(json.dumps(record))
    assert project.doit("engines").returncode == 0
    if json.loads(record_path.read_text())["external_data"] == ["emb.onnx.data"]:
        record_path.write_text(json.dumps(record))  # planted again after this host rewrote it

    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(raw)
    changed = project.doit("engines")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert task_lines(changed.stdout) == {"emb": "."}, changed.stdout  # the changed weights were seen
    manifest = json.loads(next(project.cache.glob("*.engine.manifest.json")).read_text())
    assert manifest["inputs"]["onnx_sha256"] == onnx_digest(model, (data,))


def test_verify_signatures_hashes_the_engine_it_calls_signed(project, tmp_path):
    """Issue 22 item 15: under verify: stat, swapped bytes behind a planted .verified record are not SIGNED."""
    import shutil

    from provisioning.sidecar import Sha256Sidecar
    from provisioning.verify import record_path

    remote = tmp_path / "remote"
    key = _ed25519_key(tmp_path / "keys")
    write_corpus_yaml(project.corpus, [{"model_name": "det", "onnx": "models/det.onnx", "precision": "fp32"}],
                      verify="stat", remote={"url": f"file://{remote}", "timeout_s": 3,
                                             "signing_key": {"algorithm": "ed25519", "private_key": {"file": str(key)}}})
    assert project.doit("engines").returncode == 0
    shutil.rmtree(project.cache)  # this host's cache lost: the next run fetches the signed entry
    fetched = project.doit("engines")
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    engine = project.engine("det")
    assert Path(str(engine) + ".commit").is_file()
    signed = project.doit("engines-status", "--verify-signatures")
    assert signed.returncode == 0 and "SIGNED" in signed.stdout, signed.stdout + signed.stderr

    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(engine, "r+b") as handle:  # swapped bytes, same size and inode
        handle.write(data)
    record = record_path(engine)
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps({"signature": stat_signature(os.lstat(engine)),
                                  "sha256": Sha256Sidecar.read(engine).sha256}))  # the planted stat record

    result = project.doit("engines-status", "--verify-signatures")
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("det"))
    assert "SIGNED" not in line and "REJECTED" in line and "do not match" in line, line
