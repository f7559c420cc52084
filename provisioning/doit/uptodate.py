"""The ``uptodate`` checker of an ``engines:<model>`` task: is the cached engine still the one to use?

doit calls :class:`EngineUpToDate` in its main process when the task's ``file_dep`` is
unchanged; the values the last successful action saved (:data:`ONNX_DIGEST_VALUE`,
:data:`CHECKER_VALUE`) stand in for re-hashing the ONNX.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from ..cache import check_entry
from ..compiler import BackboneSpec, expected_build_inputs
from ..host import HostCapabilities
from ..qualification import validation_matches
from ..verify import entry_signatures, reuse_key
from .verifier import SharedVerifier

log = logging.getLogger("provisioning.doit")

ONNX_DIGEST_VALUE = "onnx_sha256"
CHECKER_VALUE = "_engine_uptodate"


class EngineUpToDate:
    """doit ``uptodate`` checker: True only when the cached engine verifies against today's inputs.

    It runs in doit's main process when ``file_dep`` is unchanged, so the ONNX is the one the
    last successful run hashed: the digest saved in ``values`` stands in for re-hashing it.
    The engine is verified against its sidecar (hashed in full unless the config opts into
    ``verify: stat``) and its manifest compared with today's settings, host and builder
    version. It never raises: an exception in an uptodate callable would stop doit with
    exit 3, so any surprise means "run the task".
    """

    def __init__(
        self, spec: BackboneSpec, host: HostCapabilities, engine_path: Path, verifier: SharedVerifier | None = None
    ) -> None:
        self.spec = spec
        self.host = host
        self.engine_path = Path(engine_path)
        self.verifier = verifier

    def configure_task(self, task: Any) -> None:
        """Record which engine this success vouched for (saved with the task's values)."""
        task.value_savers.append(lambda: {CHECKER_VALUE: self.engine_path.name})

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        try:
            return self._verify(values)
        except Exception as exc:  # never abort the doit run from a checker
            log.debug("uptodate check of %s failed (%s); running the task", self.spec.model_name, exc)
            return False

    def _verify(self, values: dict[str, Any]) -> bool:
        onnx_sha256 = values.get(ONNX_DIGEST_VALUE)
        if values.get(CHECKER_VALUE) != self.engine_path.name or not isinstance(onnx_sha256, str):
            if self.verifier is not None:  # the action will run: hash what it needs ahead of it
                self.verifier.prefetch_sources()
            return False
        index = self.verifier.index if self.verifier is not None else None
        # today's inputs are a function of these three (see expected_build_inputs): no need to build them
        key = reuse_key(onnx_sha256, self.spec, self.verifier.host_text(self.host)) if index is not None else ""
        if index is not None:
            indexed = index.engine(self.engine_path, key)
            if indexed is not None:  # sidecar and manifest unchanged since they checked out under this key
                sha256, unchanged = indexed
                if unchanged and self.verifier.mode == "stat":
                    return True
                verification = self.verifier.check(self.engine_path)
                return verification.ok and verification.sha256 == sha256
        expected = expected_build_inputs(self.spec, self.host, onnx_sha256)
        before = entry_signatures(self.engine_path) if index is not None else None
        verify = self.verifier.check if self.verifier is not None else None
        check = check_entry(self.engine_path, self.spec.model_name, expected, verify=verify)
        # validate: asks for a passing record under today's criteria; without one the action
        # runs, and validates the cached engine rather than rebuilding it
        hit = check.hit and validation_matches(check.entry.manifest, self.spec)
        if hit and index is not None:
            index.remember_engine(self.engine_path, key, check.entry.sha256, before)
        return hit

    def __repr__(self) -> str:
        return f"EngineUpToDate({self.engine_path.name!r})"

    # doit asks inspect.signature() of every uptodate callable once per task and run; for an
    # instance that means resolving __call__ each time (~0.1 ms): a class attribute answers at once
    __signature__ = inspect.Signature([inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                       for name in ("task", "values")])
