"""Bounded transfers for the remote stores: byte caps, stall timeouts, hashed downloads.

Three rules, for ``s3://`` and ``file://`` alike:

- **A byte cap is enforced while reading, not after** (:mod:`.s3_read`; the ``file://``
  store checks ``fstat`` and reads at most the cap plus one byte).
- **A timeout is a stall timeout** (:mod:`.stall`): ``stall_s`` is the longest a transfer
  may go without a byte moving, not the longest it may take.
- **A download is hashed in one pass** (:mod:`.ordered_hasher`): parts are written at
  their offsets as they arrive and hashed in offset order; memory stays bounded and the
  file is never read back.

Failures: :class:`~.errors.RemoteUnavailable` for transport (its ``__cause__`` a
``TimeoutError`` for a stall), :class:`~.errors.RemoteContentError` for content (too
long, too short, a range answered with other bytes, a hash mismatch). A local write
error (the destination file descriptor) surfaces as :class:`~.errors.LocalWriteError`.

This module gathers the transfer names in one place for callers; the code lives in the
modules named above and in :mod:`.s3_write` (uploads, conditional writes).
"""

from __future__ import annotations

from .errors import LocalWriteError
from .ordered_hasher import OrderedHasher
from .s3_calls import CHUNK
from .s3_read import parse_content_range, s3_download, s3_read_capped
from .s3_write import conditional_failure, s3_delete_if_match, s3_upload
from .stall import Ticker, run_in_worker, stalled, watched

__all__ = [
    "CHUNK",
    "LocalWriteError",
    "OrderedHasher",
    "Ticker",
    "conditional_failure",
    "parse_content_range",
    "run_in_worker",
    "s3_delete_if_match",
    "s3_download",
    "s3_read_capped",
    "s3_upload",
    "stalled",
    "watched",
]
