"""``gsem validate`` and ``gsem contract``: the contract, offline."""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path

from gsem.ack import Acknowledgement
from gsem.contract import Role, State
from gsem.contract_doc import contract_json, contract_markdown
from gsem.ids import new_ulid
from gsem.validation import validate_document

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``validate`` and ``contract``."""
    validate = commands.add_parser(
        "validate",
        help="check a document offline and print the acknowledgement the hub would send",
        description="Check one SERVICE_INCIDENT document against the schema, its transaction's "
        "field matrix and rules, and (with --state) the state machine. Prints the "
        "ACKNOWLEDGEMENT the hub would answer with; exits 1 when it would say No.",
    )
    validate.add_argument("file", type=Path, help="the document ('-' reads standard input)")
    validate.add_argument(
        "--as",
        dest="role",
        choices=[r.value for r in Role],
        help="who sends it (default: the transaction's sender; requester for Provide_Problem_Information)",
    )
    validate.add_argument(
        "--state",
        choices=[s.value for s in State] + ["none"],
        help="the incident's current state ('none': no incident yet); without it the state is not checked",
    )
    validate.add_argument("--strict", action="store_true", help="unknown elements are errors, not warnings")
    validate.set_defaults(func=_validate)

    contract = commands.add_parser(
        "contract",
        help="print the whole contract: matrices, rules, transitions, codes",
        description="Print the SIS contract gsem enforces, from the same declarations the validator uses.",
    )
    contract.add_argument("--format", choices=["markdown", "json"], default="markdown")
    contract.set_defaults(func=_contract)


def _validate(args: argparse.Namespace) -> int:
    try:
        data = sys.stdin.buffer.read() if str(args.file) == "-" else args.file.read_bytes()
    except OSError as e:
        print(f"gsem validate: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    role = Role(args.role) if args.role else None
    check_states = args.state is not None
    state = None if args.state in (None, "none") else State(args.state)
    inspection, spec = validate_document(data, role=role, state=state, check_states=check_states, strict=args.strict)
    if not check_states:
        print("gsem validate: state not checked (give --state to check it)", file=sys.stderr)
    next_state = None
    if inspection.accepted and spec is not None and check_states:
        from gsem.contract import IncidentFacts

        next_state = spec.next_state(inspection.root, IncidentFacts(state)).value
    ack = Acknowledgement(
        ack_id=new_ulid(),
        received_at=datetime.now(UTC),
        digest=hashlib.sha256(data).hexdigest(),
        transaction_name=inspection.transaction_name,
        requester_ref=inspection.text("RequesterID"),
        provider_ref=inspection.text("ProviderID"),
        current_state=next_state,
        errors=inspection.errors,
        warnings=inspection.warnings,
    )
    sys.stdout.buffer.write(ack.to_bytes())
    return 0 if ack.accepted else 1


def _contract(args: argparse.Namespace) -> int:
    sys.stdout.write(contract_json() if args.format == "json" else contract_markdown())
    return 0
