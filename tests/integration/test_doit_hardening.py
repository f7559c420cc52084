"""Issue 22's newcomer items for doit, each as a new user meets it: real doit in a subprocess.

25 ``doit engines --config PATH``; 27 a missing key file is a config error; 28 the remote
column of engines-status; 29 ``engines-path MODEL -f DODO``; 30 a wait for another
process's build lock is said; 32 status and gc agree on an empty scratch folder, and
``doit -c`` with a failing backbone exits 2 as docs/doit.md says; 33 a FAILED line stays
short with the whole text in the build log (the real TensorRT-RTX case is in
tests/rtx/test_rtx_failed_line.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import yaml

from provisioning.cache import lock_path_for
from provisioning.corpus import load_corpus

from tests.conftest import REPO, write_corpus_yaml
from tests.integration.conftest import Project, clean_env, task_lines

MODELS = {"det", "cls", "emb"}

DOCS = REPO / "docs"


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _alt_corpus(project: Project, name: str = "alt", backbones: list[dict] | None = None, **top) -> Path:
    """A second corpus beside the default one: ``<root>/<name>/corpus.yaml`` with its own cache."""
    folder = project.root / name
    shutil.copytree(project.corpus / "models", folder / "models")
    return write_corpus_yaml(folder, backbones or [{"model_name": "det", "onnx": "models/det.onnx"}], **top)


# --- 25: doit engines --config PATH --------------------------------------------------------------------------------

def test_engines_takes_config_after_the_task_name(project: Project) -> None:
    alt = _alt_corpus(project)
    result = project.doit("engines", "--config", "alt/corpus.yaml")
    assert result.returncode == 0, _output(result)
    assert task_lines(result.stdout) == {"det": "."}, result.stdout  # alt's one backbone, not the default's three
    assert [p.name.split(".")[0] for p in (alt.parent / "cache").glob("*.engine")] == ["det"]
    assert not project.cache.exists()  # the default corpus was not touched
    again = project.doit("engines:det", f"--config={alt}")
    assert again.returncode == 0 and task_lines(again.stdout) == {"det": "--"}, _output(again)
    parallel = project.doit("-n", "2", "engines", "--config", "alt/corpus.yaml")
    assert parallel.returncode == 0 and task_lines(parallel.stdout) == {"det": "--"}, _output(parallel)
    # the option belongs to the task it follows: before the task name it is doit's own, and unknown
    before = project.doit("--config", "alt/corpus.yaml", "engines")
    assert before.returncode != 0 and not project.cache.exists(), _output(before)


def test_every_text_that_suggests_config_for_doit_engines_now_works(project: Project) -> None:
    """The docs and the doctor's fix text suggest ``--config PATH``: it is an option of the engines tasks."""
    texts = (DOCS / "configuration.md").read_text() + (DOCS / "doit.md").read_text()
    assert "`--config PATH` or `config=PATH` on the command line" in texts
    assert "doit engines --config PATH" in (DOCS / "doit.md").read_text()
    help_text = project.doit("help", "engines").stdout
    assert "--config" in help_text and "config=PATH" in help_text, help_text
    doctor = project.doit("engines-doctor", "--config", "missing.yaml")
    assert "pass --config PATH" in doctor.stdout, _output(doctor)


# --- 27: a missing or unreadable key file ---------------------------------------------------------------------------

def _keyed_remote(project: Project, key: str) -> None:
    document = yaml.safe_load(project.config.read_text())
    (project.root / "remote").mkdir(exist_ok=True)
    document["remote"] = {"url": f"file://{project.root / 'remote'}", "timeout_s": 3,
                          "signing_key": {"file": key}}
    project.config.write_text(yaml.safe_dump(document, sort_keys=False))


def test_a_missing_key_file_stops_the_run_before_anything_is_built(project: Project) -> None:
    _keyed_remote(project, "keys/engine.key")
    result = project.doit("engines")
    assert result.returncode == 2, _output(result)
    key = project.corpus / "keys" / "engine.key"
    assert result.stderr == (f"ERROR: {project.config}: field 'remote.signing_key': cannot read key file {key} "
                             "(No such file or directory)\n")
    assert "FAILED" not in _output(result) and ".  engines:" not in result.stdout, _output(result)
    assert not project.cache.exists() or not list(project.cache.glob("*.engine"))
    assert not (project.cache / "events.jsonl").exists()  # no task ran


def test_an_unreadable_key_file_stops_the_run_before_anything_is_built(project: Project) -> None:
    (project.corpus / "keys" / "engine.key").mkdir(parents=True)  # a folder where the key file belongs
    _keyed_remote(project, "keys/engine.key")
    result = project.doit("engines")
    assert result.returncode == 2, _output(result)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "field 'remote.signing_key'" in result.stderr and "engine.key is not a regular file" in result.stderr
    assert "FAILED" not in _output(result) and not (project.cache / "events.jsonl").exists()


def test_a_remote_that_is_off_does_not_need_its_key(project: Project) -> None:
    _keyed_remote(project, "keys/engine.key")
    document = yaml.safe_load(project.config.read_text())
    document["remote"]["mode"] = "off"
    project.config.write_text(yaml.safe_dump(document, sort_keys=False))
    result = project.doit("engines")
    assert result.returncode == 0, _output(result)


