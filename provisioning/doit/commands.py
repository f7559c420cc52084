"""doit command plugins: ``engines-status``, ``engines-gc``, ``engines-key`` and ``engines-path``.

Registered under the ``doit.COMMAND`` entry-point group, so they work in any project
where the package is installed, with or without a ``dodo.py``. The corpus is chosen as
for the tasks: ``--config PATH``, ``config=PATH``, $PROVISIONING_CONFIG, corpus/corpus.yaml
(relative to the folder of a dodo given with ``-f``, as doit resolves a dodo's paths).

Exit codes: 0 success (status: every backbone fresh); 1 status found something to build;
otherwise the error's own code (2 bad config, 3 host probe, 4 backend missing, 5 cache
folder unusable, 69 no GPU), always with one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from typing import Any

from doit.cmd_base import Command

from ..errors import BackendUnavailableError, HostProbeError, NoGpuError, ProvisioningError
from ..gc import parse_size, plan_gc, scan_cache
from .corpus import config_origin, config_path, load_config_only, load_corpus
from .report import human_bytes
from .status import backbone_statuses, cache_key, engine_file_names, render_status, status_totals

USAGE_ERROR = 2

opt_config = {
    "name": "config", "short": "c", "long": "config", "type": str, "default": "",
    "help": "corpus YAML [default: config=PATH, $PROVISIONING_CONFIG or corpus/corpus.yaml]",
}
opt_dodo = {
    "name": "dodoFile", "short": "f", "long": "file", "type": str, "default": "", "env_var": "DOIT_FILE",
    "help": "the project's dodo file: corpus/corpus.yaml is looked up next to it [default: ./dodo.py]",
}
opt_json = {"name": "json", "long": "json", "type": bool, "default": False, "help": "print JSON instead of text"}


class _EnginesCommand(Command):
    """Shared plumbing: option parsing, corpus loading, one-line errors with exit codes."""

    def __init__(self, task_loader: Any = None, cmds: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def execute(self, params: Any, args: list[str]) -> int:
        if args:
            return _error(f"{self.name}: unexpected argument(s) {' '.join(args)}; see 'doit help {self.name}'",
                          USAGE_ERROR)
        try:
            return self.run(dict(params))
        except ProvisioningError as exc:
            return _error(str(exc).splitlines()[0], exc.exit_code)
        except BrokenPipeError:  # `doit engines-status | head`: the reader left, not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    def get_options(self) -> list[Any]:
        """The command's options plus ``-f DODO`` (doit also accepts it before the command name)."""
        from doit.cmdparse import CmdOption

        return [CmdOption(opt) for opt in (*self.cmd_options, opt_dodo)]

    def config_path(self, params: dict[str, Any]) -> Any:
        """The config this invocation means (see :func:`~provisioning.doit.corpus.config_path`)."""
        return config_path(option=params.get("config") or None, base=self.project_folder(params))

    def project_folder(self, params: dict[str, Any]) -> str | None:
        """The folder of the dodo given with ``-f`` (after or before the command), else None."""
        dodo = params.get("dodoFile") or self.opt_vals.get("dodoFile")
        return os.path.dirname(os.path.abspath(dodo)) if dodo else None

    def run(self, params: dict[str, Any]) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class EnginesStatus(_EnginesCommand):
    """``doit engines-status [--json]``."""

    name = "engines-status"
    doc_purpose = "show each backbone's engine: fresh, missing, stale (and why), corrupt, or foreign"
    doc_usage = "[--json] [--verify-signatures] [--config PATH]"
    doc_description = ("Exit code 0 when every backbone is fresh, 1 when something would be (re)built. "
                       "--verify-signatures re-checks the commit records kept beside fetched engines against "
                       "today's trusted keys (exit 1 when a revoked or bad one is found).")
    cmd_options = (opt_config, opt_json, {
        "name": "verify_signatures", "long": "verify-signatures", "type": bool, "default": False,
        "help": "re-check fetched engines' signatures against today's signing_key and trusted_keys",
    })

    def run(self, params: dict[str, Any]) -> int:
        if params.get("verify_signatures"):
            return self._signatures(params)
        if not params["json"]:
            return self._status(params)
        try:
            return self._status(params)
        except ProvisioningError as exc:  # --json: a script reads stdout, so the error goes there too
            line = str(exc).splitlines()[0]
            print(json.dumps({"error": line, "exit_code": exc.exit_code}, indent=2))
            return _error(line, exc.exit_code)

    def _status(self, params: dict[str, Any]) -> int:
        path = self.config_path(params)
        origin = config_origin(option=params["config"] or None)
        try:
            corpus = load_corpus(path)
        except (HostProbeError, NoGpuError, BackendUnavailableError) as exc:
            return self._unprobed(path, exc, params["json"], origin)
        scan = scan_cache(corpus.cache_dir)
        rows = backbone_statuses(corpus, scan)
        totals = status_totals(corpus, scan, rows)
        remote = _remote_states(corpus)
        if params["json"]:
            document = {
                "config": str(path), "config_from": origin, "cache_dir": str(corpus.cache_dir), "backend": corpus.host.backend,
                "backend_version": corpus.host.backend_version, "host_key": corpus.host.identity().host_key,
                "backbones": [r.as_dict() for r in rows if r.state != "foreign"],
                "foreign": [r.as_dict() for r in rows if r.state == "foreign"],
                "totals": totals,
            }
            if remote is not None:
                document["remote"] = remote["url"]
                for row in document["backbones"]:
                    row["remote"] = remote["states"].get(row["model_name"])
            print(json.dumps(document, indent=2))
        else:
            print(f"config {path} (from {origin})")
            print(render_status(corpus, rows, totals, remote))
        return 0 if totals["fresh"] == totals["backbones"] else 1

    def _signatures(self, params: dict[str, Any]) -> int:
        from ..remote.recheck import OK, REJECTED, recheck_signatures

        corpus = load_corpus(self.config_path(params))
        engines = [(s.model_name, corpus.engine_path(s)) for s in corpus.specs]
        rows = _bytes_hashed(recheck_signatures(corpus.config, engines), [path for _, path in engines], OK, REJECTED)
        if params["json"]:
            print(json.dumps({"signatures": [r.as_dict() for r in rows]}, indent=2))
        else:
            width = max((len(r.model_name) for r in rows), default=5)
            for row in rows:
                print(f"{row.model_name:<{width}}  {row.state.upper():<10}  {row.detail}")
        return 1 if any(r.state == REJECTED for r in rows) else 0

    @staticmethod
    def _unprobed(path: Any, exc: ProvisioningError, as_json: bool, origin: str) -> int:
        """Without a usable host (e.g. TensorRT config, no GPU) list what the cache holds."""
        config = load_config_only(path)
        scan = scan_cache(config.cache_dir)
        reason = str(exc).splitlines()[0]
        engines = [{"model_name": e.parsed.model_name, "state": "unverified", "size": e.size,
                    "host_key": e.parsed.host_key, "path": str(e.path)} for e in scan.engines]
        if as_json:
            print(json.dumps({"config": str(path), "config_from": origin, "cache_dir": str(config.cache_dir), "error": reason,
                              "engines": engines, "totals": {"cache_bytes": scan.total_bytes}}, indent=2))
        else:
            print(f"config {path} (from {origin})")
            print(f"cache {config.cache_dir}: this host cannot be identified ({reason}); states unknown")
            for e in engines:
                print(f"  {e['model_name']}  {human_bytes(e['size'])}  {e['host_key']}  {e['path']}")
            print(f"total: {len(engines)} engine{'' if len(engines) == 1 else 's'}, {human_bytes(scan.total_bytes)}")
        return exc.exit_code


