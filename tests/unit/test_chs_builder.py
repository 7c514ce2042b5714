"""The reference CHS client's documents: transactions built from arguments, and its acknowledgements."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from lxml import etree

from gsem.chs.builder import TransactionBuildError, ack_document, build_transaction, sis_date
from gsem.contract import Mark, Role, TransactionSpec
from gsem.errors import AckCode, Problem
from gsem.schema import ack_schema
from gsem.validation import validate_document
from transactions import registry

#: Builder arguments that fill each matrix path: every path of every declaration must be
#: here, so a new matrix row cannot go unbuilt.
ARGUMENTS: dict[str, dict[str, Any]] = {
    "RequesterID": {"requester_id": "ACME-INC-20931"},
    "ProviderID": {"provider_id": "GX-55012"},
    "RequesterSeverity": {"severity": 2},
    "ProviderPriority": {"priority": 3},
    "ResponseTime": {"response_time": datetime(2026, 11, 22, 10, 2, tzinfo=UTC)},
    "Comment": {"comment": "Settlement file rejected by the market gateway"},
    "Entitled": {"entitled": True},
    "ACTIVITY": {"activity": ("2026-11-22 08:02:11,2026-11-22 09:02:11", "Raised by the service desk")},
    "AGREEMENT/ContractID": {"contract_id": "C-100;CN=C-100"},
    "AGREEMENT/AgreementType": {"agreement_type": "Premium 24x7;SN=GW-4471"},
    "SERVICE_REQUESTER": {"person": ("Priya", "Natarajan", "+44 20 7946 0321", "p.natarajan@acme.example")},
    "SERVICE_PROVIDER": {"person": (None, "Okafor", "+1 555 0100")},
    "PROBLEM": {
        "problem_title": "Settlement file rejected with code E117",
        "problem_statements": [("Symptom", "Upload returns E117"), "Started after the 4.2 upgrade"],
        "products": [("Globex", "Market Gateway", "4.2")],
    },
    "SOLUTION": {"solution": ("Header de-duplication fixed", "4.2.1 deployed",
                              [("Cause", "BOM read as a header"), "Gateway 4.2.1"])},
    "ATTACHMENT": {"attachments": [("upload.log", "text/plain", b"E117 duplicate header\n"),
                                   ("trace.pcap", "application/vnd.tcpdump.pcap",
                                    "https://files.acme.example/trace.pcap", "Trace")]},
}


def _arguments(spec: TransactionSpec, *, full: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for path, cell in spec.fields.items():
        if full or cell.mark is Mark.MANDATORY:
            kwargs.update(ARGUMENTS[path])
    if not full and 6 in spec.rules:
        kwargs.update(ARGUMENTS["Comment"])  # rule 6: it must carry something
    return kwargs


def _specs() -> list[Any]:
    return [pytest.param(spec, id=f"{spec.name}-{'+'.join(sorted(r.value for r in spec.sender))}")
            for spec in registry.all_specs()]


def _accepted_everywhere(document: bytes, spec: TransactionSpec) -> None:
    for role in spec.sender:
        for state in spec.allowed_in:
            inspection, found = validate_document(document, role=role, state=state)
            assert found == spec
            assert inspection.errors == [], (role, state, inspection.errors)
            assert inspection.warnings == [], (role, state, inspection.warnings)


@pytest.mark.parametrize("full", [False, True], ids=["mandatory-only", "every-field"])
@pytest.mark.parametrize("spec", _specs())
def test_every_transaction_builds_a_document_the_hub_accepts(spec: TransactionSpec, full: bool) -> None:
    """Each declaration, with its mandatory or all of its fields, builds a valid document for its sender and states."""
    role = next(iter(spec.sender)) if len(registry.specs_named(spec.name)) > 1 else None
    document = build_transaction(spec.name, role=role, **_arguments(spec, full=full))
    _accepted_everywhere(document, spec)
    root = etree.fromstring(document)
    expected = {path for path, cell in spec.fields.items() if full or cell.mark is Mark.MANDATORY}
    assert {path for path in spec.fields if root.find(path) is not None} >= expected


def test_every_matrix_path_has_builder_arguments() -> None:
    """Every path any declaration uses is one the builder can fill (the table above is complete)."""
    paths = {path for spec in registry.all_specs() for path in spec.fields}
    assert paths <= set(ARGUMENTS)


def test_activity_defaults_to_now_with_the_transaction_name() -> None:
    """Without activity, ACTIVITY carries the current time and the transaction's name."""
    before = datetime.now(UTC).replace(microsecond=0)
    document = build_transaction("Confirm_Close", requester_id="R-1")
    root = etree.fromstring(document)
    stamp = datetime.strptime(root.findtext("ACTIVITY/LocalDate").split(",")[0], "%Y-%m-%d %H:%M:%S")
    assert before <= stamp.replace(tzinfo=UTC) <= datetime.now(UTC) + timedelta(seconds=1)
    assert root.findtext("ACTIVITY/ActionLog") == "Confirm_Close"


