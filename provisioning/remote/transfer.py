"""Bounded transfers for the remote stores: byte caps, stall timeouts, hashed downloads.

Three rules, for ``s3://`` and ``file://`` alike:

- **A byte cap is enforced while reading, not after.** A response is read in chunks and
  abandoned (its connection closed) as soon as it passes the cap; Content-Length and
  Content-Range are checked before the first byte is read. A server that ignores
  ``Range`` or lies about lengths cannot make a client hold more than the cap plus one
  chunk.
- **A timeout is a stall timeout.** ``stall_s`` is the longest a transfer may go without a
  byte moving (received, sent, or read from disk), not the longest it may take: a
  multi-GB engine over a slow link completes, a dead or hung server fails within
  ``stall_s``. A call that moves no bytes (a HEAD, a listing, an open on a hung mount)
  must complete within ``stall_s``.
- **A download is hashed in one pass.** Parts are fetched with parallel ranged GETs,
  written at their offsets as they arrive, and hashed in offset order; a part that
  arrives ahead of the hash frontier is held in memory, and no part is requested more
  than ``concurrency * part_bytes`` ahead of the frontier, so memory stays bounded
  whatever the size and the file is never read back.

Failures: :class:`~.store.RemoteUnavailable` for transport (its ``__cause__`` a
``TimeoutError`` for a stall), :class:`~.store.RemoteContentError` for content (too long,
too short, a range answered with other bytes, a hash mismatch). A local write error
(the destination file descriptor) propagates as the ``OSError`` it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import threading
import time
from typing import Any, Callable

from .store import RemoteContentError, RemoteUnavailable

CHUNK = 1 << 20  # the most one body read asks for
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Ticker:
    """The last time a byte moved (time.monotonic), shared by a transfer's workers."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.abandoned = False  # set when the caller stopped waiting: a worker stops writing

    def tick(self) -> None:
        self.last = time.monotonic()


