"""Part 3, corruption: damaged, swapped or mislabelled cache files are never reused, always rebuilt.

Hypothesis draws one damage per example (byte flips, truncations, appended bytes, swaps of
engine/sidecar/manifest files between entries, sidecars naming another file, engines
resealed with a fresh sidecar) and applies it to a copy of a correctly built cache. The
oracle is two-sided: a backbone is REUSED (and doit's checker says up to date) exactly when
its engine bytes, its sidecar's record and its manifest's reuse key are what was built;
anything else is rebuilt, and the rebuild names its reason in events.jsonl and the log.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.cache import check_entry, read_events
from provisioning.compiler import CompileOutcome, EngineCompiler, expected_build_inputs
from provisioning.compose import build_compile_request, load_config
from provisioning.doit.tasks import CHECKER_VALUE, ONNX_DIGEST_VALUE, EngineUpToDate
from provisioning.manifest import manifest_path_for
from provisioning.schema import EngineFilenameSchema
from provisioning.sidecar import Sha256Sidecar

from tests.reliability.conftest import MODELS, Project, count, make_project, record

KINDS = ("engine", "sidecar", "manifest")


def _path(engine: Path, kind: str) -> Path:
    return {"engine": engine, "sidecar": Sha256Sidecar.path_for(engine), "manifest": manifest_path_for(engine)}[kind]


def _reuse_key(engine: Path) -> object:
    """What a manifest must keep for its engine to be reusable (other fields are notes)."""
    try:
        document = json.loads(manifest_path_for(engine).read_bytes())
        return (document["schema_version"], document["inputs"], document["engine"]["sha256"],
                document["engine"]["file_name"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _state(engine: Path) -> tuple:
    return (engine.read_bytes() if engine.is_file() else None, Sha256Sidecar.read(engine), _reuse_key(engine))


files = st.sampled_from(KINDS)
models = st.sampled_from(MODELS)
DAMAGE = st.one_of(
    st.tuples(st.just("flip"), models, files, st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("truncate"), models, files, st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("append"), models, files, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("swap"), models, models, st.sampled_from(KINDS + ("all",))),
    st.tuples(st.just("names-other"), models, models, st.booleans()),
    st.tuples(st.just("resealed"), models, models),
)


def _apply(damage: tuple, engines: dict[str, Path]) -> None:
    kind = damage[0]
    if kind in ("flip", "truncate", "append"):
        path = _path(engines[damage[1]], damage[2])
        data = bytearray(path.read_bytes())
        if kind == "flip":
            data[int(damage[3] * len(data))] ^= damage[4]
        elif kind == "truncate":
            del data[int(damage[3] * len(data)):]
        else:
            data += damage[3]
        path.write_bytes(bytes(data))
    elif kind == "swap":
        a, b, what = engines[damage[1]], engines[damage[2]], damage[3]
        for file_kind in (KINDS if what == "all" else (what,)):
            pa, pb = _path(a, file_kind), _path(b, file_kind)
            da, db = pa.read_bytes(), pb.read_bytes()
            pa.write_bytes(db)
            pb.write_bytes(da)
    elif kind == "names-other":  # the sidecar vouches for another entry's file
        target, other, other_digest = engines[damage[1]], engines[damage[2]], damage[3]
        source = other if other_digest else target
        digest = Sha256Sidecar.read(source).sha256
        Sha256Sidecar.path_for(target).write_text(Sha256Sidecar.format_line(digest, other.name))
    else:  # another engine's bytes, with a sidecar recomputed to match them
        target, other = engines[damage[1]], engines[damage[2]]
        data = other.read_bytes()
        target.write_bytes(data)
        Sha256Sidecar.path_for(target).write_text(Sha256Sidecar.format_line(Sha256Sidecar.check(other).sha256,
                                                                             target.name))


class Corpus:
    """One correctly built cache, restored before every example."""

    def __init__(self, root: Path) -> None:
        self.project = make_project(root)
        config = load_config(self.project.config)
        self.request = build_compile_request(config)
        self.compiler = EngineCompiler(OnnxRuntimeBackend(), heartbeat_s=0)
        self.compiler.compile_engines_for_corpus(self.request)
        self.pristine = root / "pristine"
        shutil.copytree(self.project.cache, self.pristine)
        self.engines = {s.model_name: self.project.cache / EngineFilenameSchema.build(s, self.request.host)
                        for s in self.request.backbones}
        self.good = {m: _state(p) for m, p in self.engines.items()}
        self.expected = {s.model_name: expected_build_inputs(s, self.request.host) for s in self.request.backbones}

    def restore(self) -> None:
        shutil.rmtree(self.project.cache)
        shutil.copytree(self.pristine, self.project.cache)

    def checker_says_fresh(self, model: str) -> bool:
        spec = next(s for s in self.request.backbones if s.model_name == model)
        checker = EngineUpToDate(spec, self.request.host, self.engines[model])
        values = {CHECKER_VALUE: self.engines[model].name, ONNX_DIGEST_VALUE: self.expected[model].onnx_sha256}
        return checker(None, values)


EXAMPLES = count(80)


def test_damage_is_never_reused_and_always_rebuilt_with_a_reason(tmp_path: Path, caplog) -> None:
    """One property over its own freshly built cache; its figures are this test's own tally."""
    corpus = Corpus(tmp_path / "proj")
    tally = {"examples": 0, "damaged": 0, "rebuilt": 0, "reused_intact": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    @given(damage=DAMAGE)
    def damage_is_never_reused(damage: tuple) -> None:
        corpus.restore()
        _apply(damage, corpus.engines)
        intact = {m: _state(p) == corpus.good[m] for m, p in corpus.engines.items()}
        for model in MODELS:
            assert corpus.checker_says_fresh(model) == intact[model], (damage, model)
        before = len(read_events(corpus.project.cache))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="provisioning"):
            summary = corpus.compiler.compile_engines_for_corpus(corpus.request)
        events = {e["model_name"]: e for e in read_events(corpus.project.cache)[before:]}
        misses = {r.model_name for r in caplog.records if getattr(r, "event", None) == "miss"}
        for result in summary:
            model = result.model_name
            if intact[model]:
                assert result.outcome is CompileOutcome.REUSED, (damage, model)
            else:
                assert result.outcome is CompileOutcome.BUILT, (damage, model)
                assert events[model]["outcome"] == "BUILT" and events[model]["miss_reasons"], (damage, events[model])
                assert model in misses, (damage, model)
            assert check_entry(corpus.engines[model], model, corpus.expected[model]).hit
        tally["examples"] += 1
        tally["damaged"] += sum(not v for v in intact.values())
        tally["rebuilt"] += sum(r.outcome is CompileOutcome.BUILT for r in summary)
        tally["reused_intact"] += sum(r.outcome is CompileOutcome.REUSED for r in summary)

    damage_is_never_reused()
    assert tally["examples"] >= EXAMPLES // 2, tally  # hypothesis ran the property, not a handful of examples
    assert tally["damaged"] > 0 and tally["damaged"] == tally["rebuilt"], tally
    assert tally["reused_intact"] > 0, tally  # the oracle's other side: untouched entries were reused
    record("3 corruption", "hypothesis: flips, truncations, appends, swaps, sidecars naming another file, "
           "resealed engines", tally["examples"],
           f"{tally['damaged']} damaged entries: 0 reused, 0 up to date, {tally['rebuilt']} rebuilt with a logged "
           f"reason; {tally['reused_intact']} untouched entries reused", True)


