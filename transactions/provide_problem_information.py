"""Provide_Problem_Information (R and P): either party adds information to the incident.

The requester's and the provider's variants have different matrices and states
(SPEC §4.1, §4.2), so this module declares both.
"""

from gsem.contract import NON_TERMINAL_STATES, M, O, Outcome, Role, State, TransactionSpec, state_is

__all__ = ["TRANSACTIONS"]

TRANSACTIONS = (
    TransactionSpec(
        name="Provide_Problem_Information",
        summary="The requester sends information; an answer to the provider's request gives it back the ball.",
        sender=frozenset({Role.REQUESTER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "RequesterSeverity": O,
            "Comment": O,
            "ACTIVITY": M(7),
            "SERVICE_REQUESTER": O(1),
            "PROBLEM": O,
            "ATTACHMENT": O,
        },
        rules=(6,),
        allowed_in=NON_TERMINAL_STATES,
        outcomes=(
            Outcome(State.OPEN_PROVIDER, when=(state_is(State.OPEN_REQUESTER),)),
            Outcome(None),
        ),
    ),
    TransactionSpec(
        name="Provide_Problem_Information",
        summary="The provider sends information about work in progress.",
        sender=frozenset({Role.PROVIDER}),
        fields={
            "RequesterID": M,
            "ProviderID": O,
            "ProviderPriority": O,
            "ResponseTime": O,
            "Comment": O,
            "ACTIVITY": M(7),
            "SERVICE_PROVIDER": O(1),
            "ATTACHMENT": O,
        },
        rules=(6,),
        allowed_in=frozenset({State.PROBLEM_SUBMITTED, State.OPEN_PROVIDER, State.OPEN_REQUESTER}),
        outcomes=(Outcome(None),),
    ),
)
