"""The recorded pybind11 signatures of the real TensorRT bindings, and a checker driven by them.

``tests/data/tensorrt-api/signatures-*.json`` list, per class, every attribute's kind
(method, property and whether it is settable, enum, value) and the pybind11 doc whose
first line(s) are the signature (``name(self: T, a: U = default) -> R``; overloads as
``1. ...``). :func:`apply_signatures` wraps a fake class so that calling it refuses what
pybind11 refuses, with pybind11's own wording:

* ``typing.SupportsInt``: an int, a bool or anything with ``__index__`` (numpy ints,
  enum members); a float or a str is refused (real RTX: ``set_memory_pool_limit(pool, 1.5)``
  and ``create_network(0.0)`` raise ``TypeError: ... incompatible function arguments``);
* an enum or class type: an instance of it (a str or an int for an enum is refused);
  ``None`` only where the signature defaults to ``None`` or :data:`NONE_OK` says so
  (real RTX: ``Builder(None)`` and ``set_timing_cache(None, ...)`` are refused,
  ``add_optimization_profile(None)`` returns -1);
* ``str``: a str only (a ``pathlib.Path`` is refused by ``parse_from_file``);
* ``bool``: what pybind11's bool caster converts (bool, None, int, float, numpy bool),
  not a str;
* ``Dims``: a tuple, a list or a 1-D integer numpy array of ints (floats and generators
  are refused); ``Sequence[T]`` / ``list[T]``: a list or tuple whose items are ``T``;
* ``typing_extensions.Buffer``: anything ``memoryview`` accepts;
  ``typing_extensions.CapsuleType``: ``None`` or a bindings object (real RTX accepts the
  logger and ``None`` for ``init_libnvinfer_plugins``, refuses a str, an int, ``object()``);
* a property assignment: the setter's recorded signature (``"setter"`` in the recording,
  read by tests/data/tensorrt-api/record_setters.py) types every settable property, with
  the same rules; ``None`` is taken where pybind11 takes it: for an interface pointer
  (``IProgressMonitor``, ``IErrorRecorder``, ...), for a bool, and for the ``const char*``
  setters listed in :data:`SETTER_NONE_OK` (real RTX: ``network.name = None`` is taken,
  ``config.build_route = None`` is refused; the signature says ``str`` for both); a negative
  int is refused by the unsigned setters of :data:`SETTER_UNSIGNED`;
* an ``ILogger`` / ``IProgressMonitor`` subclass whose ``__init__`` did not call the base
  ``__init__`` raises ``TypeError: <module>.ILogger.__init__() must be called when
  overriding __init__`` wherever it is handed over (real RTX: ``Builder``, ``Runtime``,
  ``OnnxParser``, ``config.progress_monitor = ...``).

Types the checker cannot resolve (bindings-internal C++ names) are not checked.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

DATA = Path(__file__).resolve().parents[2] / "data" / "tensorrt-api"
SIGNATURE_FILES = {"10": "signatures-10.16.1.11.json", "11": "signatures-11.4.0.106.json",
                   "1": "signatures-rtx-1.7.1.116.json"}  # "1": TensorRT for RTX 1.x
# Class-typed parameters that take None although the signature shows no default (raw
# pointers in the C++ API); seen on real RTX 1.7.
NONE_OK = {("IBuilderConfig", "add_optimization_profile", "profile")}
# String properties whose C++ setter takes a ``const char*``, so pybind11 takes None (null);
# seen on real RTX 1.7 (tests/unit/tensorrt/test_fake_parity.py probes every settable property
# of the classes it can make without a GPU). Other ``str`` setters (std::string) refuse None.
SETTER_NONE_OK = {("ITensor", "name"), ("INetworkDefinition", "name"), ("Runtime", "temporary_directory"),
                  ("IExecutionContext", "name")}
# Integer properties whose C++ setter takes an unsigned type (bit masks, stream handles):
# pybind11 refuses a negative value with TypeError although the signature says SupportsInt
# for both (real RTX 1.7: config.flags = -1 is refused, num_compute_capabilities = -1 is taken).
SETTER_UNSIGNED = {("IBuilderConfig", "flags"), ("IBuilderConfig", "profile_stream"), ("ITensor", "allowed_formats"),
                   ("IOptimizationProfile", "profile_stream"), ("OnnxParser", "flags"),
                   ("Runtime", "tempfile_control_flags")}
_INT = {"typing.SupportsInt", "int"}
_FLOAT = {"typing.SupportsFloat", "float"}
_ANY = {"object", "typing.Any", "Any"}
_LINE = re.compile(r"^(?:\d+\. )?(\w+)\((.*)\)(?: -> (.+))?$")


def signature_file(version: str) -> Path | None:
    """The signatures recorded for a TensorRT (or TensorRT for RTX 1.x) version, if any."""
    name = SIGNATURE_FILES.get(str(version).split(".")[0])
    return DATA / name if name else None


@functools.lru_cache(maxsize=None)
def load_signatures(version: str) -> dict | None:
    """The parsed signatures JSON for ``version``'s major, or None where none was recorded (8.x)."""
    path = signature_file(version)
    return json.loads(path.read_text()) if path and path.is_file() else None


