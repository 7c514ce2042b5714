"""Problem_Resolution (P): the provider proposes a solution and asks to close."""

from gsem.contract import M, O, Outcome, Role, State, TransactionSpec

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Problem_Resolution",
        summary="The provider resolves the problem; the requester must confirm or reject.",
        sender=frozenset({Role.PROVIDER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "Comment": O,
            "ACTIVITY": M(7),
            "SOLUTION": M(5),
            "ATTACHMENT": O,
        },
        allowed_in=frozenset({State.OPEN_PROVIDER, State.OPEN_REQUESTER}),
        outcomes=(Outcome(State.CLOSED_PENDING_CONFIRMATION),),
    ),
)
