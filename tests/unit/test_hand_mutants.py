"""The hand-written mutants (benchmarks/hand_mutants/*.json) still point at the rules they break.

Running them takes minutes (benchmarks/hand_mutants.py); this check is instant: every
mutant's ``find`` text is exactly once in its file, the mutation changes it, and each
named test file exists. A rule that moved without its mutant fails here, not silently.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("hand_mutants", ROOT / "benchmarks" / "hand_mutants.py")
hand_mutants = importlib.util.module_from_spec(_spec)
sys.modules["hand_mutants"] = hand_mutants  # dataclasses looks its module up while building the class
_spec.loader.exec_module(hand_mutants)
MUTANTS = hand_mutants.load_mutants()


def test_there_are_hand_written_mutants_for_the_trust_rules() -> None:
    assert len(MUTANTS) >= 10
    ids = [f"{m.area}/{m.id}" for m in MUTANTS]
    assert len(ids) == len(set(ids)), "mutant ids repeat within an area"


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: f"{m.area}/{m.id}")
def test_each_mutant_applies_to_todays_code(mutant) -> None:
    text = (ROOT / mutant.file).read_text(encoding="utf-8")
    assert text.count(mutant.find) == 1, f"{mutant.file}: the find text of {mutant.id} occurs {text.count(mutant.find)} times"
    assert mutant.replace != mutant.find
    for test in mutant.tests:
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), f"{mutant.id}: no test file {test}"
        if name:  # the named test function (or class) is defined in that file
            function = name.split("::")[0].split("[")[0]
            source = (ROOT / path).read_text(encoding="utf-8")
            assert f"def {function}(" in source or f"class {function}" in source, f"{mutant.id}: no test {test}"
