"""Query_Incident (R, P): either party reads the incident; nothing changes, nothing is forwarded."""

from gsem.contract import ALL_STATES, M, O, Outcome, Role, TransactionSpec

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Query_Incident",
        summary="Either party asks for the incident; the acknowledgement embeds it.",
        sender=frozenset({Role.REQUESTER, Role.PROVIDER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "ACTIVITY": O(7),
        },
        allowed_in=ALL_STATES,
        outcomes=(Outcome(None),),
    ),
)
