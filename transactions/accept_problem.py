"""Accept_Problem (P): the provider takes ownership of the problem."""

from gsem.contract import M, O, Outcome, Role, State, TransactionSpec

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Accept_Problem",
        summary="The provider accepts the submitted problem and starts work on it.",
        sender=frozenset({Role.PROVIDER}),
        fields={
            "RequesterID": M,
            "ProviderID": M,
            "ProviderPriority": O,
            "ResponseTime": O,
            "Comment": O,
            "ACTIVITY": M(7),
            "SERVICE_PROVIDER": O(1),
        },
        allowed_in=frozenset({State.PROBLEM_SUBMITTED}),
        outcomes=(Outcome(State.OPEN_PROVIDER),),
    ),
)
