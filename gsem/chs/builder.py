"""Documents a partner's CHS sends: transactions (SPEC §3, §4) and its acknowledgements (§5).

:func:`build_transaction` turns keyword arguments into a ``SERVICE_INCIDENT``.  Which
elements a transaction carries, and which are mandatory, is read from its declaration in
:mod:`transactions.registry` (never restated here); the result is checked with
:func:`gsem.validation.validate_document` before it is returned, so a document the hub
would refuse for its content is never sent.

:func:`ack_document` writes the ``ACKNOWLEDGEMENT`` a partner answers for a document the
hub delivered to it (push or pull mailbox, SPEC §7).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from gsem.contract import Mark, Role, State, TransactionSpec
from gsem.errors import DocumentRejected, GsemError, Problem
from gsem.ids import new_ulid
from gsem.schema import ack_schema
from gsem.validation import validate_document
from gsem.xmlsafe import parse_document
from transactions import registry

__all__ = [
    "TransactionBuildError",
    "Statement",
    "build_transaction",
    "ack_document",
    "sis_date",
    "document_facts",
]

#: A STATEMENT: ``(StatementRole, Text)``, or a bare text with the default role.
Statement = tuple[str, str] | str

#: Which builder argument fills each matrix path (the builder's vocabulary, not the matrix).
_ARGUMENT_OF = {
    "RequesterID": "requester_id",
    "ProviderID": "provider_id",
    "RequesterSeverity": "severity",
    "ProviderPriority": "priority",
    "ResponseTime": "response_time",
    "Comment": "comment",
    "Entitled": "entitled",
    "ACTIVITY": "activity",
    "AGREEMENT/ContractID": "contract_id",
    "AGREEMENT/AgreementType": "agreement_type",
    "SERVICE_REQUESTER": "person",
    "SERVICE_PROVIDER": "person",
    "PROBLEM": "problem_title / problem_statements",
    "SOLUTION": "solution",
    "ATTACHMENT": "attachments",
}
_CONTACTS = ("SERVICE_REQUESTER", "SERVICE_PROVIDER")
_STATES = frozenset(s.value for s in State)


class TransactionBuildError(GsemError):
    """The arguments cannot make a valid document; ``problems`` lists every reason."""

    def __init__(self, name: str, problems: Sequence[str]) -> None:
        self.transaction_name = name
        self.problems = list(problems)
        super().__init__(f"cannot build {name}: " + "; ".join(self.problems))


def sis_date(moment: datetime | str) -> str:
    """*moment* in the SIS form ``YYYY-MM-DD hh:mm:ss`` (UTC), with ``,local`` when it has one.

    A naive datetime is taken as UTC; an aware one in another zone also gives its local
    time after a comma (SPEC §3).  A string is passed through (the schema checks it).
    """
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        return f"{moment:%Y-%m-%d %H:%M:%S}"
    utc = moment.astimezone(UTC)
    text = f"{utc:%Y-%m-%d %H:%M:%S}"
    if moment.utcoffset():
        text += f",{moment:%Y-%m-%d %H:%M:%S}"
    return text


def _sub(parent: etree._Element, tag: str, text: Any = None) -> etree._Element:
    child = etree.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def _statement(parent: etree._Element, statement: Statement, default_role: str) -> None:
    role, text = (default_role, statement) if isinstance(statement, str) else statement
    element = _sub(parent, "STATEMENT")
    _sub(element, "StatementRole", role)
    _sub(element, "Text", text)


def _contact(tag: str, person: Sequence[str | None]) -> etree._Element:
    if isinstance(person, str) or not 2 <= len(person) <= 4:
        raise TypeError("person must be (first name, last name, phone[, email])")
    first, last, *rest = person
    phone = rest[0] if rest else None
    email = rest[1] if len(rest) > 1 else None
    contact = etree.Element(tag)
    element = _sub(contact, "PERSON")
    if first:
        _sub(element, "FirstName", first)
    _sub(element, "LastName", last or "")
    for kind, value in (("Primary_Voice", phone), ("Email", email)):
        if value:
            location = _sub(element, "LOCATION")
            _sub(location, "LocationType", kind)
            _sub(location, "LocationID", value)
    return contact


def _attachment(entry: Sequence[Any]) -> etree._Element:
    if not 3 <= len(entry) <= 4:
        raise TypeError("an attachment is (name, format, bytes or URL[, type])")
    name, media_type, data, *kind = entry
    element = etree.Element("ATTACHMENT")
    _sub(element, "AttachmentName", name)
    _sub(element, "Format", media_type)
    if kind and kind[0]:
        _sub(element, "AttachmentType", kind[0])
    if isinstance(data, str):
        _sub(element, "AttachmentReference", data)
    else:
        _sub(element, "AttachmentObject", base64.b64encode(bytes(data)).decode("ascii"))
    return element


def _elements(args: dict[str, Any]) -> dict[str, list[etree._Element]]:
    """Element(s) per matrix path for the arguments given (None: not given)."""
    given: dict[str, list[etree._Element]] = {}

    def scalar(path: str, value: Any) -> None:
        if value is not None:
            element = etree.Element(path.rsplit("/", 1)[-1])
            element.text = str(value)
            given[path] = [element]

    scalar("RequesterID", args["requester_id"])
    scalar("ProviderID", args["provider_id"])
    scalar("RequesterSeverity", args["severity"])
    scalar("ProviderPriority", args["priority"])
    if args["response_time"] is not None:
        scalar("ResponseTime", sis_date(args["response_time"]))
    scalar("Comment", args["comment"])
    entitled = args["entitled"]
    if isinstance(entitled, bool):
        entitled = "Yes" if entitled else "No"
    scalar("Entitled", entitled)
    activity = args["activity"]
    if activity is not None:
        if isinstance(activity, str):
            activity = (None, activity)
        local_date, action_log = activity
        element = etree.Element("ACTIVITY")
        _sub(element, "LocalDate", sis_date(local_date if local_date is not None else datetime.now().astimezone()))
        _sub(element, "ActionLog", action_log)
        given["ACTIVITY"] = [element]
    if args["contract_id"] is not None:
        scalar("AGREEMENT/ContractID", args["contract_id"])
    if args["agreement_type"] is not None:
        scalar("AGREEMENT/AgreementType", args["agreement_type"])
    if args["person"] is not None:
        given["person"] = [_contact("PERSON_HOLDER", args["person"])]
    if args["problem_title"] is not None or args["problem_statements"] or args["products"]:
        problem = etree.Element("PROBLEM")
        if args["problem_title"] is not None:
            _statement(problem, ("Title", args["problem_title"]), "Title")
        for statement in args["problem_statements"]:
            _statement(problem, statement, "Description")
        for product in args["products"]:
            vendor, product_name, version = product
            element = _sub(problem, "PRODUCT")
            for tag, value in (("Vendor", vendor), ("ProductName", product_name), ("Version", version)):
                if value:
                    _sub(element, tag, value)
        given["PROBLEM"] = [problem]
    if args["solution"] is not None:
        title, abstract, statements = args["solution"]
        solution = etree.Element("SOLUTION")
        _sub(solution, "Title", title)
        _sub(solution, "SolutionAbstract", abstract)
        for statement in [statements] if isinstance(statements, str) else statements:
            _statement(solution, statement, "Fix")
        given["SOLUTION"] = [solution]
    if args["attachments"]:
        given["ATTACHMENT"] = [_attachment(entry) for entry in args["attachments"]]
    return given


def _paths_for(spec: TransactionSpec, given: dict[str, list[etree._Element]]) -> dict[str, str]:
    """Given argument key -> the matrix path it fills in *spec* (``person`` picks the contact)."""
    mapping = {}
    for key in given:
        if key == "person":
            contact = next((c for c in _CONTACTS if c in spec.fields), None)
            mapping[key] = contact or "SERVICE_REQUESTER/SERVICE_PROVIDER"
        else:
            mapping[key] = key
    return mapping


def _pick_spec(name: str, role: Role | None, given: dict[str, list[etree._Element]]) -> TransactionSpec:
    specs = registry.specs_named(name)
    if not specs:
        raise TransactionBuildError(name, [f"{name!r} is not a supported transaction; supported: "
                                           f"{', '.join(registry.names())}"])
    if role is not None:
        spec = registry.find(name, role)
        if spec is None:
            senders = " or ".join(sorted(r.value for s in specs for r in s.sender))
            raise TransactionBuildError(name, [f"{name} is sent by the {senders}, not the {role.value}"])
        return spec
    # Provide_Problem_Information has a requester's and a provider's matrix: the first
    # one that carries every element given decides (the requester's when both do).
    for spec in specs:
        if all(path in spec.fields for path in _paths_for(spec, given).values()):
            return spec
    return specs[0]


def build_transaction(
    name: str,
    *,
    requester_id: str,
    provider_id: str | None = None,
    comment: str | None = None,
    activity: tuple[datetime | str | None, str] | str | None = None,
    severity: int | str | None = None,
    priority: int | str | None = None,
    response_time: datetime | str | None = None,
    entitled: bool | str | None = None,
    contract_id: str | None = None,
    agreement_type: str | None = None,
    person: Sequence[str | None] | None = None,
    problem_title: str | None = None,
    problem_statements: Iterable[Statement] = (),
    products: Iterable[tuple[str | None, str | None, str | None]] = (),
    solution: tuple[str, str, Iterable[Statement] | str] | None = None,
    attachments: Iterable[Sequence[Any]] = (),
    role: Role | str | None = None,
) -> bytes:
    """A ``SERVICE_INCIDENT`` for transaction *name*, checked as the hub would check it.

    Only the elements the transaction's matrix uses may be given; ACTIVITY, when the
    matrix has it and *activity* is None, defaults to now with the transaction's name as
    ActionLog.  *activity* is ``(local_date, action_log)`` (a date None means now) or just
    the action log.  *person* is ``(first, last, phone[, email])`` and becomes the
    SERVICE_REQUESTER or SERVICE_PROVIDER the transaction carries.  Statements are
    ``(StatementRole, Text)`` or a text (role Description in a PROBLEM, Fix in a
    SOLUTION).  *attachments* are ``(name, format, bytes or URL[, type])``.  *role*
    chooses between the requester's and the provider's Provide_Problem_Information (by
    default: the matrix that carries every element given, else the requester's).

    Raises :class:`TransactionBuildError` listing every problem when the arguments cannot
    make a document the hub accepts (state aside: that is the hub's to check).
    """
    if isinstance(role, str):
        role = Role(role.lower())
    args = dict(
        requester_id=requester_id, provider_id=provider_id, comment=comment, activity=activity,
        severity=severity, priority=priority, response_time=response_time, entitled=entitled,
        contract_id=contract_id, agreement_type=agreement_type, person=person,
        problem_title=problem_title, problem_statements=list(problem_statements),
        products=list(products), solution=solution, attachments=list(attachments),
    )
    try:
        given = _elements(args)
    except (TypeError, ValueError) as e:
        raise TransactionBuildError(name, [str(e)]) from None
    spec = _pick_spec(name, role, given)
    paths = _paths_for(spec, given)
    problems = [
        f"{spec.name} does not carry {path} (argument {_ARGUMENT_OF.get(path, key)})"
        for key, path in paths.items() if path not in spec.fields
    ]
    if "ACTIVITY" in spec.fields and "ACTIVITY" not in given and spec.fields["ACTIVITY"].mark is Mark.MANDATORY:
        given["ACTIVITY"] = _elements({**args, "activity": (None, spec.name)})["ACTIVITY"]
        paths["ACTIVITY"] = "ACTIVITY"
    filled = set(paths.values())
    problems += [
        f"{spec.name} needs {path} (argument {_ARGUMENT_OF.get(path, path)})"
        for path, cell in spec.fields.items() if cell.mark is Mark.MANDATORY and path not in filled
    ]
    if problems:
        raise TransactionBuildError(spec.name, problems)

    root = etree.Element("SERVICE_INCIDENT")
    _sub(root, "TransactionName", spec.name)
    agreement = None
    # The SPEC's element order (§3.1), so documents read like the examples.
    for key in ("RequesterID", "ProviderID", "RequesterSeverity", "ProviderPriority", "ResponseTime",
                "Comment", "Entitled", "ACTIVITY", "AGREEMENT/ContractID", "AGREEMENT/AgreementType",
                "person", "PROBLEM", "SOLUTION", "ATTACHMENT"):
        for element in given.get(key, ()):
            if key.startswith("AGREEMENT/"):
                if agreement is None:
                    agreement = _sub(root, "AGREEMENT")
                agreement.append(element)
            else:
                if key == "person":
                    element.tag = paths["person"]
                root.append(element)
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    sender = role if role is not None else sorted(spec.sender, key=lambda r: r.value, reverse=True)[0]
    inspection, _ = validate_document(data, role=sender, check_states=False)
    if inspection.errors:
        raise TransactionBuildError(spec.name, [_describe(p) for p in inspection.errors])
    return data


def _describe(problem: Problem) -> str:
    where = f" at {problem.path}" if problem.path else ""
    return f"{problem.code.code}: {problem.message}{where}"


def document_facts(document: bytes) -> dict[str, str | None]:
    """TransactionName, RequesterID, ProviderID and CurrentState of a document (None if absent).

    Parsed with the hardened parser; a document that does not parse gives all None.
    """
    facts: dict[str, str | None] = dict.fromkeys(("TransactionName", "RequesterID", "ProviderID", "CurrentState"))
    try:
        root = parse_document(document).getroot()
    except DocumentRejected:
        return facts
    for tag in facts:
        facts[tag] = (root.findtext(tag) or "").strip() or None
    return facts


ErrorEntry = tuple[str, str | None, str]


def ack_document(*, acknowledged: bool, received: bytes,
                 errors: Iterable[ErrorEntry | Problem] = ()) -> bytes:
    """Our ACKNOWLEDGEMENT of the document *received* from the hub (SPEC §5).

    *errors* are ``(code, path, message)`` or :class:`~gsem.errors.Problem`; they make
    sense only with ``acknowledged=False``.  The identifiers and CurrentState are copied
    from *received* when it parses; the digest is of its exact bytes.  The result is
    valid against ``schemas/acknowledgement.xsd``.
    """
    entries: list[ErrorEntry] = [
        (e.code.code, e.path, e.message) if isinstance(e, Problem) else (e[0], e[1], e[2]) for e in errors
    ]
    if acknowledged and entries:
        raise ValueError("an Acknowledge=Yes carries no ERROR")
    facts = document_facts(received)
    ack = etree.Element("ACKNOWLEDGEMENT")
    _sub(ack, "Acknowledge", "Yes" if acknowledged else "No")
    _sub(ack, "AckID", new_ulid())
    _sub(ack, "TransactionName", facts["TransactionName"])
    _sub(ack, "RequesterID", facts["RequesterID"])
    _sub(ack, "ProviderID", facts["ProviderID"])
    state = facts["CurrentState"]
    _sub(ack, "CurrentState", state if state in _STATES else None)
    _sub(ack, "ReceivedAt", f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}")
    _sub(ack, "Digest", hashlib.sha256(received).hexdigest()).set("algorithm", "sha-256")
    for code, path, message in entries:
        error = _sub(ack, "ERROR", message)
        error.set("code", code)
        if path:
            error.set("path", path)
    if not ack_schema().validate(etree.ElementTree(ack)):
        raise GsemError(f"acknowledgement does not match the schema: {ack_schema().error_log.last_error}")
    return etree.tostring(ack, xml_declaration=True, encoding="UTF-8", pretty_print=True)