def _bytes_hashed(rows: list[Any], paths: list[Any], signed: str, rejected: str) -> list[Any]:
    """A row says signed only for bytes hashed here (issue 22 item 15), on all cores.

    The recheck compares the commit record with the sidecar, and under ``verify: stat`` a
    ``.verified`` record planted over swapped bytes would pass: each signed engine is hashed.
    """
    from ..verify import EngineVerifier

    verifier = EngineVerifier("full")
    verifier.prefetch(path for row, path in zip(rows, paths) if row.state == signed)
    try:
        checked = []
        for row, path in zip(rows, paths):
            verification = verifier.check(path) if row.state == signed else None
            if verification is not None and not verification.ok:
                row = replace(row, state=rejected, key_id=None, detail=(
                    f"the engine's bytes do not match its signed SHA-256 ({verification.reason}); "
                    "delete the engine (doit engines-gc or rm) and run doit engines again"))
            checked.append(row)
        return checked
    finally:
        verifier.close()


class EnginesGc(_EnginesCommand):
    """``doit engines-gc [--apply] [--max-size SIZE] [--keep-foreign] [--json]``."""

    name = "engines-gc"
    doc_purpose = "plan (and with --apply, do) the deletion of unusable engines and leftovers"
    doc_usage = "[--apply] [--max-size SIZE] [--keep-foreign] [--json] [--config PATH]"
    doc_description = ("Deletes engines of other hosts, superseded builds of this host, temporary files of dead "
                       "processes and orphan sidecars/manifests; --max-size then evicts least recently used "
                       "engines. Engines locked by a live process are never deleted. Without --apply nothing "
                       "is touched.")
    cmd_options = (
        opt_config,
        {"name": "apply", "long": "apply", "type": bool, "default": False, "help": "delete (default: only plan)"},
        {"name": "max_size", "long": "max-size", "type": str, "default": "",
         "help": "size budget for the cache, e.g. 500M or 20G (least recently used engines go first)"},
        {"name": "keep_foreign", "long": "keep-foreign", "type": bool, "default": False,
         "help": "keep other hosts' engines (a cache folder shared between hosts)"},
        {"name": "remote", "long": "remote", "type": bool, "default": False,
         "help": "plan on the remote bucket instead: this host key's superseded entries and hosts not seen for "
                 "remote.host_max_age_days"},
        opt_json,
    )

    def run(self, params: dict[str, Any]) -> int:
        if params.get("remote"):
            return _remote_gc(params, self.config_path(params))
        max_size = None
        if params["max_size"]:
            try:
                max_size = parse_size(params["max_size"])
            except ValueError as exc:
                return _error(f"engines-gc: --max-size: {exc}", USAGE_ERROR)
        path = self.config_path(params)
        try:
            corpus = load_corpus(path)
        except (NoGpuError, HostProbeError) as exc:  # the GPU names this host's engines: judge none of them
            plan = plan_gc(scan_cache(load_config_only(path).cache_dir), current=(), host_keys=(),
                           max_size=max_size, keep_foreign=True)
            reason = "no GPU visible" if isinstance(exc, NoGpuError) else str(exc).splitlines()[0]
            plan = replace(plan, notes=(f"{reason}: this host's engine names are unknown, so no engine is judged "
                                        "foreign or superseded; run engines-gc on the GPU host",
                                        *plan.notes))
        else:
            plan = plan_gc(scan_cache(corpus.cache_dir), current=engine_file_names(corpus),
                           host_keys={corpus.host_key(s) for s in corpus.specs},
                           max_size=max_size, keep_foreign=params["keep_foreign"])
        result = plan.execute() if params["apply"] else None
        if params["json"]:
            print(json.dumps({
                "cache_dir": str(plan.cache_dir), "applied": result is not None,
                "bytes_before": plan.bytes_before, "bytes_freed": plan.bytes_freed if result is None
                else result.bytes_freed, "bytes_after": plan.bytes_after,
                "items": [{"paths": [str(p) for p in i.paths], "size": i.size, "reason": i.reason}
                          for i in plan.items],
                "kept_locked": [str(e.path) for e in plan.kept_locked],
                "skipped": list(result.skipped) if result else [], "notes": list(plan.notes),
            }, indent=2))
            return 0
        mode = "deleting" if result is not None else "dry run, add --apply to delete"
        print(f"engines-gc: {plan.cache_dir} ({mode})")
        for item in plan.items:
            print(f"  {human_bytes(item.size):>10}  {item.paths[0].name if item.engine is None else item.engine.path.name}"
                  f"  {item.reason}")
        for engine in plan.kept_locked:
            print(f"  {'kept':>10}  {engine.path.name}  locked by a live process")
        for note in plan.notes + (result.skipped if result else ()):
            print(f"  note: {note}")
        verb = "freed" if result is not None else "would free"
        freed = result.bytes_freed if result is not None else plan.bytes_freed
        print(f"{verb} {human_bytes(freed)} in {len(plan.items)} item(s); cache {human_bytes(plan.bytes_before)}"
              f" -> {human_bytes(plan.bytes_before - freed)}")
        return 0


