"""Finding an entry's commit record: the first one, of a key this host trusts, that verifies.

The signature is checked over the record's raw bytes before anything in it is parsed;
then the record must name the entry asked for (host key, engine name, inputs digest)
and this host's namespace. A trusted key's record that does not verify is remembered as
*condemned*, as read (bytes and ETag), so that a repair replaces exactly it and never a
record another host wrote meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import RemoteConfig
from .errors import RemoteContentError, shown
from .layout import EntryPaths
from .objectstore import ObjectStore
from .signing import MAX_COMMIT_BYTES, UNSIGNED, Commit, KeyRing, Unverified, parse_body, split_record

log = logging.getLogger("provisioning.remote")


@dataclass(frozen=True)
class Condemned:
    """A commit record this run could not verify, as read (so a repair replaces exactly it)."""

    key_id: str
    record: bytes
    etag: str | None


class CommitLookup:
    """RemoteCache's reading and verifying of commit records."""

    config: RemoteConfig
    store: ObjectStore
    keys: KeyRing | None
    _condemned: dict[str, list[Condemned]]

    def _read_commit(self, paths: EntryPaths, key_id: str) -> tuple[bytes, str | None] | None:
        try:
            found = self.store.read_small_tagged(paths.commit(key_id), MAX_COMMIT_BYTES, self.config.timeout_s)
        except RemoteContentError as exc:
            self._condemned.setdefault(paths.base, []).append(Condemned(key_id, b"", None))
            raise Unverified(f"commit record {shown(key_id, 64)} {exc}") from None
        return None if found is None else (found[0], found[2])

    def _find_commit(self, paths: EntryPaths) -> tuple[Commit, str | None] | None:
        """The first commit record, of a key this host trusts, that verifies; None when there is none.

        A trusted key's record that does not verify is remembered (so that publish may
        replace exactly it) and, when no other record verifies, condemns the entry.
        """
        ids = self.keys.ids_for(paths.host_key) if self.keys is not None else []
        if self.accepts_unsigned:
            ids.append(UNSIGNED)
        problems: list[str] = []
        for key_id in ids:
            found = self._read_commit(paths, key_id)
            if found is None:
                continue
            record, etag = found
            try:
                commit = self._verify(paths, key_id, record)
            except Unverified as exc:
                self._condemned.setdefault(paths.base, []).append(Condemned(key_id, record, etag))
                problems.append(str(exc))
                continue
            return commit, etag
        if problems:
            raise Unverified(problems[0])
        return None

    def _verify(self, paths: EntryPaths, key_id: str, record: bytes) -> Commit:
        """Signature over the raw record first, then its fields against the entry asked for."""
        return verify_record(self.keys, self.config.namespace, paths, key_id, record)

    def _untrusted_note(self, paths: EntryPaths, model_name: str) -> None:
        """When nothing this host trusts is there, say whether records of other keys are."""
        try:
            listed = self.store.list_dir(paths.commits, self.config.timeout_s)
        except RemoteContentError:
            return
        names = sorted(str(item.get("name", "")).rsplit("/", 1)[-1] for item in listed)
        if names:
            log.warning("remote cache: %s has only commit records this host does not trust (%s); building %s "
                        "locally (a key rotation? add the key to remote.trusted_keys)", paths.display(),
                        ", ".join(shown(n, 64) for n in names[:4]), model_name,
                        extra={"event": "remote_untrusted", "model_name": model_name})


def verify_record(keys: KeyRing | None, namespace: str, paths: EntryPaths, key_id: str, record: bytes) -> Commit:
    """The commit record ``record`` of ``key_id`` checked: signature over the raw bytes first, then its fields.

    Unverified unless it is signed by ``key_id`` of ``keys`` (or is a knowingly unsigned
    record under the name ``unsigned``), names the entry at ``paths`` and belongs to
    ``namespace``. Whether unsigned records are acceptable at all is the caller's policy.
    """
    if key_id == UNSIGNED:
        body, algorithm, _, _ = split_record(record)
        if algorithm != "none":
            raise Unverified("unsigned commit record carries a signature")
    elif keys is None:
        raise Unverified(f"commit record {shown(key_id)} is signed, and this host holds no key")
    else:
        body, _ = keys.verify(record, key_id)
    commit = parse_body(body, record, key_id)
    if (commit.host_key, commit.engine_name, commit.inputs_digest) != (paths.host_key, paths.engine_name,
                                                                        paths.digest):
        raise Unverified("commit record names another entry (moved or copied)")
    if commit.namespace != namespace:
        raise Unverified(f"entry belongs to namespace {shown(commit.namespace)}, this host's is {namespace!r}")
    return commit
