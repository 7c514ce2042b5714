"""The field matrices (SPEC §4.1) and the document rules of SPEC §3, as a partner sees them.

The (transaction, element) cases are generated from the declarations in ``transactions/``,
so a new matrix row is tested without touching this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from documents import (
    SNIPPETS,
    add,
    build,
    document,
    empty,
    errors,
    label,
    paths_marked,
    remove,
    root_child,
    set_text,
    validate,
    warnings,
)

from gsem.contract import Mark, Role
from gsem.schema import catalogue
from gsem.validation import validate_document
from transactions import registry

SPECS = registry.all_specs()


def _cases(mark: Mark) -> list:
    return [
        pytest.param(spec, path, id=f"{label(spec)}-{path}")
        for spec in SPECS
        for path in paths_marked(spec, mark)
    ]


def _spec(name: str, letter: str = "R"):
    return next(s for s in SPECS if s.name == name and letter in {r.letter for r in s.sender})


def test_every_matrix_path_has_a_snippet() -> None:
    """Every element any declaration names can be built by the test documents."""
    assert {p for s in SPECS for p in s.fields} <= set(SNIPPETS)


@pytest.mark.parametrize("spec", [pytest.param(s, id=label(s)) for s in SPECS])
def test_complete_document_is_accepted(spec) -> None:
    """A document with every M and O element of its matrix is accepted without warnings."""
    inspection = validate(document(spec), spec)
    assert errors(inspection) == []
    assert warnings(inspection) == []


@pytest.mark.parametrize(("spec", "path"), _cases(Mark.MANDATORY))
def test_absent_mandatory_element_is_missing_mandatory(spec, path) -> None:
    """Removing an M element gives missing-mandatory with its path, and nothing else."""
    inspection = validate(remove(build(spec), path), spec)
    assert errors(inspection) == [("missing-mandatory", f"/SERVICE_INCIDENT/{path}")]


@pytest.mark.parametrize(("spec", "path"), _cases(Mark.MANDATORY))
def test_empty_mandatory_element_counts_as_absent(spec, path) -> None:
    """An M element present but empty (<Comment/>) gives missing-mandatory with its path."""
    inspection = validate(empty(build(spec), path), spec)
    assert errors(inspection) == [("missing-mandatory", f"/SERVICE_INCIDENT/{path}")]


@pytest.mark.parametrize(("spec", "path"), _cases(Mark.OPTIONAL))
def test_document_without_optional_element_is_accepted(spec, path) -> None:
    """Leaving out one O element (the others kept, so rule 6 holds) is accepted."""
    inspection = validate(remove(build(spec), path), spec)
    assert errors(inspection) == []


@pytest.mark.parametrize(("spec", "path"), _cases(Mark.OPTIONAL))
def test_empty_optional_element_is_accepted(spec, path) -> None:
    """An O element present but empty is treated as absent, not as a schema violation."""
    inspection = validate(empty(build(spec), path), spec)
    assert errors(inspection) == []


def _unused_root_children() -> list:
    return [
        pytest.param(spec, name, id=f"{label(spec)}-{name}")
        for spec in SPECS
        for name in catalogue().types[catalogue().root_type]
        if name not in spec.top_level_elements
    ]


@pytest.mark.parametrize(("spec", "name"), _unused_root_children())
def test_element_the_matrix_ignores_is_a_warning(spec, name) -> None:
    """A schema element the transaction's matrix leaves blank is dropped with ignored-element."""
    root = build(spec)
    root.append(root_child(name))
    inspection = validate(root, spec)
    assert errors(inspection) == []
    assert warnings(inspection) == [("ignored-element", f"/SERVICE_INCIDENT/{name}")]


def test_entitled_on_service_request_is_ignored() -> None:
    """Entitled on a Service_Request is ignored with a warning; the request is accepted."""
    spec = _spec("Service_Request")
    inspection = validate(add(build(spec), "<Entitled>Yes</Entitled>"), spec)
    assert errors(inspection) == []
    assert warnings(inspection) == [("ignored-element", "/SERVICE_INCIDENT/Entitled")]


