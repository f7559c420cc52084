"""engines-pull on a serving host: a signed release, a real ``file://`` bucket, the real cache, real doit.

The serving host has no corpus, no ONNX and no dodo.py: only serving.yaml and the release.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.errors import ConfigError
from provisioning.manifest import read_manifest
from provisioning.release.format import ReleaseError
from provisioning.release.pull import pull_release
from provisioning.release.serving_config import load_serving_config, parse_runtime
from provisioning.sidecar import Sha256Sidecar
from tests.conftest import DOIT
from tests.release.pull_fixtures import H100, L4, fake_nvml_dir, file_kit, ort, rtx, serving_host, trt, with_path


@pytest.fixture
def kit(tmp_path):
    """det: H100 exact + an ampere_plus plan; cls: a version-compatible plan and an RTX plan; emb: ONNX Runtime."""
    kit = file_kit(tmp_path)
    kit.add("det", trt("det", H100, "10.16.1.11"))
    kit.add("det", trt("det", H100, "10.16.1.11", hwc="ampere_plus"))
    kit.add("cls", trt("cls", H100, "10.12.0.1", vc=True))
    kit.add("cls", rtx("cls", ("sm89", "sm90")))
    kit.add("emb", ort("emb"))
    return kit


def serve(kit, tmp_path, **top):
    """(release path, serving config) for a fresh serving host folder."""
    release = kit.write(tmp_path / "engines.release.json")
    return release, load_serving_config(kit.serving_yaml(tmp_path / "serving", **top))


def test_pull_publishes_each_backbones_variant_as_a_local_build_would(kit, tmp_path):
    release, config = serve(kit, tmp_path, allow_cpu_fallback=True)
    report = pull_release(release, config, host=serving_host(H100, tensorrt="10.16.1.11", onnxruntime="1.23.2"))
    assert report.exit_code == 0
    texts = [line.text() for line in report.lines]
    names = {m: kit.variants[m][0].engine for m in kit.variants}
    assert texts == [f"PULLED cls {names['cls']} (version-compatible 10.12 <= 10.16)",
                     f"PULLED det {names['det']} (exact)",
                     f"PULLED emb {names['emb']} (cpu-fallback {kit.variants['emb'][0].tied_to.isa})"]
    for line in report.lines:
        variant = line.choice.variant
        assert line.path == config.cache_dir / variant.engine
        assert line.path.read_bytes() == kit.data[variant.engine]
        assert Sha256Sidecar.check(line.path).ok
        assert read_manifest(line.path)["engine"]["sha256"] == variant.sha256
    assert sorted(p.name for p in config.cache_dir.iterdir() if not p.name.startswith(".")) == sorted(
        n + s for n in names.values() for s in ("", ".manifest.json", ".sha256"))

    again = pull_release(release, config, host=serving_host(H100, tensorrt="10.16.1.11", onnxruntime="1.23.2"))
    assert [line.state for line in again.lines] == ["PRESENT"] * 3 and again.exit_code == 0


def test_each_simulated_host_gets_its_documented_variant(kit, tmp_path):
    release, config = serve(kit, tmp_path)
    l4 = pull_release(release, config, host=serving_host(L4, tensorrt="10.16.1.11", tensorrt_rtx="1.2.0.54"),
                      dry_run=True)
    assert [(line.state, line.choice and line.choice.reason) for line in l4.lines] == [
        ("PLANNED", "rtx-targets sm89"), ("PLANNED", "hardware-compatible ampere_plus sm89 >= sm80"),
        ("NO-VARIANT", None)]
    assert not config.cache_dir.exists()  # a dry run writes nothing
    assert l4.exit_code == 1 and "--allow-cpu-fallback" in l4.lines[2].text()


def test_swapped_bytes_are_refused_and_the_other_backbones_still_pulled(kit, tmp_path):
    det = kit.variants["det"][0]
    kit.put(f"{det.entry.base}/{det.entry.engine}", os.urandom(det.size))  # same size, other bytes
    release, config = serve(kit, tmp_path, allow_cpu_fallback=True)
    report = pull_release(release, config, host=serving_host(H100, tensorrt="10.16.1.11"))
    states = {line.model: line.state for line in report.lines}
    assert states == {"cls": "PULLED", "det": "REFUSED", "emb": "PULLED"} and report.exit_code == 1
    line = next(line.text() for line in report.lines if line.model == "det")
    assert "does not match the release's sha256" in line and "nothing published for det" in line
    assert "\n" not in line
    assert not any(p.name.startswith(det.engine) for p in config.cache_dir.iterdir())


def test_a_manifest_that_differs_from_the_release_is_refused(kit, tmp_path):
    det = kit.variants["det"][0]
    kit.put(f"{det.entry.base}/{det.entry.manifest}", b'{"engine": {}}')
    release, config = serve(kit, tmp_path)
    report = pull_release(release, config, host=serving_host(H100, tensorrt="10.16.1.11"), models=["det"])
    assert report.lines[0].state == "REFUSED" and "manifest part does not match" in report.lines[0].text()


def test_an_entry_gone_from_the_bucket_fails_that_backbone_with_a_line(kit, tmp_path):
    det = kit.variants["det"][0]
    root = Path(kit.url[len("file://"):])
    for path in sorted((root / det.entry.base).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    release, config = serve(kit, tmp_path)
    report = pull_release(release, config, host=serving_host(H100, tensorrt="10.16.1.11"), models=["cls", "det"])
    assert [line.state for line in report.lines] == ["PULLED", "GONE"] and report.exit_code == 1
    assert "is no longer in the bucket (its manifest part missing" in report.lines[1].text()

    cls = kit.variants["cls"][0]
    (root / cls.entry.base / cls.entry.engine).unlink()  # only the engine part went
    for path in config.cache_dir.glob(cls.engine + "*"):
        path.unlink()
    report = pull_release(release, config, host=serving_host(H100, tensorrt="10.16.1.11"), models=["cls"])
    assert report.lines[0].state == "GONE" and "(its engine part missing" in report.lines[0].text()
    assert not [p for p in config.cache_dir.iterdir() if p.name.startswith(cls.engine)]


def test_bad_releases_are_refused_before_anything_is_downloaded(kit, tmp_path):
    release, config = serve(kit, tmp_path)
    host = serving_host(H100, tensorrt="10.16.1.11")
    raw = release.read_bytes()
    cases = {}
    edited = bytearray(raw)
    edited[len(raw) // 2] ^= 0x01
    cases["edited"] = bytes(edited)
    other = file_kit(tmp_path / "other")  # another fleet's key
    other.variants = kit.variants
    cases["untrusted"] = other.write(tmp_path / "other.json").read_bytes()
    cases["namespace"] = kit.write(tmp_path / "staging.json", namespace="staging").read_bytes()
    cases["unsigned"] = json.dumps({"payload": json.loads(raw)["payload"], "payloadType": "application/vnd.in-toto+json",
                                    "signatures": []}).encode()
    cases["oversized"] = raw + b" " * (16 << 20)
    cases["deep"] = b"[" * 100_000 + b"]" * 100_000
    cases["not json"] = b"\x00\xff garbage"
    for label, data in cases.items():
        path = tmp_path / f"{label.replace(' ', '_')}.release.json"
        path.write_bytes(data)
        with pytest.raises(ReleaseError) as caught:
            pull_release(path, config, host=host)
        assert caught.value.exit_code == 2 and "\n" not in str(caught.value), label
        assert not config.cache_dir.exists(), label
    with pytest.raises(ConfigError, match="no backbone 'nope'"):
        pull_release(release, config, host=host, models=["nope"])


def test_verify_stat_trusts_an_unchanged_engine_and_full_finds_a_damaged_one(kit, tmp_path):
    release, config = serve(kit, tmp_path, verify="stat")
    host = serving_host(H100, tensorrt="10.16.1.11")
    first = pull_release(release, config, host=host, models=["det"])
    path = first.lines[0].path
    assert pull_release(release, config, host=host, models=["det"]).lines[0].state == "PRESENT"
    Sha256Sidecar.path_for(path).unlink()  # the right bytes, but not published (no commit point): pulled again
    assert pull_release(release, config, host=host, models=["det"]).lines[0].state == "PULLED"
    assert Sha256Sidecar.check(path).ok
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))  # a changed file: stat no longer matches, so it is hashed, refused, pulled again
    again = pull_release(release, config, host=host, models=["det"])
    assert again.lines[0].state == "PULLED" and path.read_bytes() == kit.data[path.name]


def test_serving_config_errors_are_one_line_with_the_field(tmp_path, kit):
    good = kit.serving_yaml(tmp_path / "s")
    config = load_serving_config(good, cache_dir=str(tmp_path / "elsewhere"), runtime="tensorrt==10.8.0.43")
    assert config.cache_dir == tmp_path / "elsewhere" and str(config.runtime) == "tensorrt==10.8.0.43"
    assert config.remote.mode == "read-only" and config.remote.namespace == "default"
    assert load_serving_config(good).cache_dir == tmp_path / "s" / "cache"
    for text, match in [("cache_dir: c\nbackbones: []\nremote: {url: 'file:///x'}\n", "unknown key.*backbones"),
                        ("remote: {url: 'file:///x'}\n", "field 'cache_dir'"),
                        ("cache_dir: c\n", "field 'remote'"),
                        ("cache_dir: c\nruntime: tensorrt\nremote: {url: 'file:///x'}\n", "NAME==VERSION"),
                        ("cache_dir: c\nremote: {url: 'file:///x', mode: 'off'}\n", "remote.mode"),
                        ("cache_dir: [\n", "invalid YAML at line")]:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=match) as caught:
            load_serving_config(path)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="unknown runtime 'triton'"):
        parse_runtime("triton==2.50")


# -- the real doit command, where there is no dodo.py --------------------------------------------------------
def doit_pull(folder: Path, *args: str, gpu=H100, timeout: float = 120, env: dict | None = None):
    """``doit engines-pull ...`` in ``folder`` (no dodo.py), with a fake NVML describing ``gpu``."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    nvml = fake_nvml_dir(folder.parent / "nvml", gpu)
    child["PYTHONPATH"] = with_path(nvml)
    child.update(env or {})
    return subprocess.run([DOIT, "engines-pull", *args], cwd=folder, env=child, capture_output=True, text=True,
                          timeout=timeout)