def module_prefix(signatures: Mapping) -> str:
    """The bindings' module path as pybind11 prints it (``tensorrt_bindings.tensorrt``)."""
    doc = signatures["classes"]["Builder"]["attrs"]["__init__"]["doc"]
    return re.search(r"self: ([\w.]+)\.Builder", doc).group(1)


@dataclass(frozen=True)
class Param:
    """One parameter: its name, its type text, and its default text (None: required)."""

    name: str
    type: str
    default: str | None = None


@dataclass(frozen=True)
class Overload:
    """One pybind11 overload; ``params`` excludes ``self``."""

    name: str
    params: tuple[Param, ...]
    returns: str
    text: str


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets and ``<...>`` reprs."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{<":
            depth += 1
        elif char in ")]}>" and depth:
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    tail = text[start:].strip()
    return parts + [tail] if tail else parts


def parse_overloads(doc: str) -> list[Overload]:
    """Every signature in a pybind11 doc (empty when it has none, e.g. 'Initialize self.')."""
    lines = [line.strip() for line in doc.splitlines()]
    if lines and "(*args, **kwargs)" in lines[0]:
        candidates = [line for line in lines if re.match(r"^\d+\. \w+\(", line)]
    else:
        candidates = lines[:1]
    overloads = []
    for line in candidates:
        match = _LINE.match(line)
        if not match:
            continue
        params = []
        for chunk in split_top(match.group(2)):
            name, _, rest = chunk.partition(":")
            kind, eq, default = rest.partition(" = ")
            params.append(Param(name.strip(), kind.strip(), default.strip() if eq else None))
        if params and params[0].name == "self":
            params = params[1:]
        overloads.append(Overload(match.group(1), tuple(params), match.group(3) or "None", line))
    return overloads


