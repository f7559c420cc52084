"""Where a remote entry's objects live in the bucket (layout 2).

::

    <bucket>/<prefix>/
      <host key>/
        _seen.json                          last contact of a read-write client of this host key
        <engine name>/
          <inputs digest>/                  sha256 of every build input (ONNX digest, settings, host, backend)
            engine/<sha256>                 the engine bytes, named by their SHA-256, created if absent
            manifest/<sha256>               the manifest as uploaded, named by its SHA-256, created if absent
            commit/<key id>                 the commit record (see signing.py): the only commit point,
                                            one per signing key ("unsigned" in an unsigned fleet)
            lease                           a builder's claim while it builds (temporary)

The inputs digest makes the key input-addressed: two corpora (or an ONNX roll-out in
progress) with a same-named model keep separate entries instead of replacing each
other's. Parts are content-addressed and created with ``If-None-Match``, so the loser of
an upload race never overwrites the winner's committed bytes: it only fails to create
the commit record. Layout 1 (``<engine name>/engine`` directly) is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..schema import canonical_sha256
from .objectstore import ObjectStore

ENGINE_DIR, MANIFEST_DIR, COMMIT_DIR, LEASE = "engine", "manifest", "commit", "lease"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest part over this is not read (nor uploaded)


def inputs_digest(inputs: Any) -> str:
    """32 hex characters over the canonical JSON of a manifest's ``inputs`` block (or BuildInputs)."""
    document: Mapping[str, Any] = inputs.as_dict() if hasattr(inputs, "as_dict") else inputs
    return canonical_sha256(document)[:32]


@dataclass(frozen=True)
class EntryPaths:
    """The bucket paths of one entry."""

    store: ObjectStore
    host_key: str
    engine_name: str
    digest: str

    @property
    def base(self) -> str:
        """The entry's folder."""
        return f"{self.store.entry_path(self.host_key, self.engine_name)}/{self.digest}"

    @property
    def label(self) -> str:
        """``host key/engine name/digest`` (for logs and the plan)."""
        return f"{self.host_key}/{self.engine_name}/{self.digest}"

    def engine(self, sha256: str) -> str:
        return f"{self.base}/{ENGINE_DIR}/{sha256}"

    def manifest(self, sha256: str) -> str:
        return f"{self.base}/{MANIFEST_DIR}/{sha256}"

    def commit(self, key_id: str) -> str:
        return f"{self.base}/{COMMIT_DIR}/{key_id}"

    @property
    def commits(self) -> str:
        return f"{self.base}/{COMMIT_DIR}"

    @property
    def lease(self) -> str:
        return f"{self.base}/{LEASE}"

    def display(self) -> str:
        """The entry as users write it (``s3://bucket/...``)."""
        return self.store.display(self.base)
