"""``doit engines-release OUT [--require HOSTS] [--created ISO] [--config PATH]``.

Assembles a signed release from the bucket (see :mod:`provisioning.release.assemble`)
and writes it to OUT atomically. The same bucket content, config and ``created`` give
a byte-identical file.

``--require`` is a CI gate: a comma list of host keys (exact, or a prefix such as
``sm90``) or GPU models (``NVIDIA H100 80GB HBM3``, or the node label form
``NVIDIA-H100-80GB-HBM3``, case-insensitive). Every backbone must have a variant for
each of them; otherwise one ``MISSING`` line per (backbone, host) pair, OUT is not
written, and the exit code is 1.

Exit codes: 0 written; 1 a required variant is missing, or the bucket cannot be read;
2 bad input (config, keys, ``--created``, OUT not writable).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..release.format import Release, ReleaseError, Variant, sign_release
from ..sidecar import atomic_write_bytes
from .commands import USAGE_ERROR, CommandUsageError, _EnginesCommand, _error, opt_config, positional_args
from .corpus import _initial_workdir, load_config_only



class EnginesRelease(_EnginesCommand):
    """``doit engines-release OUT``: a signed release of every variant the bucket holds for today's inputs."""

    name = "engines-release"
    doc_purpose = "write a signed release (DSSE, in-toto) of every engine the bucket holds for today's inputs"
    doc_usage = "OUT [--require HOSTS] [--created ISO] [--upload-local] [--config PATH]"
    doc_description = ("Reads the bucket's commit records and manifests (never an engine); with --upload-local "
                       "uploads this cache folder's engines the bucket lacks (read-write remote); signs with "
                       "remote.signing_key. "
                       "--require h1,h2: exit 1 with one MISSING line per backbone without a variant for a host "
                       "key (or prefix) or GPU model. Exit codes: 0 written, 1 missing variant or bucket "
                       "unreachable, 2 bad input.")
    cmd_options = (
        opt_config,
        {"name": "require", "long": "require", "type": str, "default": "",
         "help": "comma list of host keys (or prefixes) or GPU models every backbone must have a variant for"},
        {"name": "created", "long": "created", "type": str, "default": "",
         "help": "the release's created time, ISO 8601 [default: $SOURCE_DATE_EPOCH, else now]"},
        {"name": "upload_local", "long": "upload-local", "type": bool, "default": False,
         "help": "upload and sign this cache folder's engines the bucket lacks (trusts whoever can write it)"},
    )

    def execute(self, params: Any, args: list[str]) -> int:
        try:  # OUT --require X as well as --require X OUT
            positional = positional_args(self, params, args)
        except CommandUsageError as exc:
            return _error(str(exc), USAGE_ERROR)
        if len(positional) != 1:
            return _error(f"{self.name}: give exactly one output file (doit engines-release OUT); "
                          f"got {len(positional)}", USAGE_ERROR)
        self._out = Path(os.path.abspath(os.path.join(_initial_workdir(), os.path.expanduser(positional[0]))))
        return super().execute(params, [])

    def run(self, params: dict[str, Any]) -> int:
        from ..release.assemble import assemble_release, created_now, release_keys

        config = load_config_only(self.config_path(params))
        created = parse_created(params.get("created") or "") if params.get("created") else created_now()
        required = [h.strip() for h in (params.get("require") or "").split(",") if h.strip()]
        _, keys = release_keys(config)
        assembly = assemble_release(config, created, upload_local=bool(params.get("upload_local")))
        release = assembly.release
        for note in assembly.notes:
            print(f"NOTE: {note}", file=sys.stderr)
        for backbone in release.backbones:
            hosts = ", ".join(v.host_key for v in backbone.variants) or "none"
            print(f"{backbone.model_name}: {len(backbone.variants)} variant(s): {hosts}")
        missing = missing_pairs(release, required)
        for model, host in missing:
            have = ", ".join(sorted({v.host_key for v in release.backbone(model).variants})) or "no variants"
            print(f"MISSING {model}: no variant for {host} (the bucket has {have} for today's inputs)",
                  file=sys.stderr)
        if missing:
            return _error(f"{self.name}: {len(missing)} required (backbone, host) pair(s) have no variant; "
                          f"{self._out} not written (build them, then run engines-release again)", 1)
        data = sign_release(release, keys)
        try:
            atomic_write_bytes(self._out, data)
        except OSError as exc:
            raise ReleaseError(f"cannot write {self._out} ({exc.strerror or type(exc).__name__}); "
                               "give a path in a writable folder") from None
        count = sum(len(b.variants) for b in release.backbones)
        print(f"wrote {self._out}: {len(release.backbones)} backbone(s), {count} variant(s), "
              f"{len(assembly.uploaded)} uploaded first, {assembly.requests} bucket request(s) in "
              f"{assembly.seconds:.1f} s, sha256 {hashlib.sha256(data).hexdigest()}")
        return 0


def parse_created(text: str) -> str:
    """``--created`` as the release writes it (UTC, seconds, ``Z``); ReleaseError for anything else."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReleaseError(f"--created {text[:40]!r} is not an ISO 8601 time; use e.g. 2026-12-07T00:00:00Z") \
            from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _norm(text: str) -> str:
    return re.sub(r"[\s_-]+", "-", text.strip()).casefold()


def variant_matches(variant: Variant, wanted: str) -> bool:
    """True when ``variant`` serves ``wanted``: its host key (or a prefix of it), or its GPU model."""
    if variant.host_key == wanted or (wanted and variant.host_key.startswith(wanted)):
        return True
    model = variant.tied_to.gpu_model
    return model is not None and _norm(model) == _norm(wanted)


def missing_pairs(release: Release, required: list[str]) -> list[tuple[str, str]]:
    """(backbone, host) pairs of ``required`` with no variant, backbone by backbone."""
    return [(backbone.model_name, wanted) for backbone in sorted(release.backbones, key=lambda b: b.model_name)
            for wanted in required if not any(variant_matches(v, wanted) for v in backbone.variants)]


__all__ = ["EnginesRelease", "missing_pairs", "parse_created", "variant_matches"]