def test_doit_engines_pull_runs_without_a_dodo_and_names_the_runtime_it_used(kit, tmp_path):
    release = kit.write(tmp_path / "engines.release.json")
    serving = kit.serving_yaml(tmp_path / "serving")
    done = doit_pull(serving.parent, str(release), "--dry-run", "--json", "--runtime", "tensorrt==10.16.1.11",
                     env={"PROVISIONING_SERVING_CONFIG": str(serving)})
    plan = json.loads(done.stdout)
    assert done.returncode == 1 and plan["dry_run"] is True  # emb has only a CPU engine: no usable variant
    assert [(b["model_name"], b["state"], b["reason"]) for b in plan["backbones"]] == [
        ("cls", "PLANNED", "version-compatible 10.12 <= 10.16"), ("det", "PLANNED", "exact"), ("emb", "NO-VARIANT", None)]
    assert plan["host"]["runtimes"]["tensorrt"] == "10.16.1.11" and not (serving.parent / "cache").exists()
    done = doit_pull(serving.parent, str(release), "--runtime", "tensorrt==10.16.1.11", "--models", "det,cls",
                     env={"PROVISIONING_SERVING_CONFIG": str(serving)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "tensorrt 10.16.1.11 (given)" in lines[0] and "NVIDIA H100 80GB HBM3 sm90" in lines[0]
    assert lines[1].startswith("PULLED cls ") and lines[2] == f"PULLED det {kit.variants['det'][0].engine} (exact)"

    done = doit_pull(serving.parent, "--runtime", "tensorrt==10.16.1.11", str(release), "--serving-config",
                     str(serving), "--json", "--allow-cpu-fallback")
    document = json.loads(done.stdout)
    assert done.returncode == 0 and [b["state"] for b in document["backbones"]] == ["PRESENT", "PRESENT", "PULLED"]
    assert document["host"]["runtime_given"] is True

    done = doit_pull(serving.parent, str(release), "--serving-config", str(serving), "--models", "nope")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no backbone 'nope'" in done.stderr
    done = doit_pull(serving.parent, str(release))
    assert done.returncode == 2 and "PROVISIONING_SERVING_CONFIG" in done.stderr and "Traceback" not in done.stderr


def test_a_pull_imports_no_onnx_onnxruntime_or_tensorrt(kit, tmp_path):
    release = kit.write(tmp_path / "engines.release.json")
    serving = kit.serving_yaml(tmp_path / "serving")
    nvml = fake_nvml_dir(tmp_path / "nvml", H100)
    code = ("import sys\n"
            "from doit.doit_cmd import DoitMain\n"
            "code = DoitMain(extra_config={'GLOBAL': {}}).run(sys.argv[1:])\n"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'tensorrt', 'tensorrt_rtx') if m in sys.modules]\n"
            "print('HEAVY', heavy, code)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    env["PYTHONPATH"] = with_path(nvml)
    done = subprocess.run([sys.executable, "-c", code, "engines-pull", str(release), "--serving-config", str(serving),
                           "--runtime", "tensorrt==10.16.1.11", "--allow-cpu-fallback"],
                          cwd=serving.parent, env=env, capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 0" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("PULLED ") == 3


def test_an_engine_that_verifies_but_is_not_the_releases_bytes_is_replaced(kit, tmp_path):
    release, config = serve(kit, tmp_path)
    host = serving_host(H100, tensorrt="10.16.1.11")
    path = pull_release(release, config, host=host, models=["det"]).lines[0].path
    other = os.urandom(100)  # e.g. an older release's engine under the same name, with its own valid sidecar
    path.write_bytes(other)
    Sha256Sidecar.path_for(path).write_text(Sha256Sidecar.format_line(hashlib.sha256(other).hexdigest(), path.name))
    assert Sha256Sidecar.check(path).ok
    report = pull_release(release, config, host=host, models=["det"])
    assert report.lines[0].state == "PULLED" and path.read_bytes() == kit.data[path.name]


def test_a_manifest_of_another_engine_is_refused(kit, tmp_path):
    det = kit.variants["det"][0]
    manifest = json.loads(Path(kit.url[len("file://"):], det.entry.base, det.entry.manifest).read_bytes())
    manifest["engine"]["sha256"] = "0" * 64  # a manifest the release pins, describing other bytes
    blob = json.dumps(manifest).encode()
    sha = hashlib.sha256(blob).hexdigest()
    kit.put(f"{det.entry.base}/manifest/{sha}", blob)
    kit.variants["det"][0] = dataclasses.replace(det, manifest_sha256=sha,
                                                 entry=dataclasses.replace(det.entry, manifest=f"manifest/{sha}"))
    release, config = serve(kit, tmp_path)
    report = pull_release(release, config, host=serving_host(H100, tensorrt="10.16.1.11"), models=["det"])
    assert report.lines[0].state == "REFUSED" and "describes another engine" in report.lines[0].text()


def test_a_serving_config_without_keys_is_refused(kit, tmp_path):
    release = kit.write(tmp_path / "engines.release.json")
    path = tmp_path / "serving.yaml"
    path.write_text(f"cache_dir: cache\nremote: {{url: '{kit.url}'}}\n")
    with pytest.raises(ConfigError, match="a pull verifies the release with the fleet's key") as caught:
        pull_release(release, load_serving_config(path), host=serving_host(H100, tensorrt="10.16.1.11"))
    assert caught.value.exit_code == 2 and not (tmp_path / "cache").exists()



def test_variants_no_trusted_key_vouches_for_are_never_pulled_and_the_line_says_so(kit, tmp_path):
    release = kit.write(tmp_path / "engines.release.json")
    path = tmp_path / "serving.yaml"
    path.write_text(json.dumps({"cache_dir": "cache", "remote": {"url": kit.url, "trusted_keys": [{
        "id": kit.key_id, "algorithm": "ed25519", "public_key": {"file": str(kit.keys.public_file)},
        "host_key_prefixes": ["sm89"]}]}}))
    report = pull_release(release, load_serving_config(path), host=serving_host(H100, tensorrt="10.16.1.11"),
                          models=["det"])
    line = report.lines[0].text()
    assert report.lines[0].state == "NO-VARIANT" and report.exit_code == 1
    assert "variants for ampere-plus, sm90-h100-80gb-hbm3 were left out" in line and "host_key_prefixes" in line
    assert not (tmp_path / "cache").exists()
