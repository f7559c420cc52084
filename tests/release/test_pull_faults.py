"""engines-pull against moto over HTTP: swapped bytes, a SIGKILL mid-pull and its resume, a dead bucket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from provisioning.release import pull as pull_module
from provisioning.release.pull import pull_release
from provisioning.release.serving_config import load_serving_config
from provisioning.sidecar import Sha256Sidecar
from tests.conftest import DOIT
from tests.release.pull_fixtures import H100, ReleaseKit, fake_nvml_dir, s3_kit, serving_host, trt, with_path
from tests.remote.conftest import LOOPBACK, S3_ENV, bucket, s3_env, s3_server  # noqa: F401 (fixtures)

MODELS = ("det", "cls", "emb")


@pytest.fixture
def s3(tmp_path, s3_server, bucket):  # noqa: F811
    """A kit over a moto bucket; one H100 exact variant per backbone."""
    kit = s3_kit(tmp_path, s3_server.endpoint, bucket)
    kit.endpoint = s3_server.endpoint
    return kit


def run_pull(tmp_path, kit, *args, popen=False):
    release = tmp_path / "engines.release.json"
    if not release.exists():
        kit.write(release)
    serving = tmp_path / "serving" / "serving.yaml"
    if not serving.exists():
        kit.serving_yaml(serving.parent, {"endpoint_url": kit.endpoint})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    env.update(S3_ENV, PYTHONPATH=with_path(fake_nvml_dir(tmp_path / "nvml", H100)))
    command = [DOIT, "engines-pull", str(release), "--serving-config", str(serving), "--runtime",
               "tensorrt==10.16.1.11", *args]
    if popen:
        return subprocess.Popen(command, cwd=serving.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=serving.parent, env=env, capture_output=True, text=True, timeout=180)


def test_swapped_bytes_in_the_bucket_are_refused_and_the_others_pulled(s3, tmp_path):
    for model in MODELS:
        s3.add(model, trt(model, H100, "10.16.1.11"), size=300_000)
    det = s3.variants["det"][0]
    s3.put(f"{det.entry.base}/{det.entry.engine}", os.urandom(det.size))
    done = run_pull(tmp_path, s3)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["PULLED", "REFUSED", "PULLED"]
    assert "does not match the release's sha256" in lines[1]
    cache = tmp_path / "serving" / "cache"
    assert not any(p.name.startswith(det.engine) for p in cache.iterdir())


def test_an_untrusted_release_downloads_nothing(s3, tmp_path):
    s3.add("det", trt("det", H100, "10.16.1.11"))
    other = ReleaseKit(s3.put, s3.url, tmp_path / "attacker", key_id="attacker")
    other.variants = s3.variants
    other.write(tmp_path / "engines.release.json")
    done = run_pull(tmp_path, s3, "--json")
    assert done.returncode == 2 and "none of which this host trusts" in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 2
    assert not (tmp_path / "serving" / "cache").exists()


def test_sigkill_during_a_pull_leaves_only_verified_engines_and_the_rerun_resumes(s3, tmp_path):
    for model in MODELS + ("seg", "pose", "ocr"):
        from tests.release.pull_fixtures import ONNX_SHA

        ONNX_SHA.setdefault(model, "f" * 64)
        s3.add(model, trt(model, H100, "10.16.1.11"), size=12 << 20)
    cache = tmp_path / "serving" / "cache"
    child = run_pull(tmp_path, s3, popen=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = os.listdir(cache) if cache.is_dir() else []
        if any(n.endswith(".incomplete") for n in names) and any(n.endswith(".sha256") for n in names):
            break
        if child.poll() is not None:
            pytest.fail(f"the pull ended before it could be killed: {child.communicate()}")
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    by_name = {v.engine: v for vs in s3.variants.values() for v in vs}
    engines = [p for p in cache.iterdir() if p.name.endswith(".engine")]
    for path in engines:  # every engine in place is complete and the release's
        assert Sha256Sidecar.check(path).ok and Sha256Sidecar.read(path).sha256 == by_name[path.name].sha256
    assert len(engines) < len(by_name)
    complete = {p.name for p in engines}

    done = run_pull(tmp_path, s3)
    assert done.returncode == 0, done.stderr
    states = {line.split()[2]: line.split()[0] for line in done.stdout.splitlines()[1:]}
    assert {n for n, s in states.items() if s == "PRESENT"} == complete
    assert {n for n, s in states.items() if s == "PULLED"} == set(by_name) - complete
    assert not [n for n in os.listdir(cache) if n.endswith(".incomplete")]  # the killed pull's leftovers went
    for name, variant in by_name.items():
        assert (cache / name).read_bytes() == s3.data[name]


def test_a_dead_bucket_costs_timeout_s_once_per_run(s3, tmp_path, monkeypatch):
    for model in MODELS:
        s3.add(model, trt(model, H100, "10.16.1.11"), upload=False)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind((LOOPBACK, 0))
        silent.listen(16)
        endpoint = f"http://{LOOPBACK}:{silent.getsockname()[1]}"
        release = s3.write(tmp_path / "engines.release.json")
        config = load_serving_config(s3.serving_yaml(tmp_path / "serving", {"endpoint_url": endpoint, "timeout_s": 1}))
        monkeypatch.setattr(pull_module, "_DOWNLOADS", 1)  # one at a time: a per-backbone timeout would add up
        started = time.monotonic()
        report = pull_release(release, config, host=serving_host(H100, tensorrt="10.16.1.11"))
        elapsed = time.monotonic() - started
    assert report.exit_code == 1 and [line.state for line in report.lines] == ["FAILED"] * 3
    texts = [line.text() for line in report.lines]
    assert sum("unavailable (no answer within timeout_s 1 s); check remote.url" in t for t in texts) == 1, texts
    assert sum("not tried: the remote is unavailable" in t for t in texts) == 2, texts
    assert elapsed < 2.5, elapsed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_a_pull_at_once_with_one_line(s3, tmp_path, signum):
    from tests.release.pull_fixtures import ONNX_SHA

    for model in ("m1", "m2", "m3", "m4"):
        ONNX_SHA.setdefault(model, "a" * 64)
        s3.add(model, trt(model, H100, "10.16.1.11"), size=24 << 20)
    cache = tmp_path / "serving" / "cache"
    child = run_pull(tmp_path, s3, popen=True)
    deadline = time.monotonic() + 120
    while not (cache.is_dir() and any(n.endswith(".incomplete") for n in os.listdir(cache))):
        assert time.monotonic() < deadline and child.poll() is None, child.communicate()
        time.sleep(0.002)
    os.kill(child.pid, signum)
    stopped = time.monotonic()
    out, err = child.communicate(timeout=60)
    assert time.monotonic() - stopped < 5, "the pull waited for its downloads"
    assert child.returncode == 128 + signum, err
    assert err.count("\n") == 1 and "stopped by " + signal.Signals(signum).name in err and "Traceback" not in err
    by_name = {v.engine: v for vs in s3.variants.values() for v in vs}
    for path in cache.iterdir():
        if path.name.endswith(".engine"):
            assert Sha256Sidecar.read(path) is None or Sha256Sidecar.read(path).sha256 == by_name[path.name].sha256
            assert Sha256Sidecar.read(path) is None or Sha256Sidecar.check(path).ok
