"""Entitlement (P): the provider says whether the requester is entitled to service."""

from gsem.contract import (
    REQUEST_CARRIED_PROBLEM,
    M,
    O,
    Outcome,
    Role,
    State,
    TransactionSpec,
    element_equals,
)

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Entitlement",
        summary="The provider confirms or refuses cover; refusing ends the incident.",
        sender=frozenset({Role.PROVIDER}),
        fields={
            "RequesterID": M,
            "ProviderID": M,
            "ProviderPriority": M,
            "ResponseTime": M,
            "Comment": O,
            "Entitled": M,
            "ACTIVITY": M(7),
            "SERVICE_PROVIDER": M(1),
        },
        rules=(4,),
        allowed_in=frozenset({State.BEGINNING}),
        outcomes=(
            Outcome(State.NOT_ENTITLED, when=(element_equals("Entitled", "No"),)),
            Outcome(State.PROBLEM_SUBMITTED, when=(element_equals("Entitled", "Yes"), REQUEST_CARRIED_PROBLEM)),
            Outcome(State.ENTITLED, when=(element_equals("Entitled", "Yes"),)),
        ),
    ),
)