class EnginesKey(_EnginesCommand):
    """``doit engines-key [--prefix]``."""

    name = "engines-key"
    doc_purpose = "print a CI cache key: host identity + every corpus input (same inputs, same key)"
    doc_usage = "[--prefix] [--config PATH]"
    cmd_options = (
        opt_config,
        {"name": "prefix", "long": "prefix", "type": bool, "default": False,
         "help": "print only the host part (a fallback restore key)"},
    )

    def run(self, params: dict[str, Any]) -> int:
        key, prefix = cache_key(load_corpus(self.config_path(params)))
        print(prefix if params["prefix"] else key)
        return 0


class EnginesPath(_EnginesCommand):
    """``doit engines-path MODEL [--json]``: this host's verified engine of one backbone."""

    name = "engines-path"
    doc_purpose = "print the verified absolute path of this host's engine of MODEL (or its manifest as JSON)"
    doc_usage = "MODEL [--json] [--config PATH]"
    doc_description = ("Exit code 0 when the engine is fresh, 1 when it is missing, stale or corrupt "
                       "(run doit engines), the config error's code otherwise.")
    cmd_options = (opt_config, opt_json)

    def execute(self, params: Any, args: list[str]) -> int:
        try:  # MODEL --json -f DODO --config PATH: an option after the name is never a second name
            args = positional_args(self, params, args)
        except CommandUsageError as exc:
            return _error(str(exc), USAGE_ERROR)
        if len(args) != 1:
            return _error(f"{self.name}: give exactly one backbone name (doit engines-path MODEL); "
                          f"got {len(args)}", USAGE_ERROR)
        self._model = args[0]
        return super().execute(params, [])

    def run(self, params: dict[str, Any]) -> int:
        from ..serving.resolve import resolve_engine

        entry = resolve_engine(self.config_path(params), self._model)
        if params["json"]:
            print(json.dumps({"path": str(entry.path), **dict(entry.manifest)}, indent=2, sort_keys=True))
        else:
            print(entry.path)
        return 0


