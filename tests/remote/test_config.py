"""The remote: block: validated before any build, one-line errors, keys never shown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from provisioning import ConfigError, build_engine_compiler, load_config
from provisioning.remote import make_remote_cache

from .conftest import make_host

SECRET = "5ecret-" + "ab" * 16


def _compiler_error(tmp_path, corpus_dir, remote) -> str:
    host = make_host(tmp_path, "h", corpus_dir, remote)
    with pytest.raises(ConfigError) as info:
        build_engine_compiler(load_config(host.config_path))
    message = str(info.value)
    assert "\n" not in message and str(host.config_path) in message
    return message


@pytest.mark.parametrize("remote, field, hint", [
    ({"url": "s3://b/e", "mode": "rw"}, "remote.mode", "read-write, read-only, off"),
    ({"mode": "read-only"}, "remote.url", "s3://bucket"),
    ({"url": "gs://b/e"}, "remote.url", "s3:// or file://"),
    ({"url": "s3://key:secret@b/e"}, "remote.url", "AWS_* environment"),
    ({"url": "s3://b/e", "timeout_s": 0}, "remote.timeout_s", "positive number"),
    ({"url": "s3://b/e", "endpoint_url": "127.0.0.1:9000"}, "remote.endpoint_url", "http(s) URL"),
    ({"url": "s3://b/e", "bucket": "x"}, "remote'", "unknown key(s) bucket"),
    ({"url": "s3://b/e", "require_signature": True}, "remote.require_signature", "add remote.signing_key"),
    ({"url": "s3://b/e", "signing_key": SECRET}, "remote.signing_key", "{env: VAR}"),
    ({"url": "s3://b/e", "signing_key": {"env": "X", "file": "k"}}, "remote.signing_key", "exactly one"),
    ({"url": "s3://b/e", "signing_key": {"env": "NO_SUCH_KEY_VAR"}}, "remote.signing_key", "NO_SUCH_KEY_VAR is not set"),
    ({"url": "s3://b/e", "signing_key": {"file": "missing.key"}}, "remote.signing_key", "cannot read key file"),
    ({"url": "s3://b/e", "signing_key": {"algorithm": "ed25519", "public_key": {"file": "k.pub"}}},
     "remote.signing_key", "add private_key, or use mode: read-only"),
])
def test_bad_remote_block_fails_when_the_compiler_is_built(tmp_path, corpus_dir, remote, field, hint):
    message = _compiler_error(tmp_path, corpus_dir, remote)
    assert f"field '{field}" in message and hint in message, message


def test_key_material_never_appears_in_errors_or_reprs(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.setenv("SHORT_KEY", "tooshort")
    message = _compiler_error(tmp_path, corpus_dir, {"url": "s3://b/e", "signing_key": {"env": "SHORT_KEY"}})
    assert "shorter than 16 bytes" in message and "tooshort" not in message
    (tmp_path / "bad.pem").write_text(SECRET)
    message = _compiler_error(tmp_path / "x", corpus_dir, {
        "url": "s3://b/e", "signing_key": {"algorithm": "ed25519", "private_key": {"file": str(tmp_path / "bad.pem")}}})
    assert "not an unencrypted Ed25519 PEM" in message and SECRET not in message
    monkeypatch.setenv("GOOD_KEY", SECRET)
    host = make_host(tmp_path, "ok", corpus_dir, {"url": "s3://b/e", "signing_key": {"env": "GOOD_KEY"}})
    remote = make_remote_cache(load_config(host.config_path))
    assert SECRET not in repr(remote) and SECRET not in repr(remote.signer) and SECRET not in repr(remote.config)


def test_no_remote_block_keeps_the_plain_compiler(tmp_path, corpus_dir):
    host = make_host(tmp_path, "h", corpus_dir, None)
    assert make_remote_cache(load_config(host.config_path)) is None
    assert host.provision().built == 3


def test_importing_provisioning_loads_no_object_store_client():
    code = ("import sys, provisioning, provisioning.remote; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fsspec', 's3fs', 'botocore', 'boto3', "
            "'aiobotocore', 'cryptography'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_file_url_is_anchored_at_the_config_folder_and_shared_like_a_bucket(tmp_path, corpus_dir):
    block = {"url": "file://../shared-engines", "timeout_s": 3, "lease_s": 2}
    make_host(tmp_path, "a", corpus_dir, block).provision()
    assert list((tmp_path / "shared-engines").glob("*/*.engine/sha256"))
    b = make_host(tmp_path, "b", corpus_dir, block)
    assert [r.source for r in b.provision()] == ["remote"] * 3
