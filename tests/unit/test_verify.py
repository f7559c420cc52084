"""Engine verification: trusted stat never fooled by a restored mtime; prefetch on all cores, fork-safe, streaming."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from provisioning import Sha256Sidecar
from provisioning.verify import EngineVerifier, verify_engine


def _engine(tmp_path: Path, data: bytes = b"engine bytes " * 1000) -> Path:
    path = tmp_path / "m.engine"
    Sha256Sidecar.write_atomic_and_sidecar(path, data)
    return path


def test_stat_mode_trusts_an_unchanged_engine_after_one_full_check(tmp_path):
    path = _engine(tmp_path)
    first = verify_engine(path, "stat")
    assert first.ok and first.reason == "verified"
    second = verify_engine(path, "stat")
    assert second.ok and "trusted stat" in second.reason


def test_stat_mode_catches_a_byte_flip_that_restores_the_mtime(tmp_path):
    path = _engine(tmp_path)
    assert verify_engine(path, "stat").ok
    st = os.stat(path)
    time.sleep(0.01)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    with open(path, "r+b") as handle:  # same inode, same size
        handle.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # an attacker or a tool restores mtime
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_ctime_ns != st.st_ctime_ns
    result = verify_engine(path, "stat")
    assert not result.ok and "do not match" in result.reason


def test_stat_mode_rechecks_after_the_sidecar_changes(tmp_path):
    path = _engine(tmp_path)
    assert verify_engine(path, "stat").ok
    Sha256Sidecar.path_for(path).write_text("0" * 64 + "  m.engine\n")
    assert not verify_engine(path, "stat").ok


def test_full_mode_never_trusts_stat(tmp_path):
    path = _engine(tmp_path)
    assert verify_engine(path, "stat").ok
    assert verify_engine(path, "full").reason == "verified"


def test_verifier_prefetches_many_engines_in_parallel(tmp_path):
    paths = []
    for index in range(6):
        folder = tmp_path / str(index)
        folder.mkdir()
        paths.append(_engine(folder, os.urandom(200_000)))
    paths[3].write_bytes(b"corrupt")
    verifier = EngineVerifier("full", workers=2)
    verifier.prefetch(paths)
    results = [verifier.check(p) for p in paths]
    verifier.close()
    assert [r.ok for r in results] == [True, True, True, False, True, True]


def _sparse_engine(folder: Path, size: int) -> Path:
    """A large engine that costs no disk: a sparse file of zeros, with its real sidecar."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big.engine"
    with open(path, "wb") as handle:
        handle.truncate(size)
    digest = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(zeros)
    Sha256Sidecar.path_for(path).write_text(Sha256Sidecar.format_line(digest.hexdigest(), path.name))
    return path


_INHERITED: dict[str, EngineVerifier] = {}


def _fork_and_verify(paths: list[str], queue) -> None:
    # A child forked while the parent's workers hash; it asks the verifier it inherited,
    # whose worker threads do not exist here: it must answer, not wait for them forever.
    verifier = _INHERITED["verifier"]
    queue.put([verifier.check(Path(p)).ok for p in paths])


def test_forking_while_hashing_leaves_a_child_that_works_and_a_parent_that_finishes(tmp_path):
    big = [_sparse_engine(tmp_path / str(i), 64 << 20) for i in range(4)]
    small = _engine(tmp_path)
    small.write_bytes(b"corrupt")
    verifier = EngineVerifier("full", workers=2)
    verifier.prefetch([*big, small])
    _INHERITED["verifier"] = verifier
    context = multiprocessing.get_context("fork")
    for _ in range(3):  # forks land at different points of the workers' chunks
        queue = context.Queue()
        child = context.Process(target=_fork_and_verify, args=([str(big[-1]), str(small)], queue))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0, "the forked child hung or crashed"
        assert queue.get(timeout=5) == [True, False]
    assert [verifier.check(p).ok for p in (*big, small)] == [True, True, True, True, False]
    verifier.close()