@pytest.mark.parametrize(
    ("xml", "under", "path"),
    [
        ("<Foo>bar</Foo>", None, "/SERVICE_INCIDENT/Foo"),
        ("<Foo/>", None, "/SERVICE_INCIDENT/Foo"),
        ("<Colour>blue</Colour>", "ACTIVITY", "/SERVICE_INCIDENT/ACTIVITY/Colour"),
        (
            "<Nickname>Pri</Nickname>",
            "SERVICE_REQUESTER/PERSON",
            "/SERVICE_INCIDENT/SERVICE_REQUESTER/PERSON/Nickname",
        ),
    ],
)
def test_unknown_element_is_ignored_with_warning(xml, under, path) -> None:
    """An element the schema does not know is ignored with ignored-element; the document is accepted."""
    spec = _spec("Service_Request")
    inspection = validate(add(build(spec), xml, under), spec)
    assert errors(inspection) == []
    assert warnings(inspection) == [("ignored-element", path)]


def test_unknown_element_in_strict_mode_is_schema_violation() -> None:
    """With strict mode an unknown element is a schema-violation at its path."""
    spec = _spec("Service_Request")
    inspection = validate(add(build(spec), "<Foo>bar</Foo>", "ACTIVITY"), spec, strict=True)
    assert errors(inspection) == [("schema-violation", "/SERVICE_INCIDENT/ACTIVITY/Foo")]


def test_strict_mode_still_only_warns_for_matrix_blanks() -> None:
    """Strict mode is about unknown elements: a known element the matrix ignores stays a warning."""
    spec = _spec("Service_Request")
    inspection = validate(add(build(spec), "<Entitled>Yes</Entitled>"), spec, strict=True)
    assert errors(inspection) == []
    assert warnings(inspection) == [("ignored-element", "/SERVICE_INCIDENT/Entitled")]


@pytest.mark.parametrize(
    ("name", "xml", "under", "path"),
    [
        (
            "Service_Request",
            "<RequesterID>again</RequesterID>",
            None,
            "/SERVICE_INCIDENT/RequesterID",
        ),
        ("Service_Request", "<Comment>again</Comment>", None, "/SERVICE_INCIDENT/Comment"),
        (
            "Service_Request",
            "<RequesterSeverity>1</RequesterSeverity>",
            None,
            "/SERVICE_INCIDENT/RequesterSeverity",
        ),
        (
            "Service_Request",
            "<TransactionName>Service_Request</TransactionName>",
            None,
            "/SERVICE_INCIDENT/TransactionName",
        ),
        (
            "Service_Request",
            "<AGREEMENT><ContractID>C-2</ContractID></AGREEMENT>",
            None,
            "/SERVICE_INCIDENT/AGREEMENT",
        ),
        (
            "Service_Request",
            "<ContractID>C-2</ContractID>",
            "AGREEMENT",
            "/SERVICE_INCIDENT/AGREEMENT/ContractID",
        ),
        (
            "Service_Request",
            "<LastName>Twice</LastName>",
            "SERVICE_REQUESTER/PERSON",
            "/SERVICE_INCIDENT/SERVICE_REQUESTER/PERSON/LastName",
        ),
        (
            "Service_Request",
            "<LocalDate>2026-11-22 08:00</LocalDate>",
            "ACTIVITY",
            "/SERVICE_INCIDENT/ACTIVITY/LocalDate",
        ),
        ("Entitlement", "<Entitled>No</Entitled>", None, "/SERVICE_INCIDENT/Entitled"),
        ("Problem_Submittal", SNIPPETS["PROBLEM"][1], None, "/SERVICE_INCIDENT/PROBLEM"),
    ],
)
def test_scalar_twice_is_schema_violation(name, xml, under, path) -> None:
    """An element declared at most once that appears twice is a schema-violation at its path."""
    spec = _spec(name, "P" if name == "Entitlement" else "R")
    inspection = validate(add(build(spec), xml, under), spec)
    assert ("schema-violation", path) in errors(inspection)
    assert {code for code, _ in errors(inspection)} == {"schema-violation"}


