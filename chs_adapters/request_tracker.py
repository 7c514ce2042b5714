"""Delivery into Request Tracker 5 through its REST 2.0 API (SPEC §7, mode ``adapter``).

A partner whose CHS is RT gets the hub's transactions as actions on RT tickets in one
queue; ``docs/request-tracker.md`` has the mapping table, field by field and state by
state.  In short:

=================================  =========================================================
delivered transaction              in RT
=================================  =========================================================
Service_Request                    a ticket: subject, body, attachments, custom fields,
                                   Priority from RequesterSeverity
Problem_Submittal                  a comment with the problem; the subject becomes its Title
Provide_Problem_Information (R)    a comment (with its attachments)
Confirm_Close, Request_Closure     a comment, status ``resolved``
Reject_Resolution                  a comment, status ``open``
Entitlement, Accept_Problem, …     (a requester whose CHS is RT) a comment; Accept_Problem
                                   also sets status ``open``
=================================  =========================================================

Every delivery also sets the ticket's ``SISState`` custom field to the incident's state
(``CurrentState``, which the hub fills in).  The adapter answers with our
ACKNOWLEDGEMENT whose ``ProviderID`` is the RT ticket id.

**Idempotent by delivery.**  The ticket of an incident is found by its ``GsemIncident``
custom field (the hub's incident id), so a Service_Request delivered again after a crash
finds the ticket it made instead of making a second one.  Every later action is a comment
whose subject starts with ``gsem delivery N:``; a delivery whose comment is already on
the ticket only has its status and custom fields set again (both idempotent).

**Failures.**  RT unreachable, timing out, answering 5xx, or refusing our credentials
(401/403: an operator fixes the configuration, the delivery should wait for that, not
die) is a :class:`TransientFailure`; any other 4xx, or a delivery for an incident that
has no ticket, is a :class:`PermanentFailure` with RT's message.

The loader builds it with :meth:`RequestTrackerAdapter.from_config` from the partner's
options (``gsem partners delivery ID --mode adapter --adapter request_tracker --option
url=http://127.0.0.1:PORT --option queue=NAME --option user=… --option password=…``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import treq
from lxml import etree
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from chs_adapters.base import (
    Acknowledged,
    DeliveryResult,
    OutboundDelivery,
    PermanentFailure,
    TransientFailure,
)
from gsem.chs.builder import ack_document
from gsem.errors import DocumentRejected
from gsem.xmlsafe import parse_document

__all__ = [
    "ADAPTER",
    "CUSTOM_FIELDS",
    "SEVERITY_TO_PRIORITY",
    "DEFAULT_TIMEOUT",
    "RequestTrackerAdapter",
    "RtClient",
    "RtError",
    "RtTicket",
    "RtTransaction",
    "delivery_marker",
    "provider_priority",
    "rt_settings",
]

#: Seconds for one request to RT unless the partner's ``timeout`` option says otherwise.
DEFAULT_TIMEOUT = 30.0

#: The ticket custom fields the adapter and the bridge use (single-value, free-form),
#: with what each holds.  :meth:`RtClient.ensure_queue` creates the missing ones.
CUSTOM_FIELDS: Mapping[str, str] = {
    "RequesterID": "the requester's incident id (SIS RequesterID)",
    "ProviderID": "the provider's incident id: on a provider's RT, this ticket's id",
    "SISState": "the incident's SIS state, as the hub last reported it",
    "GsemIncident": "the hub's incident id (finds the ticket again; do not edit)",
    "Solution": "optional: the solution sent with Problem_Resolution when the ticket is resolved",
}

#: RequesterSeverity (1 most severe) -> RT Priority (0-99, higher is more urgent).
SEVERITY_TO_PRIORITY: Mapping[int, int] = {1: 90, 2: 70, 3: 50, 4: 30, 5: 10}

#: RT statuses a delivered transaction sets (the "default" lifecycle).
_STATUS_AFTER = {
    "Confirm_Close": "resolved",
    "Request_Closure": "resolved",
    "Reject_Resolution": "open",
    "Accept_Problem": "open",
}
_MAX_ERROR_TEXT = 500


def provider_priority(rt_priority: int) -> int:
    """An RT Priority (0-99) as a SIS ProviderPriority (1 highest - 5): the inverse mapping."""
    for level, floor in ((1, 80), (2, 60), (3, 40), (4, 20)):
        if rt_priority >= floor:
            return level
    return 5


def delivery_marker(delivery_id: int) -> str:
    """The start of the subject of the comment that applied delivery *delivery_id*.

    Not ``[tag #N]``: RT reads that form in a subject as a ticket reference.
    """
    return f"gsem delivery {int(delivery_id)}:"


class RtError(Exception):
    """RT did not do what was asked; *transient* says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


@dataclass(frozen=True)
class RtTicket:
    """The parts of an RT ticket the adapter and the bridge read."""

    id: int
    queue: str  # the queue's id, as text
    subject: str
    status: str
    owner: str
    priority: int
    initial_priority: int
    custom_fields: Mapping[str, str]

    def cf(self, name: str) -> str:
        """The value of custom field *name* ('' when unset)."""
        return self.custom_fields.get(name, "")


@dataclass(frozen=True)
class RtTransaction:
    """One entry of RT's history (REST 2.0 ``/transactions``)."""

    id: int
    type: str  # Create, Correspond, Comment, Status, Set, CustomField, ...
    creator: str  # the user's Name
    object_type: str
    object_id: int
    field: str
    old_value: str
    new_value: str
    data: str  # for Comment/Correspond: the message's subject
    created: str  # ISO 8601, UTC ("2026-11-22T13:09:13Z")


def _txn(item: Mapping[str, Any]) -> RtTransaction:
    creator = item.get("Creator") or {}
    return RtTransaction(
        id=int(item["id"]),
        type=str(item.get("Type") or ""),
        creator=str(creator.get("id", "")) if isinstance(creator, dict) else str(creator),
        object_type=str(item.get("ObjectType") or ""),
        object_id=int(item.get("ObjectId") or 0),
        field=str(item.get("Field") or ""),
        old_value=str(item.get("OldValue") or ""),
        new_value=str(item.get("NewValue") or ""),
        data=str(item.get("Data") or ""),
        created=str(item.get("Created") or ""),
    )


_TXN_FIELDS = "Type,Creator,ObjectType,ObjectId,Field,OldValue,NewValue,Data,Created"
_RETRYABLE = (
    net_error.ConnectError,
    net_error.ConnectionLost,
    net_error.ConnectionClosed,
    net_error.TimeoutError,
    ResponseFailed,
    CancelledError,  # treq's timeout
)


class RtClient:
    """A small REST 2.0 client for one RT (treq on an injected reactor, persistent pool).

    Authenticates with HTTP basic auth (*user*, *password*) or an RT auth token
    (*token*, RT 5's ``Authorization: token …``).  Raises :class:`RtError` for every
    failure, transient or not.
    """

    def __init__(self, url: str, *, reactor: Any, user: str | None = None, password: str | None = None,
                 token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"RT url {url!r} must be http(s)://HOST[:PORT][/PATH]")
        self.base = url.rstrip("/") + "/REST/2.0"
        self.reactor = reactor
        self.timeout = timeout
        if token:
            self._auth = b"token " + token.encode("utf-8")
        elif user and password is not None:
            self._auth = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
        else:
            raise ValueError("RT needs 'user' and 'password', or 'token'")
        self.user = user
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.retryAutomatically = False  # a POST that creates must not be sent twice blindly
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        self._queue_ids: dict[str, str] = {}
        self._cf_ids: dict[str, dict[str, str]] = {}
        self._user_names: dict[str, str] = {}

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None) -> Any:
        """One REST call; the decoded JSON answer.  :class:`RtError` on any failure."""
        url = self.base + path
        headers = {b"Authorization": self._auth, b"Accept": b"application/json"}
        data = None
        if body is not None:
            headers[b"Content-Type"] = b"application/json; charset=utf-8"
            data = json.dumps(body).encode("utf-8")
        try:
            response = await self._http.request(method, url, data=data, headers=headers, params=params,
                                                timeout=self.timeout, reactor=self.reactor)
            content = await treq.content(response)
        except _RETRYABLE as e:
            raise RtError(f"RT at {self.base} did not answer {method} {path}: {_reason(e)}",
                          transient=True) from None
        status = response.code
        if status >= 400:
            message = _rt_message(content)
            where = f"RT answered {status} to {method} {path}: {message}"
            # 401/403: our credentials or rights; 408/429/5xx: RT's own trouble.
            transient = status in (401, 403, 408, 429) or status >= 500
            raise RtError(where, transient=transient, status=status)
        if not content.strip():
            return None
        try:
            return json.loads(content)
        except ValueError:
            raise RtError(f"RT answered {method} {path} with something that is not JSON: "
                          f"{content[:200]!r}", transient=True, status=status) from None

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._pool.closeCachedConnections()

    # -- queues and custom fields -----------------------------------------------------------

    async def queue_id(self, queue: str) -> str:
        """The id of queue *queue* (a name or an id), cached."""
        if queue not in self._queue_ids:
            answer = await self.request("GET", f"/queue/{_quote(queue)}")
            self._queue_ids[queue] = str(answer["id"])
        return self._queue_ids[queue]

    async def custom_field_ids(self, queue: str) -> dict[str, str]:
        """Custom field name -> id, for the ticket custom fields applied to *queue* (cached).

        Tickets are given their fields by id: on create, RT resolves a field *name* without
        the queue's context and takes the first field of that name in the whole RT.
        """
        if queue not in self._cf_ids:
            try:
                queue_id = await self.queue_id(queue)
            except RtError as e:
                if e.status not in (400, 404):
                    raise
                # A configuration problem an operator fixes: deliveries wait for it.
                raise RtError(f"RT has no queue {queue!r} that the hub's RT user can see ({e})",
                              transient=True, status=e.status) from None
            info = await self.request("GET", f"/queue/{queue_id}")
            ids = {str(cf.get("name")): str(cf.get("id")) for cf in info.get("TicketCustomFields") or []}
            missing = [name for name in CUSTOM_FIELDS if name not in ids]
            if missing:
                raise RtError(f"queue {queue!r} lacks the custom field(s) {', '.join(missing)} "
                              "(see docs/request-tracker.md, setting up)", transient=True)
            self._cf_ids[queue] = ids
        return self._cf_ids[queue]

    async def by_id(self, queue: str, values: Mapping[str, str]) -> dict[str, str]:
        """*values* keyed by the custom fields' ids in *queue* instead of their names."""
        ids = await self.custom_field_ids(queue)
        return {ids[name]: value for name, value in values.items()}

    async def ensure_queue(self, queue: str) -> str:
        """Create queue *queue* and the :data:`CUSTOM_FIELDS` it lacks; its id.

        Needs an RT user with the AdminQueue and AdminCustomField rights (or SuperUser).
        """
        try:
            queue_id = await self.queue_id(queue)
        except RtError as e:
            if e.status not in (400, 404):
                raise
            answer = await self.request("POST", "/queue", body={"Name": queue, "Lifecycle": "default"})
            queue_id = str(answer["id"])
            self._queue_ids[queue] = queue_id
        self._cf_ids.pop(queue, None)
        info = await self.request("GET", f"/queue/{queue_id}")
        present = {cf.get("name") for cf in info.get("TicketCustomFields") or []}
        for name, description in CUSTOM_FIELDS.items():
            if name not in present:
                # RT::CustomField->Create applies a field to the queue it is given.
                await self.request("POST", "/customfield", body={
                    "Name": name, "Type": "FreeformSingle", "Queue": queue_id,
                    "Description": description, "LookupType": "RT::Queue-RT::Ticket"})
        return queue_id

    async def user_name(self, user_id: str) -> str:
        """The Name of RT user *user_id* (history records owners by id), cached."""
        if user_id not in self._user_names:
            answer = await self.request("GET", f"/user/{_quote(str(user_id))}")
            self._user_names[user_id] = str(answer.get("Name") or user_id)
        return self._user_names[user_id]

    # -- tickets ----------------------------------------------------------------------------

    async def ticket(self, ticket_id: int) -> RtTicket:
        """Ticket *ticket_id*."""
        data = await self.request("GET", f"/ticket/{int(ticket_id)}")
        cfs = {}
        for cf in data.get("CustomFields") or []:
            values = cf.get("values") or []
            cfs[str(cf.get("name"))] = str(values[0]) if values else ""
        queue = data.get("Queue") or {}
        owner = data.get("Owner") or {}
        return RtTicket(
            id=int(data["id"]),
            queue=str(queue.get("id", "")) if isinstance(queue, dict) else str(queue),
            subject=str(data.get("Subject") or ""),
            status=str(data.get("Status") or ""),
            owner=str(owner.get("id", "")) if isinstance(owner, dict) else str(owner),
            priority=_int(data.get("Priority")),
            initial_priority=_int(data.get("InitialPriority")),
            custom_fields=cfs,
        )

    async def find_ticket(self, queue: str, field: str, value: str) -> int | None:
        """The lowest id of a ticket in *queue* whose custom field *field* is *value*."""
        field_id = (await self.custom_field_ids(queue))[field]
        query = f"Queue = '{_sql(queue)}' AND CF.{{{field_id}}} = '{_sql(value)}'"
        answer = await self.request("GET", "/tickets", params={
            "query": query, "orderby": "id", "order": "ASC", "per_page": "1", "fields": "id"})
        items = answer.get("items") or []
        return int(items[0]["id"]) if items else None

    async def create_ticket(self, fields: Mapping[str, Any]) -> int:
        """A new ticket (REST 2.0 ``POST /ticket``); its id."""
        answer = await self.request("POST", "/ticket", body=dict(fields))
        return int(answer["id"])

    async def update_ticket(self, ticket_id: int, fields: Mapping[str, Any]) -> list[str]:
        """``PUT /ticket/N``: RT's messages, one per change it made (or refused)."""
        answer = await self.request("PUT", f"/ticket/{int(ticket_id)}", body=dict(fields))
        return [str(m) for m in answer] if isinstance(answer, list) else []

    async def add_message(self, ticket_id: int, kind: str, fields: Mapping[str, Any]) -> list[str]:
        """A comment or a correspondence (*kind*), with whatever else REST 2.0 takes with it."""
        if kind not in ("comment", "correspond"):
            raise ValueError(f"kind must be comment or correspond, not {kind!r}")
        answer = await self.request("POST", f"/ticket/{int(ticket_id)}/{kind}", body=dict(fields))
        return [str(m) for m in answer] if isinstance(answer, list) else []

    # -- history ------------------------------------------------------------------------------

    async def transactions(self, conditions: list[dict[str, Any]], *, per_page: int = 100,
                           order: str = "ASC") -> list[RtTransaction]:
        """Transactions matching REST 2.0 search *conditions*, by id."""
        answer = await self.request("POST", "/transactions", body=conditions, params={
            "fields": _TXN_FIELDS, "orderby": "id", "order": order, "per_page": str(per_page)})
        return [_txn(item) for item in answer.get("items") or []]

    async def transactions_after(self, cursor: int, *, limit: int = 100) -> list[RtTransaction]:
        """Ticket transactions with an id above *cursor*, oldest first, at most *limit*."""
        return await self.transactions([
            {"field": "id", "operator": ">", "value": int(cursor)},
            {"field": "ObjectType", "value": "RT::Ticket"},
        ], per_page=limit)

    async def last_transaction_id(self) -> int:
        """The highest transaction id RT has (0 when it has none)."""
        found = await self.transactions([{"field": "id", "operator": ">", "value": 0}],
                                         per_page=1, order="DESC")
        return found[0].id if found else 0

    async def has_marker(self, ticket_id: int, marker: str) -> bool:
        """Whether a comment or correspondence of the ticket has a subject starting with *marker*."""
        found = await self.transactions([
            {"field": "ObjectType", "value": "RT::Ticket"},
            {"field": "ObjectId", "value": int(ticket_id)},
            {"field": "Data", "operator": "LIKE", "value": marker},
        ], per_page=10)
        return any(t.data.startswith(marker) for t in found)

    async def ticket_history(self, ticket_id: int) -> list[RtTransaction]:
        """Every transaction of the ticket, oldest first."""
        found = []
        page = 1
        while True:
            answer = await self.request("GET", f"/ticket/{int(ticket_id)}/history", params={
                "fields": _TXN_FIELDS, "per_page": "100", "page": str(page)})
            found.extend(_txn(item) for item in answer.get("items") or [])
            if page >= int(float(answer.get("pages") or 1)):
                return found
            page += 1

    async def transaction_parts(self, transaction_id: int) -> list[dict[str, Any]]:
        """The MIME parts of a transaction: ``ContentType``, ``Filename``, ``Content``."""
        answer = await self.request("GET", f"/transaction/{int(transaction_id)}/attachments", params={
            "fields": "ContentType,Filename,Content", "per_page": "100"})
        return list(answer.get("items") or [])


