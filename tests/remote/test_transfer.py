"""The transport rules of the remote stores, against real servers.

- a hostile HTTP server (python's http.server in a thread on 127.0.0.1, speaking just
  enough S3 for botocore) that ignores Range, lies in its headers or stalls, reached
  through the real s3fs store (RemoteStore.open with endpoint_url at it);
- moto's S3 server (tests/remote/conftest.py) for the parallel download and the
  conditional writes;
- a real folder for file://, where a hung mount is simulated by making ``os.pread`` block
  for one file (no FUSE here): the worker thread really blocks in that call.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioning.remote import transfer
from provisioning.remote.config import RemoteConfig
from provisioning.remote.store import ConditionalWriteUnsupported, RemoteContentError, RemoteStore, RemoteUnavailable

from .conftest import LOOPBACK, s3fs_client

MiB = 1 << 20


def open_store(endpoint: str, bucket: str, timeout_s: float = 2.0) -> RemoteStore:
    config = RemoteConfig(config_path=Path("corpus.yaml"), url=f"s3://{bucket}/engines", endpoint_url=endpoint,
                          timeout_s=timeout_s)
    return RemoteStore.open(config)


# -- a hostile endpoint ---------------------------------------------------------------
class Hostile(BaseHTTPRequestHandler):
    """GET /bucket/<behaviour>...; every behaviour answers 200/206 like S3 would, then misbehaves."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()  # set at teardown: stalled handlers return
    sent: dict[str, int] = {}

    def log_message(self, *args):  # quiet
        pass

    def _headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("ETag", '"hostile"')
        self.send_header("Last-Modified", "Wed, 01 Dec 2026 09:00:00 GMT")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _stream(self, total: int, block: bytes = b"x" * 65536, pause: float = 0.0) -> None:
        sent = 0
        try:
            while sent < total:
                piece = block[:total - sent]
                self.wfile.write(piece)
                sent += len(piece)
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            Hostile.sent[self.path] = sent

    def do_PUT(self):  # accept the request, never read its body: the sender's socket fills up
        Hostile.release.wait(30)

    def do_GET(self):
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        if name == "endless":  # ignores Range, no length, 1 GiB close-delimited
            self._headers(200, {"Connection": "close"})
            self._stream(1 << 30)
        elif name == "biglength":  # ignores Range, announces 1 GiB
            self._headers(200, {"Content-Length": str(1 << 30)})
            self._stream(1 << 30)
        elif name == "bigtotal":  # honours Range in form, but the object is 1 GiB
            self._headers(206, {"Content-Range": f"bytes 0-4096/{1 << 30}", "Content-Length": "4097"})
            self._stream(4097)
        elif name == "wrongrange":  # answers another range than asked
            self._headers(206, {"Content-Range": "bytes 100-199/1000", "Content-Length": "100"})
            self._stream(100)
        elif name == "stall":  # a few bytes, then nothing
            self._headers(200, {"Content-Length": str(1 << 20)})
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            Hostile.release.wait(30)
        elif name == "slow":  # 8 pieces, 0.3 s apart: 2.1 s in all, never 0.3 s without a byte
            self._headers(200, {"Content-Length": str(8 * 4096)})
            for _ in range(8):
                self.wfile.write(b"s" * 4096)
                self.wfile.flush()
                time.sleep(0.3)
        elif name == "slowsecond":  # honours Range over RANGED bytes; the second part takes 1 s to start
            first, last = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
            if first == PART:
                time.sleep(1.0)
            self._headers(206, {"Content-Range": f"bytes {first}-{last}/{len(RANGED)}",
                                "Content-Length": str(last + 1 - first)})
            self.wfile.write(RANGED[first:last + 1])
        else:
            self._headers(404, {"Content-Type": "application/xml", "Content-Length": "0"})


PART = 16 * 1024
RANGED = bytes(i % 251 for i in range(64 * PART))


