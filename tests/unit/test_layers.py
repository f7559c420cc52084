"""The package's layers hold: lint-imports passes, no import cycle, no module past its size.

docs/architecture.md draws the layers; pyproject.toml's [tool.importlinter] states them as
contracts. These tests prove the contracts are complete (every module has a layer), that
breaking one (an upward import: module level, in a function, or under TYPE_CHECKING)
fails, and that grimp, counting every import, finds no cycle.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "provisioning"
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
MAX_LINES = 450
# Modules allowed past MAX_LINES, each with the reason it is one idea that does not split well.
SIZE_ALLOWED: dict[str, str] = {}


def _contracts() -> dict[str, dict]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {c["id"]: c for c in data["tool"]["importlinter"]["contracts"]}


def _top_level_modules() -> set[str]:
    """provisioning's direct children: modules and subpackages, as dotted names."""
    names = set()
    for path in PACKAGE.iterdir():
        if path.name.startswith((".", "_")):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names.add(f"provisioning.{path.name}")
        elif path.suffix == ".py":
            names.add(f"provisioning.{path.stem}")
    return names


def _layer_members(contract: dict) -> list[str]:
    members = []
    for layer in contract["layers"]:
        for sep in ("|", ":"):
            layer = layer.replace(sep, " ")
        members += layer.split()
    return members


def _lint(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = None
    if extra_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(extra_path)}
    return subprocess.run([LINT_IMPORTS, "--no-cache", str(cwd / "pyproject.toml")], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_lint_imports_passes_on_the_package() -> None:
    run = _lint(REPO)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_every_module_has_exactly_one_layer() -> None:
    members = _layer_members(_contracts()["layers"])
    duplicates = sorted({m for m in members if members.count(m) > 1})
    assert not duplicates, f"modules in more than one layer: {duplicates}"
    missing = sorted(_top_level_modules() - set(members))
    assert not missing, f"modules with no layer in pyproject.toml's layers contract: {missing}"
    stale = sorted(set(members) - _top_level_modules())
    assert not stale, f"layers naming modules that do not exist: {stale}"


def test_forbidden_contracts_cover_every_module_but_the_owner() -> None:
    contracts = _contracts()
    everything = _top_level_modules()
    doit = contracts["doit-on-top"]
    assert set(doit["forbidden_modules"]) == {"doit"}
    assert set(doit["source_modules"]) == everything - {"provisioning.doit"}
    runtimes = contracts["runtimes-in-backends"]
    assert set(runtimes["forbidden_modules"]) == {"tensorrt", "tensorrt_rtx", "onnxruntime", "cuda"}
    assert set(runtimes["source_modules"]) == everything - {"provisioning.backends"}
    importlinter = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert importlinter.get("exclude_type_checking_imports", False) is False  # every import counts


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(PACKAGE, root / "provisioning", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


UPWARD = {
    "module level": ("errors.py", "\nfrom .compiler import EngineCompiler  # planted\n"),
    "inside a function": ("host.py", "\n\ndef _planted():\n    from .cache import LOCK_DIR\n    return LOCK_DIR\n"),
    "under TYPE_CHECKING": ("sidecar.py", "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from .specs import BackboneSpec\n"),
    "the runtime outside backends": ("compiler.py", "\n\ndef _planted():\n    import onnxruntime\n"
                                                    "    return onnxruntime\n"),
    "doit below the doit layer": ("serving/resolve.py", "\n\ndef _planted():\n    import doit\n    return doit\n"),
}


@pytest.mark.parametrize("kind", sorted(UPWARD))
def test_a_planted_upward_import_fails_lint_imports(package_copy: Path, kind: str) -> None:
    file, line = UPWARD[kind]
    target = package_copy / "provisioning" / file
    original = target.read_text()
    target.write_text(original + line)
    try:
        run = _lint(package_copy, extra_path=package_copy)
    finally:
        target.write_text(original)
    assert run.returncode != 0, f"lint-imports accepted an upward import ({kind}):\n{run.stdout[-3000:]}"
    assert "BROKEN" in run.stdout or "broken" in run.stdout
    assert f"provisioning.{file[:-3].replace('/', '.')}" in run.stdout  # the report names the importer


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_counting_every_import() -> None:
    graph = grimp.build_graph("provisioning", include_external_packages=False, exclude_type_checking_imports=False)
    cycles = _cycles(graph)
    for cycle in cycles:
        print(f"cycle of {len(cycle)}: {' <-> '.join(cycle)}")
    assert cycles == [], f"{len(cycles)} import cycle(s); see the printed list"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = grimp.build_graph("provisioning", include_external_packages=False, exclude_type_checking_imports=False)
    graph.add_import(importer="provisioning.host", imported="provisioning.specs")  # specs imports host
    cycles = _cycles(graph)
    assert any({"provisioning.host", "provisioning.specs"} <= set(c) for c in cycles), cycles


def test_no_module_is_over_the_size_limit() -> None:
    over = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in SIZE_ALLOWED:
            over[name] = lines
    assert not over, f"modules over {MAX_LINES} lines (split by concept, or allow-list with a reason): {over}"