@pytest.mark.parametrize("path", ["ACTIVITY", "ATTACHMENT"])
def test_repeatable_elements_may_appear_twice(path) -> None:
    """ACTIVITY and ATTACHMENT are repeatable: two of them are accepted."""
    spec = _spec("Service_Request")
    inspection = validate(build(spec, variants={path: [0, 1]}), spec)
    assert errors(inspection) == []


def test_two_solutions_are_accepted() -> None:
    """SOLUTION is repeatable: a Problem_Resolution with two solutions is accepted."""
    spec = _spec("Problem_Resolution", "P")
    assert errors(validate(build(spec, variants={"SOLUTION": [0, 1]}), spec)) == []


# (transaction, element path, bad text, path reported)
BAD_VALUES = [
    ("Service_Request", "RequesterSeverity", "7", "RequesterSeverity"),
    ("Service_Request", "RequesterSeverity", "0", "RequesterSeverity"),
    ("Service_Request", "RequesterSeverity", "high", "RequesterSeverity"),
    ("Entitlement", "ProviderPriority", "6", "ProviderPriority"),
    ("Entitlement", "Entitled", "Maybe", "Entitled"),
    ("Entitlement", "Entitled", "yes", "Entitled"),
    ("Entitlement", "ResponseTime", "2026-13-01 10:00", "ResponseTime"),
    ("Entitlement", "ResponseTime", "2026-11-22T10:00:00Z", "ResponseTime"),
    ("Entitlement", "ResponseTime", "22/11/2026 10:00", "ResponseTime"),
    ("Entitlement", "ResponseTime", "2026-11-22", "ResponseTime"),
    ("Entitlement", "ResponseTime", "2026-11-22 24:00", "ResponseTime"),
    ("Entitlement", "ResponseTime", "2026-11-22 10:00,tomorrow", "ResponseTime"),
    ("Service_Request", "ACTIVITY/LocalDate", "2026-11-32 08:00", "ACTIVITY/LocalDate"),
    ("Service_Request", "RequesterID", "R" * 65, "RequesterID"),
    ("Entitlement", "ProviderID", "P" * 65, "ProviderID"),
    ("Service_Request", "Comment", "c" * 4001, "Comment"),
    ("Service_Request", "AGREEMENT/ContractID", "C-100;XX=1", "AGREEMENT/ContractID"),
    (
        "Service_Request",
        "SERVICE_REQUESTER/PERSON/LOCATION[1]/LocationType",
        "Pager",
        "SERVICE_REQUESTER/PERSON/LOCATION[1]/LocationType",
    ),
    (
        "Service_Request",
        "SERVICE_REQUESTER/ADDRESS/AddressType",
        "Home",
        "SERVICE_REQUESTER/ADDRESS/AddressType",
    ),
    (
        "Service_Request",
        "PROBLEM/STATEMENT[2]/StatementRole",
        "Summary",
        "PROBLEM/STATEMENT[2]/StatementRole",
    ),
    ("Problem_Resolution", "SOLUTION/SolutionType", "Workaround", "SOLUTION/SolutionType"),
    (
        "Service_Request",
        "ATTACHMENT/AttachmentObject",
        "not base64!",
        "ATTACHMENT/AttachmentObject",
    ),
]


@pytest.mark.parametrize(
    ("name", "where", "text", "path"), BAD_VALUES, ids=[f"{b[1]}={b[2][:20]}" for b in BAD_VALUES]
)
def test_bad_value_is_schema_violation_at_its_path(name, where, text, path) -> None:
    """A bad enumeration, date, level, id length or pattern is a schema-violation at the element's path."""
    spec = _spec(name, "P" if name in ("Entitlement", "Problem_Resolution") else "R")
    # The fullest contact: its Email LOCATION can be broken without breaking rule 1.
    root = build(spec, variants={"SERVICE_REQUESTER": 1})
    inspection = validate(set_text(root, where, text), spec)
    assert errors(inspection) == [("schema-violation", f"/SERVICE_INCIDENT/{path}")]


@pytest.mark.parametrize("text", ["R" * 64, "r"])
def test_requester_id_length_bounds_are_accepted(text) -> None:
    """RequesterID of 1 and of 64 characters is accepted."""
    spec = _spec("Service_Request")
    assert errors(validate(set_text(build(spec), "RequesterID", text), spec)) == []