def test_query_incident_needs_no_activity() -> None:
    """Query_Incident's optional ACTIVITY is left out unless given."""
    root = etree.fromstring(build_transaction("Query_Incident", requester_id="R-1"))
    assert root.find("ACTIVITY") is None
    assert root.findtext("TransactionName") == "Query_Incident"


def test_the_contact_follows_the_transaction() -> None:
    """person becomes SERVICE_REQUESTER in a requester's transaction and SERVICE_PROVIDER in a provider's."""
    person = ("Ada", "Lovelace", "+44 1")
    request = etree.fromstring(build_transaction("Service_Request", requester_id="R-1", contract_id="C-100",
                                                 person=person))
    accept = etree.fromstring(build_transaction("Accept_Problem", requester_id="R-1", provider_id="P-1",
                                                person=person))
    assert request.findtext("SERVICE_REQUESTER/PERSON/LastName") == "Lovelace"
    assert request.find("SERVICE_PROVIDER") is None
    assert accept.findtext("SERVICE_PROVIDER/PERSON/LOCATION/LocationID") == "+44 1"


def test_provide_problem_information_picks_the_matrix_that_carries_the_fields() -> None:
    """A provider-only element (ProviderPriority) picks the provider's Provide_Problem_Information."""
    provider = build_transaction("Provide_Problem_Information", requester_id="R-1", priority=2)
    requester = build_transaction("Provide_Problem_Information", requester_id="R-1", severity=2)
    assert validate_document(provider, role=Role.PROVIDER, check_states=False)[0].errors == []
    assert validate_document(requester, role=Role.REQUESTER, check_states=False)[0].errors == []
    with pytest.raises(TransactionBuildError, match="does not carry ProviderPriority"):
        build_transaction("Provide_Problem_Information", requester_id="R-1", priority=2, role="requester")


def test_the_example_lifecycle_can_be_rebuilt() -> None:
    """The builder makes the example Service_Request's content from arguments."""
    document = build_transaction(
        "Service_Request", requester_id="ACME-INC-20931", severity=2,
        comment="Settlement file for 21 Nov rejected by the market gateway",
        activity=(datetime(2026, 11, 22, 9, 2, 11, tzinfo=timezone(timedelta(hours=1))),
                  "Raised by the ACME service desk"),
        contract_id="C-100;CN=C-100", agreement_type="Premium 24x7;SN=GW-4471;LN=SD-88120",
        person=("Priya", "Natarajan", "+44 20 7946 0321", "p.natarajan@acme.example"),
    )
    root = etree.fromstring(document)
    assert root.findtext("ACTIVITY/LocalDate") == "2026-11-22 08:02:11,2026-11-22 09:02:11"
    assert root.findtext("AGREEMENT/ContractID") == "C-100;CN=C-100"
    assert [e.findtext("LocationType") for e in root.findall("SERVICE_REQUESTER/PERSON/LOCATION")] == [
        "Primary_Voice", "Email"]


# -- bad arguments ---------------------------------------------------------------------------


