"""Per-action fixed costs of the compiler: doit makes one EngineCompiler per task action."""

from __future__ import annotations

import os
import threading

from provisioning import CompileOutcome, EngineCompiler, EngineCompileRequest, HostCapabilities
from provisioning import build_backbone_specs, load_config
from provisioning.backends.onnxruntime import OnnxRuntimeBackend

HOST = HostCapabilities("onnxruntime", "1.32.0", "x86_64", ("avx2", "fma"))


def _one_by_one(config, specs):
    """What doit's actions do: a new compiler for each backbone."""
    return [EngineCompiler(OnnxRuntimeBackend(), heartbeat_s=0).compile_engines_for_corpus(
        EngineCompileRequest(backbones=(spec,), cache_dir=config.cache_dir, host=HOST)).results[0]
        for spec in specs]


def test_reusing_engines_action_by_action_starts_at_most_one_hashing_thread(corpus_yaml, monkeypatch):
    config = load_config(corpus_yaml)
    specs = build_backbone_specs(config, "onnxruntime")
    assert {r.outcome for r in _one_by_one(config, specs)} == {CompileOutcome.BUILT}
    started: list[str] = []
    real_start = threading.Thread.start

    def counting(self):
        started.append(self.name)
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting)
    assert {r.outcome for r in _one_by_one(config, specs)} == {CompileOutcome.REUSED}
    assert len(specs) == 3 and len([n for n in started if n.startswith("engine-hash")]) <= 1, started


def test_a_forked_child_reuses_with_its_own_hashing_thread(corpus_yaml):
    config = load_config(corpus_yaml)
    specs = build_backbone_specs(config, "onnxruntime")
    _one_by_one(config, specs)  # the parent's thread exists now
    pid = os.fork()
    if pid == 0:  # a `doit -n` worker: the parent's thread is not here; waiting on it would hang
        try:
            ok = all(r.outcome is CompileOutcome.REUSED for r in _one_by_one(config, specs))
        finally:
            os._exit(0 if ok else 1)
    done = threading.Event()
    result: list[int] = []

    def wait() -> None:
        result.append(os.waitpid(pid, 0)[1])
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    if not done.wait(30):
        os.kill(pid, 9)
        raise AssertionError("the forked child hung waiting for its parent's hashing thread")
    assert os.waitstatus_to_exitcode(result[0]) == 0
