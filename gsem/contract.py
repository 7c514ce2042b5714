"""The SIS contract as declarations (SPEC §4): roles, states, field matrices, rules, transitions.

Every transaction module in ``transactions/`` declares a :class:`TransactionSpec`; the
validator, ``gsem contract`` (and so ``docs/contract.md``) and the tests all read these
declarations, so they cannot disagree.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

__all__ = [
    "Role",
    "State",
    "TERMINAL_STATES",
    "NON_TERMINAL_STATES",
    "ALL_STATES",
    "Mark",
    "FieldSpec",
    "M",
    "O",
    "Condition",
    "ALWAYS",
    "element_equals",
    "REQUEST_CARRIED_PROBLEM",
    "state_is",
    "Outcome",
    "NO_INCIDENT",
    "TransactionSpec",
    "IncidentFacts",
]


class Role(enum.Enum):
    """Who sends a transaction, relative to the incident (SPEC §2)."""

    REQUESTER = "requester"
    PROVIDER = "provider"

    @property
    def letter(self) -> str:
        """``R`` or ``P`` as in the SPEC's matrices."""
        return self.value[0].upper()


class State(enum.Enum):
    """An incident's state (SPEC §4.2)."""

    BEGINNING = "Beginning_State"
    NOT_ENTITLED = "Not_Entitled"
    ENTITLED = "Entitled"
    PROBLEM_SUBMITTED = "Problem_Submitted"
    OPEN_REQUESTER = "Open_Requester"
    OPEN_PROVIDER = "Open_Provider"
    CLOSED_PENDING_CONFIRMATION = "Closed_Pending_Confirmation"
    CLOSED = "Closed"


ALL_STATES = frozenset(State)
TERMINAL_STATES = frozenset({State.NOT_ENTITLED, State.CLOSED})
NON_TERMINAL_STATES = ALL_STATES - TERMINAL_STATES

#: "Allowed in" for a transaction that needs no incident yet (Service_Request).
NO_INCIDENT = None


class Mark(enum.Enum):
    """A cell of a field matrix."""

    MANDATORY = "M"
    OPTIONAL = "O"


@dataclass(frozen=True)
class FieldSpec:
    """One matrix cell: mandatory or optional, and the numbered rules attached to it."""

    mark: Mark
    rules: tuple[int, ...] = ()

    def __call__(self, *rules: int) -> FieldSpec:
        """``M(1)`` is M with rule 1 attached, as the SPEC writes M¹."""
        return FieldSpec(self.mark, self.rules + rules)


M = FieldSpec(Mark.MANDATORY)
O = FieldSpec(Mark.OPTIONAL)  # noqa: E741 - the SPEC's own letter


@dataclass(frozen=True)
class IncidentFacts:
    """What a transition may look at: the incident as stored before the transaction."""

    state: State | None
    problem_with_request: bool = False


@dataclass(frozen=True)
class Condition:
    """A named predicate on (document, incident) that picks an outcome."""

    description: str
    test: Callable[[etree._Element, IncidentFacts], bool] = field(compare=False)


ALWAYS = Condition("always", lambda doc, facts: True)
REQUEST_CARRIED_PROBLEM = Condition(
    "the Service_Request carried a PROBLEM", lambda doc, facts: facts.problem_with_request
)


def element_equals(name: str, value: str) -> Condition:
    """True when the document's child *name* has text *value*."""
    return Condition(f"{name}={value}", lambda doc, facts: (doc.findtext(name) or "").strip() == value)


def state_is(state: State) -> Condition:
    """True when the incident is in *state* before the transaction."""
    return Condition(f"it was {state.value}", lambda doc, facts: facts.state is state)


@dataclass(frozen=True)
class Outcome:
    """The first outcome whose every condition holds gives the new state (None: unchanged)."""

    new_state: State | None
    when: tuple[Condition, ...] = (ALWAYS,)


@dataclass(frozen=True)
class TransactionSpec:
    """Everything SPEC §4 says about one transaction sent by one role."""

    name: str
    sender: frozenset[Role]
    #: matrix: slash path below SERVICE_INCIDENT -> M/O (absent = ignored if present)
    fields: dict[str, FieldSpec]
    #: states it is allowed in; ``{NO_INCIDENT}`` for a transaction that creates one
    allowed_in: frozenset[State | None]
    outcomes: tuple[Outcome, ...]
    #: numbered rules on the whole document (rules on one element sit in ``fields``)
    rules: tuple[int, ...] = ()
    summary: str = ""

    @property
    def creates_incident(self) -> bool:
        """True for the transaction that opens an incident (Service_Request)."""
        return NO_INCIDENT in self.allowed_in

    @functools.cached_property
    def top_level_elements(self) -> frozenset[str]:
        """The root children this matrix uses (AGREEMENT for AGREEMENT/ContractID)."""
        return frozenset(path.split("/", 1)[0] for path in self.fields) | {"TransactionName"}

    def all_rules(self) -> tuple[int, ...]:
        """Every rule number this transaction checks, sorted."""
        numbers = set(self.rules)
        for spec in self.fields.values():
            numbers.update(spec.rules)
        return tuple(sorted(numbers))

    def next_state(self, doc: etree._Element, facts: IncidentFacts) -> State:
        """The incident's state after this transaction (SPEC §4.2)."""
        for outcome in self.outcomes:
            if all(condition.test(doc, facts) for condition in outcome.when):
                if outcome.new_state is None:
                    assert facts.state is not None
                    return facts.state
                return outcome.new_state
        raise AssertionError(f"{self.name}: no outcome matches")  # declarations are total