@pytest.fixture
def hostile():
    Hostile.release.clear()
    Hostile.sent.clear()
    server = ThreadingHTTPServer((LOOPBACK, 0), Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    Hostile.release.set()
    server.shutdown()
    server.server_close()


def peak_during(fn):
    """(result or exception, peak bytes allocated by Python while ``fn`` ran, seconds)."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        outcome = fn()
    except Exception as exc:
        outcome = exc
    seconds = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return outcome, peak, seconds


@pytest.mark.parametrize("name", ["endless", "biglength", "bigtotal"])
def test_a_server_ignoring_range_cannot_grow_a_small_read(hostile, name):
    store = open_store(hostile, "bucket")
    store.read_small("bucket/engines/warm-up", 16, 2)  # the client and its session exist before measuring
    outcome, peak, seconds = peak_during(lambda: store.read_small(f"bucket/engines/{name}", 4096, 2))
    assert isinstance(outcome, RemoteContentError) and "larger than 4096 bytes" in str(outcome)
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB held for a 4 KiB cap"
    assert seconds < 2
    assert Hostile.sent.get(f"/bucket/engines/{name}", 0) < 256 * MiB  # the connection was dropped early


def test_a_download_answered_with_another_range_is_refused(hostile):
    store = open_store(hostile, "bucket")
    store.part_bytes = 100  # ranged parts from the first byte on
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        with pytest.raises(RemoteContentError, match="answered bytes 100-199 for a request of 0-99"):
            store.download("bucket/engines/wrongrange", fd, 1000, "0" * 64, 2)
    finally:
        os.close(fd)


def test_a_download_that_ignores_range_with_a_huge_body_is_refused_in_bounded_memory(hostile, tmp_path):
    store = open_store(hostile, "bucket")
    store.part_bytes = 1 * MiB
    fd = os.open(tmp_path / "engine", os.O_WRONLY | os.O_CREAT)
    try:
        store.read_small("bucket/engines/warm-up", 16, 2)
        outcome, peak, _ = peak_during(lambda: store.download("bucket/engines/endless", fd, 8 * MiB, "0" * 64, 2))
    finally:
        os.close(fd)
    assert isinstance(outcome, RemoteContentError) and "without Content-Range" in str(outcome)
    assert peak < 8 * MiB


def test_a_stalled_body_fails_within_the_stall_timeout(hostile, tmp_path):
    store = open_store(hostile, "bucket", timeout_s=1)
    fd = os.open(tmp_path / "engine", os.O_WRONLY | os.O_CREAT)
    try:
        started = time.monotonic()
        with pytest.raises(RemoteUnavailable) as caught:
            store.download("bucket/engines/stall", fd, 1 << 20, "0" * 64, 0.5)
        elapsed = time.monotonic() - started
    finally:
        os.close(fd)
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert elapsed < 2.0
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable) as caught:
        store.read_small("bucket/engines/stall", 2 << 20, 0.5)
    assert isinstance(caught.value.__cause__, TimeoutError) and time.monotonic() - started < 2.0


def test_a_slow_but_progressing_download_outlasts_the_timeout(hostile, tmp_path):
    store = open_store(hostile, "bucket", timeout_s=1)
    body = b"s" * (8 * 4096)
    fd = os.open(tmp_path / "engine", os.O_RDWR | os.O_CREAT)
    seen = []
    try:
        started = time.monotonic()
        store.download("bucket/engines/slow", fd, len(body), hashlib.sha256(body).hexdigest(), 1.0,
                       progress=seen.append)
        elapsed = time.monotonic() - started
        assert os.pread(fd, len(body) + 1, 0) == body
    finally:
        os.close(fd)
    assert elapsed > 2.0  # longer in total than the 1 s timeout ...
    assert seen[-1] == len(body) and len(seen) >= 4  # ... and reported as it went


def test_an_upload_to_a_server_that_stops_reading_fails_within_the_stall_timeout(hostile, tmp_path):
    store = open_store(hostile, "bucket")
    local = tmp_path / "engine"
    local.write_bytes(os.urandom(24 * MiB))  # far more than the socket buffers take
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable) as caught:
        store.put_file("bucket/engines/up", str(local), 0.5)
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert time.monotonic() - started < 3.0


def test_parts_never_run_further_ahead_of_the_hash_than_the_window(hostile, tmp_path):
    store = open_store(hostile, "bucket", timeout_s=3)
    store.part_bytes, store.concurrency = PART, 4
    peaks = []
    original = transfer.OrderedHasher.finish

    def record(sink, sha):
        peaks.append(sink.peak_held)
        return original(sink, sha)

    transfer.OrderedHasher.finish = record
    fd = os.open(tmp_path / "engine", os.O_RDWR | os.O_CREAT)
    try:
        store.download("bucket/engines/slowsecond", fd, len(RANGED), hashlib.sha256(RANGED).hexdigest(), 3)
        assert os.pread(fd, len(RANGED) + 1, 0) == RANGED
    finally:
        os.close(fd)
        transfer.OrderedHasher.finish = original
    # While part 2 waits, the other workers may only fetch within 4 parts of the frontier.
    assert PART <= peaks[0] <= 4 * PART


# -- moto: parallel parts, conditional writes -----------------------------------------
def test_parallel_ranged_download_is_exact_bounded_and_refuses_corruption(s3_server, bucket, tmp_path):
    store = open_store(s3_server.endpoint, bucket)
    store.part_bytes, store.concurrency = 64 * 1024, 4
    data = os.urandom(3 * MiB + 12345)  # 50 parts, the last one short
    key = f"{bucket}/engines/engine"
    store.put_bytes(key, data, 5)
    digest = hashlib.sha256(data).hexdigest()
    sink_peaks = []
    original = transfer.OrderedHasher.finish

    def record(sink, sha):
        sink_peaks.append(sink.peak_held)
        return original(sink, sha)

    transfer.OrderedHasher.finish = record
    try:
        fd = os.open(tmp_path / "engine", os.O_RDWR | os.O_CREAT)
        try:
            store.download(key, fd, len(data), digest, 5)
            assert os.pread(fd, len(data) + 1, 0) == data
        finally:
            os.close(fd)
    finally:
        transfer.OrderedHasher.finish = original
    assert 0 < sink_peaks[0] <= store.concurrency * store.part_bytes  # parts really came out of order
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 1
    store.put_bytes(key, bytes(damaged), 5)
    fd = os.open(tmp_path / "engine2", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(RemoteContentError, match="engine bytes do not match the sidecar"):
            store.download(key, fd, len(data), digest, 5)
        for wrong in (len(data) - 1, len(data) + 1):
            with pytest.raises(RemoteContentError, match=f"is {len(data)} bytes, expected {wrong}"):
                store.download(key, fd, wrong, digest, 5)
        with pytest.raises(FileNotFoundError):
            store.download(f"{bucket}/engines/absent", fd, 10, digest, 5)
    finally:
        os.close(fd)


def test_an_object_replaced_mid_download_is_refused(s3_server, bucket, tmp_path):
    store = open_store(s3_server.endpoint, bucket)
    store.part_bytes, store.concurrency = 16 * 1024, 1  # 128 parts in a row: the replacement lands mid-way
    data = os.urandom(2 * MiB)
    key = f"{bucket}/engines/engine"
    store.put_bytes(key, data, 5)
    replaced = []

    def put_other_bytes():
        s3fs_client(s3_server.endpoint).pipe_file(key, os.urandom(len(data)))

    def replace(done):  # runs on s3fs's event loop, which must not block: replace from another thread
        if not replaced:
            replaced.append(threading.Thread(target=put_other_bytes))
            replaced[0].start()

    fd = os.open(tmp_path / "engine", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(RemoteContentError, match="changed while being downloaded"):
            store.download(key, fd, len(data), hashlib.sha256(data).hexdigest(), 5, progress=replace)
    finally:
        os.close(fd)
        replaced[0].join(10)


def test_small_reads_carry_the_etag_that_conditional_delete_checks(s3_server, bucket):
    store = open_store(s3_server.endpoint, bucket)
    key = f"{bucket}/engines/lease"
    assert store.read_small_tagged(key, 100, 5) is None
    store.put_bytes(key, b"one", 5)
    data, modified, etag = store.read_small_tagged(key, 100, 5)
    assert data == b"one" and abs(modified - time.time()) < 60 and etag.startswith('"')
    store.put_bytes(key, b"two", 5)
    assert store.delete_if_match(key, etag, 5) is False  # replaced since it was read: kept
    assert store.read_small(key, 100, 5) == b"two"
    assert store.delete_if_match(key, store.read_small_tagged(key, 100, 5)[2], 5) is True
    assert store.read_small(key, 100, 5) is None
    assert store.delete_if_match(key, etag, 5) is False  # absent
    store.put_bytes(key, b"", 5)
    assert store.read_small_tagged(key, 100, 5)[0] == b""  # an empty object (a Range cannot be satisfied)
    store.put_bytes(key, b"abc", 5)
    with pytest.raises(RemoteContentError, match="larger than 2 bytes"):
        store.read_small(key, 2, 5)


@pytest.mark.parametrize("size", [1 * MiB, 11 * MiB])  # one PUT; multipart (3 parts of 5 MiB)
def test_put_file_exclusive_creates_once(s3_server, bucket, tmp_path, size):
    store = open_store(s3_server.endpoint, bucket)
    store.single_put_bytes, store.upload_part_bytes = 8 * MiB, 5 * MiB
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(os.urandom(size))
    second.write_bytes(os.urandom(size))
    key = f"{bucket}/engines/engine"
    assert store.put_file_exclusive(key, str(first), 5) is True
    assert store.put_file_exclusive(key, str(second), 5) is False
    assert s3fs_client(s3_server.endpoint).cat_file(key) == first.read_bytes()


def test_moto_refuses_completing_a_multipart_upload_over_an_existing_object(s3_server, bucket):
    """The premise of put_file_exclusive's multipart path when the object appears after its HEAD."""
    fs = s3fs_client(s3_server.endpoint)
    key = "engines/raced"
    upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    part = fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"late")
    fs.pipe_file(f"{bucket}/{key}", b"first")
    with pytest.raises(FileExistsError):
        fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload,
                   MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}, IfNoneMatch="*")
    assert fs.cat_file(f"{bucket}/{key}") == b"first"


