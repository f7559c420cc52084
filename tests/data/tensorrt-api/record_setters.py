"""Add each settable property's setter signature to a recorded ``signatures-*.json``.

The recordings list a property's kind and whether it is settable, but pybind11 keeps the
setter's signature on ``property.fset.__doc__`` (``(arg0: ...IBuilderConfig, arg1:
typing.SupportsInt) -> None``), which the first recording did not read. This reads it, for
every settable property of every class, and writes it beside the record as ``"setter"``;
nothing else in the file changes. The fake (tests/unit/tensorrt/signatures.py) types every
property assignment from it.

usage:
  python record_setters.py --module tensorrt_rtx signatures-rtx-1.7.1.116.json   (a real install)
  python record_setters.py --wheel tensorrt_cu13_bindings-11.4.0.106-....whl signatures-11.4.0.106.json

With ``--wheel`` the bindings ``.so`` is linked against placeholder TensorRT libraries
(every imported symbol returns 0), as the first recording was made: nothing is built or run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile

STUB = r"""
void *createInferBuilder_INTERNAL(void *a, int b) { return 0; }
void *createInferRefitter_INTERNAL(void *a, void *b, int c) { return 0; }
void *createInferRuntime_INTERNAL(void *a, int b) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *a, void *b, int c) { return 0; }
void *createNvOnnxParser_INTERNAL(void *a, void *b, int c) { return 0; }
void *getBuilderPluginRegistry(int a) { return 0; }
void *getPluginRegistry(void) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void *a, const char *b) { return 1; }
int getInferLibVersion(void) { return 0; }
"""

DUMP = r"""
import importlib, json, sys
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
trt = importlib.import_module(sys.argv[2])
out = {"version": trt.__version__, "setters": {}}
for name in sorted(dir(trt)):
    obj = getattr(trt, name)
    if name.startswith("_") or not isinstance(obj, type) or hasattr(obj, "__members__"):
        continue
    for attr in sorted(dir(obj)):
        raw = next((base.__dict__[attr] for base in obj.__mro__ if attr in base.__dict__), None)
        if isinstance(raw, property) and raw.fset is not None:
            out["setters"].setdefault(name, {})[attr] = (raw.fset.__doc__ or "").strip()
json.dump(out, sys.stdout)
"""


def read_setters(module: str, path: str = "", env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", DUMP, path, module], capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout)


def from_wheel(wheel: str) -> dict:
    work = tempfile.mkdtemp(prefix="trt-setters-")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(work)
    so = os.path.join(work, "tensorrt_bindings", "tensorrt.so")
    needed = subprocess.run(["readelf", "-d", so], capture_output=True, text=True, check=True).stdout
    libs = [line.split("[")[1].rstrip("]") for line in needed.splitlines() if "NEEDED" in line and "nv" in line]
    stubs = os.path.join(work, "stubs")
    os.makedirs(stubs)
    source = os.path.join(stubs, "stub.c")
    with open(source, "w") as handle:
        handle.write(STUB)
    for lib in libs:
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{lib}", "-o", os.path.join(stubs, lib), source],
                       check=True)
    return read_setters("tensorrt_bindings", work, dict(os.environ, LD_LIBRARY_PATH=stubs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--module", help="an importable bindings module (tensorrt_rtx)")
    source.add_argument("--wheel", help="a tensorrt_cuXX_bindings wheel")
    parser.add_argument("signatures", help="the signatures-*.json to add setters to (rewritten in place)")
    args = parser.parse_args()
    read = read_setters(args.module) if args.module else from_wheel(args.wheel)
    with open(args.signatures) as handle:
        recorded = json.load(handle)
    if read["version"] != recorded["version"]:
        sys.exit(f"the bindings are {read['version']}, the file records {recorded['version']}")
    added = 0
    for cls, setters in read["setters"].items():
        attrs = recorded["classes"].get(cls, {}).get("attrs", {})
        for attr, doc in setters.items():
            record = attrs.get(attr)
            if record is None or record.get("kind") != "property" or not record.get("settable"):
                sys.exit(f"{cls}.{attr} is settable in the bindings but not in the recording")
            record["setter"] = doc
            added += 1
    unmatched = [f"{cls}.{attr}" for cls, c in recorded["classes"].items() for attr, r in c["attrs"].items()
                 if r.get("kind") == "property" and r.get("settable") and "setter" not in r]
    if unmatched:
        sys.exit(f"no setter read for {unmatched[:5]}")
    with open(args.signatures, "w") as handle:
        json.dump(recorded, handle, indent=1, sort_keys=True)
        handle.write("\n")
    print(f"{recorded['version']}: {added} setter signatures -> {args.signatures}")


if __name__ == "__main__":
    main()