# --- 28: the remote column of engines-status -------------------------------------------------------------------------

def test_status_shows_the_remote_as_a_column(project: Project) -> None:
    remote = project.root / "remote"
    document = yaml.safe_load(project.config.read_text())
    document["remote"] = {"url": f"file://{remote}", "timeout_s": 3, "lease_s": 2}
    project.config.write_text(yaml.safe_dump(document, sort_keys=False))
    assert project.doit("engines:det").returncode == 0  # det is built here and uploaded; cls and emb are not
    from tests.integration.conftest import make_foreign_copy

    make_foreign_copy(next(project.cache.glob("det.*.engine")))
    result = project.doit("engines-status")
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
    assert lines[header].split() == ["MODEL", "STATE", "SIZE", "QUALIFIED", "REMOTE", "HOST", "KEY", "PATH"]
    assert f"remote file://{remote}" in lines[:header], result.stdout
    column = lines[header].index("REMOTE")
    cells = {}
    for line in lines[header + 1:]:
        if line.startswith(("total:", " ")):
            continue
        cells.setdefault(line.split()[0], []).append((line.split()[1], line[column:].split()[0]))
    assert cells == {"det": [("fresh", "present"), ("foreign", "-")], "cls": [("missing", "absent")],
                     "emb": [("missing", "absent")]}, result.stdout
    assert not any(line.startswith(f"remote file://{remote}:") for line in lines)  # no trailing line instead
    fleet = (DOCS / "fleet.md").read_text()
    assert "`doit engines-status` adds a remote column" in fleet


def test_status_without_a_remote_has_no_remote_column(project: Project) -> None:
    lines = project.doit("engines-status").stdout.splitlines()
    assert next(line for line in lines if line.startswith("MODEL")).split() == [
        "MODEL", "STATE", "SIZE", "QUALIFIED", "HOST", "KEY", "PATH"]
    assert not any(line.startswith("remote ") for line in lines)


# --- 29: engines-path MODEL -f DODO ---------------------------------------------------------------------------------