# -- file:// ---------------------------------------------------------------------------
@pytest.fixture
def local_store(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    return RemoteStore.open(RemoteConfig(config_path=tmp_path / "corpus.yaml", url=f"file://{root}")), root


def block_preads_of(monkeypatch, target: Path, pause: float | None):
    """``os.pread`` on ``target`` blocks (until released) or sleeps ``pause`` per call."""
    release = threading.Event()
    real = os.pread
    inode = target.stat().st_ino

    def pread(fd, n, offset):
        if os.fstat(fd).st_ino == inode:
            if pause is None:
                release.wait(30)
            else:
                time.sleep(pause)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    return release


def test_file_download_on_a_hung_mount_returns_within_the_stall_timeout(local_store, tmp_path, monkeypatch):
    store, root = local_store
    data = os.urandom(1 * MiB)
    key = f"{root}/h/e/engine"
    store.put_bytes(key, data, 5)
    release = block_preads_of(monkeypatch, Path(key), None)
    fd = os.open(tmp_path / "engine", os.O_RDWR | os.O_CREAT)
    try:
        started = time.monotonic()
        with pytest.raises(RemoteUnavailable) as caught:
            store.download(key, fd, len(data), hashlib.sha256(data).hexdigest(), 0.5)
        assert time.monotonic() - started < 1.5
        assert isinstance(caught.value.__cause__, TimeoutError)
        release.set()  # the abandoned worker wakes up and must write nothing
        time.sleep(0.2)
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


def test_file_download_slow_but_progressing_outlasts_the_timeout(local_store, tmp_path, monkeypatch):
    store, root = local_store
    data = os.urandom(20 * MiB)  # 5 reads of 4 MiB
    key = f"{root}/h/e/engine"
    store.put_bytes(key, data, 5)
    block_preads_of(monkeypatch, Path(key), 0.25)
    fd = os.open(tmp_path / "engine", os.O_RDWR | os.O_CREAT)
    try:
        started = time.monotonic()
        store.download(key, fd, len(data), hashlib.sha256(data).hexdigest(), 0.5)
        assert time.monotonic() - started > 1.0
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)


