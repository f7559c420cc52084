"""Reading the corpus YAML: one safe document, duplicate keys refused, errors as one line.

libyaml's parser (when PyYAML was built with it) does the reading; a document it refuses is
read again by the pure-Python parser, whose message and position are the ones users see.
Validating what was read is :mod:`provisioning.config`'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config_fields import Where, shown


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys instead of keeping the last."""


# libyaml's parser (when PyYAML was built with it) reads a 1,000-backbone config ~8x faster
# than the pure-Python one; the same constructors run on top, so the document is the same
_HAVE_LIBYAML = hasattr(yaml, "CSafeLoader")


class _FastUniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """:class:`_UniqueKeyLoader` over libyaml's parser (the pure one where PyYAML lacks it)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            duplicate = False
        if duplicate:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {shown(key)} (line {line})", key_node.start_mark
            )
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


for _loader in (_UniqueKeyLoader, _FastUniqueKeyLoader):
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str) -> Any:
    """The YAML document in ``text``: libyaml's parser, or on any error the pure-Python one.

    A broken config is parsed again by the pure-Python loader, which raises the error the
    user sees: its messages and positions are the ones this module always reported, and
    libyaml's own limits (flow nesting beyond 1,000) never reject a config PyYAML accepts.
    """
    if _HAVE_LIBYAML:
        try:
            return yaml.load(text, Loader=_FastUniqueKeyLoader)  # noqa: S506 - a SafeLoader equivalent
        except (yaml.YAMLError, RecursionError):
            pass
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_file(config_path: Path) -> Any:
    """The document in the config file at ``config_path``; ConfigError (one line) when it cannot be read."""
    where = Where(config_path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise where.error("config file not found; pass config=PATH or set PROVISIONING_CONFIG") from None
    except IsADirectoryError:
        raise where.error("is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise where.error("is not UTF-8 text; save the config as UTF-8 YAML") from None
    except OSError as exc:
        raise where.error(f"cannot read the config ({exc.strerror}); check its permissions") from None
    if "\x00" in text:
        raise where.error("contains a NUL byte; the config must be plain YAML text")
    try:
        return load_yaml(text)
    except RecursionError:  # PyYAML composes nested collections recursively
        raise where.error("invalid YAML: collections are nested too deeply; flatten the document") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise where.error(f"invalid YAML{at}: {problem}") from None