def _problems(name: str, **kwargs: Any) -> list[str]:
    with pytest.raises(TransactionBuildError) as caught:
        build_transaction(name, **kwargs)
    assert caught.value.transaction_name in (name, "Provide_Problem_Information")
    return caught.value.problems


def test_an_unknown_transaction_lists_the_supported_ones() -> None:
    """An unsupported name is refused with the list of supported transactions."""
    (problem,) = _problems("Provide_Admin_Information", requester_id="R-1")
    assert "not a supported transaction" in problem and "Service_Request" in problem


def test_every_missing_mandatory_argument_is_named() -> None:
    """All missing mandatory elements are reported at once, each with the argument that fills it."""
    problems = _problems("Entitlement", requester_id="R-1")
    assert problems == [
        "Entitlement needs ProviderID (argument provider_id)",
        "Entitlement needs ProviderPriority (argument priority)",
        "Entitlement needs ResponseTime (argument response_time)",
        "Entitlement needs Entitled (argument entitled)",
        "Entitlement needs SERVICE_PROVIDER (argument person)",
    ]


def test_an_element_the_transaction_does_not_carry_is_refused() -> None:
    """Arguments the matrix ignores are an error, not silently dropped."""
    problems = _problems("Confirm_Close", requester_id="R-1", attachments=[("a.txt", "text/plain", b"x")],
                         person=("A", "B", "1"))
    assert sorted(problems) == [
        "Confirm_Close does not carry ATTACHMENT (argument attachments)",
        "Confirm_Close does not carry SERVICE_REQUESTER/SERVICE_PROVIDER (argument person)",
    ]


@pytest.mark.parametrize(("name", "kwargs", "expected"), [
    ("Service_Request", {"severity": 9, "contract_id": "C-100", "person": ("A", "B", "1")},
     "schema-violation"),
    ("Service_Request", {"contract_id": "C-100;XX=1", "person": ("A", "B", "1")}, "schema-violation"),
    ("Service_Request", {"contract_id": "C-100", "person": ("A", "B", None)}, "rule 1"),
    ("Service_Request", {"contract_id": "C-100", "person": ("A", "B", "1"), "problem_statements": ["x"]},
     "rule 2"),
    ("Problem_Submittal", {"problem_statements": [("Symptom", "it broke")]}, "rule 3"),
    ("Entitlement", {"provider_id": "P", "priority": 1, "response_time": "2026-11-22 10:00",
                     "entitled": False, "person": (None, "B", "1")}, "rule 4"),
    ("Problem_Resolution", {"solution": ("Fixed", "", [])}, "rule 5"),
    ("Confirm_Close", {"activity": ("22/11/2026", "closed")}, "schema-violation"),
    ("Entitlement", {"provider_id": "P", "priority": 1, "response_time": "tomorrow", "entitled": True,
                     "person": (None, "B", "1")}, "ResponseTime"),
])
def test_values_the_hub_would_refuse_are_refused_locally(name: str, kwargs: dict[str, Any], expected: str) -> None:
    """Content that breaks the schema or a numbered rule raises with the validator's explanation."""
    problems = _problems(name, requester_id="R-1", **kwargs)
    assert any(expected in p for p in problems), problems


def test_a_transaction_sent_by_the_wrong_role_is_refused() -> None:
    """Asking for a provider's transaction as the requester is refused."""
    (problem,) = _problems("Entitlement", requester_id="R-1", role=Role.REQUESTER)
    assert problem == "Entitlement is sent by the provider, not the requester"


def test_a_malformed_person_is_explained() -> None:
    """person must be a tuple of names and numbers, not a string."""
    (problem,) = _problems("Service_Request", requester_id="R-1", contract_id="C-100", person="Ada Lovelace")
    assert "person must be" in problem


