"""The numbered rules behind the field matrices' marks (SPEC §4.1, rules 1–7).

A rule attached to a matrix cell (``M(1)``) is checked on the elements at that path when
they are present; a rule on the transaction (``rules=(6,)``) is checked on the document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree

from gsem.contract import Mark, TransactionSpec

__all__ = ["Rule", "RULES", "Finding"]

#: (message, XPath of the element concerned)
Finding = tuple[str, str]


@dataclass(frozen=True)
class Rule:
    """A numbered rule: its SPEC text and its check."""

    number: int
    text: str
    check: Callable[[etree._Element, list[etree._Element], TransactionSpec], list[Finding]]


def _path(element: etree._Element) -> str:
    return element.getroottree().getpath(element)


def _text(element: etree._Element | None, name: str) -> str:
    """``(element.findtext(name) or "").strip()``: the stripped text of the first child *name*.

    The rules run on every document, on elements with a handful of children: comparing
    their tags costs less than the tag matcher of ``iterchildren(name)``, and much less
    than ``findtext``'s ElementPath parser and cache.  So do the loops below.
    """
    if element is None:
        return ""
    for child in element:
        if child.tag == name:
            return (child.text or "").strip()
    return ""


def _has_child(element: etree._Element, name: str) -> bool:
    return any(child.tag == name for child in element)


_VOICE = ("Primary_Voice", "Alternate_Voice")


def _reachable(contact: etree._Element) -> bool:
    """Rule 1 for one contact: a PERSON with a LastName and a voice LOCATION."""
    for person in contact:
        if person.tag == "PERSON" and _text(person, "LastName"):
            for location in person:
                if location.tag == "LOCATION" and _text(location, "LocationType") in _VOICE:
                    return True
    return False


def _contact(root: etree._Element, contacts: list[etree._Element], spec: TransactionSpec) -> list[Finding]:
    return [
        (
            f"rule 1: {contact.tag} needs a PERSON with a LastName and a LOCATION of "
            "type Primary_Voice or Alternate_Voice",
            _path(contact),
        )
        for contact in contacts
        if not _reachable(contact)
    ]


def _has_title_statement(problem: etree._Element) -> bool:
    for statement in problem:
        if statement.tag == "STATEMENT" and _text(statement, "StatementRole") == "Title":
            return True
    return False


def _problem_shortcut(root: etree._Element, problems: list[etree._Element], spec: TransactionSpec) -> list[Finding]:
    return [
        (
            "rule 2: a PROBLEM sent with the Service_Request is its Problem_Submittal and "
            "needs a STATEMENT with StatementRole Title (rule 3)",
            _path(problem),
        )
        for problem in problems
        if not _has_title_statement(problem)
    ]


def _problem_statement(root: etree._Element, problems: list[etree._Element], spec: TransactionSpec) -> list[Finding]:
    return [
        ("rule 3: a PROBLEM needs at least one STATEMENT, one of which has StatementRole Title", _path(problem))
        for problem in problems
        if not _has_title_statement(problem)
    ]


def _refusal_reason(root: etree._Element, _: list[etree._Element], spec: TransactionSpec) -> list[Finding]:
    if _text(root, "Entitled") == "No" and not _text(root, "Comment"):
        return [("rule 4: with Entitled=No, Comment is mandatory (the reason for refusing)", _path(root) + "/Comment")]
    return []


def _solution(root: etree._Element, solutions: list[etree._Element], spec: TransactionSpec) -> list[Finding]:
    complete = any(
        _text(s, "Title") and _text(s, "SolutionAbstract") and _has_child(s, "STATEMENT") for s in solutions
    )
    if solutions and not complete:
        return [
            (
                "rule 5: at least one SOLUTION needs a Title, a SolutionAbstract and at least one STATEMENT",
                _path(solutions[0]),
            )
        ]
    return []


def _carries_something(root: etree._Element, _: list[etree._Element], spec: TransactionSpec) -> list[Finding]:
    optional = [path for path, cell in spec.fields.items() if cell.mark is Mark.OPTIONAL]
    if any(root.find(path) is not None for path in optional):
        return []
    return [
        (
            f"rule 6: a {spec.name} must carry something: at least one of {', '.join(optional)}",
            _path(root),
        )
    ]


def _activity_date(root: etree._Element, activities: list[etree._Element], spec: TransactionSpec) -> list[Finding]:
    return [
        ("rule 7: the ACTIVITY of a transaction needs LocalDate", _path(activity) + "/LocalDate")
        for activity in activities
        if not _text(activity, "LocalDate")
    ]


RULES: dict[int, Rule] = {
    rule.number: rule
    for rule in (
        Rule(1, "A contact needs at least one PERSON with a non-empty LastName and a LOCATION of "
             "type Primary_Voice or Alternate_Voice.", _contact),
        Rule(2, "A PROBLEM sent with the Service_Request is the Problem_Submittal shortcut, so it "
             "must satisfy rule 3.", _problem_shortcut),
        Rule(3, "A PROBLEM needs at least one STATEMENT, one of which has role Title.", _problem_statement),
        Rule(4, "With Entitled = No, Comment is mandatory (the reason for refusing).", _refusal_reason),
        Rule(5, "At least one SOLUTION with Title, SolutionAbstract and at least one STATEMENT.", _solution),
        Rule(6, "A Provide_Problem_Information must carry something: at least one of its optional "
             "elements.", _carries_something),
        Rule(7, "The ACTIVITY of a transaction needs LocalDate.", _activity_date),
    )
}
