"""Engine releases: a signed list of the engines committed to the bucket, and pulls from it.

:mod:`.format` is the file (a DSSE envelope holding an in-toto Statement v1, signed with
the fleet's key), :mod:`.assemble` builds one from the bucket. See docs/releases.md.
This layer sits above remote/, compose and the cache; nothing below imports it.
"""

from __future__ import annotations

from .format import (
    BackboneVariants, Compatibility, EntryRef, Release, ReleaseError, TiedTo, Variant, load_release, parse_release,
    sign_release, statement_bytes,
)

__all__ = [
    "BackboneVariants", "Compatibility", "EntryRef", "Release", "ReleaseError", "TiedTo", "Variant", "load_release",
    "parse_release", "sign_release", "statement_bytes",
]