def test_a_checked_engine_that_no_worker_started_is_verified_by_the_caller(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good, bad = _engine(tmp_path / "a"), _engine(tmp_path / "b")
    bad.write_bytes(b"flipped")
    verifier = EngineVerifier("full", workers=1)
    verifier.close()  # no worker will ever run: the caller must do the work itself
    verifier.prefetch([good, bad])
    assert verifier.check(good).ok
    assert not verifier.check(bad).ok


def _seconds_to_hash(size: int) -> float:
    """How long hashing ``size`` bytes takes on this machine now (measured on 64 MiB, scaled)."""
    sample = bytes(64 << 20)
    started = time.perf_counter()
    hashlib.sha256(sample).digest()
    return (time.perf_counter() - started) * size / len(sample)


def test_close_stops_the_hashing_threads_within_a_chunk(tmp_path):
    size = 2 << 30
    big = _sparse_engine(tmp_path, size)
    whole_file = _seconds_to_hash(size)  # well over a second at full speed; more on a loaded machine
    verifier = EngineVerifier("full", workers=2)
    verifier.prefetch([big])
    time.sleep(0.05)
    started = time.monotonic()
    verifier.close()
    for thread in [t for t in threading.enumerate() if t.name == "verify"]:
        thread.join(timeout=max(5.0, 2 * whole_file))
    stopped_after = time.monotonic() - started
    assert not [t for t in threading.enumerate() if t.name == "verify"]
    # a ratio, not a wall-clock bound: a thread that ignored close() would hash on for about the whole
    # file; one that stops within its 4 MiB chunk takes a tiny part of it (with room for a loaded CI)
    assert stopped_after < max(0.5, whole_file / 8), (stopped_after, whole_file)


_PEAK_CHILD = """
import sys
from pathlib import Path
from provisioning.verify import EngineVerifier
def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
before = kib("VmRSS")
verifier = EngineVerifier("full")
verifier.prefetch([Path(sys.argv[1])])
assert verifier.check(Path(sys.argv[1])).ok
print((kib("VmHWM") - before) // 1024)
"""


def test_verifying_a_large_engine_streams_it_in_constant_memory(tmp_path):
    big = _sparse_engine(tmp_path, 512 << 20)
    result = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(big)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 64  # MiB above the baseline, for a 512 MiB engine


def test_stat_mode_never_reads_or_writes_records_through_a_symlinked_folder(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    path = _engine(cache)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cache / ".verified").symlink_to(elsewhere)
    assert verify_engine(path, "stat").reason == "verified"  # hashed in full
    assert list(elsewhere.iterdir()) == []  # nothing written outside the cache
    # a record planted through the link, matching today's stat, must not excuse a corrupt engine
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    with open(path, "r+b") as handle:
        handle.write(data)
    st = os.lstat(path)
    planted = {"signature": [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev],
               "sha256": Sha256Sidecar.read(path).sha256}
    (elsewhere / (path.name + ".json")).write_text(json.dumps(planted))
    assert not verify_engine(path, "stat").ok


def test_stat_mode_does_not_record_an_engine_that_changed_while_hashed(tmp_path):
    """The record is written only when the engine's stat signature is what it was before the hash."""
    from provisioning.verify import record_path

    path = _engine(tmp_path)

    class RewriteOnce:
        """Entered around each chunk: the first time, the same bytes are written again (it verifies, but changed)."""

        done = False

        def __enter__(self):
            if not self.done:
                data = path.read_bytes()
                time.sleep(0.01)
                with open(path, "r+b") as handle:
                    handle.write(data)
                self.done = True
            return self

        def __exit__(self, *exc):
            return False

    guard = RewriteOnce()
    assert verify_engine(path, "stat", guard).ok
    assert guard.done and not record_path(path).exists()
    assert verify_engine(path, "stat").ok and record_path(path).exists()  # unchanged this time: recorded
