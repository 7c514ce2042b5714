"""From Request Tracker to the hub: what an RT agent does becomes the provider's SIS transactions.

:class:`RequestTrackerBridge` polls RT's history (REST 2.0 ``/transactions``) for the
ticket transactions after a cursor, turns the actions of people on tickets of its queue
into SIS transactions, and sends them to the hub with the provider partner's client
certificate (:class:`gsem.chs.client.HubClient`).  ``docs/request-tracker.md`` has the
mapping table; in short:

======================================  ==============================================
in RT                                   sent to the hub
======================================  ==============================================
the adapter creates a ticket            Entitlement, Entitled=Yes, ProviderID = ticket id
an agent takes the ticket (owner set,   Accept_Problem (in Problem_Submitted)
or status ``open``)
an agent replies (correspondence)       Provide_Problem_Information
a reply carrying the need-info marker   Request_Problem_Information (marker removed)
an agent resolves the ticket            Problem_Resolution (the ``Solution`` custom
                                        field, else the last reply or comment)
======================================  ==============================================

RT has no "accept" of its own: it opens a ticket on the first reply.  So, like RT, the
first reply, need-info request or resolution of a ticket still in ``Problem_Submitted``
sends Accept_Problem first.  Comments are internal in RT and are not sent.

**Its own echo.**  What the hub's RT user (the adapter's ``user``, and any listed in
``own_users``) and ``RT_System`` (RT's scrips) did is never sent back: only the ticket's
creation by the hub's user is used, to send the Entitlement.

**Exactly once.**  The cursor (the highest RT transaction id handled) is kept in a small
JSON file replaced atomically after every transaction; a restart continues after it.
Each SIS transaction goes with ``Idempotency-Key: rt-<RT transaction id>-<name>``, and
its document is made only from that RT transaction (dates included), so a crash between
sending and saving the cursor sends the same bytes with the same key again, which the
hub answers as a duplicate instead of applying twice (SPEC §6).  When the hub cannot be
reached the poll stops without moving the cursor and the next one tries again.

Run it as ``python -m chs_adapters.rt_bridge --config bridge.toml`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tomllib
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from chs_adapters.request_tracker import (
    RtClient,
    RtError,
    RtTicket,
    RtTransaction,
    provider_priority,
    rt_settings,
)
from gsem.chs.builder import TransactionBuildError, build_transaction
from gsem.chs.client import HubAnswer, HubClient, HubConnectionError, HubProtocolError

__all__ = [
    "BridgeSettings",
    "CursorFile",
    "RequestTrackerBridge",
    "SentTransaction",
    "BridgeStopped",
    "main",
]

#: RT's own user for what its scrips do (e.g. opening a ticket on a reply).
RT_SYSTEM = "RT_System"
#: RT's user id of "Nobody" is not fixed; its name is.
NOBODY = "Nobody"
_COMMENT_LIMIT = 4000
_ATTACHMENT_LIMIT = 512 * 1024
#: hub answers that mean "nothing was kept, send again later" (SPEC §5)
_TRY_AGAIN = {"unavailable", "rate-limited"}


class BridgeStopped(Exception):
    """The poll stopped before the end (hub or RT unreachable); the cursor did not pass it."""


@dataclass(frozen=True)
class BridgeSettings:
    """What the bridge needs: RT, the hub, the cursor file, the provider's contact."""

    rt_url: str
    queue: str
    hub_url: str
    cert: Path
    key: Path
    ca: Path
    state_file: Path
    contact_last_name: str
    contact_phone: str
    rt_user: str | None = None
    rt_password: str | None = None
    rt_token: str | None = None
    contact_first_name: str | None = None
    contact_email: str | None = None
    own_users: frozenset[str] = frozenset()
    need_info_marker: str = "[need-info]"
    response_hours: float = 4.0
    poll_interval: float = 5.0
    timeout: float = 30.0
    #: where a new cursor starts: "now" (RT's newest transaction) or "beginning"
    start: str = "now"

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], *, base: Path | None = None) -> BridgeSettings:
        """Settings from a flat mapping (a TOML file's keys); ValueError lists every problem.

        Relative paths are taken from *base* (the configuration file's directory).
        """
        problems = []
        try:
            rt = rt_settings({"url": options.get("rt_url"), "queue": options.get("queue"),
                              "user": options.get("rt_user"), "password": options.get("rt_password"),
                              "token": options.get("rt_token"), "timeout": options.get("timeout", 30)})
        except ValueError as e:
            problems.append(str(e).removeprefix("request_tracker: ").replace("'url'", "'rt_url'")
                            .replace("'user'", "'rt_user'").replace("'password'", "'rt_password'")
                            .replace("'token'", "'rt_token'"))
            rt = {}

        def path(key: str) -> Path:
            value = options.get(key)
            if not value:
                problems.append(f"'{key}' is required")
                return Path()
            p = Path(str(value))
            return p if p.is_absolute() or base is None else base / p

        hub_url = str(options.get("hub_url") or "")
        if not hub_url.startswith("https://"):
            problems.append("'hub_url' is required: the hub's https://HOST:PORT")
        files = {key: path(key) for key in ("cert", "key", "ca", "state_file")}
        for key in ("contact_last_name", "contact_phone"):
            if not options.get(key):
                problems.append(f"'{key}' is required (the SERVICE_PROVIDER an Entitlement must carry)")
        start = str(options.get("start", "now"))
        if start not in ("now", "beginning"):
            problems.append(f"'start' must be 'now' or 'beginning', not {start!r}")
        numbers = {}
        for key, default in (("response_hours", 4.0), ("poll_interval", 5.0)):
            try:
                numbers[key] = float(options.get(key, default))
            except (TypeError, ValueError):
                problems.append(f"'{key}' must be a number")
        own = options.get("own_users", ())
        if isinstance(own, str):
            own = [u.strip() for u in own.split(",") if u.strip()]
        if problems:
            raise ValueError("rt_bridge: " + "; ".join(problems))
        return cls(
            rt_url=rt["url"], queue=rt["queue"], rt_user=rt["user"], rt_password=rt["password"],
            rt_token=rt["token"], timeout=rt["timeout"], hub_url=hub_url, **files,
            contact_last_name=str(options["contact_last_name"]), contact_phone=str(options["contact_phone"]),
            contact_first_name=options.get("contact_first_name"), contact_email=options.get("contact_email"),
            own_users=frozenset(own), need_info_marker=str(options.get("need_info_marker", "[need-info]")),
            start=start, **numbers,
        )


