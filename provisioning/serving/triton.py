"""Export verified engines into a Triton Inference Server model repository.

Layout (Triton's model-repository convention)::

    REPO/<model>/config.pbtxt              replaced by atomic rename
    REPO/<model>/<version>/model.plan      TensorRT (platform tensorrt_plan)
    REPO/<model>/<version>/model.onnx      ONNX Runtime (platform onnxruntime_onnx)
    REPO/<model>/<version>/<engine name>   TensorRT engines of several compute capabilities
                                           (cc_model_filenames in config.pbtxt)
    REPO/<model>/<version>/provisioning.json, SHA256SUMS   where the bytes came from

Triton polls the repository, so it must never see half a version: a version is written
into a hidden folder ``REPO/<model>/.<n>.<pid>.<token>.incomplete`` (Triton only loads
integer folders), fsynced, then renamed to the next integer. A published version is never
modified; ``keep`` retires the oldest by renaming them hidden before deleting them. Every
exported byte is hashed as it lands in the new version and compared with the engine's
sidecar, so only the verified bytes are ever published (a hard link where the repository
shares the cache's file system, else a copy).

Links are refused at ``REPO/<model>`` and below (the repository folder itself may be one):
the plan checks, and the writer opens each model folder with O_NOFOLLOW and works through
that descriptor (see :mod:`provisioning.serving.triton_repo`).

:func:`plan_triton_export` checks everything and touches nothing (a dry run);
:func:`~provisioning.serving.triton_repo.execute_export` writes. :func:`export_triton_repository` does both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..cache import check_entry
from ..compiler import BackboneSpec, expected_build_inputs
from ..corpus import LoadedCorpus
from ..manifest import BuildInputs, explain_mismatch, read_manifest
from ..schema import EngineFilenameSchema, ParsedEngineName
from ..sidecar import Sha256Sidecar, open_nofollow
from .triton_config import ModelConfigSpec, onnx_tensors, read_platform, render_config, warmup_inputs
from .triton_model import (LOCK_NAME, PROVENANCE, RETIRED_SUFFIX, SUMS, TEMP_SUFFIX, ExportError,  # noqa: F401
                           ExportInputError, ExportPlan, ExportResult, ModelExport, TritonEngine, open_model_dir,
                           provenance, published_versions, temp_name, version_holds)
from .triton_repo import execute_export, note_lines

__all__ = [
    "ExportError",
    "ExportInputError",
    "ExportPlan",
    "ModelExport",
    "TritonEngine",
    "export_triton_repository",
    "plan_triton_export",
    "published_versions",
]

PLATFORMS = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}
DEFAULT_FILES = {"tensorrt": "model.plan", "onnxruntime": "model.onnx"}

def plan_triton_export(corpus: LoadedCorpus, repo: str | os.PathLike[str], *, models: Sequence[str] | None = None,
                       prefer: str | None = None, force: bool = False, warmup: bool = True) -> ExportPlan:
    """Check every requested backbone and the repository; touch nothing.

    ExportInputError (exit 2) for bad requests; ExportError (exit 1) when a backbone has no
    fresh verified engine or a needed cache entry is corrupt; ConfigError for a model Triton
    cannot describe. Raised before anything is written, so an export is all or nothing.
    """
    repo = Path(os.path.abspath(os.fspath(repo)))
    specs = _selected(corpus, models)
    if corpus.host.backend == "tensorrt-rtx":
        raise ExportInputError(
            f"{corpus.config.config_path}: backend tensorrt-rtx: TensorRT-RTX plans cannot be served by Triton's "
            "TensorRT backend (they need the TensorRT-RTX runtime); export a backend: tensorrt or onnxruntime corpus")
    if corpus.host.backend not in PLATFORMS:
        raise ExportInputError(f"backend {corpus.host.backend} has no Triton platform; use tensorrt or onnxruntime")
    _check_repo(repo)
    planned = []
    for spec in specs:
        model_dir = repo / spec.model_name
        engines, notes = _engines_for(corpus, spec, prefer)
        planned.append(_model_export(corpus, spec, model_dir, engines, notes, force, warmup))
    return ExportPlan(repo, tuple(planned))


def _selected(corpus: LoadedCorpus, models: Sequence[str] | None) -> tuple[BackboneSpec, ...]:
    if not models:
        return corpus.specs
    by_name = {s.model_name: s for s in corpus.specs}
    unknown = [m for m in models if m not in by_name]
    if unknown:
        raise ExportInputError(f"--models: {', '.join(unknown)} not in {corpus.config.config_path} (its backbones: "
                               f"{', '.join(by_name)}); fix the name")
    return tuple(by_name[m] for m in dict.fromkeys(models))


def _check_repo(repo: Path) -> None:
    if repo.exists() and not repo.is_dir():
        raise ExportInputError(f"Triton repository {repo} is a file, not a folder; choose a folder for --triton")
    existing = repo
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ExportInputError(f"Triton repository {repo}: {existing} is not writable; fix its permissions or "
                               "choose another --triton folder")


def _engines_for(corpus: LoadedCorpus, spec: BackboneSpec, prefer: str | None) -> tuple[list[TritonEngine], list[str]]:
    """This host's fresh engine, plus (TensorRT) fresh engines of other compute capabilities."""
    path = corpus.engine_path(spec)
    expected = expected_build_inputs(spec, corpus.host)
    check = check_entry(path, spec.model_name, expected)
    if not check.hit:
        raise ExportError(f"{spec.model_name}: no fresh verified engine for this host ({'; '.join(check.reasons)}: "
                          f"{path}); run doit engines first")
    backend = corpus.host.backend
    own = _engine(path, check.entry.sha256, check.entry.size, check.entry.inputs.get("host") or {})
    if backend != "tensorrt":
        return [own], []
    notes: list[str] = []
    engines = [own] + _fleet_engines(corpus, spec, path, expected, notes)
    return _resolve_collisions(spec.model_name, engines, prefer), notes


