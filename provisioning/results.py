"""What a compile run ends with: one result per backbone (with its cache entry) and the summary.

Above :mod:`provisioning.cache` (a result holds the entry it ended with) and below the
compiler; :mod:`provisioning.compiler` re-exports them under their public names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from .cache import EngineCacheEntry
from .specs import CompileOutcome

__all__ = ["EngineCompileResult", "EngineCompileSummary"]


@dataclass(frozen=True)
class EngineCompileResult:
    """The outcome for one backbone, with the engine it ended with."""

    entry: EngineCacheEntry
    outcome: CompileOutcome
    compile_duration_s: float | None
    miss_reasons: tuple[str, ...] = ()
    source: str = "local"

    @property
    def model_name(self) -> str:
        """The backbone's name."""
        return self.entry.model_name


@dataclass(frozen=True)
class EngineCompileSummary:
    """All results in corpus order, with counts."""

    results: tuple[EngineCompileResult, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[EngineCompileResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def built(self) -> int:
        """How many backbones were compiled."""
        return sum(r.outcome is CompileOutcome.BUILT for r in self.results)

    @property
    def reused(self) -> int:
        """How many backbones reused a cached engine."""
        return sum(r.outcome is CompileOutcome.REUSED for r in self.results)

    def by_name(self) -> dict[str, EngineCompileResult]:
        """Results keyed by model name."""
        return {r.model_name: r for r in self.results}
