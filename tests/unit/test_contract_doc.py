"""``gsem contract`` and ``docs/contract.md``: the published contract is the enforced one."""

from __future__ import annotations

import json
from pathlib import Path

from documents import run_gsem

DOC = Path(__file__).resolve().parents[2] / "docs" / "contract.md"

# SPEC §5, by hand: every acknowledgement error code and its HTTP status.
SPEC_CODES = {
    "malformed-xml": 400,
    "too-large": 413,
    "schema-violation": 422,
    "unknown-transaction": 422,
    "missing-mandatory": 422,
    "rule-violation": 422,
    "not-allowed-in-state": 409,
    "unknown-incident": 404,
    "ambiguous-incident": 409,
    "duplicate-incident": 409,
    "not-authorized": 403,
    "idempotency-conflict": 422,
    "rate-limited": 429,
    "unavailable": 503,
}

# SPEC §4.1's matrices, by hand: (transaction, senders) of every declaration.
SPEC_DECLARATIONS = {
    ("Service_Request", ("requester",)),
    ("Problem_Submittal", ("requester",)),
    ("Provide_Problem_Information", ("requester",)),
    ("Provide_Problem_Information", ("provider",)),
    ("Reject_Resolution", ("requester",)),
    ("Confirm_Close", ("requester",)),
    ("Request_Closure", ("requester",)),
    ("Query_Incident", ("provider", "requester")),
    ("Entitlement", ("provider",)),
    ("Accept_Problem", ("provider",)),
    ("Request_Problem_Information", ("provider",)),
    ("Problem_Resolution", ("provider",)),
}


def _contract(fmt: str) -> str:
    status, out, err = run_gsem("contract", "--format", fmt)
    assert status == 0, err
    return out.decode("utf-8")


def test_contract_doc_is_current() -> None:
    """docs/contract.md is exactly what `gsem contract --format markdown` prints."""
    assert DOC.read_text(encoding="utf-8") == _contract("markdown"), (
        "docs/contract.md is stale: run `make contract-doc` and commit the result"
    )


def test_json_lists_every_transaction_declaration() -> None:
    """The JSON contract lists the 12 declarations of SPEC §4.1 with their senders."""
    transactions = json.loads(_contract("json"))["transactions"]
    assert len(transactions) == 12
    assert {(t["name"], tuple(t["sender"])) for t in transactions} == SPEC_DECLARATIONS


def test_json_lists_the_seven_rules() -> None:
    """The JSON contract lists rules 1 to 7, each with its text."""
    rules = json.loads(_contract("json"))["rules"]
    assert sorted(rules, key=int) == [str(n) for n in range(1, 8)]
    assert all(text.strip() for text in rules.values())


def test_json_lists_every_code_with_its_http_status() -> None:
    """The JSON contract lists every SPEC §5 error code with SPEC's HTTP status, and no other."""
    errors = json.loads(_contract("json"))["errors"]
    assert {e["code"]: e["http_status"] for e in errors} == SPEC_CODES
    assert len(errors) == len(SPEC_CODES)


def test_json_lists_states_and_warning() -> None:
    """The JSON contract lists the 8 states, the 2 terminal ones and the ignored-element warning."""
    data = json.loads(_contract("json"))
    assert len(data["states"]) == 8
    assert sorted(data["terminal_states"]) == ["Closed", "Not_Entitled"]
    assert [w["code"] for w in data["warnings"]] == ["ignored-element"]


def test_markdown_lists_every_code_with_its_http_status() -> None:
    """The markdown contract has a row per SPEC §5 code with SPEC's HTTP status."""
    text = _contract("markdown")
    for code, status in SPEC_CODES.items():
        assert f"| `{code}` | {status} |" in text