def test_attachment_needs_exactly_one_of_reference_and_object() -> None:
    """An ATTACHMENT with both AttachmentReference and AttachmentObject is a schema-violation."""
    spec = _spec("Service_Request")
    root = add(
        build(spec), "<AttachmentReference>https://x.example/a</AttachmentReference>", "ATTACHMENT"
    )
    assert errors(validate(root, spec)) == [("schema-violation", "/SERVICE_INCIDENT/ATTACHMENT")]


@pytest.mark.parametrize(
    "transaction",
    ["Provide_Admin_Information", "service_request", "Service Request", None, ""],
)
def test_unknown_or_missing_transaction_name(transaction) -> None:
    """An unsupported, missing or empty TransactionName gives unknown-transaction at its path."""
    spec = _spec("Service_Request")
    root = build(spec)
    if transaction is None:
        remove(root, "TransactionName")
    else:
        set_text(root, "TransactionName", transaction)
    assert errors(validate(root, spec)) == [
        ("unknown-transaction", "/SERVICE_INCIDENT/TransactionName")
    ]


def test_rejection_lists_all_problems() -> None:
    """A document with three different faults gets three errors, one per fault, each with its path."""
    spec = _spec("Service_Request")
    root = build(spec)
    set_text(root, "RequesterSeverity", "7")
    remove(root, "AGREEMENT/ContractID")
    remove(root, "ACTIVITY/LocalDate")
    assert sorted(errors(validate(root, spec))) == [
        ("missing-mandatory", "/SERVICE_INCIDENT/AGREEMENT/ContractID"),
        ("rule-violation", "/SERVICE_INCIDENT/ACTIVITY/LocalDate"),
        ("schema-violation", "/SERVICE_INCIDENT/RequesterSeverity"),
    ]


def test_rejection_lists_every_missing_element() -> None:
    """Several absent M elements are all reported, not just the first."""
    spec = _spec("Entitlement", "P")
    root = build(spec)
    for path in ("ProviderID", "ProviderPriority", "SERVICE_PROVIDER"):
        remove(root, path)
    assert sorted(errors(validate(root, spec))) == [
        ("missing-mandatory", "/SERVICE_INCIDENT/ProviderID"),
        ("missing-mandatory", "/SERVICE_INCIDENT/ProviderPriority"),
        ("missing-mandatory", "/SERVICE_INCIDENT/SERVICE_PROVIDER"),
    ]


def test_hub_set_elements_are_ignored() -> None:
    """CurrentState and Acknowledge sent by a partner are ignored with warnings (the hub sets them)."""
    spec = _spec("Service_Request")
    root = add(
        add(build(spec), "<CurrentState>Closed</CurrentState>"), "<Acknowledge>Yes</Acknowledge>"
    )
    inspection = validate(root, spec)
    assert errors(inspection) == []
    assert sorted(warnings(inspection)) == [
        ("ignored-element", "/SERVICE_INCIDENT/Acknowledge"),
        ("ignored-element", "/SERVICE_INCIDENT/CurrentState"),
    ]


def test_wrong_root_element_is_schema_violation() -> None:
    """A document whose root is not SERVICE_INCIDENT is a schema-violation at the root."""
    inspection = validate(b"<SERVICE_REQUEST><RequesterID>a</RequesterID></SERVICE_REQUEST>")
    assert errors(inspection) == [("schema-violation", "/SERVICE_REQUEST")]


def test_bad_value_in_an_element_the_matrix_ignores_is_not_a_reason_to_refuse():
    """An ignored element is dropped before the schema check, so its content cannot reject the document."""
    fixture = Path(__file__).parent.parent / "fixtures" / "lifecycle" / "01-service-request.xml"
    data = fixture.read_bytes().replace(
        b"<RequesterSeverity>2</RequesterSeverity>", b"<RequesterSeverity>2</RequesterSeverity><Entitled>Maybe</Entitled>"
    )
    inspection, _ = validate_document(data, role=Role.REQUESTER, state=None)
    assert inspection.errors == []
    assert [(w.code.code, w.path) for w in inspection.warnings] == [("ignored-element", "/SERVICE_INCIDENT/Entitled")]
