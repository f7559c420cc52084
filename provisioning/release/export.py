"""``engines-export --triton REPO --release RELEASE``: a Triton model repository from a release's variants.

One version per backbone holds a plan for every GPU class the release covers, under
``cc_model_filenames``: for each GPU class (a GPU model and compute capability the
release's TensorRT variants name) the variant ``engines-pull`` would choose on a host of
that class running the serving TensorRT (``--runtime`` / ``runtime:``, else the installed
one). Two GPU models that share a compute capability but get different plans collide as
in a cache export (``--prefer GPU-MODEL`` picks one); a hardware-compatible ``ampere_plus``
plan becomes ``default_model_filename``. A backbone without TensorRT variants is exported
from its ONNX Runtime variant for this CPU (``onnxruntime_onnx``, KIND_CPU); TensorRT-RTX
plans cannot be served by Triton's TensorRT backend.

The engines come from the cache (verified against the release's SHA-256); those not there
are pulled first, exactly as ``engines-pull`` pulls (``--dry-run``: only listed). A release
carries no ONNX, so ``config.pbtxt`` leaves inputs and outputs to Triton's auto-complete.
Exit codes as for ``engines-export``: 1 an engine cannot be had, 2 bad input.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Sequence

from ..host import GpuInfo
from ..serving.triton import (DEFAULT_FILES, PLATFORMS, ExportError, ExportInputError, ExportPlan, ExportResult,
                              ModelExport, TritonEngine, _check_repo, _describe, _read_text, _resolve_collisions,
                              published_versions)
from ..serving.triton_config import ModelConfigSpec, read_platform, render_config
from ..serving.triton_model import version_holds
from ..serving.triton_repo import execute_export
from ..verify import verify_engine
from .format import Release, Variant
from .pull import PullLine, _download_all, is_present, selected_models, verified_release
from .select import Choice, ServingHost, choose, probe_serving_host
from .serving_config import ServingConfig

AUTO_COMPLETE_NOTE = ("a release carries no ONNX: inputs and outputs are left to Triton's auto-complete (do not start "
                      "tritonserver with --disable-auto-complete-config)")


def export_release(release_path: str | os.PathLike[str], repo: str | os.PathLike[str], config: ServingConfig, *,
                   models: Sequence[str] | None = None, keep: int | None = None, dry_run: bool = False,
                   force: bool = False, prefer: str | None = None, link: bool = True,
                   host: ServingHost | None = None) -> ExportResult:
    """Verify the release, choose a plan per GPU class, pull what is missing, write (or plan) the repository."""
    if keep is not None and keep < 1:
        raise ExportInputError(f"--keep {keep}: keep at least 1 version (or leave --keep out to keep all)")
    release = verified_release(release_path, config)
    names = selected_models(release, models)
    repo_path = Path(os.path.abspath(os.fspath(repo)))
    _check_repo(repo_path)
    host = host if host is not None else probe_serving_host(config.runtime)
    chosen = {model: _engines(release, model, config, host, prefer) for model in names}
    missing = _missing(config, chosen)
    pulled: list[str] = []
    if missing and not dry_run:
        lines: dict[str, PullLine] = {}
        _download_all(config, release, missing, lines)
        failed = [line for line in lines.values() if not line.ready]
        if failed:
            raise ExportError(f"{failed[0].text()}; nothing exported")
        pulled = sorted(lines)
    plan = ExportPlan(repo_path, tuple(_model_export(model, repo_path / model, variants, force, config, host)
                                       for model, variants in chosen.items()))
    if dry_run:
        result = _describe(plan, keep)
        result.lines[1:1] = [f"would pull {path.name} first" for _, _, path in missing]
        return result
    result = execute_export(plan, keep=keep, link=link)
    result.lines[1:1] = [f"pulled {name} first" for name in pulled]
    return result


def _engines(release: Release, model: str, config: ServingConfig, host: ServingHost,
             prefer: str | None) -> list[tuple[Variant, str | None, str | None]]:
    """(variant, compute capability, GPU model) of every plan this backbone's version holds."""
    variants = release.backbone(model).variants
    plans = [v for v in variants if v.backend == "tensorrt"]
    if not plans:
        cpu = [v for v in variants if v.backend == "onnxruntime"]
        if not cpu:
            raise ExportInputError(f"{model}: the release has only TensorRT-RTX plans, which Triton's TensorRT "
                                   "backend cannot serve (they need the TensorRT-RTX runtime); serve them with "
                                   "resolve_engine(release=...) instead")
        choice = choose(cpu, host, allow_cpu_fallback=True)
        if choice is None:
            raise ExportError(f"{model}: none of the release's ONNX Runtime engines suits this CPU "
                              f"({host.cpu_key}, onnxruntime {host.runtimes.get('onnxruntime', 'not installed')})")
        return [(choice.variant, None, None)]
    runtime = host.runtimes.get("tensorrt")
    if runtime is None:
        raise ExportInputError(f"{model}: which TensorRT serves these plans? give --runtime tensorrt==VERSION (the "
                               "TensorRT inside your Triton image) or runtime: in the serving config")
    picked: list[tuple[Variant, str | None, str | None]] = []
    for gpu_model, cc in _gpu_classes(plans):
        gpu = GpuInfo(gpu_model or f"sm{cc[0]}{cc[1]}", "", cc, "", 0)
        choice = choose(plans, ServingHost(platform.machine(), (), gpu, {"tensorrt": runtime}, True))
        if choice is not None:
            picked.append((choice.variant, f"{cc[0]}.{cc[1]}", gpu_model))
    if not picked:
        raise ExportError(f"{model}: none of the release's TensorRT plans loads on TensorRT {runtime} (they were "
                          f"built by {', '.join(sorted({v.backend_version for v in plans}))}); release plans built by "
                          "the TensorRT of your Triton image")
    engines = [TritonEngine(Path(v.engine), v.sha256, v.size, v.engine, v.host_key, cc, gpu) for v, cc, gpu in picked]
    distinct = {(e.compute_capability, e.file_name): e for e in engines}  # one class may reach a plan twice
    kept = {(e.compute_capability, e.file_name) for e in _resolve_collisions(model, list(distinct.values()), prefer)}
    return [(v, cc, gpu) for v, cc, gpu in picked if (cc, v.engine) in kept]


