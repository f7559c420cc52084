"""The run's shared verifier: one engine verifier and one cache index for every task of a run.

doit evaluates ``uptodate`` checkers one at a time in its main process, and the actions run
there too under ``-n 1``. :class:`SharedVerifier` lets them share one
:class:`~provisioning.verify.EngineVerifier` (hashing every engine on all cores, ahead of the
checks) and one :class:`~provisioning.verify.CacheIndex`. :data:`_RUN_VERIFIER` maps a cache
folder to the verifier of the corpus this process generated tasks for, so that an action
finds what the checkers already hashed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..compiler import BackboneSpec
from ..host import HostCapabilities
from ..sidecar import Verification
from .runmode import _parallel_run


class SharedVerifier:
    """One :class:`~provisioning.verify.EngineVerifier` and one cache index for a whole run.

    doit evaluates checkers one task at a time in its main process. Hashing every existing
    engine on all cores starts at task generation when doit runs tasks with ``verify: full``
    (:func:`_command_runs_tasks`), else at the first check, so checkers find their result ready.
    A checker that finds no saved values (doit's database lost or new: every action runs)
    also starts hashing the ONNX files the actions will need, so that under ``-n 1`` each
    action finds its engine and its ONNX already hashed (:func:`compile_backbone` asks here).
    The :class:`~provisioning.verify.CacheIndex` lets an unchanged entry skip reading its
    sidecar and manifest; it is saved when the process exits (a ``-n`` worker: per action).
    Nothing is hashed or read for commands that never ask (``doit list``, ``doit clean``).
    """

    def __init__(self, engine_paths: list[Path], mode: str = "full", specs: tuple[BackboneSpec, ...] = (),
                 cache_dir: Path | None = None) -> None:
        self._paths = engine_paths
        self._mode = mode
        self._specs = specs
        self.mode = mode
        self._verifier: Any = None
        self._sources_started = False
        self._host_text: tuple[HostCapabilities, str] | None = None
        self._index: Any = None
        self._cache_dir = cache_dir
        self._hashed: dict[tuple[str, tuple[Path, ...]], str] = {}  # digests of bytes this process hashed

    def _started(self) -> Any:
        if self._verifier is None:
            from ..verify import EngineVerifier

            self._verifier = EngineVerifier(self._mode)
            self._verifier.prefetch(p for p in self._paths if p.is_file())
        return self._verifier

    def start(self) -> None:
        """Start hashing every existing engine now (at task generation, for a command that runs tasks)."""
        self._started()

    @property
    def hashing(self) -> bool:
        """Whether this run's engines are being (or were) hashed ahead."""
        return self._verifier is not None

    def check(self, engine_path: Path) -> Verification:
        """Verify one engine against its sidecar (using the prefetched result when ready)."""
        return self._started().check(engine_path)

    def host_text(self, host: HostCapabilities) -> str:
        """``repr(host)``, once per run (the same host object for every task)."""
        if self._host_text is None or self._host_text[0] is not host:
            self._host_text = (host, repr(host))
        return self._host_text[1]

    @property
    def index(self) -> Any:
        """The cache's :class:`~provisioning.verify.CacheIndex` (None without a cache folder)."""
        if self._index is None and self._cache_dir is not None:
            import atexit

            from ..verify import CacheIndex

            self._index = CacheIndex(self._cache_dir)
            atexit.register(self._index.save)
        return self._index

    def prefetch_sources(self) -> None:
        """Hash every backbone's ONNX files ahead of the actions (not under ``-n N``: the workers hash)."""
        if self._sources_started or _parallel_run():
            return
        self._sources_started = True
        index = self.index
        sources = [(s.onnx_path, s.source_files) for s in self._specs]
        if index is not None:
            sources = [(m, f) for m, f in sources if index.onnx_sha256(m, f) is None]
        self._started().prefetch_sources(sources)

    def onnx_sha256(self, spec: BackboneSpec) -> str:
        """The reuse key's ONNX digest: indexed (unchanged files), prefetched, or hashed now.

        An indexed digest is a record in the cache folder: good for local reuse only (see
        :meth:`hashed_onnx_sha256` for what gets fetched, built, signed and published).
        """
        from ..verify import note_known_digests

        index = self.index
        known = index.onnx_sha256(spec.onnx_path, spec.source_files) if index is not None else None
        if known is not None:
            note_known_digests(index.onnx_hashes(spec.onnx_path))
            return known
        return self.hashed_onnx_sha256(spec)

    def hashed_onnx_sha256(self, spec: BackboneSpec) -> str:
        """The ONNX digest of bytes this process hashed (prefetched or hashed now), never a record."""
        from ..verify import combine_onnx_digest, note_known_digests

        files = spec.source_files
        done = self._hashed.get((str(spec.onnx_path), files))
        if done is not None:
            return done
        index = self.index
        hashed = self._started().source_hashes(spec.onnx_path, files)
        digest = combine_onnx_digest(spec.onnx_path, hashed)
        if index is not None:
            index.remember_onnx(spec.onnx_path, hashed, digest)
        note_known_digests(hashed)
        self._hashed[(str(spec.onnx_path), files)] = digest
        return digest


# The SharedVerifier of the corpus this process generated tasks for: the actions use it
_RUN_VERIFIER: dict[str, SharedVerifier] = {}
