"""The remote: block: validated before any build, one-line errors, keys never shown."""

from __future__ import annotations

import logging
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
    ({"url": "s3://b/e", "trusted_keys": {"id": "a"}}, "remote.trusted_keys", "must be a list"),
    ({"url": "s3://b/e", "trusted_keys": [{"algorithm": "ed25519", "public_key": {"file": "k.pub"}}]},
     "remote.trusted_keys[0]", "needs an id"),
    ({"url": "s3://b/e", "trusted_keys": [{"id": "a b", "env": "K"}]}, "remote.trusted_keys[0].id", "1-64 characters"),
    ({"url": "s3://b/e", "trusted_keys": [{"id": "unsigned", "env": "K"}]}, "remote.trusted_keys[0].id",
     "not 'unsigned'"),
    ({"url": "s3://b/e", "trusted_keys": [{"id": "a", "env": "K"}, {"id": "a", "env": "K"}]},
     "remote.trusted_keys[1].id", "listed twice"),
    ({"url": "s3://b/e", "trusted_keys": [{"id": "a", "algorithm": "ed25519", "private_key": {"file": "k"}}]},
     "remote.trusted_keys[0].private_key", "only verifies"),
    ({"url": "s3://b/e", "trusted_keys": [{"id": "a", "env": "K", "host_key_prefixes": "sm"}]},
     "remote.trusted_keys[0].host_key_prefixes", "list of host-key prefixes"),
    ({"url": "s3://b/e", "signing_key": {"env": "K", "host_key_prefixes": ["sm"]}}, "remote.signing_key",
     "unknown key(s) host_key_prefixes"),
    ({"url": "s3://b/e", "trusted_keys": [{"id": "a", "env": "K"}]}, "remote.signing_key",
     "trusted_keys only verify"),
    ({"url": "s3://b/e", "namespace": "prod/eu"}, "remote.namespace", "1-64 characters"),
    ({"url": "s3://b/e", "corpus": ""}, "remote.corpus", "1-64 characters"),
    ({"url": "s3://b/e", "max_engine_bytes": 1.5}, "remote.max_engine_bytes", "whole number of bytes"),
    ({"url": "s3://b/e", "max_engine_bytes": 0}, "remote.max_engine_bytes", "whole number of bytes"),
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
    assert SECRET not in repr(remote) and SECRET not in repr(remote.keys) and SECRET not in repr(remote.config)


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
    assert list((tmp_path / "shared-engines").glob("*/*.engine/*/commit/unsigned"))
    b = make_host(tmp_path, "b", corpus_dir, block)
    assert [r.source for r in b.provision()] == ["remote"] * 3


HMAC = "ab" * 32


def _remote(tmp_path, corpus_dir, name, block):
    host = make_host(tmp_path, name, corpus_dir, block)
    return make_remote_cache(load_config(host.config_path)), host


@pytest.mark.parametrize("block, field, hint", [
    ({"endpoint_url": "http://10.0.0.5:9000"}, "remote.endpoint_url", "use https"),
    ({"endpoint_url": "http://minio.internal:9000", "allow_insecure_http": True}, "remote.allow_insecure_http",
     "needs signed entries"),
    ({"endpoint_url": "http://10.0.0.5:9000", "allow_insecure_http": True, "signing_key": {"env": "K"},
      "require_signature": False}, "remote.allow_insecure_http", "needs signed entries"),
    ({"allow_insecure_http": "yes"}, "remote.allow_insecure_http", "true or false"),
])
def test_plain_http_to_another_machine_is_refused(tmp_path, corpus_dir, monkeypatch, block, field, hint):
    monkeypatch.setenv("K", HMAC)
    message = _compiler_error(tmp_path, corpus_dir, {"url": "s3://b/e", **block})
    assert f"field '{field}'" in message and hint in message, message


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "http://127.8.9.10", "http://[::1]:9000",
                                      "http://localhost:9000", "https://minio.internal:9000"])
def test_loopback_and_https_endpoints_need_no_option(tmp_path, corpus_dir, endpoint):
    remote, _ = _remote(tmp_path, corpus_dir, "h", {"url": "s3://b/e", "endpoint_url": endpoint})
    assert remote is not None


def test_insecure_http_is_allowed_with_the_option_and_required_signatures(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.setenv("K", HMAC)
    remote, _ = _remote(tmp_path, corpus_dir, "h", {"url": "s3://b/e", "endpoint_url": "http://10.0.0.5:9000",
                                                     "allow_insecure_http": True, "signing_key": {"env": "K"}})
    assert remote.config.signatures_required


def test_aws_endpoint_url_from_the_environment_obeys_the_same_rule(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.5:9000")
    host = make_host(tmp_path, "h", corpus_dir, {"url": "s3://b/e"})
    with pytest.raises(ConfigError) as info:
        build_engine_compiler(load_config(host.config_path))
    assert "environment variable AWS_ENDPOINT_URL" in str(info.value) and "\n" not in str(info.value)


def test_a_key_means_signatures_are_required(tmp_path, corpus_dir, monkeypatch, caplog):
    from .conftest import policy_warnings_of

    monkeypatch.setenv("K", HMAC)
    with caplog.at_level(logging.WARNING):
        remote, _ = _remote(tmp_path, corpus_dir, "signed", {"url": "s3://b/e", "signing_key": {"env": "K"}})
    assert remote.config.require_signature and policy_warnings_of(caplog) == []
    with caplog.at_level(logging.WARNING):
        remote, _ = _remote(tmp_path, corpus_dir, "optout", {"url": "s3://b/e", "signing_key": {"env": "K"},
                                                            "require_signature": False})
    assert not remote.config.signatures_required
    [(event, line)] = policy_warnings_of(caplog)
    assert event == "remote_signature_optional" and "require_signature: false" in line and "\n" not in line


def test_an_unsigned_fleet_is_warned_once_per_run(tmp_path, corpus_dir, caplog):
    from .conftest import policy_warnings_of

    host = make_host(tmp_path, "h", corpus_dir, {"url": "s3://b/e"})
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # doit builds one remote cache per task
            make_remote_cache(load_config(host.config_path))
    [(event, line)] = policy_warnings_of(caplog)
    assert event == "remote_unsigned" and "remote.signing_key" in line and "replace the engines" in line


def test_a_read_only_host_holding_an_hmac_key_is_told_to_use_ed25519(tmp_path, corpus_dir, monkeypatch, caplog):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .conftest import policy_warnings_of

    monkeypatch.setenv("K", HMAC)
    (tmp_path / "k.pub").write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with caplog.at_level(logging.WARNING):
        _remote(tmp_path, corpus_dir, "rw", {"url": "s3://b/e", "signing_key": {"env": "K"}})
        _remote(tmp_path, corpus_dir, "ed", {"url": "s3://b/e", "mode": "read-only", "signing_key": {
            "algorithm": "ed25519", "public_key": {"file": str(tmp_path / "k.pub")}}})
        assert policy_warnings_of(caplog) == []
        _remote(tmp_path, corpus_dir, "ro", {"url": "s3://b/e", "mode": "read-only", "signing_key": {"env": "K"}})
    [(event, line)] = policy_warnings_of(caplog)
    assert event == "remote_hmac_reader" and "forge entries" in line and "Ed25519" in line and "env K" in line
    assert HMAC not in line
