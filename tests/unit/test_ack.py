"""The ACKNOWLEDGEMENT as written (gsem.ack): joined as text, it must be what lxml writes."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from gsem.ack import Acknowledgement, mark_duplicate
from gsem.errors import AckCode, Problem, WarningCode

#: Any text, including what XML cannot carry (lxml refuses it; so must the fast path).
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]) | st.sampled_from("\r\n\t&<>\"'\x00\x1f"),
               max_size=40)
OPTIONAL = st.one_of(st.none(), st.just(""), TEXT)
PROBLEMS = st.lists(st.builds(Problem, st.sampled_from(list(AckCode)), TEXT, OPTIONAL), max_size=3)
WARNINGS = st.lists(st.builds(Problem, st.sampled_from(list(WarningCode)), TEXT, OPTIONAL), max_size=2)


def _lxml_or_refusal(ack: Acknowledgement) -> bytes | type[Exception]:
    try:
        return ack.lxml_bytes()
    except ValueError:
        return ValueError


@given(transaction=OPTIONAL, requester=OPTIONAL, provider=OPTIONAL, state=OPTIONAL, digest=st.sampled_from(["", "ab" * 32]),
       errors=PROBLEMS, warnings=WARNINGS)
def test_written_acknowledgements_are_what_lxml_writes(transaction: str | None, requester: str | None,
                                                        provider: str | None, state: str | None, digest: str,
                                                        errors: list[Problem], warnings: list[Problem]) -> None:
    ack = Acknowledgement(ack_id="01JDQ8Z4Y7W3K2M5N6P8R9S0TV", received_at=datetime(2026, 11, 22, 8, 3, 41),
                          digest=digest, transaction_name=transaction, requester_ref=requester, provider_ref=provider,
                          current_state=state, errors=errors, warnings=warnings)
    expected = _lxml_or_refusal(ack)
    if expected is ValueError:
        with pytest.raises(ValueError):
            ack.to_bytes()
    else:
        assert ack.to_bytes() == expected


def test_an_accepted_acknowledgement_reads_back() -> None:
    ack = Acknowledgement(ack_id="01JDQ8Z4Y7W3K2M5N6P8R9S0TV", received_at=datetime(2026, 11, 22, 8, 3, 41),
                          digest="ab" * 32, transaction_name="Entitlement", requester_ref="ACME-1 & co",
                          provider_ref="GX-1", current_state="Entitled",
                          warnings=[Problem(WarningCode.IGNORED_ELEMENT, 'Foo is not used by "Entitlement"',
                                            "/SERVICE_INCIDENT/Foo")])
    root = etree.fromstring(ack.to_bytes())
    assert root.findtext("Acknowledge") == "Yes"
    assert root.findtext("RequesterID") == "ACME-1 & co"
    assert root.find("WARNING").get("code") == "ignored-element"
    assert root.find("WARNING").text == 'Foo is not used by "Entitlement"'
    duplicate = etree.fromstring(mark_duplicate(ack.to_bytes()))
    assert duplicate.findtext("Duplicate") == "Yes"
