"""``doit engines-pull RELEASE``: pull the engines a signed release pins for this serving host.

Runs without a dodo.py, an ONNX file or a corpus: it reads ``serving.yaml`` (``--serving-config
FILE`` or $PROVISIONING_SERVING_CONFIG; see :mod:`provisioning.release.serving_config`).
Never compiles. Exit codes: 0 every backbone ready (PULLED / PRESENT, or planned with
``--dry-run``); 1 a backbone has no usable variant, its bytes do not match the release, its
entry is gone or the bucket is unreachable (the other backbones are still pulled); 2 bad
input (a release that is unsigned, forged, edited, of another namespace, malformed or too
large; an unknown ``--models`` name; a bad serving config). Always one line per problem.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import ProvisioningError
from ..interrupt import Interrupted, guard
from .commands import USAGE_ERROR, CommandUsageError, _EnginesCommand, _error, opt_json, positional_args

opt_serving = {
    "name": "serving_config", "long": "serving-config", "type": str, "default": "",
    "help": "the serving config (cache_dir, remote:, optional runtime) [default: $PROVISIONING_SERVING_CONFIG]",
}
opt_models = {"name": "models", "long": "models", "type": str, "default": "",
              "help": "comma-separated backbones to pull [default: every backbone of the release]"}
opt_dry_run = {"name": "dry_run", "long": "dry-run", "type": bool, "default": False,
               "help": "print the plan (the variant chosen per backbone, and why); download nothing"}


class EnginesPull(_EnginesCommand):
    """``doit engines-pull RELEASE [--serving-config FILE] [--cache-dir DIR] [--runtime NAME==VERSION] ...``."""

    name = "engines-pull"
    doc_purpose = "pull this host's verified engines from a signed release (no ONNX, no builder, no compile)"
    doc_usage = ("RELEASE [--serving-config FILE] [--cache-dir DIR] [--runtime NAME==VERSION] [--allow-cpu-fallback] "
                 "[--models a,b] [--dry-run] [--json]")
    doc_description = ("Verifies the release's signature with the serving config's keys, picks per backbone the "
                       "best variant for this host (exact, version-compatible, hardware-compatible, TensorRT-RTX "
                       "targets, then ONNX Runtime with --allow-cpu-fallback), downloads it and publishes it in the "
                       "cache. Exit 0 every backbone ready, 1 a backbone could not be pulled, 2 bad input.")
    cmd_options = (
        opt_serving,
        {"name": "cache_dir", "long": "cache-dir", "type": str, "default": "",
         "help": "the cache folder to pull into [default: the serving config's cache_dir]"},
        {"name": "runtime", "long": "runtime", "type": str, "default": "",
         "help": "the serving runtime when it is not installed here, e.g. tensorrt==10.8.0.43 (a Triton container)"},
        {"name": "allow_cpu_fallback", "long": "allow-cpu-fallback", "type": bool, "default": False,
         "help": "accept an ONNX Runtime engine for this CPU when no GPU variant runs here"},
        opt_models, opt_dry_run, opt_json,
    )

    def parse_execute(self, in_args: list[str]) -> int:
        return super().parse_execute(restore_runtime_word(list(in_args)))

    def execute(self, params: Any, args: list[str]) -> int:
        try:  # options after RELEASE too
            args = positional_args(self, params, args)
        except CommandUsageError as exc:
            return _error(str(exc), USAGE_ERROR)
        if len(args) != 1:
            return _error(f"{self.name}: give exactly one release file (doit engines-pull RELEASE); got {len(args)}",
                          USAGE_ERROR)
        self._release = args[0]
        return super().execute(params, [])

    def run(self, params: dict[str, Any]) -> int:
        from ..release.pull import pull_release
        from ..release.serving_config import load_serving_config, serving_config_path

        as_json = params["json"]
        _securesystemslib_without_aws()
        try:
            config = load_serving_config(serving_config_path(params["serving_config"] or None),
                                         cache_dir=params["cache_dir"] or None, runtime=params["runtime"] or None,
                                         allow_cpu_fallback=params["allow_cpu_fallback"])
            models = [m.strip() for m in params["models"].split(",") if m.strip()] or None
            with guard():  # SIGINT / SIGTERM: Interrupted in this thread; downloads in flight are abandoned
                report = pull_release(self._release, config, models=models, dry_run=params["dry_run"])
        except Interrupted as exc:
            sys.stderr.write(f"engines-pull: stopped by {exc.signal_name}; the engines published so far are complete "
                             "and verified, a run again pulls the rest\n")
            return int(exc.code)
        except ProvisioningError as exc:
            if as_json:  # a script reads stdout: the error goes there too
                print(json.dumps({"error": str(exc).splitlines()[0], "exit_code": exc.exit_code}, indent=2))
            raise
        if as_json:
            print(json.dumps({"release": self._release, "dry_run": params["dry_run"], **report.as_dict()}, indent=2))
        else:
            print(report.header())
            for line in report.lines:
                print(line.text(), flush=True)
        return report.exit_code


def release_export(params: dict[str, Any], repo: str, **options: Any) -> int:
    """``engines-export --triton REPO --release RELEASE``: see :mod:`provisioning.release.export`."""
    from ..release.export import export_release
    from ..release.serving_config import load_serving_config, serving_config_path

    _securesystemslib_without_aws()
    config = load_serving_config(serving_config_path(params.get("serving_config") or None),
                                 runtime=params.get("runtime") or None)
    result = export_release(params["release"], repo, config, **options)
    print("\n".join(result.lines), flush=True)
    return 0


def _securesystemslib_without_aws() -> None:
    """Import securesystemslib's signers without boto3, for this command's process only.

    ``securesystemslib.signer`` imports boto3 for its AWS KMS signer (about 0.2 s, more than
    the rest of a warm pull's start-up); a release is verified with SSlibKey, never with KMS,
    so boto3 is hidden while the package loads (that one signer reports itself unavailable)
    and visible again afterwards.
    """
    if "securesystemslib.signer" in sys.modules or "boto3" in sys.modules:
        return
    sys.modules["boto3"] = None  # type: ignore[assignment]  # an ImportError, which the signer module expects
    try:
        import securesystemslib.signer  # noqa: F401
    except ImportError:
        pass
    finally:
        if sys.modules.get("boto3", False) is None:
            del sys.modules["boto3"]


def restore_runtime_word(in_args: list[str]) -> list[str]:
    """Put ``NAME==VERSION`` back after ``--runtime``, where the user wrote it.

    doit takes any word holding ``=`` for one of its command-line variables (``name=value``)
    and removes it before a command parses its options, so ``--runtime tensorrt==10.8.0.43``
    would reach the command as ``--runtime`` alone (the variable ``tensorrt`` = ``=10.8.0.43``).
    """
    spec = _runtime_variable()
    if spec is None or "--runtime" not in in_args:
        return in_args
    at = in_args.index("--runtime") + 1
    return [*in_args[:at], spec, *in_args[at:]]


def _runtime_variable() -> str | None:
    """``NAME==VERSION`` when doit filed it as its variable NAME = ``=VERSION``; else None."""
    from doit import doit_cmd

    from ..release.serving_config import RUNTIME_NAMES

    found = [f"{name}={value}" for name, value in (getattr(doit_cmd, "_CMDLINE_VARS", None) or {}).items()
             if name.lower() in RUNTIME_NAMES and isinstance(value, str) and value.startswith("=")]
    return found[0] if len(found) == 1 else None
