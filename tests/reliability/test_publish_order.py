"""The publish protocol one system call at a time: a fault at any step leaves the cache sound.

``Sha256Sidecar.write_atomic_and_sidecar`` is run over a published engine (with its manifest as
the companion) while ``os.open``, ``os.write``, ``os.fsync``, ``os.rename``, ``os.replace`` and
``os.unlink`` are counted. An undisturbed run gives the list of calls; then, for every k, the
same publication runs with the k-th call failing (EIO). Before every call (a crash there) and
after every failure, the engine's canonical name is in one of three states:

- ``old``: the previous engine, its sidecar and its manifest, verifying;
- ``unsealed``: no sidecar (readers treat the engine as absent; README, "Known limits");
- ``new``: the new engine, sealed by its sidecar, its manifest describing it.

A sidecar only ever vouches for the bytes beside it, and its manifest describes those bytes.
The previous engine stays published and verifying until the first rename (every byte of the
publication is written before it), and the states only ever go ``old``, ``unsealed``, ``new``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from provisioning.manifest import manifest_path_for
from provisioning.sidecar import Sha256Sidecar, is_temp_name

OLD = b"old engine bytes\n" * 600
NEW = b"new engine bytes, another length\n" * 500
NAME = "det.fp32.ort-1.0.x86_64-avx2-0a0b0c.0123abcd.engine"
COUNTED = ("open", "write", "fsync", "rename", "replace", "unlink")
WRITES = ("open", "write", "fsync")


def _manifest(sha256: str) -> bytes:
    return json.dumps({"engine": {"file_name": NAME, "sha256": sha256}}).encode()


def _publish(engine: Path, payload) -> None:
    Sha256Sidecar.write_atomic_and_sidecar(engine, payload, move=isinstance(payload, Path) and payload.name == "move",
                                           before_commit=lambda sha, size: {manifest_path_for(engine): _manifest(sha)})


def _state(engine: Path) -> str:
    """``old``, ``new`` or ``unsealed``; anything else is a string that starts with ``UNSOUND``."""
    sidecar = Sha256Sidecar.path_for(engine)
    if not os.path.lexists(sidecar):
        return "unsealed"
    check = Sha256Sidecar.check(engine)
    if not check.ok:
        return f"UNSOUND: sidecar present but {check.reason}"
    try:
        described = json.loads(manifest_path_for(engine).read_bytes())["engine"]["sha256"]
    except (OSError, ValueError, KeyError):
        return "UNSOUND: sealed without a manifest"
    if described != check.sha256:
        return "UNSOUND: sealed, but its manifest describes other bytes"
    return {hashlib.sha256(OLD).hexdigest(): "old", hashlib.sha256(NEW).hexdigest(): "new"}.get(
        check.sha256, "UNSOUND: sealed bytes that were never published")


class Syscalls:
    """Counts the protocol's calls, snapshots the state before each, and fails the k-th one."""

    def __init__(self, engine: Path, fail_at: int | None = None) -> None:
        self.engine = engine
        self.fail_at = fail_at
        self.calls: list[tuple[str, tuple]] = []
        self.states: list[str] = []  # the state a crash just before each call would leave
        self._real = {name: getattr(os, name) for name in COUNTED}
        self._inside = False

    def _wrap(self, name: str):
        real = self._real[name]

        def call(*args, **kwargs):
            if self._inside:  # the state snapshot's own reads
                return real(*args, **kwargs)
            self._inside = True
            try:
                self.states.append(_state(self.engine))
            finally:
                self._inside = False
            index = len(self.calls)
            self.calls.append((name, args))
            if index == self.fail_at:
                raise OSError(errno.EIO, f"injected fault at call {index} (os.{name})")
            return real(*args, **kwargs)

        return call

    def __enter__(self) -> "Syscalls":
        for name in COUNTED:
            setattr(os, name, self._wrap(name))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, real in self._real.items():
            setattr(os, name, real)


def _published_name(engine: Path, name: str, args: tuple) -> bool:
    """True for a call that changes what a canonical name holds (unlink or rename onto it)."""
    published = {engine, Sha256Sidecar.path_for(engine), manifest_path_for(engine)}
    target = args[0] if name == "unlink" else args[1] if name in ("rename", "replace") else None
    return target is not None and Path(target) in published


def _fresh(folder: Path, kind: str) -> tuple[Path, object]:
    """A cache folder with the old engine published, and the new payload of ``kind``."""
    folder.mkdir()
    engine = folder / NAME
    _publish(engine, OLD)
    assert _state(engine) == "old"
    if kind == "bytes":
        return engine, NEW
    source = folder / ("move" if kind == "path-move" else "scratch")
    source.write_bytes(NEW)
    return engine, source


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_temp_name(p.name))


@pytest.mark.parametrize("kind", ["bytes", "path-copy", "path-move"])
def test_a_fault_at_any_step_of_the_publication_leaves_the_cache_sound(tmp_path: Path, kind: str) -> None:
    engine, payload = _fresh(tmp_path / "undisturbed", kind)
    with Syscalls(engine) as trace:
        _publish(engine, payload)
    assert _state(engine) == "new"
    assert not [s for s in trace.states if s.startswith("UNSOUND")], list(zip(trace.calls, trace.states))
    # a crash at any instant: the old engine, then nothing sealed, then the new engine; never back
    sequence = " ".join(trace.states + ["new"])
    assert re.fullmatch(r"(old )+(unsealed )*(new ?)+", sequence + " "), list(zip(trace.calls, trace.states))
    # every byte is written before the first published name changes (a full disk keeps the old engine)
    first = next(i for i, (name, args) in enumerate(trace.calls) if _published_name(engine, name, args))
    assert trace.states[first] == "old"
    late_writes = [c for c in trace.calls[first:] if c[0] in WRITES and not _is_dir_fsync(c)]
    assert late_writes == [], trace.calls
    assert len(trace.calls) >= 8, trace.calls  # the fault loop below covers a real protocol

    for k in range(len(trace.calls)):
        folder = tmp_path / f"fault{k}"
        engine, payload = _fresh(folder, kind)
        failed = None
        with Syscalls(engine, fail_at=k) as faulty:
            try:
                _publish(engine, payload)
            except OSError as exc:
                failed = exc
        where = f"fault at call {k} ({trace.calls[k][0]}): states {faulty.states}"
        assert not [s for s in faulty.states if s.startswith("UNSOUND")], where
        after = _state(engine)
        assert not after.startswith("UNSOUND"), f"{where}: {after}"
        if failed is None:  # a fault the protocol works around (a rename it replaces with a copy)
            assert after == "new", f"{where}: {after}"
        elif k < first:  # failed while still writing: the previous engine is published and verifying
            assert after == "old", f"{where}: {after}"
        elif after == "new":  # the publication was complete; only its clean-up failed
            assert faulty.calls[k][0] == "unlink", f"{where}: {after}"
        # a retry publishes the new engine and leaves no temporary file behind
        if isinstance(payload, Path):
            payload.write_bytes(NEW)
        _publish(engine, payload)
        assert _state(engine) == "new", where
        if faulty.calls[k][0] != "unlink":  # a failed clean-up unlink leaves its file to engines-gc
            assert _temps(folder) == [], where


def _is_dir_fsync(call: tuple[str, tuple]) -> bool:
    """fsync_dir's open of the folder and its fsync, after the renames (no byte of an entry)."""
    name, args = call
    if name == "open":
        return os.path.isdir(args[0])
    return name == "fsync"
