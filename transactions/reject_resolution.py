"""Reject_Resolution (R): the requester refuses the resolution; work goes on."""

from gsem.contract import M, O, Outcome, Role, State, TransactionSpec

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Reject_Resolution",
        summary="The requester rejects the resolution, saying why; the provider owns it again.",
        sender=frozenset({Role.REQUESTER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "Comment": M,
            "ACTIVITY": M(7),
            "ATTACHMENT": O,
        },
        allowed_in=frozenset({State.CLOSED_PENDING_CONFIRMATION}),
        outcomes=(Outcome(State.OPEN_PROVIDER),),
    ),
)