def test_engines_path_takes_options_after_the_model_name(built: Project) -> None:
    elsewhere = built.root / "elsewhere"
    elsewhere.mkdir()
    det = next(built.cache.glob("det.*.engine"))
    for args in (("det", "-f", "../dodo.py"), ("det", "--file", "../dodo.py"), ("-f", "../dodo.py", "det"),
                 ("det", "--file=../dodo.py")):
        result = subprocess.run([sys.executable, "-m", "doit", "engines-path", *args], cwd=elsewhere,
                                env=clean_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout == f"{det}\n", (args, _output(result))
    both = built.doit("engines-path", "det", "--json", "--config", str(built.config))
    assert both.returncode == 0 and json.loads(both.stdout)["path"] == str(det), _output(both)
    two = built.doit("engines-path", "det", "cls")
    assert two.returncode == 2 and "give exactly one backbone name" in two.stderr and "got 2" in two.stderr
    bad = built.doit("engines-path", "det", "--bogus")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--bogus" in bad.stderr, _output(bad)
    assert "Traceback" not in _output(bad)


def test_every_command_with_a_positional_reads_options_after_it_the_same_way(tmp_path: Path) -> None:
    """engines-path, engines-pull and engines-release share one parser for what follows the
    positional: an unknown option or a missing value is one usage line, exit 2 (engines-pull used
    to end in doit's own multi-line parser error, exit 3)."""
    for argv, option in ((["engines-pull", "r.json", "--bogus"], "--bogus"),
                         (["engines-pull", "r.json", "--runtime"], "--runtime"),
                         (["engines-release", "out.json", "--bogus"], "--bogus"),
                         (["engines-release", "out.json", "--require"], "--require"),
                         (["engines-path", "det", "--bogus"], "--bogus")):
        result = subprocess.run([sys.executable, "-m", "doit", *argv], cwd=tmp_path, env=clean_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (argv, _output(result))
        assert result.stderr == (f"ERROR: {argv[0]}: option {option} "
                                 f"{'not recognized' if option == '--bogus' else 'requires argument'}; "
                                 f"see 'doit help {argv[0]}'\n"), (argv, _output(result))
        assert not (tmp_path / "out.json").exists()


# --- 30: waiting for another process's build lock --------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from provisioning.cache import engine_lock
from provisioning.lockwait import build_lock
engine = Path(sys.argv[1])
with build_lock(engine_lock(engine), engine, "det", 0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_process_waiting_for_the_build_lock_says_who_holds_it_and_keeps_saying_so(project: Project) -> None:
    from provisioning.lockwait import holder_path

    write_corpus_yaml(project.corpus, [{"model_name": "det", "onnx": "models/det.onnx"}])
    corpus = load_corpus(project.config)
    engine = corpus.engine_path(corpus.specs[0])
    lock_path_for(engine).parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(engine), "8"], stdout=subprocess.PIPE,
                              env=clean_env(), text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        record = json.loads(holder_path(engine).read_text())
        assert record["pid"] == holder.pid and abs(record["since"] - time.time()) < 10
        started = time.monotonic()
        result = project.doit("engines")
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, _output(result)
    lines = result.stdout.splitlines()
    wait = [line for line in lines if line.startswith("waiting for det:")]
    assert len(wait) == 1, result.stdout
    assert wait[0].startswith(f"waiting for det: another build holds its lock (pid {holder.pid} on ")
    assert " since " in wait[0] and " UTC, " in wait[0] and wait[0].endswith(" s ago)"), wait[0]
    beats = [line for line in lines if line.startswith("building det: waiting for the build lock")]
    assert beats and beats[0] == f"building det: waiting for the build lock (pid {holder.pid}), 5 s elapsed", lines
    assert lines.index(wait[0]) < lines.index(beats[0]) < next(i for i, s in enumerate(lines) if s.startswith("BUILT"))
    assert waited > 4, waited
    assert not holder_path(engine).exists()  # the build that followed removed its own record


def test_a_build_that_takes_a_free_lock_says_nothing_about_waiting(project: Project) -> None:
    result = project.doit("engines")
    assert result.returncode == 0 and "waiting for" not in result.stdout, _output(result)


# --- 32: status and gc agree; doit -c exits 2 ------------------------------------------------------------------------

def test_status_and_gc_agree_on_an_empty_scratch_folder(built: Project) -> None:
    det = next(built.cache.glob("det.*.engine"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    scratch = built.cache / f".{det.name}.{dead}.abcd1234.incomplete"
    scratch.mkdir()
    gc = built.doit("engines-gc")
    assert scratch.name in gc.stdout and "would free 0 B in 1 item(s)" in gc.stdout, gc.stdout
    status = built.doit("engines-status")
    assert status.stdout.splitlines()[-1].endswith("; engines-gc would free 0 B in 1 item(s)"), status.stdout
    assert built.status_json()["totals"]["gc_items"] == 1
    assert built.doit("engines-gc", "--apply").returncode == 0 and not scratch.exists()
    after = built.doit("engines-status").stdout.splitlines()[-1]
    assert after.endswith("; engines-gc would free 0 B in 0 item(s)"), after


def test_continue_with_a_failing_backbone_exits_2_as_documented(project: Project) -> None:
    model = onnx.load_model(str(project.corpus / "models" / "det.onnx"))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save_model(model, str(project.corpus / "models" / "det.onnx"))
    result = project.doit("-c", "engines")
    assert result.returncode == 2, _output(result)
    assert [line for line in result.stdout.splitlines() if line.startswith("BUILT")] != []  # the others built
    assert {m for m in MODELS if m != "det"} <= {line.split()[1] for line in result.stdout.splitlines()
                                                 if line.startswith("BUILT")}
    plain = project.doit("engines")
    assert plain.returncode == 1, _output(plain)
    doc = " ".join((DOCS / "doit.md").read_text().split())
    assert "`doit -c engines` (continue past a failure) builds every other backbone, then exits with 2" in doc


# --- 33: a long FAILED line (ONNX Runtime; TensorRT-RTX in tests/rtx) ---------------------------------------------

def test_a_long_onnx_runtime_error_is_cut_in_the_failed_line_and_whole_in_the_build_log(project: Project) -> None:
    from onnx import TensorProto, helper

    name = "node_" + "x" * 600  # ONNX Runtime repeats the node's name in its message
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name=name)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save_model(helper.make_model(graph), str(project.corpus / "models" / "long.onnx"))
    write_corpus_yaml(project.corpus, [{"model_name": "long", "onnx": "models/long.onnx"}])
    result = project.doit("engines")
    assert result.returncode == 1, _output(result)
    (failed,) = [line for line in result.stdout.splitlines() if line.startswith("FAILED long:")]
    (log,) = project.cache.glob("long.*.engine.build.log")
    assert len(failed) < 640 and failed.endswith(f"... (the whole text is in {log.name})"), failed
    assert failed.startswith("FAILED long: backbone long: ONNX Runtime could not load long.onnx")
    text = log.read_text()
    assert text.startswith(f"# FAILED long: {project.events()[-1]['error_class']}\n"
                           "backbone long: ONNX Runtime could not load long.onnx")
    assert name in text and "NoSuchOp" in text
    event = project.events()[-1]
    assert event["outcome"] == "FAILED" and event["reason"] == failed.removeprefix("FAILED long: ")
    gc = project.doit("engines-gc")  # the log of an engine that was never built is collected
    assert log.name in gc.stdout, gc.stdout


def test_a_short_failure_writes_no_build_log(project: Project) -> None:
    model = onnx.load_model(str(project.corpus / "models" / "det.onnx"))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save_model(model, str(project.corpus / "models" / "det.onnx"))
    result = project.doit("engines:det")
    assert result.returncode == 1
    (failed,) = [line for line in result.stdout.splitlines() if line.startswith("FAILED det:")]
    assert len(failed) <= len("FAILED det: ") + 500 and "whole text" not in failed, failed
    assert not list(project.cache.glob("*.build.log"))
    assert os.path.isdir(project.cache)
