"""The numbered rules behind the matrices' marks (SPEC §4.1, rules 1–7), as a partner sees them.

Each rule is broken in every declaration that checks it (read from the declarations), and
the acknowledgement must say rule-violation at the path of the element concerned.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from documents import add, build, errors, label, paths_marked, remove, set_text, validate

from gsem.contract import Mark, TransactionSpec
from transactions import registry

SPECS = registry.all_specs()

Breaker = Callable[[TransactionSpec, str | None], tuple[object, str]]


def _unreachable_contact(spec: TransactionSpec, path: str | None):
    """Rule 1: the contact's only person has no phone, only an e-mail address."""
    root = build(spec)
    contact = root.find(path)
    for child in list(contact):
        contact.remove(child)
    add(
        root,
        "<PERSON><LastName>Natarajan</LastName><LOCATION><LocationType>Email</LocationType>"
        "<LocationID>p@acme.example</LocationID></LOCATION></PERSON>",
        path,
    )
    return root, f"/SERVICE_INCIDENT/{path}"


def _problem_without_title(spec: TransactionSpec, path: str | None):
    """Rules 2 and 3: the PROBLEM's statements have no Title."""
    root = build(spec, variants={"PROBLEM": 0})
    set_text(root, "PROBLEM/STATEMENT[1]/StatementRole", "Description")
    return root, "/SERVICE_INCIDENT/PROBLEM"


def _refusal_without_reason(spec: TransactionSpec, path: str | None):
    """Rule 4: Entitled=No and no Comment."""
    root = remove(build(spec), "Comment")
    set_text(root, "Entitled", "No")
    return root, "/SERVICE_INCIDENT/Comment"


def _solution_without_statement(spec: TransactionSpec, path: str | None):
    """Rule 5: the only SOLUTION has no STATEMENT."""
    return remove(build(spec), "SOLUTION/STATEMENT"), "/SERVICE_INCIDENT/SOLUTION"


def _carries_nothing(spec: TransactionSpec, path: str | None):
    """Rule 6: only the mandatory elements."""
    return build(spec, paths=paths_marked(spec, Mark.MANDATORY)), "/SERVICE_INCIDENT"


def _activity_without_date(spec: TransactionSpec, path: str | None):
    """Rule 7: the ACTIVITY has no LocalDate."""
    return remove(build(spec), "ACTIVITY/LocalDate"), "/SERVICE_INCIDENT/ACTIVITY/LocalDate"


BREAKERS: dict[int, Breaker] = {
    1: _unreachable_contact,
    2: _problem_without_title,
    3: _problem_without_title,
    4: _refusal_without_reason,
    5: _solution_without_statement,
    6: _carries_nothing,
    7: _activity_without_date,
}


def _cases() -> list:
    cases = []
    for spec in SPECS:
        for path, cell in spec.fields.items():
            cases += [
                pytest.param(spec, n, path, id=f"{label(spec)}-rule{n}-{path}") for n in cell.rules
            ]
        cases += [pytest.param(spec, n, None, id=f"{label(spec)}-rule{n}") for n in spec.rules]
    return cases


def _spec(name: str, letter: str = "R") -> TransactionSpec:
    return next(s for s in SPECS if s.name == name and letter in {r.letter for r in s.sender})


def test_every_rule_is_checked_somewhere() -> None:
    """Rules 1 to 7 are each attached to at least one declaration."""
    assert {n for spec in SPECS for n in spec.all_rules()} == set(range(1, 8))


@pytest.mark.parametrize(("spec", "number", "path"), _cases())
def test_broken_rule_is_rule_violation_at_its_path(spec, number, path) -> None:
    """Breaking a rule a declaration checks gives exactly one rule-violation at the element concerned."""
    root, expected = BREAKERS[number](spec, path)
    inspection = validate(root, spec)
    assert errors(inspection) == [("rule-violation", expected)]
    assert f"rule {number}" in inspection.errors[0].message


def test_rule1_person_needs_last_name() -> None:
    """Rule 1: a person with a phone but an empty LastName does not make a contact."""
    spec = _spec("Service_Request")
    root = set_text(
        build(spec, variants={"SERVICE_REQUESTER": 0}), "SERVICE_REQUESTER/PERSON/LastName", "  "
    )
    assert errors(validate(root, spec)) == [
        ("rule-violation", "/SERVICE_INCIDENT/SERVICE_REQUESTER")
    ]


def test_rule1_phone_and_name_must_belong_to_one_person() -> None:
    """Rule 1: a named person without a phone plus a phone without a name is not enough."""
    spec = _spec("Entitlement", "P")
    root = remove(build(spec), "SERVICE_PROVIDER")
    add(
        root,
        "<SERVICE_PROVIDER>"
        "<PERSON><LastName>Okafor</LastName></PERSON>"
        "<PERSON><FirstName>Ada</FirstName><LOCATION><LocationType>Primary_Voice</LocationType>"
        "<LocationID>+1 555 0100</LocationID></LOCATION></PERSON>"
        "</SERVICE_PROVIDER>",
    )
    assert errors(validate(root, spec)) == [
        ("rule-violation", "/SERVICE_INCIDENT/SERVICE_PROVIDER")
    ]


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_rule1_reachable_contacts_are_accepted(variant) -> None:
    """Rule 1 accepts Primary_Voice, Alternate_Voice, and a reachable second person."""
    spec = _spec("Service_Request")
    assert errors(validate(build(spec, variants={"SERVICE_REQUESTER": variant}), spec)) == []