def _reason(e: BaseException) -> str:
    if isinstance(e, ResponseFailed):
        return "; ".join(f.getErrorMessage() for f in e.reasons) or "no response"
    if isinstance(e, CancelledError):
        return "timed out"
    return str(e) or type(e).__name__


def _rt_message(content: bytes) -> str:
    try:
        data = json.loads(content)
    except ValueError:
        return content[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip() or "(no message)"
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])[:_MAX_ERROR_TEXT]
    return json.dumps(data)[:_MAX_ERROR_TEXT]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _sql(value: str) -> str:
    """A TicketSQL string literal's content."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _quote(value: str) -> str:
    return quote(value, safe="")


# -- documents -> RT text -------------------------------------------------------------------

def _text(root: etree._Element, path: str) -> str:
    return " ".join((root.findtext(path) or "").split())


def _statements(parent: etree._Element) -> list[tuple[str, str]]:
    return [((s.findtext("StatementRole") or "").strip() or "Description", (s.findtext("Text") or "").strip())
            for s in parent.findall("STATEMENT")]


def _contact_lines(contact: etree._Element) -> list[str]:
    lines = []
    for person in contact.findall("PERSON"):
        name = " ".join(filter(None, (_text(person, "Salutation"), _text(person, "FirstName"),
                                      _text(person, "LastName"))))
        title = _text(person, "Title")
        lines.append(f"  {name}" + (f", {title}" if title else ""))
        for location in person.findall("LOCATION"):
            lines.append(f"    {_text(location, 'LocationType')}: {_text(location, 'LocationID')}")
    organization = contact.find("ORGANIZATION")
    if organization is not None:
        lines.append("  Organization: " + " / ".join(filter(None, (_text(organization, "Name"),
                                                                  _text(organization, "Business")))))
    for address in contact.findall("ADDRESS"):
        parts = [_text(address, tag) for tag in ("Address1", "Address2", "Address3", "Address4", "City",
                                                 "Region", "PostalCode", "Country")]
        lines.append(f"  Address ({_text(address, 'AddressType') or 'Primary'}): "
                     + ", ".join(p for p in parts if p))
    return lines


def _attachments(root: etree._Element) -> tuple[list[dict[str, str]], list[str]]:
    """RT attachments for every embedded ATTACHMENT; text lines for referenced ones."""
    files: list[dict[str, str]] = []
    references: list[str] = []
    for attachment in root.findall("ATTACHMENT") + root.findall("PROBLEM/ATTACHMENT"):
        name = _text(attachment, "AttachmentName") or "attachment"
        media_type = _text(attachment, "Format") or "application/octet-stream"
        if "/" not in media_type:
            media_type = "application/octet-stream"
        kind = _text(attachment, "AttachmentType")
        obj = "".join((attachment.findtext("AttachmentObject") or "").split())
        if obj:
            files.append({"FileName": name, "FileType": media_type, "FileContent": obj})
        else:
            reference = _text(attachment, "AttachmentReference")
            # Never fetched: the hub does not reach out to URLs partners name.
            references.append(f"  {name} ({media_type}{', ' + kind if kind else ''}): {reference}")
    return files, references


def _body(root: etree._Element, name: str, requester_ref: str) -> str:
    """The text of the ticket or comment for one delivered document."""
    lines = [f"{name} for incident {requester_ref}, passed on by the gsem hub."]
    scalars = [("Comment", "Comment"), ("RequesterSeverity", "Requester severity"),
               ("ProviderPriority", "Provider priority"), ("ResponseTime", "Response time"),
               ("Entitled", "Entitled"), ("WorkflowStatus", "Workflow status")]
    for tag, label in scalars:
        value = (root.findtext(tag) or "").strip()
        if value:
            lines.append(f"{label}: {value}" if tag != "Comment" else f"\n{value}\n")
    agreement = root.find("AGREEMENT")
    if agreement is not None:
        contract = _text(agreement, "ContractID")
        kind = _text(agreement, "AgreementType")
        lines.append(f"Contract: {contract}" + (f" ({kind})" if kind else ""))
    problem = root.find("PROBLEM")
    if problem is not None:
        lines.append("\nProblem:")
        lines.extend(f"  {role}: {text}" for role, text in _statements(problem))
        for product in problem.findall("PRODUCT"):
            lines.append("  Product: " + " ".join(filter(None, (_text(product, "Vendor"),
                                                               _text(product, "ProductName"),
                                                               _text(product, "Version")))))
    for solution in root.findall("SOLUTION"):
        kind = _text(solution, "SolutionType")
        lines.append(f"\nSolution: {_text(solution, 'Title')}" + (f" ({kind})" if kind else ""))
        lines.append(f"  {_text(solution, 'SolutionAbstract')}")
        lines.extend(f"  {role}: {text}" for role, text in _statements(solution))
    for tag, label in (("SERVICE_REQUESTER", "Requester contact"), ("SERVICE_PROVIDER", "Provider contact")):
        contact = root.find(tag)
        if contact is not None:
            lines.append(f"\n{label}:")
            lines.extend(_contact_lines(contact))
    _, references = _attachments(root)
    if references:
        lines.append("\nAttachments by reference (not fetched):")
        lines.extend(references)
    for activity in root.findall("ACTIVITY"):
        lines.append(f"\nActivity {_text(activity, 'LocalDate')}: {_text(activity, 'ActionLog')}")
        parameters = _text(activity, "ParameterList")
        if parameters:
            lines.append(f"  Parameters: {parameters}")
    return "\n".join(lines).strip() + "\n"


def _subject(root: etree._Element, requester_ref: str) -> str:
    problem = root.find("PROBLEM")
    if problem is not None:
        for role, text in _statements(problem):
            if role == "Title" and text:
                return " ".join(text.split())[:200]
    comment = _text(root, "Comment")
    if comment:
        return comment[:200]
    return f"Service incident {requester_ref}"


def rt_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """The RT connection settings from adapter or bridge *options*; ValueError lists every problem."""
    problems = []
    url = str(options.get("url") or "")
    if not url:
        problems.append("'url' is required (RT's base URL, e.g. http://127.0.0.1:8080)")
    elif urlsplit(url).scheme not in ("http", "https"):
        problems.append(f"'url' {url!r} must start with http:// or https://")
    if not options.get("queue"):
        problems.append("'queue' is required (the RT queue tickets go to)")
    token = options.get("token")
    user, password = options.get("user"), options.get("password")
    if not token and not (user and password):
        problems.append("give 'user' and 'password', or 'token'")
    try:
        timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
        if timeout <= 0:
            raise ValueError
    except (TypeError, ValueError):
        problems.append(f"'timeout' must be a positive number of seconds, not {options.get('timeout')!r}")
        timeout = DEFAULT_TIMEOUT
    if problems:
        raise ValueError("request_tracker: " + "; ".join(problems))
    return {"url": url, "queue": str(options["queue"]), "user": user and str(user),
            "password": password and str(password), "token": token and str(token), "timeout": timeout}


class RequestTrackerAdapter:
    """Hands deliveries to one RT queue (see the module docstring for the mapping)."""

    def __init__(self, config: Mapping[str, Any], *, reactor: Any) -> None:
        settings = rt_settings(config)
        self.queue = settings["queue"]
        self.rt = RtClient(settings["url"], reactor=reactor, user=settings["user"],
                           password=settings["password"], token=settings["token"],
                           timeout=settings["timeout"])

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any) -> RequestTrackerAdapter:
        """The loader's way in: the partner's options and the hub's context (its reactor)."""
        return cls(options, reactor=context.reactor)

    async def deliver(self, delivery: OutboundDelivery) -> DeliveryResult:
        """Apply *delivery* to its ticket once; our ACKNOWLEDGEMENT carries the ticket id."""
        try:
            root = parse_document(delivery.document).getroot()
        except DocumentRejected as e:
            return PermanentFailure(f"the delivered document does not parse: {e}")
        name = (root.findtext("TransactionName") or "").strip() or delivery.transaction_name
        try:
            ticket_id = await self._apply(delivery, root, name)
        except RtError as e:
            if e.transient:
                return TransientFailure(str(e))
            return PermanentFailure(str(e), http_status=e.status)
        return Acknowledged(receiver_ack=_ack(delivery.document, ticket_id))

    async def close(self) -> None:
        """Close RT connections."""
        await self.rt.close()

    async def _apply(self, delivery: OutboundDelivery, root: etree._Element, name: str) -> int:
        incident = str(delivery.incident_id)
        requester_ref = (root.findtext("RequesterID") or "").strip() or delivery.requester_ref
        state = (root.findtext("CurrentState") or "").strip()
        ticket_id = await self.rt.find_ticket(self.queue, "GsemIncident", incident)
        if name == "Service_Request":
            if ticket_id is None:
                ticket_id = await self._create(root, requester_ref, incident, state)
            else:
                # Delivered again (a crash before the hub heard from us): the same ticket.
                await self._set_fields(ticket_id, {"ProviderID": str(ticket_id)})
            return ticket_id
        if ticket_id is None:
            raise RtError(f"queue {self.queue!r} has no ticket for incident {incident} "
                          f"(RequesterID {requester_ref}): its Service_Request never reached RT",
                          transient=False)
        custom_fields = {"SISState": state} if state else {}
        provider_id = (root.findtext("ProviderID") or "").strip()
        if name == "Entitlement" and provider_id:
            custom_fields["ProviderID"] = provider_id  # a requester's RT: the provider's id
        status = _STATUS_AFTER.get(name)
        marker = delivery_marker(delivery.delivery_id)
        if await self.rt.has_marker(ticket_id, marker):
            # Applied before the crash or timeout that made the hub send it again.
            changes: dict[str, Any] = {}
            if custom_fields:
                changes["CustomFields"] = await self.rt.by_id(self.queue, custom_fields)
            if status:
                changes["Status"] = status
            if changes:
                await self.rt.update_ticket(ticket_id, changes)
            return ticket_id
        if name == "Problem_Submittal" and root.find("PROBLEM") is not None:
            # Before the comment that carries the new SISState, so that whoever sees the
            # new state sees the new title too; setting it again on a redelivery is harmless.
            await self.rt.update_ticket(ticket_id, {"Subject": _subject(root, requester_ref)})
        files, _ = _attachments(root)
        message: dict[str, Any] = {
            "Subject": f"{marker} {name}",
            "Content": _body(root, name, requester_ref),
            "ContentType": "text/plain",
        }
        if custom_fields:
            message["CustomFields"] = await self.rt.by_id(self.queue, custom_fields)
        if status:
            message["Status"] = status
        if files:
            message["Attachments"] = files
        said = await self.rt.add_message(ticket_id, "comment", message)
        if status:
            # REST 2.0 answers 201 even when RT refuses the status (its lifecycle); check.
            now = (await self.rt.ticket(ticket_id)).status
            if now != status:
                raise RtError(f"RT did not set ticket {ticket_id} to {status!r} for {name} (it is {now!r}): "
                              + "; ".join(said), transient=False)
        return ticket_id

    async def _create(self, root: etree._Element, requester_ref: str, incident: str, state: str) -> int:
        files, _ = _attachments(root)
        fields: dict[str, Any] = {
            "Queue": self.queue,
            "Subject": _subject(root, requester_ref),
            "Content": _body(root, "Service_Request", requester_ref),
            "ContentType": "text/plain",
            "CustomFields": await self.rt.by_id(self.queue, {
                "RequesterID": requester_ref, "GsemIncident": incident, "SISState": state or "Beginning_State"}),
        }
        severity = (root.findtext("RequesterSeverity") or "").strip()
        if severity.isdigit() and int(severity) in SEVERITY_TO_PRIORITY:
            fields["Priority"] = fields["InitialPriority"] = SEVERITY_TO_PRIORITY[int(severity)]
        if files:
            fields["Attachments"] = files
        ticket_id = await self.rt.create_ticket(fields)
        # RT creates the ticket even when it refuses a custom field value (a validation
        # pattern, a right): without GsemIncident the ticket could not be found again.
        wanted = {"RequesterID": requester_ref, "GsemIncident": incident}
        kept = (await self.rt.ticket(ticket_id)).custom_fields
        refused = [f"{name}={value!r}" for name, value in wanted.items() if kept.get(name) != value]
        if refused:
            await self.rt.update_ticket(ticket_id, {"Status": "deleted"})
            raise RtError(f"RT made ticket {ticket_id} but did not keep custom field {', '.join(refused)} "
                          "(a validation pattern or missing rights on the field?); the ticket was "
                          "deleted", transient=False)
        await self._set_fields(ticket_id, {"ProviderID": str(ticket_id)})
        return ticket_id

    async def _set_fields(self, ticket_id: int, values: Mapping[str, str]) -> None:
        await self.rt.update_ticket(ticket_id, {"CustomFields": await self.rt.by_id(self.queue, values)})


def _ack(received: bytes, ticket_id: int) -> bytes:
    """Our Acknowledge=Yes for *received*, with ProviderID = the RT ticket id."""
    ack = etree.fromstring(ack_document(acknowledged=True, received=received))
    element = ack.find("ProviderID")
    if element is None:
        element = etree.SubElement(ack, "ProviderID")
    if not (element.text or "").strip():
        element.text = str(ticket_id)
    return etree.tostring(ack, xml_declaration=True, encoding="UTF-8", pretty_print=True)


#: What ``chs_adapters.loader`` builds for ``--adapter request_tracker``.
ADAPTER = RequestTrackerAdapter
