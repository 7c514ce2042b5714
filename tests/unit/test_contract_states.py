"""States and transitions (SPEC §4.2), roles (SPEC §2) and the example lifecycle.

The expected table below is written out from SPEC §4.2 by hand, independently of the
declarations in ``transactions/``: that is what makes these tests able to fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from documents import build, errors, set_text, to_bytes

from gsem.contract import IncidentFacts, Role, State
from gsem.validation import validate_document
from transactions import registry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"

STATES = [
    "Beginning_State",
    "Not_Entitled",
    "Entitled",
    "Problem_Submitted",
    "Open_Requester",
    "Open_Provider",
    "Closed_Pending_Confirmation",
    "Closed",
]
NON_TERMINAL = [s for s in STATES if s not in ("Not_Entitled", "Closed")]
NO_INCIDENT = "no incident"

# SPEC §4.2, by hand: (transaction, sending role) -> {state before: state after}.
# A state missing from the inner dict is one the transaction is not allowed in.
EXPECTED: dict[tuple[str, str], dict[str, str]] = {
    ("Service_Request", "R"): {NO_INCIDENT: "Beginning_State"},
    # Entitled=Yes, no PROBLEM with the request; the other outcomes have their own test.
    ("Entitlement", "P"): {"Beginning_State": "Entitled"},
    ("Problem_Submittal", "R"): {"Entitled": "Problem_Submitted"},
    ("Accept_Problem", "P"): {"Problem_Submitted": "Open_Provider"},
    ("Request_Problem_Information", "P"): {"Open_Provider": "Open_Requester"},
    ("Provide_Problem_Information", "R"): {
        **{s: s for s in NON_TERMINAL},
        "Open_Requester": "Open_Provider",
    },
    ("Provide_Problem_Information", "P"): {
        "Problem_Submitted": "Problem_Submitted",
        "Open_Provider": "Open_Provider",
        "Open_Requester": "Open_Requester",
    },
    ("Problem_Resolution", "P"): {
        "Open_Provider": "Closed_Pending_Confirmation",
        "Open_Requester": "Closed_Pending_Confirmation",
    },
    ("Confirm_Close", "R"): {"Closed_Pending_Confirmation": "Closed"},
    ("Reject_Resolution", "R"): {"Closed_Pending_Confirmation": "Open_Provider"},
    ("Request_Closure", "R"): {s: "Closed" for s in NON_TERMINAL},
    ("Query_Incident", "R"): {s: s for s in STATES},
    ("Query_Incident", "P"): {s: s for s in STATES},
}

ROLES = {"R": Role.REQUESTER, "P": Role.PROVIDER}


def _state(name: str) -> State | None:
    return None if name == NO_INCIDENT else State(name)


def _submit(
    name: str,
    letter: str,
    before: str,
    *,
    entitled: str = "Yes",
    problem_with_request: bool = False,
):
    """Validate a complete document of *name* sent by *letter* to an incident in *before*."""
    role = ROLES[letter]
    spec = registry.find(name, role)
    root = build(spec)
    if "Entitled" in spec.fields:
        set_text(root, "Entitled", entitled)
    inspection, checked = validate_document(
        to_bytes(root), role=role, state=_state(before), problem_with_request=problem_with_request
    )
    after = None
    if inspection.accepted:
        after = checked.next_state(
            inspection.root, IncidentFacts(_state(before), problem_with_request)
        ).value
    return inspection, after


def test_expected_table_covers_every_declaration() -> None:
    """The hand-written table names exactly the (transaction, sender) pairs that are declared."""
    declared = {(spec.name, role.letter) for spec in registry.all_specs() for role in spec.sender}
    assert declared == set(EXPECTED)


def _pairs() -> list:
    return [
        pytest.param(name, letter, before, id=f"{name}({letter})-{before}")
        for (name, letter) in EXPECTED
        for before in [NO_INCIDENT, *STATES]
    ]


@pytest.mark.parametrize(("name", "letter", "before"), _pairs())
def test_transaction_in_state(name, letter, before) -> None:
    """Allowed pairs are accepted and lead to SPEC §4.2's state; the others get the SPEC's code."""
    inspection, after = _submit(name, letter, before)
    allowed = EXPECTED[(name, letter)]
    if before in allowed:
        assert errors(inspection) == []
        assert after == allowed[before]
    elif name == "Service_Request":
        assert errors(inspection) == [("duplicate-incident", "/SERVICE_INCIDENT/RequesterID")]
    elif before == NO_INCIDENT:
        assert errors(inspection) == [("unknown-incident", "/SERVICE_INCIDENT/RequesterID")]
    else:
        assert errors(inspection) == [("not-allowed-in-state", "/SERVICE_INCIDENT/TransactionName")]


@pytest.mark.parametrize(
    ("entitled", "problem_with_request", "after"),
    [
        ("Yes", False, "Entitled"),
        ("Yes", True, "Problem_Submitted"),
        ("No", False, "Not_Entitled"),
        ("No", True, "Not_Entitled"),
    ],
)
def test_entitlement_outcomes(entitled, problem_with_request, after) -> None:
    """Entitlement: Yes gives Entitled, or Problem_Submitted after a request with a PROBLEM; No gives Not_Entitled."""
    inspection, new_state = _submit(
        "Entitlement",
        "P",
        "Beginning_State",
        entitled=entitled,
        problem_with_request=problem_with_request,
    )
    assert errors(inspection) == []
    assert new_state == after


@pytest.mark.parametrize(
    ("name", "letter"),
    [
        (name, letter)
        for (name, letter) in EXPECTED
        if (name, "R" if letter == "P" else "P") not in EXPECTED
    ],
)
def test_wrong_role_is_not_authorized(name, letter) -> None:
    """A transaction sent by the other party is not-authorized, whatever the state."""
    other = Role.PROVIDER if letter == "R" else Role.REQUESTER
    spec = registry.find(name, ROLES[letter])
    before = next(iter(EXPECTED[(name, letter)]))
    inspection, checked = validate_document(to_bytes(build(spec)), role=other, state=_state(before))
    assert errors(inspection) == [("not-authorized", "/SERVICE_INCIDENT/TransactionName")]
    assert checked is None


def test_provide_problem_information_takes_the_senders_matrix() -> None:
    """Provide_Problem_Information from the provider uses the provider's matrix (ProviderPriority is used)."""
    spec = registry.find("Provide_Problem_Information", Role.PROVIDER)
    data = to_bytes(build(spec))
    as_provider, _ = validate_document(data, role=Role.PROVIDER, state=State.OPEN_PROVIDER)
    as_requester, _ = validate_document(data, role=Role.REQUESTER, state=State.OPEN_PROVIDER)
    assert errors(as_provider) == [] and as_provider.warnings == []
    assert ("ignored-element", "/SERVICE_INCIDENT/ProviderPriority") in [
        (w.code.code, w.path) for w in as_requester.warnings
    ]


