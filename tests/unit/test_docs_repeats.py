"""No sentence of these docs pages says again what an earlier one on the same page already said.

docs/ci-and-containers.md said "without a visible GPU `doit engines` fails with exit code 69
and one line" twice in a row (issue 22 item 32). A sentence of 10 or more words whose words
all occur in another sentence of the same page (code blocks, tables, headings and
parentheses left out) is reported. The pages are the ones whose text this check was tuned
on; a page of prose that repeats itself on purpose would need another rule.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ["ci-and-containers.md", "configuration.md", "reliability.md", "tensorrt.md", "tensorrt-rtx.md"]
MIN_WORDS = 10


def sentences(text: str) -> list[tuple[str, frozenset[str]]]:
    """Prose sentences with their word sets (code, tables, headings and parentheses removed)."""
    text = re.sub(r"```.*?```", " ", text, flags=re.DOTALL)
    prose = " ".join(line for line in text.splitlines() if not line.lstrip().startswith(("|", "#", "    ")))
    prose = re.sub(r"\([^()]*\)", " ", prose)
    found = []
    for sentence in re.split(r"(?<=[.!?])\s+", prose):
        words = re.findall(r"[a-z0-9_]+", sentence.lower())
        if len(words) >= MIN_WORDS:
            found.append((" ".join(sentence.split()), frozenset(words)))
    return found


def repeats(text: str) -> list[tuple[str, str]]:
    """Pairs (shorter sentence, the one that already contains all its words)."""
    pairs = []
    for (a, wa), (b, wb) in itertools.combinations(sentences(text), 2):
        short, long_ = (a, b) if len(wa) <= len(wb) else (b, a)
        if min(len(wa), len(wb)) >= MIN_WORDS and (wa <= wb or wb <= wa):
            pairs.append((short, long_))
    return pairs


@pytest.mark.parametrize("page", PAGES)
def test_no_sentence_is_said_twice_on_a_page(page):
    assert repeats((DOCS / page).read_text()) == []


def test_the_check_sees_the_repeat_that_was_there():
    before = ("It uses [examples/corpus-tensorrt.yaml](../examples/corpus-tensorrt.yaml) (`backend: tensorrt`),\n"
              "so without a visible GPU `doit engines` fails with exit code 69 and one line.\n\n"
              "Without a visible GPU, `doit engines` fails with exit code 69 (no GPU) and one line. The log is plain.")
    assert len(repeats(before)) == 1
