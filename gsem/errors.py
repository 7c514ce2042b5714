"""Acknowledgement codes (SPEC §5) and the exceptions that carry them.

The codes, not the prose, are the contract: partners program against them.  Each
code maps to one HTTP status and one exception type; every exception carries a list
of typed :class:`Problem` so that one rejection can report all it found.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "AckCode",
    "WarningCode",
    "Problem",
    "GsemError",
    "DocumentRejected",
    "ConfigError",
    "http_status_for",
]


class AckCode(enum.Enum):
    """An ``ERROR/@code`` of an ACKNOWLEDGEMENT, with its HTTP status (SPEC §5)."""

    MALFORMED_XML = ("malformed-xml", 400, "not well-formed, DOCTYPE/entities present, not UTF-8")
    TOO_LARGE = ("too-large", 413, "body or element count/depth over the limits")
    SCHEMA_VIOLATION = ("schema-violation", 422, "an element's content breaks the schema")
    UNKNOWN_TRANSACTION = ("unknown-transaction", 422, "TransactionName missing or not supported")
    MISSING_MANDATORY = ("missing-mandatory", 422, "an M element of the matrix is absent or empty")
    RULE_VIOLATION = ("rule-violation", 422, "a numbered rule of SPEC §4.1 is broken")
    NOT_ALLOWED_IN_STATE = (
        "not-allowed-in-state",
        409,
        "the transaction is not allowed in the incident's state",
    )
    UNKNOWN_INCIDENT = ("unknown-incident", 404, "no such incident for this partner")
    AMBIGUOUS_INCIDENT = (
        "ambiguous-incident",
        409,
        "RequesterID matches several incidents; send ProviderID",
    )
    DUPLICATE_INCIDENT = ("duplicate-incident", 409, "Service_Request for a RequesterID already used")
    NOT_AUTHORIZED = (
        "not-authorized",
        403,
        "wrong role, not a party to the incident, or no agreement",
    )
    IDEMPOTENCY_CONFLICT = ("idempotency-conflict", 422, "same Idempotency-Key, different body")
    RATE_LIMITED = ("rate-limited", 429, "the partner's rate limit is exceeded (Retry-After set)")
    UNAVAILABLE = ("unavailable", 503, "the store could not commit; nothing was kept, send again")

    def __init__(self, code: str, http_status: int, meaning: str) -> None:
        self.code = code
        self.http_status = http_status
        self.meaning = meaning

    @classmethod
    def from_code(cls, code: str) -> AckCode:
        """Return the member whose wire code is *code*."""
        for member in cls:
            if member.code == code:
                return member
        raise KeyError(code)


class WarningCode(enum.Enum):
    """A ``WARNING/@code`` of an ACKNOWLEDGEMENT: reported, never a reason to refuse."""

    IGNORED_ELEMENT = ("ignored-element", "an element the schema does not know, or one the "
                       "transaction's matrix ignores, or one the hub sets itself; it was dropped")

    def __init__(self, code: str, meaning: str) -> None:
        self.code = code
        self.meaning = meaning


@dataclass(frozen=True)
class Problem:
    """One error or warning about one place in a document."""

    code: AckCode | WarningCode
    message: str
    path: str | None = None

    @property
    def is_error(self) -> bool:
        """True for an error (``AckCode``), false for a warning."""
        return isinstance(self.code, AckCode)


def http_status_for(errors: list[Problem]) -> int:
    """The HTTP status of an acknowledgement with *errors* (200 when there are none).

    When several codes are present the first error's status wins: the validator reports
    problems stage by stage, so the first is the most fundamental one.
    """
    for problem in errors:
        if isinstance(problem.code, AckCode):
            return problem.code.http_status
    return 200


class GsemError(Exception):
    """Root of every error gsem raises on purpose."""


@dataclass
class DocumentRejected(GsemError):
    """A document earns an ``Acknowledge=No``; carries every problem found."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{p.code.code}: {p.message}" for p in self.problems)


class ConfigError(GsemError):
    """The configuration is wrong; the message lists every problem at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