def _engine(path: Path, sha256: str, size: int, host: dict) -> TritonEngine:
    cc = host.get("compute_capability")
    cc_text = f"{int(cc[0])}.{int(cc[1])}" if isinstance(cc, list) and len(cc) == 2 else None
    return TritonEngine(path, sha256, size, path.name, str(host.get("host_key", "")), cc_text, host.get("gpu_name"))


def _fleet_engines(corpus: LoadedCorpus, spec: BackboneSpec, own: Path, expected: BuildInputs,
                   notes: list[str]) -> list[TritonEngine]:
    """Engines of the same backbone, settings and TensorRT version built for other GPUs (a fleet cache)."""
    mine = EngineFilenameSchema.parse(own.name)
    found = []
    for name in sorted(os.listdir(corpus.cache_dir)):
        try:
            parsed = EngineFilenameSchema.parse(name)
        except ValueError:
            continue
        if parsed.host_key == mine.host_key or _without_host(parsed) != _without_host(mine):
            continue
        path = corpus.cache_dir / name
        manifest = read_manifest(path) or {}
        host = (manifest.get("inputs") or {}).get("host")
        theirs = BuildInputs(expected.onnx_sha256, expected.build_settings, host if isinstance(host, dict) else {},
                             expected.backend, expected.backend_version)
        check = check_entry(path, spec.model_name, theirs)
        if check.hit and check.entry.inputs.get("host", {}).get("host_key") == parsed.host_key:
            found.append(_engine(path, check.entry.sha256, check.entry.size, check.entry.inputs["host"]))
        elif manifest and explain_mismatch(manifest, theirs):
            notes.append(f"skipped {name}: {'; '.join(explain_mismatch(manifest, theirs))}")
        elif not os.path.lexists(Sha256Sidecar.path_for(path)):  # being published or deleted right now
            notes.append(f"skipped {name}: not published (no sidecar)")
        else:
            why = "; ".join(check.reasons) or "its manifest names another host"
            raise ExportError(f"{spec.model_name}: cached engine {path} (built for {parsed.host_key}) does not verify "
                              f"({why}); delete it or rebuild it on that GPU, then export again")
    return found


def _without_host(parsed: ParsedEngineName) -> tuple:
    return (parsed.model_name, parsed.precision, parsed.backend_tag, parsed.version_tag, parsed.settings_digest)


def _matches(engine: TritonEngine, prefer: str) -> bool:
    wanted = prefer.strip().lower()
    name = (engine.gpu_name or "").lower()
    slug = engine.host_key.split("-", 1)[1] if "-" in engine.host_key else ""
    return wanted in (name, name.removeprefix("nvidia "), slug, engine.host_key)


def _resolve_collisions(model: str, engines: list[TritonEngine], prefer: str | None) -> list[TritonEngine]:
    """One engine per compute capability: Triton picks a plan by compute capability only."""
    by_cc: dict[str | None, list[TritonEngine]] = {}
    for engine in engines:
        by_cc.setdefault(engine.compute_capability, []).append(engine)
    chosen = []
    for cc, group in by_cc.items():
        if len(group) > 1:
            picked = [e for e in group if prefer and _matches(e, prefer)]
            if len(picked) != 1:
                shown = " and ".join(f"{e.gpu_name or e.host_key} ({e.host_key})" for e in group)
                hint = f"--prefer {prefer!r} matches {'none' if not picked else 'several'} of them; " if prefer else ""
                raise ExportInputError(f"{model}: engines for {shown} share compute capability {cc}, which Triton "
                                       f"cannot tell apart; {hint}pick one with --prefer GPU-MODEL "
                                       f"(e.g. --prefer {group[0].host_key.split('-', 1)[-1]})")
            group = picked
        chosen.append(group[0])
    return chosen


