"""Reads from S3 under a byte cap: small objects, and engines by parallel ranged GETs.

- **A byte cap is enforced while reading, not after.** A response is read in chunks and
  abandoned (its connection closed) as soon as it passes the cap; Content-Length and
  Content-Range are checked before the first byte is read. A server that ignores
  ``Range`` or lies about lengths cannot make a client hold more than the cap plus one
  chunk.
- **A download is hashed in one pass** (:class:`.ordered_hasher.OrderedHasher`). Parts
  are fetched with parallel ranged GETs pinned to the first part's ETag, written at
  their offsets as they arrive, and no part is requested more than
  ``concurrency * part_bytes`` ahead of the hash frontier.

Failures: :class:`~.errors.RemoteContentError` for content (too long, too short, a range
answered with other bytes, a changed object); anything else is the s3fs-translated error,
which the store turns into :class:`~.errors.RemoteUnavailable`. A local write error
surfaces as :class:`~.errors.LocalWriteError`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from .errors import RemoteContentError
from .ordered_hasher import OrderedHasher
from .s3_calls import CHUNK, error_status, run_workers
from .stall import Ticker

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``bytes A-B/N`` as (A, B inclusive, N or None for ``*``); RemoteContentError otherwise."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        raise RemoteContentError(f"answered with an unparsable Content-Range {value[:80]!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total



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
            if error_status(exc)[1] != 416:
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
            code, status = error_status(exc)
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

    await run_workers(worker, max(1, concurrency))


