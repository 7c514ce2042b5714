"""Property tests of the field matrices: any well-made document is accepted, any M element is needed.

Documents are drawn from a declaration's own ``fields``: random known-good values, the
optional elements randomly included, repeatable elements repeated, every element's
children in random order (SPEC §3: order is free).
"""

from __future__ import annotations

import random
import re

from documents import (
    SNIPPETS,
    allowed_state,
    build,
    label,
    paths_marked,
    remove,
    shuffle,
    to_bytes,
    validate,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gsem.contract import Mark, TransactionSpec
from gsem.schema import catalogue
from transactions import registry

# Modest, so the suite stays fast: 12 declarations x 2 properties x 60 documents.
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def documents(draw: st.DrawFn, spec: TransactionSpec) -> etree._Element:
    """A valid document for *spec*, its M elements always present."""
    mandatory = paths_marked(spec, Mark.MANDATORY)
    optional = paths_marked(spec, Mark.OPTIONAL)
    included = [path for path in optional if draw(st.booleans())]
    if 6 in spec.all_rules() and not included:
        included = [draw(st.sampled_from(optional))]
    variants: dict[str, list[int]] = {}
    for path in mandatory + included:
        decl = catalogue().child(path)
        count = draw(st.integers(1, 3)) if decl.max_occurs is None else 1
        variants[path] = [draw(st.integers(0, len(SNIPPETS[path]) - 1)) for _ in range(count)]
    if (
        "Entitled" in variants
        and SNIPPETS["Entitled"][variants["Entitled"][0]] == "<Entitled>No</Entitled>"
    ):
        # Rule 4: refusing needs a reason.
        variants.setdefault("Comment", [draw(st.integers(0, len(SNIPPETS["Comment"]) - 1))])
    paths = [path for path in spec.fields if path in variants]
    return shuffle(
        build(spec, paths=paths, variants=variants), random.Random(draw(st.integers(0, 2**32 - 1)))
    )


def _accepts_any_well_made_document(spec: TransactionSpec):
    @PROPERTY_SETTINGS
    @given(root=documents(spec))
    def test(root: etree._Element) -> None:
        inspection = validate(to_bytes(root), spec, check_states=True, state=allowed_state(spec))
        assert [(p.code.code, p.path, p.message) for p in inspection.errors] == []
        assert inspection.warnings == []

    test.__doc__ = (
        f"Any {label(spec)} of its M elements plus any O elements, in any order, is accepted."
    )
    return test


def _names_any_dropped_mandatory_element(spec: TransactionSpec):
    @PROPERTY_SETTINGS
    @given(root=documents(spec), path=st.sampled_from(paths_marked(spec, Mark.MANDATORY)))
    def test(root: etree._Element, path: str) -> None:
        inspection = validate(to_bytes(remove(root, path)), spec)
        assert [(p.code.code, p.path) for p in inspection.errors] == [
            ("missing-mandatory", f"/SERVICE_INCIDENT/{path}")
        ]

    test.__doc__ = f"A {label(spec)} without one of its M elements is rejected: missing-mandatory at that path, nothing else."
    return test


# One test function per declaration rather than @pytest.mark.parametrize: pytest-twisted
# re-wraps a parametrized hypothesis test's inner test on every case and the second case
# then fails with "blockon cannot be called from the twisted greenlet" (pytest-twisted 1.14).
for _spec in registry.all_specs():
    _id = re.sub(r"\W+", "_", label(_spec)).strip("_")
    globals()[f"test_accepts_any_well_made_{_id}"] = _accepts_any_well_made_document(_spec)
    globals()[f"test_names_dropped_mandatory_element_{_id}"] = _names_any_dropped_mandatory_element(
        _spec
    )
del _spec, _id