class Checker:
    """Type checks against one fake module, by pybind11's rules (see the module docstring)."""

    def __init__(self, module: Any, prefix: str) -> None:
        self.module, self.prefix = module, prefix

    def resolve(self, type_text: str) -> Any:
        """The fake module's object for a type name, or None when it has none."""
        name = type_text
        for head in (self.prefix + ".", "tensorrt_bindings.tensorrt.", "tensorrt_rtx_bindings.tensorrt_rtx.",
                     "tensorrt."):
            if name.startswith(head):
                name = name[len(head):]
                break
        name = name.split("::")[-1]
        target = self.module
        for part in name.split("."):
            target = getattr(target, part, None)
            if target is None:
                return None
        return target

    def accepts(self, type_text: str, value: Any) -> bool:
        """Would pybind11 convert ``value`` to ``type_text``? Raises TypeError like pybind11 for an uninitialised trampoline."""
        t = type_text
        if t in _ANY:
            return True
        if t in _INT:
            return _is_int(value)
        if t in _FLOAT:
            return _is_int(value) or isinstance(value, float) or hasattr(type(value), "__float__")
        if t == "str":
            return isinstance(value, str)
        if t == "bool":  # pybind11 converts through nb_bool: None, numbers, numpy bools; not str
            return value is None or isinstance(value, (bool, int, float)) or (
                hasattr(type(value), "__bool__") and not isinstance(value, (str, bytes)))
        if t in ("tuple", "list", "dict", "slice"):
            return type(value).__name__ == t or isinstance(value, {"tuple": tuple, "list": list,
                                                                    "dict": dict, "slice": slice}[t])
        if t == "typing_extensions.Buffer":
            try:
                memoryview(value)
            except TypeError:
                return False
            return True
        if t == "typing_extensions.CapsuleType":
            if not (value is None or type(value).__name__ == "PyCapsule" or getattr(value, "_bindings_object", False)):
                return False
            self._initialised(value)
            return True
        inner = re.match(r"^(?:collections\.abc\.Sequence|list|typing\.List|typing\.Sequence)\[(.+)\]$", t)
        if inner:
            return isinstance(value, (list, tuple)) and all(self.accepts(inner.group(1), v) for v in value)
        if re.search(r"(^|\.)Dims(\d+|HW)?$", t):
            dims = self.resolve(t)
            if isinstance(dims, type) and isinstance(value, dims):
                return True
            return _int_sequence(value)
        target = self.resolve(t)
        if isinstance(target, type):
            if value is None:
                return False
            if isinstance(value, target):
                self._initialised(value)
                return True
            return False
        if t.startswith((self.prefix + ".", "nvinfer1::", "nvonnxparser::")) and t.split(".")[-1].split("::")[-1][:1] == "I":
            # A bindings class the fake does not model (IStreamReaderV2, ...): only a bindings object fits.
            return bool(getattr(value, "_bindings_object", False))
        return True  # any other name the fake does not model: not checked

    def _initialised(self, value: Any) -> None:
        base = getattr(type(value), "_trampoline_base", None)
        if base is not None and not value.__dict__.get("_trampoline_ready", False):
            raise TypeError(f"{self.prefix}.{base}.__init__() must be called when overriding __init__")

    def binds(self, overload: Overload, args: tuple, kwargs: dict, none_ok: Callable[[str], bool]) -> bool:
        """Do ``args``/``kwargs`` fit ``overload`` (count, names, types)?"""
        if len(args) > len(overload.params):
            return False
        given = dict(zip((p.name for p in overload.params), args))
        for key, value in kwargs.items():
            if key in given or key not in {p.name for p in overload.params}:
                return False
            given[key] = value
        for param in overload.params:
            if param.name not in given:
                if param.default is None:
                    return False
                continue
            value = given[param.name]
            if value is None and (param.default == "None" or none_ok(param.name)):
                continue
            if not self.accepts(param.type, value):
                return False
        return True

    def check(self, owner: str, overloads: list[Overload], args: tuple, kwargs: dict, self_obj: Any = None,
              constructor: bool = False, none_ok: Callable[[str], bool] = lambda name: False) -> None:
        """Raise pybind11's TypeError unless one overload accepts the call."""
        if any(self.binds(o, args, kwargs, none_ok) for o in overloads):
            return
        if constructor:
            supported = "\n".join(f"    {i}. {self.prefix}.{owner}({', '.join(_show(p) for p in o.params)})"
                                  for i, o in enumerate(overloads, 1))
            head = "__init__(): incompatible constructor arguments"
        else:
            supported = "\n".join(
                f"    {i}. ({', '.join(([f'self: {self.prefix}.{owner}'] if self_obj is not None else []) + [_show(p) for p in o.params])}) -> {o.returns}"
                for i, o in enumerate(overloads, 1))
            head = f"{overloads[0].name}(): incompatible function arguments"
        shown = ([repr(self_obj)] if self_obj is not None else []) + [repr(a) for a in args]
        invoked = ", ".join(shown) + (f"; kwargs: {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}" if kwargs else "")
        raise TypeError(f"{head}. The following argument types are supported:\n{supported}\n\nInvoked with: {invoked}")


def _show(param: Param) -> str:
    return f"{param.name}: {param.type}" + (f" = {param.default}" if param.default is not None else "")


def _is_int(value: Any) -> bool:
    # pybind11's int caster: never a float (even 1.0), else int or anything with __index__.
    return not isinstance(value, float) and (isinstance(value, int) or hasattr(type(value), "__index__"))


def _int_sequence(value: Any) -> bool:
    if hasattr(value, "__array__") and hasattr(value, "dtype"):
        return getattr(value, "ndim", 0) == 1 and value.dtype.kind in "iub"
    return isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)


def setter_type(record: Mapping) -> str | None:
    """The value type of a settable property's recorded setter (``arg1`` of ``(arg0: T, arg1: V) -> R``)."""
    match = re.match(r"^\((.*)\)(?: -> .+)?$", str(record.get("setter", "")).strip())
    if not match:
        return None
    params = split_top(match.group(1))
    if len(params) != 2:
        return None
    return params[1].partition(":")[2].strip() or None


def _pointer_type(checker: "Checker", type_text: str) -> bool:
    """An interface type (passed as a pointer, so None is null): a class the fake models or an ``I...`` name."""
    target = checker.resolve(type_text)
    if isinstance(target, type):
        return not hasattr(target, "__members__")  # an enum is passed by value
    last = type_text.split(".")[-1].split("::")[-1]
    return last[:1] == "I" and last[1:2].isupper()


