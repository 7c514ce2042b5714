"""Validation gives, byte for byte, what the golden corpus recorded (``validation_corpus.py``).

The hub stores and forwards the pruned tree and partners program against the codes, paths
and order of the problems, so a faster validator must not change a single one of them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from functools import cache

import pytest
from validation_corpus import SMALL_LIMITS, _Trees, corpus, load, outcomes

from gsem.validation import DocumentValidator

#: How the corpus is split into tests, by the prefix of the document names.
GROUPS = ("fixture", "bench", "built", "random", "other")


@cache
def _golden() -> dict[str, dict]:
    return load()


@cache
def _documents() -> dict[str, bytes]:
    return dict(corpus())


def _group(name: str) -> str:
    prefix = name.split(":", 1)[0]
    return prefix if prefix in GROUPS else "other"


def _explain(name: str, expected: dict, found: dict, trees: dict[str, str | None], new_trees: _Trees) -> str:
    """A readable difference, the trees as text where the golden file kept them."""

    def render(outcome: dict, texts: dict[str, str | None]) -> list[str]:
        text = json.dumps(outcome, indent=1, sort_keys=True, ensure_ascii=False)
        for digest, tree in texts.items():
            if tree is not None:
                text = text.replace(digest, tree)
        return text.splitlines()

    diff = difflib.unified_diff(
        render(expected, trees), render(found, new_trees.texts), "golden", "now", lineterm=""
    )
    return f"{name}:\n" + "\n".join(list(diff)[:80])


def test_corpus_is_the_recorded_one() -> None:
    """The corpus generator yields exactly the documents the golden file was recorded from."""
    golden = _golden()["documents"]
    documents = _documents()
    assert sorted(documents) == sorted(golden)
    changed = [name for name, data in documents.items() if hashlib.sha256(data).hexdigest() != golden[name]["sha256"]]
    assert changed == [], "regenerate the golden file from the old validator, not the new one"


@pytest.mark.parametrize("group", GROUPS)
def test_validation_matches_golden(group: str) -> None:
    """Every corpus document's errors, warnings, TransactionName and pruned tree are as recorded."""
    golden = _golden()
    validator = DocumentValidator()
    small = DocumentValidator(SMALL_LIMITS)
    differences = []
    checked = 0
    for name, data in _documents().items():
        if _group(name) != group:
            continue
        checked += 1
        trees = _Trees()
        expected = dict(golden["documents"][name])
        expected.pop("sha256")
        found = outcomes(data, validator, trees, small)
        if found != expected:
            differences.append(_explain(name, expected, found, golden["trees"], trees))
    assert checked > 0
    assert not differences, f"{len(differences)} of {checked} documents differ:\n" + "\n\n".join(differences[:5])
