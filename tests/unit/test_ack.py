"""The ACKNOWLEDGEMENT as written (gsem.ack): joined as text, it must be what lxml writes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from lxml import etree

from gsem.ack import Acknowledgement, mark_duplicate, sis_date
from gsem.errors import AckCode, Problem, WarningCode
from gsem.xmlsafe import escape_attribute, escape_text

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


#: Text XML can carry (lxml refuses the rest, and so do the writers that use these escapes).
XML_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\ufffe\uffff",
                                          min_codepoint=0x9) | st.sampled_from("\r\n\t&<>\"'"),
                   max_size=40).filter(lambda s: not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", s))


@given(value=XML_TEXT)
@example(value="\r")
@example(value='"\n\t')
@example(value="a & b <c>")
def test_escaped_text_and_attributes_are_what_lxml_writes(value: str) -> None:
    """escape_text and escape_attribute write a value as lxml writes element text and attributes."""
    element = etree.Element("a", b=value)
    element.text = value
    assert etree.tostring(element, encoding="unicode") == f'<a b="{escape_attribute(value)}">{escape_text(value)}</a>'


@given(moment=st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), st.timezones())))
def test_sis_dates_are_what_strftime_writes(moment: datetime) -> None:
    """The acknowledgement's ReceivedAt is strftime's YYYY-MM-DD hh:mm:ss, for any year."""
    assert sis_date(moment) == moment.strftime("%Y-%m-%d %H:%M:%S")
