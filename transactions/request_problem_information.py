"""Request_Problem_Information (P): the provider asks the requester for more information.

GSEM folds this into Provide_Problem_Information; SIS has it separately and gsem
supports both (SPEC §4.1).
"""

from gsem.contract import M, O, Outcome, Role, State, TransactionSpec

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Request_Problem_Information",
        summary="The provider asks for information; the ball passes to the requester.",
        sender=frozenset({Role.PROVIDER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "ResponseTime": O,
            "Comment": M,
            "ACTIVITY": M(7),
            "ATTACHMENT": O,
        },
        allowed_in=frozenset({State.OPEN_PROVIDER}),
        outcomes=(Outcome(State.OPEN_REQUESTER),),
    ),
)