def check_kinds(cls: type, recorded: Mapping[str, Mapping]) -> list[str]:
    """Public attributes of a fake class whose kind differs from the recorded one (empty: agrees)."""
    problems = []
    for name, value in vars(cls).items():
        if name.startswith("_") or name.startswith("Severity"):
            continue
        record = recorded.get(name)
        if record is None:
            problems.append(f"{cls.__name__}.{name} is not in the recorded bindings")
        elif isinstance(value, property):
            if record["kind"] != "property":
                problems.append(f"{cls.__name__}.{name} is a property, the bindings have a {record['kind']}")
            elif (value.fset is not None) != bool(record.get("settable")):
                problems.append(f"{cls.__name__}.{name}: settable {value.fset is not None}, "
                                f"the bindings say {bool(record.get('settable'))}")
        elif isinstance(value, staticmethod):
            if record["kind"] != "staticmethod":
                problems.append(f"{cls.__name__}.{name} is a staticmethod, the bindings have a {record['kind']}")
        elif callable(value) and not isinstance(value, type):
            if record["kind"] != "method":
                problems.append(f"{cls.__name__}.{name} is a method, the bindings have a {record['kind']}")
        elif record["kind"] not in ("value", "enum"):
            problems.append(f"{cls.__name__}.{name} is a plain value, the bindings have a {record['kind']}")
    return problems


def apply_signatures(cls: type, recorded: Mapping[str, Mapping], checker: Checker,
                     property_types: Mapping[str, str] | None = None) -> type:
    """Make ``cls`` behave like its pybind11 class: checked calls, checked attribute assignment.

    Raises TypeError at once when a public attribute's kind disagrees with the recording, so a
    fake that drifts from the bindings fails every test, not only the one that notices.
    """
    problems = check_kinds(cls, recorded)
    if problems:
        raise TypeError("fake disagrees with the recorded bindings: " + "; ".join(problems))
    owner, property_types = cls.__name__, dict(property_types or {})
    cls._bindings_object = True
    for name, value in list(vars(cls).items()):
        if name != "__init__" and (name.startswith("_") or not callable(value) or isinstance(value, type)):
            continue
        overloads = parse_overloads(recorded.get(name, {}).get("doc", ""))
        if not overloads:
            continue
        setattr(cls, name, _checked(value, owner, name, overloads, checker))

    def __setattr__(self, name, value, _base=cls.__setattr__):
        if name.startswith("_"):
            return _base(self, name, value)
        record = recorded.get(name)
        if record is None and type(self).__dict__.get("_bindings_object") is None:
            return _base(self, name, value)  # a Python subclass has a __dict__, as on pybind11
        if record is None or record["kind"] != "property":
            raise AttributeError(f"'{checker.prefix}.{owner}' object has no attribute '{name}'")
        if not record.get("settable"):
            raise AttributeError(f"property of '{owner}' object has no setter")
        kind = property_types.get(name) or setter_type(record)
        if kind is not None and not (value is None and (kind.endswith("| None") or (owner, name) in SETTER_NONE_OK
                                                        or _pointer_type(checker, kind))):
            setter = Overload("", (Param("arg1", kind.removesuffix(" | None")),), "None", "")
            negative = (owner, name) in SETTER_UNSIGNED and _is_int(value) and int(value) < 0
            if negative or not checker.binds(setter, (value,), {}, lambda _: False):
                shown = f"{checker.prefix}.{owner}"
                raise TypeError("(): incompatible function arguments. The following argument types are supported:\n"
                                f"    1. (arg0: {shown}, arg1: {setter.params[0].type}) -> None\n\n"
                                f"Invoked with: {self!r}, {value!r}")
        return _base(self, name, value)

    cls.__setattr__ = __setattr__
    return cls


def _checked(function: Callable, owner: str, name: str, overloads: list[Overload], checker: Checker) -> Callable:
    constructor = name == "__init__"

    @functools.wraps(function)
    def wrapper(self, *args, **kwargs):
        checker.check(owner, overloads, args, kwargs, None if constructor else self, constructor,
                      lambda param: (owner, name, param) in NONE_OK)
        return function(self, *args, **kwargs)

    wrapper.__signature_overloads__ = overloads
    return wrapper


def checked_function(function: Callable, doc: str, checker: Checker) -> Callable:
    """A module-level bindings function (``init_libnvinfer_plugins``) with its recorded signature."""
    overloads = parse_overloads(doc)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        checker.check("", overloads, args, kwargs)
        return function(*args, **kwargs)

    return wrapper