class CursorFile:
    """The highest RT transaction id handled, in a JSON file replaced atomically.

    Written to a temporary file in the same directory, flushed to disk, renamed over the
    old one, and the directory flushed: after a crash the file holds the old or the new
    cursor, never a torn one.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> int | None:
        """The saved cursor, or None when there is none yet."""
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path}: not a bridge state file ({e}); fix or remove it") from None
        return int(data["cursor"])

    def save(self, cursor: int) -> None:
        """Replace the saved cursor with *cursor*."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cursor-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"cursor": int(cursor)}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True)
class SentTransaction:
    """One SIS transaction the bridge sent for one RT transaction, and what the hub said."""

    rt_transaction: int
    ticket: int
    name: str
    idempotency_key: str
    accepted: bool
    duplicate: bool
    state: str | None
    errors: list[tuple[str, str | None, str]] = field(default_factory=list)


@dataclass
class _Plan:
    """The SIS transactions one RT transaction makes, in order."""

    sends: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _rt_time(created: str) -> datetime:
    """RT's ``2026-11-22T13:09:13Z`` as a naive UTC datetime (what SIS dates are)."""
    return datetime.strptime(created.rstrip("Z"), "%Y-%m-%dT%H:%M:%S")


class RequestTrackerBridge:
    """Polls one RT queue's history and sends its agents' actions to the hub (see the module).

    *hub* and *rt* may be given (tests); by default they are made from *settings* on
    *reactor*.  *log* gets one JSON line per SIS transaction sent.
    """

    def __init__(self, settings: BridgeSettings, *, reactor: Any, hub: Any = None, rt: RtClient | None = None,
                 log: IO[str] | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.rt = rt or RtClient(settings.rt_url, reactor=reactor, user=settings.rt_user,
                                 password=settings.rt_password, token=settings.rt_token,
                                 timeout=settings.timeout)
        self.hub = hub or HubClient(settings.hub_url, cert=settings.cert, key=settings.key, ca=settings.ca,
                                    reactor=reactor, timeout=settings.timeout)
        self.cursor_file = CursorFile(settings.state_file)
        self.log = log
        own = set(settings.own_users) | {RT_SYSTEM}
        if settings.rt_user:
            own.add(settings.rt_user)
        self.own_users = frozenset(own)

    async def close(self) -> None:
        """Close the connections to RT and the hub."""
        await self.rt.close()
        await self.hub.close()

    async def poll_once(self, *, batch: int = 100) -> list[SentTransaction]:
        """Handle every RT transaction after the cursor; what was sent.

        Raises :class:`BridgeStopped` when RT or the hub could not be reached; what was
        handled before that is kept (the cursor moved past it), the rest is tried again
        by the next poll.
        """
        cursor = self.cursor_file.load()
        if cursor is None:
            try:
                cursor = 0 if self.settings.start == "beginning" else await self.rt.last_transaction_id()
            except RtError as e:
                raise BridgeStopped(str(e)) from None
            self.cursor_file.save(cursor)
        sent: list[SentTransaction] = []
        try:
            queue_id = await self.rt.queue_id(self.settings.queue)
            while True:
                transactions = await self.rt.transactions_after(cursor, limit=batch)
                for txn in transactions:
                    sent.extend(await self._handle(txn, queue_id))
                    cursor = txn.id
                    self.cursor_file.save(cursor)
                if len(transactions) < batch:
                    return sent
        except RtError as e:
            raise BridgeStopped(f"RT: {e}") from None
        except (HubConnectionError, HubProtocolError) as e:
            raise BridgeStopped(f"hub: {e}") from None

    # -- one RT transaction ---------------------------------------------------------------------

    def _interesting(self, txn: RtTransaction) -> bool:
        if txn.object_type != "RT::Ticket":
            return False
        if txn.type == "Create":
            return txn.creator in self.own_users and txn.creator != RT_SYSTEM
        if txn.creator in self.own_users:
            return False
        if txn.type == "Correspond":
            return True
        if txn.type == "Status":
            return txn.new_value in ("open", "resolved")
        return txn.type == "Set" and txn.field == "Owner"

    async def _handle(self, txn: RtTransaction, queue_id: str) -> list[SentTransaction]:
        if not self._interesting(txn):
            return []
        ticket = await self.rt.ticket(txn.object_id)
        if ticket.queue != queue_id or not ticket.cf("GsemIncident") or not ticket.cf("RequesterID"):
            return []  # another queue, or a ticket the hub did not make: not an incident
        plan = await self._plan(txn, ticket)
        sent = []
        state = ticket.cf("SISState")
        for name, args in plan.sends:
            result = await self._send(txn, ticket, name, args)
            sent.append(result)
            if result.accepted and result.state and result.state != state:
                state = result.state
                await self.rt.update_ticket(ticket.id, {"CustomFields": await self.rt.by_id(
                    self.settings.queue, {"SISState": state})})
            if not result.accepted:
                break  # what follows depended on it
        return sent

    async def _plan(self, txn: RtTransaction, ticket: RtTicket) -> _Plan:
        plan = _Plan()
        state = ticket.cf("SISState")
        when = _rt_time(txn.created)
        who = txn.creator

        def accept_first() -> None:
            if state == "Problem_Submitted":
                plan.sends.append(("Accept_Problem", {"activity": (when, f"Taken in RT by {who}")}))

        if txn.type == "Create":
            if state == "Beginning_State":
                plan.sends.append(("Entitlement", {
                    "entitled": True,
                    "priority": provider_priority(ticket.initial_priority or ticket.priority),
                    "response_time": when + timedelta(hours=self.settings.response_hours),
                    "person": self._contact(),
                    "activity": (when, f"RT ticket #{ticket.id} opened in queue {self.settings.queue}"),
                }))
        elif txn.type == "Set" or (txn.type == "Status" and txn.new_value == "open"):
            if txn.type == "Set" and await self.rt.user_name(txn.new_value) == NOBODY:
                return plan  # given back to nobody: not taken
            accept_first()
        elif txn.type == "Correspond":
            text, files = await self._message(txn)
            marker = self.settings.need_info_marker
            if marker and marker in text:
                accept_first()
                plan.sends.append(("Request_Problem_Information", {
                    "comment": _clip(text.replace(marker, "").strip() or "More information is needed"),
                    "activity": (when, f"{who} asked for information in RT"),
                    "attachments": files,
                }))
            else:
                accept_first()
                plan.sends.append(("Provide_Problem_Information", {
                    "comment": _clip(text or "(an empty reply)"),
                    "activity": (when, f"{who} replied in RT"),
                    "attachments": files,
                    "role": "provider",
                }))
        elif txn.type == "Status" and txn.new_value == "resolved":
            accept_first()
            title, abstract, statements = await self._solution(txn, ticket)
            plan.sends.append(("Problem_Resolution", {
                "solution": (title, abstract, statements),
                "activity": (when, f"Resolved in RT by {who}"),
            }))
        return plan

    def _contact(self) -> tuple[str | None, ...]:
        s = self.settings
        return (s.contact_first_name, s.contact_last_name, s.contact_phone, s.contact_email)

    async def _message(self, txn: RtTransaction) -> tuple[str, list[tuple[str, str, bytes]]]:
        """The text of a reply or comment and its attached files."""
        parts = await self.rt.transaction_parts(txn.id)
        text, html, files = "", "", []
        for part in parts:
            content_type = str(part.get("ContentType") or "").lower()
            filename = str(part.get("Filename") or "")
            content = part.get("Content")
            if content is None or content_type.startswith("multipart/"):
                continue
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            if filename:
                if len(data) <= _ATTACHMENT_LIMIT:
                    files.append((filename, content_type or "application/octet-stream", data))
            elif content_type == "text/plain" and not text:
                text = data.decode("utf-8", "replace")
            elif content_type == "text/html" and not html:
                html = data.decode("utf-8", "replace")
        if not text and html:
            text = _html_text(html)
        return text.strip(), files

    async def _solution(self, txn: RtTransaction, ticket: RtTicket) -> tuple[str, str, list[tuple[str, str]]]:
        """Title, abstract and statements of the SOLUTION for a resolution."""
        title = f"RT ticket #{ticket.id}: {ticket.subject}"[:200]
        solution = ticket.cf("Solution").strip()
        if not solution:
            history = await self.rt.ticket_history(ticket.id)
            for earlier in reversed([t for t in history if t.id < txn.id]):
                if earlier.type in ("Correspond", "Comment") and earlier.creator not in self.own_users:
                    solution, _ = await self._message(earlier)
                    if solution:
                        break
        if not solution:
            solution = f"Resolved in RT by {txn.creator}"
        abstract = " ".join(solution.split())[:1000]
        return title, abstract, [("Fix", _clip(solution))]

    async def _send(self, txn: RtTransaction, ticket: RtTicket, name: str, args: dict[str, Any]) -> SentTransaction:
        key = f"rt-{txn.id}-{name}"
        try:
            document = build_transaction(name, requester_id=ticket.cf("RequesterID"), provider_id=str(ticket.id),
                                         **args)
        except TransactionBuildError as e:
            await self._note(ticket, f"gsem could not send {name} for RT transaction {txn.id}: {e}")
            return SentTransaction(txn.id, ticket.id, name, key, False, False, None,
                                   [("build", None, str(e))])
        answer: HubAnswer = await self.hub.send(document, idempotency_key=key)
        codes = answer.error_codes
        if not answer.accepted and (set(codes) & _TRY_AGAIN or answer.http_status >= 500):
            raise HubConnectionError(f"the hub answered {answer.http_status} {', '.join(codes)} to {name}")
        accepted = answer.accepted
        if not accepted and codes == ["idempotency-conflict"]:
            # The same key with other bytes: this RT transaction was sent before, from a
            # ticket that has changed since (e.g. its Solution).  It was taken then.
            accepted = True
        result = SentTransaction(txn.id, ticket.id, name, key, accepted, answer.duplicate,
                                 answer.current_state, list(answer.errors))
        self._log(result)
        if not answer.accepted and not accepted:
            problems = "; ".join(f"{code}: {message}" for code, _, message in answer.errors)
            await self._note(ticket, f"The gsem hub refused {name} (RT transaction {txn.id}): {problems}")
        return result

    async def _note(self, ticket: RtTicket, text: str) -> None:
        """A comment on the ticket for its agents, as the hub's user (so never sent on)."""
        await self.rt.add_message(ticket.id, "comment", {"Subject": "gsem: not sent to the hub",
                                                         "Content": text, "ContentType": "text/plain"})

    def _log(self, result: SentTransaction) -> None:
        if self.log is None:
            return
        line = {"event": "rt-bridge-send", "rt_transaction": result.rt_transaction, "ticket": result.ticket,
                "transaction": result.name, "accepted": result.accepted, "duplicate": result.duplicate,
                "state": result.state, "errors": [c for c, _, _ in result.errors]}
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()


def _clip(text: str) -> str:
    return text if len(text) <= _COMMENT_LIMIT else text[: _COMMENT_LIMIT - 1] + "…"


def _html_text(html: str) -> str:
    from lxml import html as lxml_html

    try:
        return lxml_html.fromstring(html).text_content()
    except Exception:  # noqa: BLE001 - a reply we cannot read is sent as empty, not fatal
        return ""


# -- command line -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chs_adapters.rt_bridge --config FILE [--once]``.

    FILE is TOML with the keys of :class:`BridgeSettings`.  Polls every
    ``poll_interval`` seconds until SIGINT/SIGTERM; ``--once`` polls once and exits
    (0, or 1 when RT or the hub could not be reached).  One JSON line per SIS
    transaction sent goes to standard output; problems go to standard error.
    """
    parser = argparse.ArgumentParser(prog="python -m chs_adapters.rt_bridge", description=main.__doc__)
    parser.add_argument("--config", required=True, type=Path, help="the bridge's TOML file")
    parser.add_argument("--once", action="store_true", help="poll once and exit")
    args = parser.parse_args(argv)
    try:
        options = tomllib.loads(args.config.read_text("utf-8"))
        settings = BridgeSettings.from_mapping(options, base=args.config.resolve().parent)
    except (OSError, ValueError) as e:
        print(f"rt_bridge: {args.config}: {str(e).removeprefix('rt_bridge: ')}", file=sys.stderr)
        return 2

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.task import LoopingCall

    bridge = RequestTrackerBridge(settings, reactor=reactor, log=sys.stdout)
    status = [0]

    async def poll() -> None:
        try:
            await bridge.poll_once()
        except BridgeStopped as e:
            print(f"rt_bridge: {e}; trying again in {settings.poll_interval:g} s", file=sys.stderr)
            status[0] = 1
        except Exception:  # noqa: BLE001 - a bug must be seen, and must not stop the loop
            traceback.print_exc()
            status[0] = 1

    async def once() -> None:
        try:
            await poll()
        finally:
            await bridge.close()
            reactor.stop()

    if args.once:
        reactor.callWhenRunning(lambda: ensureDeferred(once()))
    else:
        loop = LoopingCall(lambda: Deferred.fromCoroutine(poll()))
        loop.clock = reactor
        reactor.callWhenRunning(loop.start, settings.poll_interval)
        reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(bridge.close()))
    reactor.run()
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