class LocalWriteError(Exception):
    """Writing the destination failed; ``error`` is the OSError (not the remote's fault)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def stalled(what: str, stall_s: float) -> RemoteUnavailable:
    """The error of a transfer that made no progress for ``stall_s``."""
    cause = TimeoutError(f"no progress for {stall_s:g} s ({what})")
    error = RemoteUnavailable(f"TimeoutError: {cause}")
    error.__cause__ = cause
    return error


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``bytes A-B/N`` as (A, B inclusive, N or None for ``*``); RemoteContentError otherwise."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        raise RemoteContentError(f"answered with an unparsable Content-Range {value[:80]!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


class OrderedHasher:
    """Write chunks at their offsets into ``fd`` and hash them in offset order.

    A chunk at the hash frontier is hashed at once, with any held chunks it makes
    contiguous; a chunk ahead of the frontier is written and held until then. The caller
    bounds how far ahead chunks may come (``held_bytes`` reports what is held).
    """

    def __init__(self, fd: int, size: int, progress: Callable[[int], None] | None = None) -> None:
        self.fd = fd
        self.size = size
        self.hashed = 0
        self.held_bytes = 0
        self.peak_held = 0
        self._held: dict[int, bytes] = {}
        self._digest = hashlib.sha256()
        self._progress = progress
        self._received = 0

    def add(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self.size:
            raise RemoteContentError(f"longer than the expected {self.size} bytes")
        _pwrite_all(self.fd, data, offset)
        self._received += len(data)
        if offset != self.hashed:
            self._held[offset] = data
            self.held_bytes += len(data)
            self.peak_held = max(self.peak_held, self.held_bytes)
        else:
            self._digest.update(data)
            self.hashed += len(data)
            while self.hashed in self._held:
                chunk = self._held.pop(self.hashed)
                self.held_bytes -= len(chunk)
                self._digest.update(chunk)
                self.hashed += len(chunk)
        if self._progress is not None:
            self._progress(self._received)

    def finish(self, sha256_hex: str) -> None:
        """RemoteContentError unless every byte arrived and the SHA-256 matches."""
        if self.hashed != self.size or self._held:
            raise RemoteContentError(f"shorter than the expected {self.size} bytes (got {self.hashed})")
        if self._digest.hexdigest() != sha256_hex.lower():
            raise RemoteContentError("engine bytes do not match the sidecar (corrupt or truncated)")


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        raise LocalWriteError(exc) from exc


# -- stall watchdogs ------------------------------------------------------------------
async def watched(factory: Callable[[], Any], stall_s: float, ticker: Ticker, what: str) -> Any:
    """Await ``factory()`` on the running loop; cancel it after ``stall_s`` without a tick."""
    task = asyncio.ensure_future(factory())
    try:
        while True:
            left = ticker.last + stall_s - time.monotonic()
            if left <= 0:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise stalled(what, stall_s)
            done, _ = await asyncio.wait({task}, timeout=left)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()


def run_in_worker(fn: Callable[[Ticker], Any], stall_s: float, what: str) -> Any:
    """Run ``fn(ticker)`` in a daemon thread; stop waiting after ``stall_s`` without a tick.

    For ``file://``: a hung mount blocks the worker in a system call, never the caller.
    An abandoned worker runs on (it cannot be interrupted) and its result is dropped; it
    must own every descriptor it uses (see LocalRemoteStore.download's dup).
    """
    ticker = Ticker()
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn(ticker)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=f"remote-file {what}", daemon=True).start()
    while not done.wait(max(0.005, ticker.last + stall_s - time.monotonic())):
        if time.monotonic() - ticker.last >= stall_s:
            ticker.abandoned = True
            raise stalled(what, stall_s)
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- s3: the coroutines below run on s3fs's loop, through its own client ---------------
def _status(exc: BaseException) -> tuple[str, int | None]:
    """(S3 error code, HTTP status) of an s3fs-translated error, from its ClientError cause."""
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            meta = response.get("ResponseMetadata") or {}
            return str(error.get("Code", "")), meta.get("HTTPStatusCode")
    return "", None


async def _get(fs: Any, bucket: str, key: str, ticker: Ticker, **kwargs: Any) -> dict[str, Any]:
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key, **kwargs)
    ticker.tick()
    return response


async def _read_body(body: Any, want: int, ticker: Ticker) -> bytes:
    chunk = await body.read(want)
    if chunk:
        ticker.tick()
    return chunk


def _close(response: dict[str, Any] | None) -> None:
    """Close a response body; a body not read to its end takes its connection with it."""
    body = (response or {}).get("Body")
    if body is not None:
        try:
            body.close()
        except Exception:
            pass


async def s3_read_capped(fs: Any, bucket: str, key: str, limit: int,
                         ticker: Ticker) -> tuple[bytes, float | None, str | None] | None:
    """(data, LastModified epoch, ETag) of an object of at most ``limit`` bytes; None if absent."""
    response = None
    try:
        try:
            response = await _get(fs, bucket, key, ticker, Range=f"bytes=0-{limit}")
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _status(exc)[1] != 416:
                raise
            response = await _get(fs, bucket, key, ticker)  # an empty object: Range cannot be satisfied
        length = response.get("ContentLength")
        if isinstance(length, int) and length > limit + 1:
            raise RemoteContentError(f"larger than {limit} bytes")
        if response.get("ContentRange"):
            _, _, total = parse_content_range(response["ContentRange"])
            if total is not None and total > limit:
                raise RemoteContentError(f"larger than {limit} bytes")
        chunks, got = [], 0
        while got <= limit:
            chunk = await _read_body(response["Body"], min(CHUNK, limit + 1 - got), ticker)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:
            raise RemoteContentError(f"larger than {limit} bytes")
        modified = response.get("LastModified")
        epoch = float(modified.timestamp()) if hasattr(modified, "timestamp") else None
        etag = response.get("ETag")
        return b"".join(chunks), epoch, etag if isinstance(etag, str) else None
    finally:
        _close(response)


def _check_part(response: dict[str, Any], start: int, end: int, size: int, ranged: bool) -> None:
    """The response must carry exactly bytes [start, end) of a ``size``-byte object."""
    length = response.get("ContentLength")
    if ranged:
        value = response.get("ContentRange")
        if not value:
            raise RemoteContentError(f"answered a ranged GET for bytes {start}-{end - 1} without Content-Range "
                                     "(Range ignored)")
        first, last, total = parse_content_range(value)
        if total is not None and total != size:
            raise RemoteContentError(f"is {total} bytes, expected {size}")
        if (first, last + 1) != (start, end):
            raise RemoteContentError(f"answered bytes {first}-{last} for a request of {start}-{end - 1}")
    if isinstance(length, int) and length != end - start:
        if not ranged:
            raise RemoteContentError(f"is {length} bytes, expected {size}")
        raise RemoteContentError(f"answered {length} bytes for a range of {end - start}")


async def _fetch_part(fs: Any, bucket: str, key: str, start: int, end: int, size: int, sink: OrderedHasher,
                      ticker: Ticker, etag: str | None) -> str | None:
    """GET bytes [start, end) into ``sink``; returns the response's ETag."""
    ranged = not (start == 0 and end == size)
    kwargs: dict[str, Any] = {"Range": f"bytes={start}-{end - 1}"} if ranged else {}
    if etag:
        kwargs["IfMatch"] = etag  # every part from the same version of the object
    response = None
    try:
        try:
            response = await _get(fs, bucket, key, ticker, **kwargs)
        except OSError as exc:
            code, status = _status(exc)
            if status == 416:
                raise RemoteContentError(f"is shorter than the expected {size} bytes") from None
            if status == 412:
                raise RemoteContentError("changed while being downloaded (ETag)") from None
            raise
        _check_part(response, start, end, size, ranged)
        body, offset = response["Body"], start
        while offset < end:
            chunk = await _read_body(body, min(CHUNK, end - offset), ticker)
            if not chunk:
                raise RemoteContentError(f"is shorter than the expected {size} bytes (ended at {offset})")
            sink.add(offset, chunk)
            offset += len(chunk)
        if await _read_body(body, 1, ticker):
            raise RemoteContentError(f"is longer than the expected {size} bytes")
        found = response.get("ETag")
        return found if isinstance(found, str) else None
    finally:
        _close(response)


async def s3_download(fs: Any, bucket: str, key: str, sink: OrderedHasher, ticker: Ticker, *,
                      part_bytes: int, concurrency: int) -> None:
    """Fetch the object into ``sink``: one GET up to ``part_bytes``, else parallel ranged parts."""
    size = sink.size
    if size <= part_bytes:
        await _fetch_part(fs, bucket, key, 0, size, size, sink, ticker, None)
        return
    parts = [(start, min(size, start + part_bytes)) for start in range(0, size, part_bytes)]
    # The first part alone tells the ETag; the others are pinned to it (If-Match), so a
    # concurrent overwrite cannot splice two versions together.
    etag = await _fetch_part(fs, bucket, key, *parts[0], size, sink, ticker, None)
    window = max(1, concurrency) * part_bytes
    advanced = asyncio.Condition()
    state = {"next": 1}

    async def worker() -> None:
        while state["next"] < len(parts):
            index = state["next"]
            start, end = parts[index]
            if end > sink.hashed + window:
                async with advanced:
                    await advanced.wait_for(lambda: end <= sink.hashed + window or state["next"] != index)
                continue
            state["next"] += 1
            await _fetch_part(fs, bucket, key, start, end, size, sink, ticker, etag)
            async with advanced:
                advanced.notify_all()

    await _run_workers(worker, max(1, concurrency))


class _Section(io.RawIOBase):
    """Bytes [start, start + length) of a local file, ticking ``ticker`` on every read.

    The upload body: botocore reads it to sign and checksum, then aiohttp reads it as the
    socket drains, so a server that stops reading stops the ticks.
    """

    def __init__(self, fd: int, start: int, length: int, ticker: Ticker) -> None:
        super().__init__()
        # A descriptor of its own, closed under the lock that reads use: aiohttp reads in an
        # executor thread, which may still be reading after a stalled upload is cancelled.
        self._fd = os.dup(fd)
        self._lock = threading.Lock()
        self._start, self._length, self._ticker = start, length, ticker
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        with self._lock:
            if self._fd < 0:
                raise ValueError("read of a closed upload body")
            data = os.pread(self._fd, want, self._start + self._pos)
        if not data:
            raise OSError(f"local file shrank while being uploaded (at {self._start + self._pos})")
        buffer[:len(data)] = data
        self._pos += len(data)
        self._ticker.tick()
        return len(data)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


_BACKGROUND: set[asyncio.Task] = set()


def _background(coro: Any) -> None:
    """Run ``coro`` on the loop without waiting for it (an abort after a failed upload)."""
    task = asyncio.ensure_future(coro)
    _BACKGROUND.add(task)

    def done(finished: asyncio.Task) -> None:
        _BACKGROUND.discard(finished)
        if not finished.cancelled():
            finished.exception()  # retrieved: best effort, never logged as unhandled

    task.add_done_callback(done)


def conditional_failure(exc: BaseException) -> str | None:
    """"exists" for a failed precondition or conflict, "unsupported" when the server cannot, else None."""
    if isinstance(exc, FileExistsError):
        return "exists"
    code, status = _status(exc)
    if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 409:
        return "exists"
    if status == 501 or code == "NotImplemented":
        return "unsupported"
    return None


async def s3_upload(fs: Any, bucket: str, key: str, local_path: str, ticker: Ticker, *, exclusive: bool,
                    part_bytes: int, concurrency: int, single_put_bytes: int, stall_s: float) -> bool:
    """Upload a local file (one PUT, or multipart); with ``exclusive`` only if the key is absent.

    Returns False when ``exclusive`` and the object exists (``If-None-Match: *`` on the PUT
    or on CompleteMultipartUpload). Raises the s3fs-translated error otherwise.
    """
    match = {"IfNoneMatch": "*"} if exclusive else {}
    fd = os.open(local_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        if size <= single_put_bytes:
            await fs._call_s3("put_object", Bucket=bucket, Key=key, Body=_Section(fd, 0, size, ticker), **match)
            ticker.tick()
            return True
        if exclusive:  # do not send gigabytes that CompleteMultipartUpload would refuse
            try:
                await fs._call_s3("head_object", Bucket=bucket, Key=key)
                return False
            except FileNotFoundError:
                pass
        part = max(part_bytes, -(-size // 10_000))  # S3 allows 10,000 parts
        upload = (await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key))["UploadId"]
        ticker.tick()
        completed = False
        try:
            ranges = [(start, min(size, start + part)) for start in range(0, size, part)]
            etags: dict[int, str] = {}
            queue = list(enumerate(ranges, 1))

            async def worker() -> None:
                while queue:
                    number, (start, end) = queue.pop(0)
                    out = await fs._call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload,
                                            PartNumber=number, Body=_Section(fd, start, end - start, ticker))
                    ticker.tick()
                    etags[number] = out["ETag"]

            await _run_workers(worker, max(1, min(concurrency, len(ranges))))
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            await fs._call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload,
                              MultipartUpload={"Parts": parts}, **match)
            ticker.tick()
            completed = True
            return True
        finally:
            if not completed:
                _background(asyncio.wait_for(
                    fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload), stall_s))
    finally:
        os.close(fd)


async def s3_delete_if_match(fs: Any, bucket: str, key: str, etag: str) -> None:
    """DeleteObject with ``If-Match``; raises the s3fs-translated error (412, 404, 501, ...)."""
    await fs._call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)


async def _run_workers(worker, count: int) -> None:
    """Run ``count`` copies of ``worker()``; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(worker()) for _ in range(count)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