def test_file_store_tags_downloads_and_conditional_calls(local_store, tmp_path):
    store, root = local_store
    key = f"{root}/h/e/lease"
    assert store.read_small_tagged(key, 100, 5) is None
    store.put_bytes(key, b"one", 5)
    data, modified, tag = store.read_small_tagged(key, 100, 5)
    assert data == b"one" and abs(modified - time.time()) < 60
    store.put_bytes(key, b"two", 5)  # renamed over: another inode, another tag
    assert store.delete_if_match(key, tag, 5) is False and store.read_small(key, 100, 5) == b"two"
    assert store.delete_if_match(key, store.read_small_tagged(key, 100, 5)[2], 5) is True
    assert store.delete_if_match(key, tag, 5) is False
    local = tmp_path / "engine"
    local.write_bytes(b"engine bytes")
    engine = f"{root}/h/e/engine"
    assert store.put_file_exclusive(engine, str(local), 5) is True
    assert store.put_file_exclusive(engine, str(local), 5) is False
    fd = os.open(tmp_path / "fetched", os.O_RDWR | os.O_CREAT)
    try:
        store.download(engine, fd, 12, hashlib.sha256(b"engine bytes").hexdigest(), 5)
        assert os.pread(fd, 100, 0) == b"engine bytes"
        with pytest.raises(RemoteContentError, match="do not match the sidecar"):
            store.download(engine, fd, 12, "0" * 64, 5)
        with pytest.raises(RemoteContentError, match="is 12 bytes, expected 13"):
            store.download(engine, fd, 13, "0" * 64, 5)
        with pytest.raises(FileNotFoundError):
            store.download(f"{root}/h/e/absent", fd, 13, "0" * 64, 5)
    finally:
        os.close(fd)
    with pytest.raises(RemoteContentError, match="larger than 4 bytes"):
        store.read_small(engine, 4, 5)


def test_unsupported_conditional_writes_are_reported(local_store, tmp_path, monkeypatch):
    store, root = local_store
    local = tmp_path / "engine"
    local.write_bytes(b"x")

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")  # EPERM: a mount without hard links

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(ConditionalWriteUnsupported):
        store.put_file_exclusive(f"{root}/h/e/engine", str(local), 5)