def test_sis_dates() -> None:
    """Naive datetimes are UTC; aware ones in another zone also give their local time; strings pass."""
    assert sis_date(datetime(2026, 11, 22, 8, 2, 11)) == "2026-11-22 08:02:11"
    assert sis_date(datetime(2026, 11, 22, 8, 2, 11, tzinfo=UTC)) == "2026-11-22 08:02:11"
    local = datetime(2026, 11, 22, 9, 2, 11, tzinfo=timezone(timedelta(hours=1)))
    assert sis_date(local) == "2026-11-22 08:02:11,2026-11-22 09:02:11"
    assert sis_date("2026-11-22 08:02") == "2026-11-22 08:02"


# -- our acknowledgements -----------------------------------------------------------------------

FORWARDED = b"""<?xml version="1.0" encoding="UTF-8"?>
<SERVICE_INCIDENT>
  <TransactionName>Entitlement</TransactionName>
  <RequesterID>ACME-INC-20931</RequesterID>
  <ProviderID>GX-55012</ProviderID>
  <CurrentState>Entitled</CurrentState>
  <Acknowledge>Yes</Acknowledge>
</SERVICE_INCIDENT>
"""


def _valid_ack(document: bytes) -> etree._Element:
    root = etree.fromstring(document)
    schema = ack_schema()
    assert schema.validate(etree.ElementTree(root)), schema.error_log
    return root


def test_a_positive_acknowledgement_is_valid_and_names_the_document() -> None:
    """Acknowledge=Yes copies the document's ids and state and digests its exact bytes."""
    root = _valid_ack(ack_document(acknowledged=True, received=FORWARDED))
    assert root.findtext("Acknowledge") == "Yes"
    assert root.findtext("TransactionName") == "Entitlement"
    assert root.findtext("RequesterID") == "ACME-INC-20931"
    assert root.findtext("ProviderID") == "GX-55012"
    assert root.findtext("CurrentState") == "Entitled"
    assert root.findtext("Digest") == hashlib.sha256(FORWARDED).hexdigest()
    assert root.find("ERROR") is None


def test_a_negative_acknowledgement_lists_every_error() -> None:
    """Acknowledge=No carries each error's code, path and message, from tuples or Problems."""
    document = ack_document(acknowledged=False, received=FORWARDED, errors=[
        ("schema-violation", "/SERVICE_INCIDENT/ProviderPriority", "not 1-5"),
        Problem(AckCode.MISSING_MANDATORY, "needs ACTIVITY", "/SERVICE_INCIDENT/ACTIVITY"),
        ("not-authorized", None, "not ours"),
    ])
    root = _valid_ack(document)
    assert root.findtext("Acknowledge") == "No"
    assert [(e.get("code"), e.get("path"), e.text) for e in root.findall("ERROR")] == [
        ("schema-violation", "/SERVICE_INCIDENT/ProviderPriority", "not 1-5"),
        ("missing-mandatory", "/SERVICE_INCIDENT/ACTIVITY", "needs ACTIVITY"),
        ("not-authorized", None, "not ours"),
    ]


@pytest.mark.parametrize("received", [
    b"not xml at all",
    b"",
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><SERVICE_INCIDENT>&a;</SERVICE_INCIDENT>',
    b"<SERVICE_INCIDENT><CurrentState>Nowhere</CurrentState></SERVICE_INCIDENT>",
])
def test_an_acknowledgement_of_garbage_is_still_valid(received: bytes) -> None:
    """Unparseable or odd documents still get a schema-valid acknowledgement with empty ids."""
    root = _valid_ack(ack_document(acknowledged=False, received=received,
                                   errors=[("malformed-xml", None, "not well-formed")]))
    assert root.findtext("RequesterID") == ""
    assert root.findtext("CurrentState") == ""


def test_a_positive_acknowledgement_cannot_carry_errors() -> None:
    """Acknowledge=Yes with an ERROR is a contradiction, refused."""
    with pytest.raises(ValueError):
        ack_document(acknowledged=True, received=FORWARDED, errors=[("schema-violation", None, "x")])


def test_every_acknowledgement_has_its_own_id() -> None:
    """AckIDs are unique ULIDs."""
    ids = {etree.fromstring(ack_document(acknowledged=True, received=FORWARDED)).findtext("AckID")
           for _ in range(50)}
    assert len(ids) == 50

