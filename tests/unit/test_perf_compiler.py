"""Per-action fixed costs of the compiler: doit makes one EngineCompiler per task action."""

from __future__ import annotations

import os
import threading
import traceback

import pytest

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


def _run_forked(child, timeout_s: float = 30.0) -> int:
    """Run ``child()`` in a forked process; its exit code: 0 when it returned True, 1 otherwise.

    Whatever the child does, it ends in ``os._exit``: an exception (or a False) is reported as
    exit code 1, never raised into the forked copy of pytest, which would go on running the
    rest of the session in the child while the parent waits.
    """
    pid = os.fork()
    if pid == 0:  # a `doit -n` worker
        code = 1
        try:
            code = 0 if child() else 1
        except BaseException:  # noqa: BLE001 - reported through the exit code, with its traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    done = threading.Event()
    result: list[int] = []

    def wait() -> None:
        result.append(os.waitpid(pid, 0)[1])
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    if not done.wait(timeout_s):
        os.kill(pid, 9)
        raise AssertionError(f"the forked child did not finish in {timeout_s:g} s")
    return os.waitstatus_to_exitcode(result[0])


def test_a_forked_child_reuses_with_its_own_hashing_thread(corpus_yaml):
    config = load_config(corpus_yaml)
    specs = build_backbone_specs(config, "onnxruntime")
    _one_by_one(config, specs)  # the parent's thread exists now
    # the parent's thread is not in the child; waiting on it would hang
    code = _run_forked(lambda: all(r.outcome is CompileOutcome.REUSED for r in _one_by_one(config, specs)))
    assert code == 0


@pytest.mark.parametrize("child", [lambda: 1 / 0, lambda: False], ids=["raises", "false"])
def test_a_failing_forked_child_is_reported_as_a_failure_not_an_escape(child):
    parent = os.getpid()
    try:
        code = _run_forked(child, timeout_s=20)
    except BaseException:
        if os.getpid() != parent:  # the child's exception escaped into this (forked) pytest
            os._exit(99)
        raise
    assert os.getpid() == parent, "the forked child returned into the test"
    assert code == 1, f"exit code {code} (99: the child's exception escaped _run_forked)"
