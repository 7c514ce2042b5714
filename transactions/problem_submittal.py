"""Problem_Submittal (R): the requester describes the problem once entitled."""

from gsem.contract import M, O, Outcome, Role, State, TransactionSpec

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Problem_Submittal",
        summary="The requester submits the problem statement to an entitled incident.",
        sender=frozenset({Role.REQUESTER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "Comment": O,
            "ACTIVITY": M(7),
            "PROBLEM": M(3),
            "ATTACHMENT": O,
        },
        allowed_in=frozenset({State.ENTITLED}),
        outcomes=(Outcome(State.PROBLEM_SUBMITTED),),
    ),
)
