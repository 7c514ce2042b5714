"""Request_Closure (R): the requester closes the incident in any open state."""

from gsem.contract import NON_TERMINAL_STATES, M, O, Outcome, Role, State, TransactionSpec

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Request_Closure",
        summary="The requester closes the incident, saying why.",
        sender=frozenset({Role.REQUESTER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "Comment": M,
            "ACTIVITY": M(7),
        },
        allowed_in=NON_TERMINAL_STATES,
        outcomes=(Outcome(State.CLOSED),),
    ),
)
