"""Repair without undoing others: conditional creates, and replacing exactly what this run condemned.

A commit record this run discarded, or one that does not verify now, is deleted only if
it is still byte-for-byte what was read (If-Match on its ETag), so a concurrent repair
by another host is not undone; a record that verifies is left alone; records of other
keys are never touched. Content-addressed parts whose bytes do not hash to their name
are garbage whoever wrote them and are deleted. A store that refuses conditional writes
is known for the rest of the run and written plainly.
"""

from __future__ import annotations

from pathlib import Path

from .commit_lookup import Condemned
from .config import RemoteConfig
from .errors import ConditionalWriteUnsupported, RemoteContentError
from .layout import MAX_MANIFEST_BYTES, EntryPaths
from .objectstore import ObjectStore
from .signing import MAX_COMMIT_BYTES, Unverified


class EntryRepair:
    """RemoteCache's conditional writes and deletes."""

    config: RemoteConfig
    store: ObjectStore
    _conditional: bool
    _condemned: dict[str, list[Condemned]]

    def _make_room_for_commit(self, paths: EntryPaths, commit_key: str) -> bool:
        """True when this host may create its commit record: none there, or one this run condemned.

        A record that is there and verifies (another builder on the same key won the race)
        is left alone; one this run discarded, or that does not verify now, is deleted only
        if it is still byte-for-byte what was read (If-Match on its ETag), so a concurrent
        repair by another host is not undone. Records of other keys are never touched.
        """
        found = self._read_commit_for_publish(commit_key)
        if found is None:
            return True
        record, etag = found
        condemned = self._condemned.get(paths.base, [])
        if not any(c.key_id == self.commit_id and c.record == record for c in condemned):
            try:
                self._verify(paths, self.commit_id, record)
                return False
            except Unverified:
                pass
        if etag is not None and self._conditional:
            try:
                return self.store.delete_if_match(commit_key, etag, self.config.timeout_s)
            except ConditionalWriteUnsupported as exc:
                self._no_conditional(exc)
        self.store.delete([commit_key], self.config.timeout_s)
        return True

    def _read_commit_for_publish(self, commit_key: str) -> tuple[bytes, str | None] | None:
        try:
            found = self.store.read_small_tagged(commit_key, MAX_COMMIT_BYTES, self.config.timeout_s)
        except RemoteContentError:  # an oversized object, a FIFO, a link: not a record; replace it
            self._delete_planted([commit_key])
            return None
        return None if found is None else (found[0], found[2])

    def _create_file(self, key: str, local: Path, size: int) -> bool:
        if self._conditional:
            try:
                return self.store.put_file_exclusive(key, str(local), self.config.timeout_s)
            except ConditionalWriteUnsupported as exc:
                self._no_conditional(exc)
        if self.store.size(key, self.config.timeout_s) == size:
            return False  # content-addressed: same name, same bytes (a reader re-hashes anyway)
        self.store.put_file(key, str(local), self.config.timeout_s)
        return True

    def _create_bytes(self, key: str, data: bytes) -> bool:
        if self._conditional:
            try:
                return self.store.create_exclusive(key, data, self.config.timeout_s)
            except ConditionalWriteUnsupported as exc:
                self._no_conditional(exc)
        if self.store.read_small(key, MAX_COMMIT_BYTES if len(data) <= MAX_COMMIT_BYTES else MAX_MANIFEST_BYTES,
                                 self.config.timeout_s) == data:
            return False
        self.store.put_bytes(key, data, self.config.timeout_s)
        return True

    # -- helpers -----------------------------------------------------------------------
    def _delete_planted(self, keys: list[str]) -> None:
        """Delete objects that are not what they claim; a link above them is replaced by the writes that follow."""
        try:
            self.store.delete(keys, self.config.timeout_s)
        except RemoteContentError:
            pass
