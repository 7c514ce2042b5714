"""Confirm_Close (R): the requester accepts the resolution; the incident is closed."""

from gsem.contract import M, O, Outcome, Role, State, TransactionSpec

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Confirm_Close",
        summary="The requester confirms the resolution.",
        sender=frozenset({Role.REQUESTER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "Comment": O,
            "ACTIVITY": M(7),
        },
        allowed_in=frozenset({State.CLOSED_PENDING_CONFIRMATION}),
        outcomes=(Outcome(State.CLOSED),),
    ),
)
