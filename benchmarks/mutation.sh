#!/bin/sh
# Mutation score of the modules that decide reuse and trust, one table (see benchmarks/mutation.py).
#   sh benchmarks/mutation.sh [--jobs N] [--from-head] [--keep] [--rerun-undetected] [MODULE ...]   e.g. sidecar.py doit/tasks.py
# From a fresh clone: creates .venv (the test extras) when it is missing, installs mutmut
# into it when absent, then runs each module in build/mutation/<module>/ (about 60 minutes
# for all of them on 2 cores). Equivalent mutants: benchmarks/mutation-equivalent.txt.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
if [ ! -x "$python" ]; then
    python3 -m venv "$root/.venv"
    "$root/.venv/bin/pip" install -q -e "$root[test]"
    python=$root/.venv/bin/python
fi
if ! "$python" -c "import mutmut" 2>/dev/null; then
    "$python" -m pip install -q "mutmut==3.8.1"
fi
exec "$python" "$root/benchmarks/mutation.py" "$@"