def test_rule3_problem_without_statement() -> None:
    """Rule 3: a PROBLEM with only a PRODUCT is a rule-violation at PROBLEM."""
    spec = _spec("Problem_Submittal")
    root = remove(build(spec, variants={"PROBLEM": 0}), "PROBLEM/STATEMENT")
    assert errors(validate(root, spec)) == [("rule-violation", "/SERVICE_INCIDENT/PROBLEM")]


def test_rule3_title_may_be_any_statement() -> None:
    """Rule 3: the Title statement need not come first."""
    spec = _spec("Problem_Submittal")
    assert errors(validate(build(spec, variants={"PROBLEM": 2}), spec)) == []


def test_rule4_refusal_with_reason_is_accepted() -> None:
    """Rule 4: Entitled=No with a Comment is accepted."""
    spec = _spec("Entitlement", "P")
    assert errors(validate(set_text(build(spec), "Entitled", "No"), spec)) == []


def test_rule4_empty_comment_is_no_reason() -> None:
    """Rule 4: Entitled=No with an empty Comment is a rule-violation at Comment."""
    spec = _spec("Entitlement", "P")
    root = set_text(set_text(build(spec), "Entitled", "No"), "Comment", "")
    assert errors(validate(root, spec)) == [("rule-violation", "/SERVICE_INCIDENT/Comment")]


@pytest.mark.parametrize("missing", ["Title", "SolutionAbstract"])
def test_rule5_solution_needs_title_and_abstract(missing) -> None:
    """Rule 5: a SOLUTION without Title or SolutionAbstract is a rule-violation at SOLUTION."""
    spec = _spec("Problem_Resolution", "P")
    root = remove(build(spec), f"SOLUTION/{missing}")
    assert errors(validate(root, spec)) == [("rule-violation", "/SERVICE_INCIDENT/SOLUTION")]


def test_rule5_one_complete_solution_is_enough() -> None:
    """Rule 5: an incomplete SOLUTION next to a complete one is accepted."""
    spec = _spec("Problem_Resolution", "P")
    root = add(build(spec), "<SOLUTION><Title>Idea</Title></SOLUTION>")
    assert errors(validate(root, spec)) == []


@pytest.mark.parametrize("letter", ["R", "P"])
def test_rule6_any_one_optional_element_is_enough(letter) -> None:
    """Rule 6: a Provide_Problem_Information with one optional element, whichever, is accepted."""
    spec = _spec("Provide_Problem_Information", letter)
    mandatory = paths_marked(spec, Mark.MANDATORY)
    for optional in paths_marked(spec, Mark.OPTIONAL):
        assert errors(validate(build(spec, paths=[*mandatory, optional]), spec)) == [], optional


def test_rule6_empty_optional_element_carries_nothing() -> None:
    """Rule 6: an optional element present but empty does not count as carrying something."""
    spec = _spec("Provide_Problem_Information")
    root = add(build(spec, paths=paths_marked(spec, Mark.MANDATORY)), "<Comment/>")
    assert errors(validate(root, spec)) == [("rule-violation", "/SERVICE_INCIDENT")]


def test_rule7_second_activity_without_date() -> None:
    """Rule 7: each ACTIVITY needs LocalDate; the second one is named by its position."""
    spec = _spec("Service_Request")
    root = add(build(spec), "<ACTIVITY><ActionLog>Called back</ActionLog></ACTIVITY>")
    assert errors(validate(root, spec)) == [
        ("rule-violation", "/SERVICE_INCIDENT/ACTIVITY[2]/LocalDate")
    ]


def test_rule7_applies_to_optional_activity() -> None:
    """Rule 7 applies to the optional ACTIVITY of a Query_Incident too."""
    spec = _spec("Query_Incident")
    root = add(
        build(spec, paths=["RequesterID"]),
        "<ACTIVITY><ActionLog>Who has it?</ActionLog></ACTIVITY>",
    )
    assert errors(validate(root, spec)) == [
        ("rule-violation", "/SERVICE_INCIDENT/ACTIVITY/LocalDate")
    ]


def test_rule_violations_are_all_listed() -> None:
    """Several broken rules in one document are all reported."""
    spec = _spec("Service_Request")
    root, _ = _unreachable_contact(spec, "SERVICE_REQUESTER")
    remove(root, "ACTIVITY/LocalDate")
    set_text(root, "PROBLEM/STATEMENT[1]/StatementRole", "Description")
    assert sorted(errors(validate(root, spec))) == [
        ("rule-violation", "/SERVICE_INCIDENT/ACTIVITY/LocalDate"),
        ("rule-violation", "/SERVICE_INCIDENT/PROBLEM"),
        ("rule-violation", "/SERVICE_INCIDENT/SERVICE_REQUESTER"),
    ]