# The README's table: who sends each example and the state after it.
LIFECYCLE = [
    ("01-service-request.xml", Role.REQUESTER, "Beginning_State"),
    ("02-entitlement.xml", Role.PROVIDER, "Entitled"),
    ("03-problem-submittal.xml", Role.REQUESTER, "Problem_Submitted"),
    ("04-accept-problem.xml", Role.PROVIDER, "Open_Provider"),
    ("05-request-problem-information.xml", Role.PROVIDER, "Open_Requester"),
    ("06-provide-problem-information.xml", Role.REQUESTER, "Open_Provider"),
    ("07-problem-resolution.xml", Role.PROVIDER, "Closed_Pending_Confirmation"),
    ("08-confirm-close.xml", Role.REQUESTER, "Closed"),
    ("09-query-incident.xml", Role.REQUESTER, "Closed"),
]


def test_lifecycle_examples_are_accepted_in_order() -> None:
    """The nine example documents are accepted in order, by the right party, and end Closed."""
    assert sorted(p.name for p in FIXTURES.glob("*.xml")) == [f for f, _, _ in LIFECYCLE]
    state: State | None = None
    problem_with_request = False
    seen = []
    for filename, role, _ in LIFECYCLE:
        inspection, spec = validate_document(
            (FIXTURES / filename).read_bytes(),
            role=role,
            state=state,
            problem_with_request=problem_with_request,
        )
        assert (filename, errors(inspection), inspection.warnings) == (filename, [], [])
        if spec.creates_incident:
            problem_with_request = inspection.root.find("PROBLEM") is not None
        state = spec.next_state(inspection.root, IncidentFacts(state, problem_with_request))
        seen.append(state.value)
    assert seen == [after for _, _, after in LIFECYCLE]
    assert state is State.CLOSED
