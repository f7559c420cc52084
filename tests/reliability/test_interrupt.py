"""Ctrl-C and SIGTERM during `doit engines`: this process's partial files go, one line, exit 130/143.

Each scenario publishes the corpus, edits det (and cls for ``-n 2``) so they rebuild at the
same canonical names, and runs ``doit engines`` with a backend (in the project's dodo) that
stops mid-build and waits: in the backend with a 4 MiB file in its scratch folder
(``compile``), or with the engine's ``.incomplete`` file half-written (``publish``). Then the
signal goes to the process group, as a terminal sends Ctrl-C, or to doit's main process (or one
worker) only, as an orchestrator would. A temporary file of another live process (this test's)
is planted beside the engine and must survive.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from provisioning import interrupt
from provisioning.sidecar import Sha256Sidecar, is_temp_name, temp_owner_pid
from tests.conftest import PYTHON
from tests.reliability.conftest import Project, make_project, wait_for

DODO = """\
import os
import time
from pathlib import Path

from provisioning.backends.onnxruntime import OnnxRuntimeBackend
from provisioning.doit import DOIT_CONFIG  # noqa: F401
from provisioning.doit.tasks import engine_tasks

PHASE = os.environ.get("INTERRUPT_TEST_PHASE")  # compile | publish: where each build waits to be stopped
LOG = os.environ.get("INTERRUPT_TEST_LOG")


def _reached(model, phase):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{os.getpid()} {model} {phase}\\n".encode())
    os.close(fd)