def _gpu_classes(plans: list[Variant]) -> list[tuple[str | None, tuple[int, int]]]:
    """The GPU classes the plans name: (GPU model or None, compute capability), sm80 when only ampere_plus."""
    classes = set()
    for variant in plans:
        cc = variant.tied_to.compute_capability
        if cc:
            major, minor = cc.split(".")
            classes.add((variant.tied_to.gpu_model, (int(major), int(minor))))
    if not classes:
        classes.add((None, (8, 0)))
    return sorted(classes, key=lambda c: (c[1], c[0] or ""))


def _missing(config: ServingConfig, chosen: dict) -> list[tuple[str, Choice, Path]]:
    """The chosen engines not in the cache as the release pins them (each once)."""
    missing: dict[str, tuple[str, Choice, Path]] = {}
    for variants in chosen.values():
        for variant, _, _ in variants:
            path = Path(config.cache_dir) / variant.engine
            if variant.engine not in missing and not is_present(path, variant, lambda p: verify_engine(p, config.verify)):
                missing[variant.engine] = (variant.engine, Choice(variant, 0, "export"), path)
    if missing:
        from ..cache import ensure_cache_dir

        ensure_cache_dir(Path(config.cache_dir))
    return list(missing.values())


def _model_export(model: str, model_dir: Path, variants: list, force: bool, config: ServingConfig,
                  host: ServingHost) -> ModelExport:
    backend = variants[0][0].backend
    platform_name = PLATFORMS[backend]
    config_path = model_dir / "config.pbtxt"
    if os.path.islink(model_dir) or (model_dir.exists() and not model_dir.is_dir()):
        raise ExportInputError(f"{model_dir} is a link or a file; Triton needs a folder per model there; move it away")
    current = _read_text(config_path)
    if current is not None and not force and read_platform(current) != platform_name:
        raise ExportInputError(f"{config_path} declares platform {read_platform(current) or 'none'}, not "
                               f"{platform_name}; add --force to replace that model")
    cache = Path(config.cache_dir)
    files = {v.engine: TritonEngine(cache / v.engine, v.sha256, v.size, v.engine, v.host_key, cc, gpu)
             for v, cc, gpu in variants}
    notes = [AUTO_COMPLETE_NOTE]
    if len(files) == 1:
        (only,) = files.values()
        engines = (TritonEngine(only.source, only.sha256, only.size, DEFAULT_FILES[backend], only.host_key,
                                only.compute_capability, only.gpu_name),)
        cc_files: tuple[tuple[str, str], ...] = ()
        default = None
    else:
        engines = tuple(sorted(files.values(), key=lambda e: e.file_name))
        cc_files = tuple(sorted({(cc, v.engine) for v, cc, _ in variants},
                                key=lambda p: tuple(int(x) for x in p[0].split("."))))
        ampere = [v.engine for v, _, _ in variants if v.compatibility.hardware_compatibility == "ampere_plus"]
        default = ampere[0] if ampere else None
    if backend == "onnxruntime":
        notes.append(f"the engine is optimised for ONNX Runtime {variants[0][0].backend_version} on this CPU "
                     f"({variants[0][0].host_key}); serve it with that ONNX Runtime version on such a CPU")
    if any(v.compatibility.version_compatible for v, _, _ in variants):
        notes.append("version-compatible plans: start tritonserver with --backend-config=tensorrt,version-compatible=true")
    spec = ModelConfigSpec(name=model, platform=platform_name, inputs=(), outputs=(), default_model_filename=default,
                           cc_model_filenames=cc_files, instance_kind="KIND_CPU" if backend == "onnxruntime" else None,
                           source="release")
    text = render_config(spec)
    versions = published_versions(model_dir)
    newest = versions[-1] if versions else None
    unchanged = newest is not None and version_holds(model_dir / str(newest), engines)
    return ModelExport(model, model_dir, platform_name, engines, text, newest, unchanged, current == text, tuple(notes))
