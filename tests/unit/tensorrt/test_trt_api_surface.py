"""Every TensorRT name the backend uses exists in the real bindings of each supported builder.

The signatures (tests/data/tensorrt-api/signatures-*.json) were read from the real
TensorRT 10.16 and 11.4 bindings and from a real TensorRT-RTX 1.7 install; the backend's
list of used names (trt_features.USED_*) is checked against them, and the backend's
source is scanned so the list cannot fall behind the code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import provisioning.backends as backends_pkg
from provisioning.backends.trt_features import (
    FEATURES,
    USED_CLASSES,
    USED_CLASSES_FOR_TARGETS,
    USED_ENUMS,
    USED_ENUMS_BY_ROW,
    USED_FUNCTIONS,
    features_for,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "tensorrt-api"
SIGNATURES = {("tensorrt", 10): "signatures-10.16.1.11.json", ("tensorrt", 11): "signatures-11.4.0.106.json",
              ("tensorrt-rtx", 1): "signatures-rtx-1.7.1.116.json"}
BACKEND_DIR = Path(backends_pkg.__file__).parent
BACKEND_SOURCES = sorted([BACKEND_DIR / "tensorrt.py", *BACKEND_DIR.glob("trt_*.py")])
ROWS = sorted(SIGNATURES)


def _surface(row) -> dict:
    return json.loads((DATA / SIGNATURES[row]).read_text())


def test_every_row_of_the_table_has_recorded_bindings():
    assert sorted(FEATURES) == ROWS


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r[0]}-{r[1]}")
def test_used_classes_attributes_and_functions_exist(row):
    surface = _surface(row)
    used = {cls: set(attrs) for cls, attrs in USED_CLASSES.items()}
    if FEATURES[row].compute_capability_targets:
        for cls, attrs in USED_CLASSES_FOR_TARGETS.items():
            used.setdefault(cls, set()).update(attrs)
    missing = [f"{cls}.{attr}" for cls, attrs in used.items() for attr in sorted(attrs)
               if attr not in surface["classes"].get(cls, {}).get("attrs", {})]
    missing += [name for name in USED_FUNCTIONS if name not in surface["functions"]]
    assert not missing, f"not in {row}: {missing}"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r[0]}-{r[1]}")
def test_used_enum_members_exist(row):
    enums = _surface(row)["enums"]
    used = {name: set(members) for name, members in USED_ENUMS.items()}
    for name, members in USED_ENUMS_BY_ROW[row].items():
        used.setdefault(name, set()).update(members)
    if not FEATURES[row].compute_capability_targets:
        used.pop("ComputeCapability")
    missing = [f"{name}.{m}" for name, members in used.items() for m in sorted(members)
               if name not in enums or m not in enums[name]]
    missing += [name for name in used if name not in enums]
    assert not missing, f"not in {row}: {missing}"


def test_feature_table_matches_what_each_builder_removed():
    # The table's reason to exist: 11.x and RTX dropped the precision flags, 10.x has them;
    # only RTX can target compute capabilities; the settings it lacks are not offered.
    flags = {row: set(_surface(row)["enums"]["BuilderFlag"]) for row in ROWS}
    ten, eleven, rtx = FEATURES["tensorrt", 10], FEATURES["tensorrt", 11], FEATURES["tensorrt-rtx", 1]
    assert set(ten.precision_flags.values()) <= flags["tensorrt", 10]
    assert not set(ten.precision_flags.values()) & (flags["tensorrt", 11] | flags["tensorrt-rtx", 1])
    assert eleven.strongly_typed and rtx.strongly_typed and not eleven.precision_flags
    assert "ComputeCapability" in _surface(("tensorrt-rtx", 1))["enums"]
    assert "ComputeCapability" not in _surface(("tensorrt", 11))["enums"]
    assert rtx.compute_capability_targets and not ten.compute_capability_targets
    assert rtx.hardware_compatibility == ("none",) and not rtx.version_compatible and not rtx.timing_cache


def _source_uses() -> set[tuple[str, str | None]]:
    uses = set()
    for path in BACKEND_SOURCES:
        for name, member in re.findall(r"\btrt\.([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?",
                                       path.read_text()):
            uses.add((name, member or None))
    return uses


def test_every_trt_name_in_the_source_is_declared():
    uses = _source_uses()
    assert ("Builder", None) in uses and ("MemoryPoolType", "WORKSPACE") in uses  # the scan sees the code
    undeclared = []
    for name, member in uses:
        if name.startswith("__") or name in USED_FUNCTIONS:
            continue  # trt.__version__, trt.__name__
        if name in USED_ENUMS:
            if member is not None and USED_ENUMS[name] and member not in USED_ENUMS[name]:
                undeclared.append(f"{name}.{member}")
        elif name in USED_CLASSES:
            if member is not None and member != "__init__" and member not in USED_CLASSES[name]:
                undeclared.append(f"{name}.{member}")
        else:
            undeclared.append(name)
    assert not undeclared, f"add to trt_features.USED_*: {undeclared}"


def test_only_the_backend_import_module_imports_tensorrt():
    # one module imports it (backends/trt_import.py since tensorrt.py was split by concept)
    package = BACKEND_DIR.parent
    importers = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
                 if re.search(r"^\s*(import tensorrt|from tensorrt)|import_module\(", p.read_text(), re.MULTILINE)]
    assert importers == ["backends/trt_import.py"]


def test_unsupported_versions_are_refused_by_the_table():
    assert features_for("10.16.1.11").major == 10 and features_for("11.4.0.106").strongly_typed
    assert features_for("10.16.1.11.post1").major == 10  # a metapackage's .postN is not another release
    assert features_for("1.7.1.116", "tensorrt-rtx").compute_capability_targets
    for version, backend in (("8.6.1", "tensorrt"), ("12.0.0", "tensorrt"), ("nonsense", "tensorrt"),
                             ("2.0.0", "tensorrt-rtx"), ("10.16.1.11", "tensorrt-rtx")):
        with pytest.raises(Exception, match="is not supported"):
            features_for(version, backend)
