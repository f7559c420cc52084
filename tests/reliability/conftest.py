"""Reliability suite fixtures: throw-away doit projects on a copy of the corpus, run as real processes.

Counts scale with $RELIABILITY_SCALE (default 1: the minimum counts the suite promises);
``benchmarks/reliability.py`` reruns the suite with a larger scale and collects the figures
each test records through :func:`record` into $RELIABILITY_REPORT (JSON lines).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioning.manifest import read_manifest
from provisioning.schema import EngineFilenameSchema
from provisioning.sidecar import Sha256Sidecar, is_temp_name
from tests.conftest import CORPUS, DEFAULT_BACKBONES, DOIT, PYTHON, REPO, DoitProject, write_corpus_yaml

MODELS = ("det", "cls", "emb")
DODO = """\
from provisioning.doit import DOIT_CONFIG  # noqa: F401
from provisioning.doit.tasks import engine_tasks
from tests.reliability.faulty_backend import make_backend


def task_engines():
    yield from engine_tasks(backend_factory=make_backend)
"""
_ENV_DROP = ("PROVISIONING_CONFIG", "PROVISIONING_DOIT_DB", "RELIABILITY_BUILD_DELAY_S",
             "RELIABILITY_WRITE_DELAY_S", "RELIABILITY_FSIZE_AT_PUBLISH", "RELIABILITY_PHASE_LOG")


def scale() -> float:
    """$RELIABILITY_SCALE as a number (1 when unset)."""
    try:
        return max(1.0, float(os.environ.get("RELIABILITY_SCALE") or 1))
    except ValueError:
        return 1.0


def count(minimum: int) -> int:
    """``minimum`` runs at scale 1, proportionally more at a larger scale."""
    return max(minimum, int(round(minimum * scale())))


def record(part: str, scenario: str, tried: int, observed: str, ok: bool) -> None:
    """Append one figure for the README table (only when $RELIABILITY_REPORT names a file)."""
    target = os.environ.get("RELIABILITY_REPORT")
    if not target:
        return
    line = json.dumps({"part": part, "scenario": scenario, "tried": tried, "observed": observed, "ok": ok})
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a doit or library child: the repo importable, no stray settings."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


# exec the real command (same pid) with SIGINT and SIGTERM at their defaults
_DEFAULT_SIGNALS_EXEC = ("import os, signal, sys\n"
                         "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
                         "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
                         "os.execv(sys.argv[1], sys.argv[1:])\n")


@dataclass
class Project(DoitProject):
    """A doit project: ``root/dodo.py`` (faulty backend injected), ``root/corpus/``, cache in corpus/cache."""

    phase_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.phase_log = self.root / "phases.log"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return child_env(extra)

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a child in its own session (so a SIGKILL takes it down like the OOM killer would).

        The child starts with SIGINT and SIGTERM at their defaults, as a shell starts a
        foreground job: an ignored disposition is inherited through exec, and this test
        process may have had SIGINT ignored by something it ran in-process (seen in CI).
        """
        launcher = [PYTHON, "-c", _DEFAULT_SIGNALS_EXEC, *argv]
        return subprocess.Popen(launcher, cwd=self.root, env=child_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def spawn_doit(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.spawn([DOIT, *args], env)

    def spawn_library(self, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.spawn([PYTHON, "-m", "tests.reliability.faulty_backend", str(self.config)], env)

    def canonical_engines(self) -> list[Path]:
        """Every path in the cache with a canonical engine name (files or not)."""
        found = []
        for path in sorted(self.cache.glob("*.engine")):
            try:
                EngineFilenameSchema.parse(path.name)
            except ValueError:
                continue
            found.append(path)
        return found

    def temp_leftovers(self) -> list[Path]:
        return sorted(p for p in self.cache.iterdir() if is_temp_name(p.name)) if self.cache.is_dir() else []


def make_project(root: Path, backbones: list[dict] | None = None, **top) -> Project:
    """A project folder with the corpus models, a corpus.yaml and the fault-injecting dodo.py."""
    corpus = root / "corpus"
    shutil.copytree(CORPUS / "models", corpus / "models")
    write_corpus_yaml(corpus, [dict(b) for b in (backbones or DEFAULT_BACKBONES)], **top)
    (root / "dodo.py").write_text(DODO)
    return Project(root)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "proj")


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the child's whole session and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def engine_fingerprint(path: Path) -> tuple | None:
    """What a complete ONNX Runtime engine file looks like (None: it does not parse as one).

    ONNX Runtime's optimiser is not byte-deterministic here (two outcomes differing by one
    byte), so completeness is judged by structure: a partial write either fails to parse
    or loses the graph's trailing fields (opsets, outputs), which changes the fingerprint.
    """
    import onnx

    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception:  # DecodeError and friends: a torn protobuf
        return None
    graph = model.graph
    return (len(graph.node), len(graph.initializer), tuple(o.name for o in graph.output),
            tuple((o.domain, o.version) for o in model.opset_import), model.doc_string)


def unsound_entries(cache: Path, complete: dict[str, set] | None = None) -> list[str]:
    """What is wrong with a cache folder after a fault (empty: nothing).

    - every file at a canonical engine path is a regular file holding a complete engine
      (when ``complete`` maps model names to the fingerprints of complete builds),
    - every sidecar present vouches for exactly the bytes beside it, and its manifest
      describes those bytes: a sidecar is the commit point, so it never covers a partial write.
    """
    problems = []
    if not cache.is_dir():
        return problems
    for engine in sorted(cache.glob("*.engine")):
        try:
            model = EngineFilenameSchema.parse(engine.name).model_name
        except ValueError:
            continue
        if engine.is_symlink() or not engine.is_file():
            problems.append(f"{engine.name}: not a regular file")
            continue
        if complete is not None and model in complete and engine_fingerprint(engine) not in complete[model]:
            problems.append(f"{engine.name}: partial or unknown engine ({engine.stat().st_size} bytes)")
        if os.path.lexists(Sha256Sidecar.path_for(engine)):
            check = Sha256Sidecar.check(engine)
            if not check.ok:
                problems.append(f"{engine.name}: sidecar present but {check.reason}")
                continue
            recorded = (read_manifest(engine) or {}).get("engine") or {}
            if recorded.get("sha256") != check.sha256:
                problems.append(f"{engine.name}: committed (sidecar) but its manifest describes other bytes")
    for sidecar in cache.glob("*.engine.sha256"):
        if not os.path.lexists(sidecar.with_name(sidecar.name[: -len(".sha256")])):
            problems.append(f"{sidecar.name}: a sidecar without its engine")
    return problems
