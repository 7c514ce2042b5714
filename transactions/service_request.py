"""Service_Request (R): raises an incident with a provider under an agreement."""

from gsem.contract import NO_INCIDENT, M, O, Outcome, Role, State, TransactionSpec

TRANSACTIONS = (
    TransactionSpec(
        name="Service_Request",
        summary="The requester raises an incident; the agreement covering its ContractID picks the provider.",
        sender=frozenset({Role.REQUESTER}),
        fields={
            "RequesterID": M,
            "RequesterSeverity": O,
            "Comment": O,
            "ACTIVITY": M(7),
            "AGREEMENT/ContractID": M,
            "AGREEMENT/AgreementType": O,
            "SERVICE_REQUESTER": M(1),
            "PROBLEM": O(2),
            "ATTACHMENT": O,
        },
        allowed_in=frozenset({NO_INCIDENT}),
        outcomes=(Outcome(State.BEGINNING),),
    ),
)


__all__ = ["TRANSACTIONS"]
