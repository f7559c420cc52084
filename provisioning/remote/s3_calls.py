"""What the s3fs coroutines of :mod:`.s3_read` and :mod:`.s3_write` share.

They run on s3fs's event loop, through its own client (``fs._call_s3``), under a stall
watchdog (:func:`.stall.watched`). s3fs translates botocore's ClientError into OSError
subclasses; :func:`error_status` reads the S3 code and HTTP status back from it.
"""

from __future__ import annotations

import asyncio

CHUNK = 1 << 20  # the most one body read asks for


def error_status(exc: BaseException) -> tuple[str, int | None]:
    """(S3 error code, HTTP status) of an s3fs-translated error, from its ClientError cause."""
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            meta = response.get("ResponseMetadata") or {}
            return str(error.get("Code", "")), meta.get("HTTPStatusCode")
    return "", None


async def run_workers(worker, count: int) -> None:
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
