"""``doit engines-export --triton REPO``: publish verified engines into a Triton model repository.

Exit codes: 0 exported (or already current); 1 a backbone has no fresh verified engine, a
cache entry is corrupt, or a write failed; 2 bad input (an unknown model, a repository
path that is a file, a config.pbtxt of another platform without --force, an engine
collision without --prefer, TensorRT-RTX plans); otherwise the config error's own code.
Always one line on stderr, and nothing is written for an error found before writing.

Also the action of the optional ``<basename>_export`` task (see :func:`export_task`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import ProvisioningError
from .commands import USAGE_ERROR, _EnginesCommand, _error, opt_config
from .corpus import load_corpus


class EnginesExport(_EnginesCommand):
    """``doit engines-export --triton REPO [--models a,b] [--keep N] [--dry-run] [--force] [--prefer GPU]``."""

    name = "engines-export"
    doc_purpose = "export this host's verified engines into a Triton Inference Server model repository"
    doc_usage = ("--triton REPO [--models a,b] [--keep N] [--dry-run] [--force] [--prefer GPU-MODEL] [--copy] "
                 "[--no-warmup] [--config PATH | --release RELEASE [--serving-config FILE] [--runtime NAME==VERSION]]")
    doc_description = ("Writes REPO/<model>/config.pbtxt and a new integer version folder per backbone "
                       "(model.plan / model.onnx; TensorRT plans of several compute capabilities under their "
                       "engine names with cc_model_filenames). Versions appear atomically and are never "
                       "modified; an export equal to the newest version writes nothing. Exit 0 done, 1 an "
                       "engine is missing, stale or corrupt (run doit engines), 2 bad input.")
    cmd_options = (
        opt_config,
        {"name": "triton", "long": "triton", "type": str, "default": "",
         "help": "the Triton model repository folder (created if missing)"},
        {"name": "models", "long": "models", "type": str, "default": "",
         "help": "comma-separated backbones to export [default: all of the config]"},
        {"name": "keep", "long": "keep", "type": str, "default": "",
         "help": "keep the newest N versions per model, retire older ones [default: keep all]"},
        {"name": "dry_run", "long": "dry-run", "type": bool, "default": False,
         "help": "say what would be written; write nothing"},
        {"name": "force", "long": "force", "type": bool, "default": False,
         "help": "replace a config.pbtxt that declares another platform"},
        {"name": "prefer", "long": "prefer", "type": str, "default": "",
         "help": "the GPU model whose engine wins where two GPU models share a compute capability"},
        {"name": "copy", "long": "copy", "type": bool, "default": False,
         "help": "copy engines even where a hard link to the cache would do"},
        {"name": "no_warmup", "long": "no-warmup", "type": bool, "default": False,
         "help": "leave model_warmup (a request at the profile's opt shapes) out of config.pbtxt"},
        {"name": "release", "long": "release", "type": str, "default": "",
         "help": "export from this signed release's variants (every GPU class's plan), not from a corpus"},
        {"name": "serving_config", "long": "serving-config", "type": str, "default": "",
         "help": "with --release: the serving config [default: $PROVISIONING_SERVING_CONFIG]"},
        {"name": "runtime", "long": "runtime", "type": str, "default": "",
         "help": "with --release: the TensorRT of the Triton image, e.g. tensorrt==10.8.0.43"},
    )

    def parse_execute(self, in_args: list[str]) -> int:
        from .pull import restore_runtime_word  # --runtime NAME==VERSION survives doit's variables

        return super().parse_execute(restore_runtime_word(list(in_args)))

    def run(self, params: dict[str, Any]) -> int:
        if not params["triton"]:
            return _error("engines-export: --triton REPO is required (the Triton model repository folder)",
                          USAGE_ERROR)
        keep = None
        if params["keep"]:
            try:
                keep = int(params["keep"])
            except ValueError:
                keep = 0
            if keep < 1:
                return _error(f"engines-export: --keep {params['keep']}: give a whole number of versions, at "
                              "least 1 (or leave --keep out to keep all)", USAGE_ERROR)
        models = [m.strip() for m in params["models"].split(",") if m.strip()] or None
        if params["release"]:
            from .pull import release_export

            return release_export(params, params["triton"], models=models, keep=keep, dry_run=params["dry_run"],
                                  force=params["force"], prefer=params["prefer"] or None, link=not params["copy"])
        return run_export(self.config_path(params), params["triton"], models=models, keep=keep,
                          dry_run=params["dry_run"], force=params["force"], prefer=params["prefer"] or None,
                          link=not params["copy"], warmup=not params["no_warmup"])


def run_export(config: str | os.PathLike[str], repo: str | os.PathLike[str], **options: Any) -> int:
    """Load the corpus and export it; print the lines; ProvisioningError propagates (one line)."""
    from ..serving.triton import export_triton_repository

    corpus = load_corpus(Path(config))
    result = export_triton_repository(corpus, repo, **options)
    print("\n".join(result.lines), flush=True)
    return 0


def export_action(config: str, repo: str) -> Any:
    """The ``<basename>_export`` task's action: export everything; TaskFailed with one line on error."""
    from doit.exceptions import TaskFailed

    try:
        run_export(config, repo)
    except ProvisioningError as exc:
        return TaskFailed(f"FAILED export to {repo}: {str(exc).splitlines()[0]}\n")
    return None


def export_task(basename: str, config: Path, repo: str | os.PathLike[str], engines: Iterable[Path],
                model_names: Iterable[str]) -> dict[str, Any]:
    """The task dict of ``<basename>_export``: runs after every engine task, keeps ``repo`` current.

    ``file_dep`` are the engine files (doit orders it after the tasks that make them) and the
    config; each model's ``config.pbtxt`` is a target, so a deleted repository is exported again.
    """
    repo = os.path.abspath(os.fspath(repo))
    return {
        "basename": f"{basename}_export",
        "doc": f"export the engines into the Triton model repository {repo}",
        "actions": [(export_action, [str(config), repo])],
        "file_dep": [str(p) for p in engines] + [str(config)],
        "targets": [os.path.join(repo, m, "config.pbtxt") for m in model_names],
        "verbosity": 2,
    }
