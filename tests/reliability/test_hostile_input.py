"""Part 6, hostile input through the real `doit engines`: one clear line, non-zero exit, no cache.

The library-level rules and their exact messages live in tests/unit/test_config.py; this
file feeds the same kinds of mistakes (and worse: alias bombs, deep nesting, crafted ONNX
files) to the command a user runs, and checks what the user sees and what is left on disk.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tests.reliability.conftest import Project, record

GOOD_CLS = {"features": {"min": [1, 64], "opt": [8, 64], "max": [32, 64]}}


def _bomb(levels: int = 7) -> str:
    """A backbone whose first input is 9^levels ones built from nested YAML aliases."""
    value = "&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for level in range(1, levels):
        value = f"&a{level} [" + ", ".join([value] + [f"*a{level - 1}"] * 8) + "]"
    return ("backend: onnxruntime\n"
            f"backbones: [{{model_name: det, onnx: DET, inputs: {{bomb: {value}, images: *a{levels - 1}}}}}]\n")


def _crafted_emb(folder: Path, models: Path, location: str) -> Path:
    """A copy of emb.onnx whose external data location is ``location``."""
    import onnx

    model = onnx.load_model(str(models / "emb.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path = folder / "crafted.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _cases(models: Path) -> list[tuple[str, object, str]]:
    """(label, config document or YAML text, or a callable making files first, expected fragment)."""
    det, cls = str(models / "det.onnx"), str(models / "cls.onnx")
    d = {"model_name": "det", "onnx": det}

    def bb(**extra) -> dict:
        return {"backend": "onnxruntime", "backbones": [{**d, **extra}]}

    def onnx_file(make):
        """A case whose ONNX file is made in the case folder by ``make(folder) -> path``."""
        return lambda folder: {"backend": "onnxruntime", "backbones": [{"model_name": "m", "onnx": str(make(folder))}]}

    def write(name: str, data: bytes):
        def make(folder: Path) -> Path:
            (folder / name).write_bytes(data)
            return folder / name
        return make

    def emb_with(location: str):
        def make(folder: Path) -> Path:
            (folder / "emb.onnx.data").write_bytes((models / "emb.onnx.data").read_bytes())
            return _crafted_emb(folder, models, location)
        return make

    def outside_link(folder: Path) -> Path:
        outside = folder.parent / f"{folder.name}-outside.data"
        outside.write_bytes((models / "emb.onnx.data").read_bytes())
        os.symlink(outside, folder / "linked.data")
        return _crafted_emb(folder, models, "linked.data")

    half_det = (models / "det.onnx").read_bytes()[:1000]
    return [
        ("yaml: unclosed bracket", "backbones: [\n  - {model_name: det", "invalid YAML"),
        ("yaml: tab indentation", "backbones:\n\t- model_name: det\n", "invalid YAML"),
        ("yaml: nested 5000 deep", "backbones: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("yaml: python object tag", "backbones: !!python/object/apply:os.system ['echo pwned']\n",
         "could not determine a constructor"),
        ("yaml: alias bomb (9^7 elements)", _bomb().replace("DET", det), "is not an integer"),
        ("yaml: undefined alias", "backbones: [*nothing]\n", "undefined alias"),
        ("yaml: not UTF-8", b"\xff\xfe\x00garbage", "not UTF-8"),
        ("yaml: NUL byte", "backbones: []\x00\n", "NUL byte"),
        ("yaml: empty file", "", "top level must be a mapping"),
        ("yaml: a list at the top", "- det\n- cls\n", "top level must be a mapping"),
        ("yaml: duplicate top-level key", f"backend: onnxruntime\nbackbones: [{{model_name: det, onnx: {det}}}]\n"
         "backend: tensorrt\n", "duplicate key 'backend'"),
        ("yaml: duplicate backbone key", f"backbones:\n  - model_name: a\n    model_name: b\n    onnx: {det}\n",
         "duplicate key 'model_name'"),
        ("duplicate model_name", {"backbones": [d, dict(d)]}, "duplicate model_name"),
        ("duplicate model_name, other case", {"backbones": [d, {**d, "model_name": "DET"}]}, "duplicate model_name"),
        ("unknown top-level key", {"cahce_dir": "x", "backbones": [d]}, "unknown key(s) cahce_dir"),
        ("unknown backbone key", {"backbones": [{**d, "precison": "fp32"}]}, "unknown key(s) precison"),
        ("1000 unknown keys", {**{f"k{i}": i for i in range(1000)}, "backbones": [d]}, "and 995 more"),
        ("backbones is a string", {"backbones": "det"}, "field 'backbones'"),
        ("backbones is empty", {"backbones": []}, "non-empty list"),
        ("backbone is a string", {"backbones": ["det"]}, "backbones[0]"),
        ("model_name is a number", {"backbones": [{**d, "model_name": 7}]}, "field 'model_name'"),
        ("workspace_mb is a string", {**bb(), "workspace_mb": "4G"}, "field 'workspace_mb'"),
        ("workspace_mb is a bool", {**bb(), "workspace_mb": True}, "field 'workspace_mb'"),
        ("validate is a string", bb(validate="yes"), "field 'validate'"),
        ("unknown precision", bb(precision="fp64"), "field 'precision'"),
        ("precision the backend cannot build", bb(precision="fp16"), "not supported by the onnxruntime backend"),
        ("unknown backend", {"backend": "cuda", "backbones": [d]}, "field 'backend'"),
        ("onnx is a number", bb(onnx=5), "field 'onnx'"),
        ("path traversal in model_name", bb(model_name="../../etc/x"), "invalid name '../../etc/x'"),
        ("absolute path as model_name", bb(model_name="/etc/passwd"), "invalid name '/etc/passwd'"),
        ("NUL byte in model_name", bb(model_name="a\x00b"), "field 'model_name'"),
        ("model_name of 300 bytes", bb(model_name="x" * 300), "field 'model_name'"),
        ("non-ASCII model_name", bb(model_name="modèle"), "field 'model_name'"),
        ("newline in model_name", bb(model_name="a\nb"), "field 'model_name'"),
        ("NUL byte in cache_dir", {"cache_dir": "ca\x00che", "backbones": [d]}, "field 'cache_dir'"),
        ("empty cache_dir", {"cache_dir": " ", "backbones": [d]}, "field 'cache_dir'"),
        ("zero dim", bb(inputs={"images": [1, 3, 0, 32]}), "must be positive"),
        ("negative dim", bb(inputs={"images": [1, -3, 32, 32]}), "must be positive"),
        ("enormous dim", bb(inputs={"images": [1, 3, 2**40, 32]}), "larger than"),
        ("too many elements", bb(inputs={"images": [65536, 65536, 65536]}), "elements"),
        ("float dim", bb(inputs={"images": [1, 3.5, 32, 32]}), "not an integer"),
        ("profile out of order", {"backend": "onnxruntime", "backbones": [
            {"model_name": "cls", "onnx": cls, "inputs": {"features": {"min": [8, 64], "opt": [1, 64],
                                                                       "max": [32, 64]}}}]}, "out of order"),
        ("profile ranks differ", {"backend": "onnxruntime", "backbones": [
            {"model_name": "cls", "onnx": cls, "inputs": {"features": {"min": [1], "opt": [8, 64],
                                                                       "max": [32, 64]}}}]}, "different ranks"),
        ("profile without opt", {"backend": "onnxruntime", "backbones": [
            {"model_name": "cls", "onnx": cls, "inputs": {"features": {"min": [1, 64], "max": [32, 64]}}}]},
         "missing opt"),
        ("rank differs from the ONNX", bb(inputs={"images": [1, 3, 32]}), "rank 3"),
        ("input the ONNX does not have", bb(inputs={"pixels": [1, 3, 32, 32]}), "no input 'pixels'"),
        ("fixed ONNX dim contradicted", bb(inputs={"images": [2, 3, 32, 32]}), "fixed to 1"),
        ("onnx file missing", bb(onnx="nowhere/det.onnx"), "not found"),
        ("onnx path is a folder", bb(onnx=str(models)), "not a regular file"),
        ("onnx path is a device", bb(onnx="/dev/zero"), "not a regular file"),
        ("onnx path traversal to /etc/passwd", bb(onnx="../../../../../../../../etc/passwd"),
         "not a valid ONNX model"),
        ("empty onnx file", onnx_file(write("empty.onnx", b"")), "is empty"),
        ("YAML text named .onnx", onnx_file(write("text.onnx", b"backbones: []\n")), "ONNX"),
        ("random bytes named .onnx", onnx_file(write("noise.onnx", os.urandom(4096))), "ONNX"),
        ("truncated onnx", onnx_file(write("half.onnx", half_det)), "ONNX"),
        ("external data missing", onnx_file(lambda f: _crafted_emb(f, models, "gone.data")), "is missing"),
        ("external data escaping the folder", onnx_file(emb_with("../emb.onnx.data")), "points outside"),
        ("external data at an absolute path", onnx_file(emb_with("/etc/passwd")), "points outside"),
        ("external data through a symlink out", onnx_file(outside_link), "points outside"),
        ("external data with a NUL byte", onnx_file(emb_with("a\x00b")), "NUL byte"),
        ("external data name of 300 bytes", onnx_file(emb_with("x" * 300)), "cannot be used"),
    ]


def _run_case(project: Project, index: int, label: str, document: object, fragment: str) -> str | None:
    folder = project.root / "cases" / f"{index:02d}"
    folder.mkdir(parents=True)
    if callable(document):
        document = document(folder)
    config = folder / "corpus.yaml"
    if isinstance(document, bytes):
        config.write_bytes(document)
    elif isinstance(document, str):
        config.write_text(document)
    else:
        config.write_text(yaml.safe_dump({"cache_dir": "cache", **document}, allow_unicode=True))
    result = project.doit("engines", f"config={config}",
                          env={"PROVISIONING_DOIT_DB": str(folder / "doit.db")}, timeout=60)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    problems = []
    if result.returncode == 0:
        problems.append("exit 0")
    if len(lines) != 1 or not lines[0].startswith("ERROR: ") or len(lines[0]) > 600:
        problems.append(f"not one short ERROR line: {lines[:3]!r}"[:800])
    elif fragment not in lines[0] or str(config) not in lines[0]:
        problems.append(f"line does not name the problem ({fragment!r}) and the file: {lines[0]!r}")
    written = [p for p in folder.rglob("*") if p.name in ("cache", "events.jsonl") or p.suffix == ".engine"]
    if written:
        problems.append(f"wrote {written}")
    return f"{label}: {'; '.join(problems)}" if problems else None


def test_bad_configs_through_doit_engines(project: Project) -> None:
    cases = _cases(project.corpus / "models")
    assert len(cases) >= 40
    with ThreadPoolExecutor(2) as pool:
        failures = list(pool.map(lambda args: _run_case(project, *args),
                                 [(i, *case) for i, case in enumerate(cases)]))
    failures = [f for f in failures if f]
    record("6 hostile input", "bad configs and crafted ONNX files via `doit engines`", len(cases),
           f"{len(cases) - len(failures)}/{len(cases)} one clear ERROR line, non-zero exit, nothing written "
           "to the cache", not failures)
    assert failures == []