class _HalfWritten:
    def __init__(self, inner, model):
        self._inner, self._model = inner, model
        self.scratch_dir, self.path = inner.scratch_dir, inner.path

    def progress(self, phase, detail=""):
        self._inner.progress(phase, detail)

    def write(self, payload, notes=None):
        from provisioning import sidecar

        real = sidecar.write_all

        def stall(fd, data):  # the engine's temporary file holds half its bytes when the signal comes
            sidecar.write_all = real
            real(fd, data[: len(data) // 2])
            _reached(self._model, "publish")
            time.sleep(60)
            real(fd, data[len(data) // 2 :])

        sidecar.write_all = stall
        self._inner.write(Path(payload).read_bytes(), notes)  # bytes: written, not renamed, into the cache

    @property
    def written(self):
        return self._inner.written


class StallingBackend:
    name = "onnxruntime"

    def compile_engine(self, spec, host, output):
        if PHASE == "compile":
            (output.scratch_dir / "timing.cache").write_bytes(bytes(4 << 20))  # a large intermediate
            _reached(spec.model_name, "compile")
            time.sleep(60)
        if PHASE == "publish":
            output = _HalfWritten(output, spec.model_name)
        OnnxRuntimeBackend().compile_engine(spec, host, output)


def make_backend(name):
    return StallingBackend()


def task_engines():
    yield from engine_tasks(backend_factory=make_backend)
"""

TRACEBACK = re.compile(r"Traceback|KeyboardInterrupt|SystemExit|Error:", re.MULTILINE)

SCENARIOS = {
    # name: (doit -n, signal, receiver, phase, worker start method)
    "serial-sigint-group": (1, signal.SIGINT, "group", "publish", "fork"),
    "serial-sigterm-main": (1, signal.SIGTERM, "main", "compile", "fork"),
    "parallel-sigint-group": (2, signal.SIGINT, "group", "compile", "fork"),
    "parallel-sigterm-main": (2, signal.SIGTERM, "main", "publish", "fork"),
    "parallel-sigterm-one-worker": (2, signal.SIGTERM, "worker", "compile", "fork"),
    "parallel-spawn-sigint-group": (2, signal.SIGINT, "group", "publish", "spawn"),  # macOS, Python 3.14
}
SPAWN_DOIT = ("import multiprocessing, sys\n"
              "multiprocessing.set_start_method('spawn')\n"
              "from doit.doit_cmd import DoitMain\n"
              "sys.exit(DoitMain().run(sys.argv[1:]))\n")


def _edit(project: Project, model: str) -> None:
    """A new version of the model's ONNX (only its doc string): same engine name, a rebuild."""
    import onnx

    path = project.corpus / "models" / f"{model}.onnx"
    proto = onnx.load_model_from_string(path.read_bytes())
    proto.doc_string = f"edited {time.time()}"
    path.write_bytes(proto.SerializeToString())


def _temporaries(project: Project, pids: set[int]) -> list[str]:
    return sorted(p.name for p in project.cache.iterdir() if is_temp_name(p.name) and temp_owner_pid(p.name) in pids)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_stopped_build_cleans_up_reports_once_and_exits_128_plus_signal(tmp_path: Path, scenario: str) -> None:
    """Exit 128+N, one INTERRUPTED line and event per stopped build, none of its files left, old engines intact."""
    jobs, signum, receiver, phase, start_method = SCENARIOS[scenario]
    project = make_project(tmp_path / "proj")
    (project.root / "dodo.py").write_text(DODO)
    first = project.doit("engines")
    assert first.returncode == 0, first.stdout + first.stderr
    engines = {p.name.split(".")[0]: p for p in project.canonical_engines()}
    published = {m: Sha256Sidecar.check(p).sha256 for m, p in engines.items()}
    stopped = ("det", "cls") if jobs > 1 else ("det",)
    for model in stopped:
        _edit(project, model)
    foreign = project.cache / f".{engines['det'].name}.{os.getpid()}.0badcafe.incomplete"  # a live process's
    foreign.write_bytes(b"another build")

    log = project.root / "reached.log"
    run_args = ("engines",) if jobs == 1 else ("-n", str(jobs), "engines")
    env = {"INTERRUPT_TEST_PHASE": phase, "INTERRUPT_TEST_LOG": str(log)}
    if start_method == "spawn":
        child = project.spawn([PYTHON, "-c", SPAWN_DOIT, *run_args], env)
    else:
        child = project.spawn_doit(*run_args, env=env)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(child.stdout), daemon=True)
    reader.start()
    try:
        reached = lambda: log.read_text().splitlines() if log.exists() else []  # noqa: E731
        assert wait_for(lambda: len(reached()) == len(stopped), timeout=30), (reached(), b"".join(output))
        builders = {int(line.split()[0]) for line in reached()}
        assert _temporaries(project, builders), "nothing partial to clean up: the scenario stopped nothing"
        target = {"group": -child.pid, "main": child.pid, "worker": min(builders)}[receiver]
        (os.killpg if target < 0 else os.kill)(abs(target), signum)
        try:
            code = child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"doit still runs 20 s after {signal.Signals(signum).name}: {b''.join(output).decode()}")
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
    reader.join(timeout=10)
    text = b"".join(output).decode(errors="replace")

    name = signal.Signals(signum).name
    assert code == 128 + signum, text
    # Ctrl-C reaches the whole group, but doit's main process may terminate (SIGTERM) a worker
    # before that worker handles its own SIGINT: either signal stops it cleanly.
    names = {name, "SIGTERM"} if jobs > 1 and receiver == "group" else {name}
    interrupted = sorted(line for line in text.splitlines() if line.startswith("INTERRUPTED"))
    assert len(interrupted) == len(stopped), text
    for model, line in zip(sorted(stopped), interrupted):
        assert line in {f"INTERRUPTED {model}: stopped by {n}; partial files removed" for n in names}, text
    assert not TRACEBACK.search(text) and "FAILED" not in text, text
    events = [e for e in project.events() if e.get("outcome") == "INTERRUPTED"]
    assert sorted(e["model_name"] for e in events) == sorted(stopped), events
    for event in events:
        assert event["pid"] in builders and event["engine"] == engines[event["model_name"]].name, event
        classes = {"KeyboardInterrupt" if n == "SIGINT" else "SIGTERM" for n in names}
        assert event["error_class"] in classes, event
    assert _temporaries(project, builders) == []
    assert foreign.read_bytes() == b"another build", "another process's temporary file was removed"
    for model, engine in engines.items():  # nothing partial published: the old engines stand, verifying
        check = Sha256Sidecar.check(engine)
        assert check.ok and check.sha256 == published[model], f"{engine.name}: {check.reason}"

    again = project.doit(*run_args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(f"BUILT  {m}" in again.stdout for m in stopped), again.stdout


def test_a_signal_during_the_commit_lands_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between withdrawing the old sidecar and renaming the new one in, a signal waits: an engine always verifies."""
    import provisioning.sidecar as sidecar

    engine = tmp_path / "m.engine"
    sidecar.Sha256Sidecar.write_atomic_and_sidecar(engine, b"old engine")
    real_replace = os.replace
    calls: list[str] = []

    def replace_then_signal(src, dst):  # Ctrl-C right after the engine itself is renamed into place
        real_replace(src, dst)
        calls.append(os.fspath(dst))
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.01)  # the handler runs here unless the commit holds it back

    monkeypatch.setattr(os, "replace", replace_then_signal)
    # Python's own default, whatever an earlier in-process test left (CI once saw SIGINT ignored here)
    monkeypatch.setattr(interrupt._state, "signum", None)
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(interrupt.Interrupted) as stop, interrupt.guard():
            sidecar.Sha256Sidecar.write_atomic_and_sidecar(engine, b"new engine")
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGINT, saved)
        interrupt._state.signum = None  # this process goes on (pytest): let the next test be stopped
    assert Sha256Sidecar.check(engine).ok and engine.read_bytes() == b"new engine"
    assert stop.value.code == 130 and len(calls) == 2, calls
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]