def _model_export(corpus: LoadedCorpus, spec: BackboneSpec, model_dir: Path, engines: list[TritonEngine],
                  notes: list[str], force: bool, warmup: bool) -> ModelExport:
    backend = corpus.host.backend
    platform = PLATFORMS[backend]
    config_path = model_dir / "config.pbtxt"
    if model_dir.exists() and not model_dir.is_dir():
        raise ExportInputError(f"{model_dir} is a file; Triton needs a folder per model there; move it away")
    fd = open_model_dir(model_dir, create=False)  # ExportInputError: a link below REPO/<model>
    if fd is not None:
        os.close(fd)
    current = _read_text(config_path)
    if current is not None and not force:
        existing = read_platform(current)
        if existing != platform:
            raise ExportInputError(f"{config_path} declares platform {existing or 'none'}, not {platform}; "
                                   "add --force to replace that model")
    inputs, outputs = onnx_tensors(spec.onnx_path, where=f"backbone {spec.model_name}")
    cc_files: tuple[tuple[str, str], ...] = ()
    default = None
    if len(engines) == 1:
        engines = [_renamed(engines[0], DEFAULT_FILES[backend])]
    else:  # several compute capabilities: each plan under its canonical name, this host's the default
        default = engines[0].file_name
        engines = sorted(engines, key=lambda e: tuple(int(p) for p in (e.compute_capability or "0").split(".")))
        cc_files = tuple((e.compute_capability or "", e.file_name) for e in engines)
    config = ModelConfigSpec(
        name=spec.model_name, platform=platform, inputs=inputs, outputs=outputs,
        default_model_filename=default, cc_model_filenames=cc_files,
        warmup=warmup_inputs(inputs, spec.input_shapes) if warmup else (),
        instance_kind="KIND_CPU" if backend == "onnxruntime" else None, source=spec.onnx_path.name)
    text = render_config(config)
    if backend == "onnxruntime":
        notes.append(f"the engine is optimised for ONNX Runtime {corpus.host.backend_version} on this CPU "
                     f"({engines[0].host_key}); serve it with that ONNX Runtime version on such a CPU")
    if engines and "-vc" in EngineFilenameSchema.parse(engines[0].source.name).version_tag:
        notes.append("version-compatible plans: start tritonserver with "
                     "--backend-config=tensorrt,version-compatible=true")
    versions = published_versions(model_dir)
    newest = versions[-1] if versions else None
    unchanged = newest is not None and version_holds(model_dir / str(newest), engines)
    return ModelExport(spec.model_name, model_dir, platform, tuple(engines), text, newest, unchanged,
                       current == text, tuple(notes))


def _renamed(engine: TritonEngine, file_name: str) -> TritonEngine:
    return TritonEngine(engine.source, engine.sha256, engine.size, file_name, engine.host_key,
                        engine.compute_capability, engine.gpu_name)


def _read_text(path: Path) -> str | None:
    try:
        with os.fdopen(open_nofollow(path), "rb") as handle:  # no link, and a FIFO does not block
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        what = "a folder" if path.is_dir() else "not a regular file (a FIFO?)"
        raise ExportInputError(f"{path} is {what}; remove it (Triton reads config.pbtxt as a file)") from None
    except OSError as exc:
        raise ExportInputError(f"cannot read {path} ({exc.strerror}); fix its permissions") from None


def export_triton_repository(corpus: LoadedCorpus, repo: str | os.PathLike[str], *,
                             models: Sequence[str] | None = None, keep: int | None = None, dry_run: bool = False,
                             force: bool = False, prefer: str | None = None, link: bool = True,
                             warmup: bool = True) -> ExportResult:
    """Plan, then (unless ``dry_run``) write the export; returns the lines to show.

    ``keep`` retires the oldest versions beyond that many (None keeps all); ``link=False``
    copies even where a hard link would do.
    """
    if keep is not None and keep < 1:
        raise ExportInputError(f"--keep {keep}: keep at least 1 version (or leave --keep out to keep all)")
    plan = plan_triton_export(corpus, repo, models=models, prefer=prefer, force=force, warmup=warmup)
    if dry_run:
        return _describe(plan, keep)
    return execute_export(plan, keep=keep, link=link)


def _describe(plan: ExportPlan, keep: int | None) -> ExportResult:
    result = ExportResult([f"engines-export: {plan.repo} (dry run, nothing written)"])
    for model in plan.models:
        files = ", ".join(e.file_name + (f" [{e.compute_capability}]" if len(model.engines) > 1 else "")
                          for e in model.engines)
        if model.unchanged:
            what = f"unchanged: version {model.newest_version} already holds these engines"
            if not model.config_current:
                what += "; would rewrite config.pbtxt"
        else:
            what = f"would write version {model.next_version} ({model.platform}: {files})"
        result.lines.append(f"{model.model_name}: {what}")
        versions = published_versions(model.model_dir) + ([] if model.unchanged else [model.next_version])
        if keep is not None and len(versions) > keep:
            result.lines.append(f"{model.model_name}: would retire version(s) "
                                f"{', '.join(map(str, versions[:-keep]))} (--keep {keep})")
    result.lines += note_lines(plan)
    return result