def _remote_states(corpus: Any) -> dict[str, Any] | None:
    """The remote column of engines-status; None when the config has no remote block."""
    if corpus.config.remote is None:
        return None
    from ..remote.report import remote_states  # fsspec loads only for configs with a remote

    return remote_states(corpus.config, ((s.model_name, corpus.host_key(s), corpus.engine_path(s).name,
                                          _inputs_digest(corpus, s)) for s in corpus.specs))


def _inputs_digest(corpus: Any, spec: Any) -> str:
    """The remote key's inputs digest of ``spec`` today (hashes its ONNX)."""
    from ..compiler import expected_build_inputs
    from ..remote.layout import inputs_digest

    return inputs_digest(expected_build_inputs(spec, corpus.host))


def _remote_gc(params: dict[str, Any], path: Any) -> int:
    """``engines-gc --remote``: the same policies on the bucket (see provisioning.remote.report)."""
    from ..remote.report import remote_gc

    corpus = load_corpus(path)
    current = [(corpus.engine_path(s).name, _inputs_digest(corpus, s)) for s in corpus.specs]
    report = remote_gc(corpus.config, {corpus.host_key(s) for s in corpus.specs}, current, apply=params["apply"])
    if report is None:
        return _error(f"engines-gc --remote: {corpus.config.config_path} has no enabled remote: block", USAGE_ERROR)
    print(json.dumps(report.as_dict(), indent=2) if params["json"] else report.render(human_bytes))
    return 0


class CommandUsageError(Exception):
    """An option a command does not have, or one without its value (one line; exit USAGE_ERROR)."""


def positional_args(command: Any, params: Any, args: list[str]) -> list[str]:
    """The positional arguments among ``args``; options anywhere among them are parsed into ``params``.

    doit's parser stops at the first positional argument, so ``engines-path det --json`` or
    ``engines-pull RELEASE --dry-run`` would lose their options; every command that takes a
    positional parses the rest here, with doit's own parser (short names, ``--name=value``
    and flags work as they do before the positional).
    """
    from doit.cmdparse import CmdParse, CmdParseError

    parser, rest, positional = CmdParse(command.get_options()), list(args), []
    while rest:
        if rest[0].startswith("-") and rest[0] != "-":
            try:
                _, rest = parser.parse_only(rest, params)
            except CmdParseError as exc:
                text = str(exc).split(" (parsing options", 1)[0].replace("Error parsing Command: ", "")
                raise CommandUsageError(f"{command.name}: {text}; see 'doit help {command.name}'") from None
        else:
            positional.append(rest.pop(0))
    return positional


def _error(message: str, code: int) -> int:
    sys.stderr.write(f"ERROR: {message}\n")
    return code