DOIT_DAMAGE = [
    ("flip", "det", "engine", 0.5, 0x01),
    ("truncate", "cls", "engine", 0.5),
    ("append", "emb", "engine", b"\x00"),
    ("swap", "det", "cls", "sidecar"),
    ("swap", "cls", "emb", "manifest"),
    ("names-other", "emb", "det", True),
    ("resealed", "det", "emb"),
]


def test_doit_never_calls_a_damaged_engine_up_to_date(tmp_path: Path) -> None:
    project: Project = make_project(tmp_path / "proj")
    assert project.doit("engines").returncode == 0
    engines = {p.name.split(".")[0]: p for p in project.canonical_engines()}
    for damage in DOIT_DAMAGE:
        _apply(damage, engines)
        damaged = {damage[1]} | ({damage[2]} if damage[0] == "swap" else set())
        result = project.doit("engines")
        assert result.returncode == 0, result.stdout + result.stderr
        for model in MODELS:
            marker = f".  engines:{model}" if model in damaged else f"-- engines:{model}"
            assert marker in result.stdout, (damage, result.stdout)
            if model in damaged:
                assert f"miss {model}: " in result.stdout and f"BUILT  {model}" in result.stdout, result.stdout
        assert all(Sha256Sidecar.verify(p) for p in engines.values())
    record("3 corruption", "damaged entries under the real `doit engines` checker", len(DOIT_DAMAGE),
           f"{len(DOIT_DAMAGE)}/{len(DOIT_DAMAGE)} damaged engines run (never `--`), rebuilt with a 'miss' line", True)

