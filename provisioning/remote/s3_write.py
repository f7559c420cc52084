"""Writes to S3: uploads (one PUT, or multipart) and conditional creates and deletes.

An upload body ticks the stall watchdog as the socket drains (:class:`_Section`), so a
server that stops reading fails within ``stall_s``; a multipart upload that fails is
aborted in the background. ``If-None-Match: *`` (create if absent) rides on the PUT or
on CompleteMultipartUpload; :func:`conditional_failure` tells "it exists" from "this
server cannot do conditional writes".
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from typing import Any

from .s3_calls import error_status, run_workers
from .stall import Ticker


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
    code, status = error_status(exc)
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

            await run_workers(worker, max(1, min(concurrency, len(ranges))))
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


