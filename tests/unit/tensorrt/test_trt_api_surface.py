"""Every tensorrt name the backend uses exists in the recorded 10.16 and 11.4 Python surfaces.

The surfaces (tests/data/tensorrt-api) were read from the real bindings; the backend's
list of used names (trt_features.USED_*) is checked against them, and the backend's
source is scanned so the list cannot fall behind the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import provisioning.backends as backends_pkg
from fake_tensorrt import FakeWorld, load_surface, make_fake_tensorrt
from provisioning.backends.trt_features import (
    FEATURES,
    USED_CLASSES,
    USED_ENUMS,
    USED_ENUMS_BY_MAJOR,
    features_for,
)
from trt_helpers import VERSIONS

BACKEND_DIR = Path(backends_pkg.__file__).parent
BACKEND_SOURCES = sorted([BACKEND_DIR / "tensorrt.py", *BACKEND_DIR.glob("trt_*.py")])


@pytest.mark.parametrize("version", sorted(VERSIONS.values()))
def test_used_classes_and_attributes_exist(version):
    classes = load_surface(version)["classes"]
    missing = [f"{cls}.{attr}" for cls, attrs in USED_CLASSES.items() for attr in attrs
               if attr not in classes.get(cls, ())]
    assert not missing, f"not in TensorRT {version}: {missing}"


@pytest.mark.parametrize("version", sorted(VERSIONS.values()))
def test_used_enum_members_exist(version):
    enums = load_surface(version)["enums"]
    used = {name: set(members) for name, members in USED_ENUMS.items()}
    for name, members in USED_ENUMS_BY_MAJOR[int(version.split(".")[0])].items():
        used.setdefault(name, set()).update(members)
    missing = [f"{name}.{m}" for name, members in used.items() for m in sorted(members) if m not in enums.get(name, ())]
    assert not missing, f"not in TensorRT {version}: {missing}"


def test_feature_table_matches_what_each_major_removed():
    # The table's reason to exist: 11.x dropped the precision flags, 10.x has them.
    flags10 = set(load_surface(VERSIONS["trt10"])["enums"]["BuilderFlag"])
    flags11 = set(load_surface(VERSIONS["trt11"])["enums"]["BuilderFlag"])
    assert set(FEATURES[10].precision_flags.values()) <= flags10
    assert not set(FEATURES[10].precision_flags.values()) & flags11
    assert FEATURES[11].strongly_typed and not FEATURES[11].precision_flags


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
        if name.startswith("__"):
            continue  # trt.__version__
        if name in USED_ENUMS:
            if member is not None and member not in USED_ENUMS[name]:
                undeclared.append(f"{name}.{member}")
        elif name in USED_CLASSES:
            if member is not None and member != "__init__" and member not in USED_CLASSES[name]:
                undeclared.append(f"{name}.{member}")
        else:
            undeclared.append(name)
    assert not undeclared, f"add to trt_features.USED_*: {undeclared}"


def test_only_the_backend_module_imports_tensorrt():
    package = BACKEND_DIR.parent
    importers = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
                 if re.search(r"^\s*(import tensorrt|from tensorrt)", p.read_text(), re.MULTILINE)]
    assert importers == ["backends/tensorrt.py"]


@pytest.mark.parametrize("version", sorted(VERSIONS.values()))
def test_the_fake_exposes_nothing_the_real_version_lacks(version):
    surface = load_surface(version)
    trt = make_fake_tensorrt(FakeWorld(version=version))
    for name, members in surface["enums"].items():
        assert [m.name for m in getattr(trt, name)] == members
    for name, allowed in surface["classes"].items():
        cls = getattr(trt, name, None)
        if isinstance(cls, type) and name != "IHostMemory":
            extra = [a for a in vars(cls) if not a.startswith("_") and a not in allowed]
            assert not extra, f"fake {name} has {extra}, which TensorRT {version} does not"


def test_unsupported_versions_are_refused_by_the_table():
    assert features_for("10.16.1.11").major == 10 and features_for("11.4.0.106").strongly_typed
    for version in ("8.6.1", "12.0.0", "nonsense"):
        with pytest.raises(Exception, match="is not supported"):
            features_for(version)
