"""The Request Tracker adapter and bridge against a real RT 5 and a real ``gsem serve``.

RT is the throw-away instance ``.ci/rt-start`` starts (``GSEM_TEST_RT_URL``); each test
makes its own queue with the custom fields the adapter needs.  GLOBEX, the provider, is
configured as ``--mode adapter --adapter request_tracker``: the hub's delivery service
puts ACME's transactions into RT, and :class:`RequestTrackerBridge` sends what ``alice``
does in RT back to the hub with GLOBEX's certificate.  ACME is the reference client
(:class:`HubClient`) reading its pull mailbox.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hub import CURL, RunningHub
from lxml import etree
from rt_helpers import ADMIN, HUB_USER, PrivateRt, RtPeople, free_port, rt_url
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from chs_adapters.base import (
    Acknowledged,
    OutboundDelivery,
    PermanentFailure,
    TransientFailure,
)
from chs_adapters.loader import AdapterContext, load_adapter
from chs_adapters.request_tracker import CUSTOM_FIELDS, RequestTrackerAdapter
from chs_adapters.rt_bridge import BridgeSettings, CursorFile, RequestTrackerBridge
from gsem.chs.builder import ack_document, build_transaction
from gsem.chs.client import HubClient

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REQUESTER = ("Priya", "Natarajan", "+44 20 7946 0321", "p.natarajan@acme.example")
LOG_BYTES = b"2026-11-21 23:59:01 E117 duplicate header\n"


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rt() -> RtPeople:
    """The test RT (skipped, with the reason, when .ci/rt-start could not start one)."""
    url, reason = rt_url()
    if url is None:
        pytest.skip(f"Request Tracker unavailable: {reason}")
    return RtPeople(url)


@pytest.fixture
def queue(rt: RtPeople) -> str:
    """A new RT queue with the adapter's custom fields."""
    name = f"gsem-{uuid.uuid4().hex[:10]}"
    rt.make_queue(name, CUSTOM_FIELDS)
    return name


def _adapter_options(url: str, queue: str) -> dict[str, str]:
    return {"url": url, "queue": queue, "user": HUB_USER[0], "password": HUB_USER[1], "timeout": "10"}


def _start_hub(data_dir: Path, rt_base: str, queue: str, retry: tuple[str, str] = ("1", "2")) -> RunningHub:
    if CURL is None:
        pytest.skip("curl is not installed")
    hub = RunningHub.create(data_dir, start=False)
    options = [arg for key, value in _adapter_options(rt_base, queue).items()
               for arg in ("--option", f"{key}={value}")]
    hub.gsem("partners", "delivery", "GLOBEX", "--mode", "adapter", "--adapter", "request_tracker",
             *options, "--retry-base", retry[0], "--retry-cap", retry[1])
    hub.start()
    return hub


@pytest.fixture
def rt_hub(tmp_path: Path, rt: RtPeople, queue: str) -> Iterator[RunningHub]:
    """A demo hub delivering to GLOBEX through the RT adapter into *queue*."""
    hub = _start_hub(tmp_path / "hub", rt.url.removesuffix("/REST/2.0"), queue)
    try:
        yield hub
    finally:
        hub.stop()
    hub.assert_no_traceback()


def _bridge_settings(hub: RunningHub, rt_base: str, queue: str, state_file: Path) -> BridgeSettings:
    glob = hub.identity("GLOBEX")
    return BridgeSettings.from_mapping({
        "rt_url": rt_base, "queue": queue, "rt_user": HUB_USER[0], "rt_password": HUB_USER[1],
        "hub_url": f"https://{hub.host}:{hub.port}", "cert": str(glob.cert), "key": str(glob.key),
        "ca": str(hub.ca_cert), "state_file": str(state_file), "contact_last_name": "Okafor",
        "contact_phone": "+1 555 0100", "response_hours": 2, "timeout": 10,
    })


@pytest_twisted.async_yield_fixture
async def acme(rt_hub: RunningHub) -> AsyncIterator[HubClient]:
    """ACME's CHS: the reference client with ACME's certificate."""
    identity = rt_hub.identity("ACME")
    client = HubClient(f"https://{rt_hub.host}:{rt_hub.port}", cert=identity.cert, key=identity.key,
                       ca=rt_hub.ca_cert, reactor=reactor, timeout=10)
    yield client
    await client.close()


# -- helpers ------------------------------------------------------------------------------------

async def sleep(seconds: float) -> None:
    """Let the reactor run for *seconds*."""
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check: Callable[[], Any], *, timeout: float = 20.0, what: str = "") -> Any:
    """Call *check* until it returns something true; that value (fails after *timeout* s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await sleep(0.25)


async def receive(client: HubClient, timeout: float = 20.0) -> etree._Element:
    """ACME's next mailbox document, acknowledged; parsed."""
    deadline = time.monotonic() + timeout
    while True:
        found = await client.mailbox_next()
        if found is not None:
            delivery_id, document = found
            status = await client.mailbox_ack(delivery_id, ack_document(acknowledged=True, received=document))
            assert status in (200, 204), status
            return etree.fromstring(document)
        if time.monotonic() > deadline:
            raise AssertionError("nothing arrived in ACME's mailbox")
        await sleep(0.25)


async def mailbox_empty(client: HubClient) -> bool:
    """True when ACME's mailbox has nothing (after a moment for deliveries in flight)."""
    await sleep(0.5)
    return await client.mailbox_next() is None


async def send(client: HubClient, name: str, requester_id: str, **kwargs: Any) -> str:
    """ACME sends *name*; the incident's state after it (fails if the hub refused it)."""
    answer = await client.send(build_transaction(name, requester_id=requester_id, **kwargs))
    assert answer.accepted, (name, answer.errors)
    assert answer.current_state is not None
    return answer.current_state


def find_ticket(rt: RtPeople, queue: str) -> int | None:
    """The only ticket of *queue* (None when there is none yet; fails when there are two)."""
    tickets = rt.tickets(queue)
    assert len(tickets) <= 1, f"more than one ticket: {tickets}"
    return tickets[0] if tickets else None


def comments_by_hub(rt: RtPeople, ticket_id: int) -> list[str]:
    """Subjects of the comments the adapter wrote on the ticket."""
    return [t["Data"].strip() for t in rt.history(ticket_id)
            if t["Type"] == "Comment" and t["Creator"] == HUB_USER[0] and t["Data"].startswith("gsem delivery")]


def delivered(name: str, requester_id: str, state: str, **kwargs: Any) -> bytes:
    """A document as the hub forwards it: built by the reference builder, CurrentState added."""
    document = etree.fromstring(build_transaction(name, requester_id=requester_id, **kwargs))
    etree.SubElement(document, "CurrentState").text = state
    return etree.tostring(document, xml_declaration=True, encoding="UTF-8")


# -- the adapter alone --------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_adapter_creates_one_ticket_per_incident_and_applies_each_delivery_once(
        rt: RtPeople, queue: str) -> None:
    """A Service_Request makes one ticket with its fields; deliveries sent again change nothing."""
    adapter = RequestTrackerAdapter(_adapter_options(rt.url.removesuffix("/REST/2.0"), queue), reactor=reactor)
    rid = f"ACME-{uuid.uuid4().hex[:8]}"
    request = delivered("Service_Request", rid, "Beginning_State", severity=1, comment="Gateway down",
                        contract_id="C-100", person=REQUESTER,
                        attachments=[("screen.txt", "text/plain", b"E117\n")])
    first = await adapter.deliver(OutboundDelivery(11, "GLOBEX", 901, "Service_Request", rid, request, 1))
    again = await adapter.deliver(OutboundDelivery(11, "GLOBEX", 901, "Service_Request", rid, request, 2))
    assert isinstance(first, Acknowledged) and isinstance(again, Acknowledged), (first, again)
    ticket_id = find_ticket(rt, queue)
    assert ticket_id is not None
    for result in (first, again):
        ack = etree.fromstring(result.receiver_ack)
        assert ack.findtext("Acknowledge") == "Yes"
        assert ack.findtext("ProviderID") == str(ticket_id)
    ticket = rt.ticket(ticket_id)
    assert ticket["cf"]["RequesterID"] == rid
    assert ticket["cf"]["ProviderID"] == str(ticket_id)
    assert ticket["cf"]["SISState"] == "Beginning_State"
    assert ticket["cf"]["GsemIncident"] == "901"
    assert ticket["Priority"] == "90"  # severity 1
    assert ticket["Subject"] == "Gateway down"
    assert rt.attachment_names(ticket_id) == ["screen.txt"]

    info = delivered("Provide_Problem_Information", rid, "Beginning_State", comment="Log attached",
                     attachments=[("upload.log", "text/plain", LOG_BYTES)], role="requester")
    for attempt in (1, 2):
        result = await adapter.deliver(OutboundDelivery(12, "GLOBEX", 901, "Provide_Problem_Information", rid,
                                                        info, attempt))
        assert isinstance(result, Acknowledged), result
    assert comments_by_hub(rt, ticket_id) == ["gsem delivery 12: Provide_Problem_Information"]
    assert sorted(rt.attachment_names(ticket_id)) == ["screen.txt", "upload.log"]
    await adapter.close()


@pytest_twisted.ensureDeferred
async def test_adapter_failures_are_transient_or_permanent_as_rt_says(rt: RtPeople, queue: str) -> None:
    """RT unreachable or refusing our password: retry; RT refusing a value, or no ticket: dead."""
    base = rt.url.removesuffix("/REST/2.0")
    rid = f"ACME-{uuid.uuid4().hex[:8]}"
    request = delivered("Service_Request", rid, "Beginning_State", contract_id="C-100", person=REQUESTER)
    delivery = OutboundDelivery(21, "GLOBEX", 902, "Service_Request", rid, request, 1)

    down = RequestTrackerAdapter(_adapter_options(f"http://127.0.0.1:{free_port()}", queue), reactor=reactor)
    result = await down.deliver(delivery)
    assert isinstance(result, TransientFailure) and "did not answer" in result.error, result
    await down.close()

    wrong = RequestTrackerAdapter({**_adapter_options(base, queue), "password": "wrong"}, reactor=reactor)
    result = await wrong.deliver(delivery)
    assert isinstance(result, TransientFailure) and "401" in result.error, result
    await wrong.close()

    adapter = RequestTrackerAdapter(_adapter_options(base, queue), reactor=reactor)
    close = delivered("Confirm_Close", rid, "Closed", comment="thanks")
    result = await adapter.deliver(OutboundDelivery(22, "GLOBEX", 999, "Confirm_Close", rid, close, 1))
    assert isinstance(result, PermanentFailure) and "no ticket for incident 999" in result.error, result

    # An RT administrator restricted RequesterID to ACME's numbering: RT refuses other values.
    fields = rt.call("GET", f"/queue/{queue}", user=ADMIN)["TicketCustomFields"]
    requester_cf = next(cf["id"] for cf in fields if cf["name"] == "RequesterID")
    rt.call("PUT", f"/customfield/{requester_cf}", {"Pattern": "^ACME-INC-[0-9]+$"}, user=ADMIN)
    result = await adapter.deliver(delivery)
    assert isinstance(result, PermanentFailure), result
    assert "did not keep custom field RequesterID" in result.error, result
    assert find_ticket(rt, queue) is None
    await adapter.close()


def test_loader_builds_the_adapter_from_partner_options(rt: RtPeople, queue: str) -> None:
    """``--adapter request_tracker`` with --option values builds it; missing options are named."""
    context = AdapterContext(reactor=reactor, hub_cert=Path("unused"), hub_key=Path("unused"))
    adapter = load_adapter("GLOBEX", "adapter", {"adapter": "request_tracker",
                                                 "options": _adapter_options(rt.url, queue)}, context)
    assert isinstance(adapter, RequestTrackerAdapter)
    with pytest.raises(ValueError) as refused:
        load_adapter("GLOBEX", "adapter", {"adapter": "request_tracker", "options": {"url": "ftp://x"}}, context)
    message = str(refused.value)
    assert "GLOBEX" in message and "'queue' is required" in message and "'user' and 'password'" in message


# -- end to end ---------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_lifecycle_between_acme_and_globex_rt(rt: RtPeople, queue: str, rt_hub: RunningHub,
                                                    acme: HubClient, tmp_path: Path) -> None:
    """ACME's incident lives in GLOBEX's RT from request to close, in both directions."""
    base = rt.url.removesuffix("/REST/2.0")
    bridge = RequestTrackerBridge(_bridge_settings(rt_hub, base, queue, tmp_path / "bridge.json"),
                                  reactor=reactor)
    assert await bridge.poll_once() == []  # the cursor starts at RT's newest transaction
    rid = f"ACME-{uuid.uuid4().hex[:8]}"

    # ACME raises the call: a ticket appears in RT; the bridge entitles it.
    assert await send(acme, "Service_Request", rid, severity=2, comment="Settlement file rejected",
                      contract_id="C-100", person=REQUESTER) == "Beginning_State"
    ticket_id = await eventually(lambda: find_ticket(rt, queue), what="the RT ticket")
    ticket = rt.ticket(ticket_id)
    assert (ticket["cf"]["RequesterID"], ticket["cf"]["SISState"], ticket["Priority"]) == (
        rid, "Beginning_State", "70")
    assert [(s.name, s.accepted, s.state) for s in await bridge.poll_once()] == [
        ("Entitlement", True, "Entitled")]
    entitlement = await receive(acme)
    assert entitlement.findtext("TransactionName") == "Entitlement"
    assert entitlement.findtext("ProviderID") == str(ticket_id)
    assert entitlement.findtext("ProviderPriority") == "2"
    assert rt.ticket(ticket_id)["cf"]["SISState"] == "Entitled"

    # The problem reaches the ticket; alice takes it: Accept_Problem.
    await send(acme, "Problem_Submittal", rid, problem_title="Settlement file rejected with code E117",
               problem_statements=[("Symptom", "Upload returns E117")], products=[("Globex", "Gateway", "4.2")])
    await eventually(lambda: rt.ticket(ticket_id)["cf"]["SISState"] == "Problem_Submitted", what="Problem_Submitted")
    assert rt.ticket(ticket_id)["Subject"] == "Settlement file rejected with code E117"
    rt.take(ticket_id)
    assert [s.name for s in await bridge.poll_once()] == ["Accept_Problem"]
    assert (await receive(acme)).findtext("CurrentState") == "Open_Provider"

    # alice asks for evidence with the marker: Request_Problem_Information, marker removed.
    rt.reply(ticket_id, "[need-info] Please send the rejected file and the upload log")
    assert [(s.name, s.state) for s in await bridge.poll_once()] == [
        ("Request_Problem_Information", "Open_Requester")]
    asked = await receive(acme)
    assert asked.findtext("TransactionName") == "Request_Problem_Information"
    assert asked.findtext("Comment") == "Please send the rejected file and the upload log"

    # ACME provides it, with the log: a comment with the file on the ticket.
    assert await send(acme, "Provide_Problem_Information", rid, comment="File and log attached",
                      attachments=[("upload.log", "text/plain", LOG_BYTES)], role="requester") == "Open_Provider"
    await eventually(lambda: "upload.log" in rt.attachment_names(ticket_id), what="the log in RT")
    assert rt.ticket(ticket_id)["cf"]["SISState"] == "Open_Provider"

    # An RT reply reaches ACME as Provide_Problem_Information; an internal comment does not.
    rt.comment(ticket_id, "internal: looks like the BOM bug")
    rt.reply(ticket_id, "We reproduced it; a fix is on its way")
    assert [s.name for s in await bridge.poll_once()] == ["Provide_Problem_Information"]
    info = await receive(acme)
    assert (info.findtext("TransactionName"), info.findtext("Comment")) == (
        "Provide_Problem_Information", "We reproduced it; a fix is on its way")

    # Resolving in RT: Problem_Resolution with the Solution custom field.
    solution_cf = next(cf["id"] for cf in rt.ticket(ticket_id)["CustomFields"] if cf["name"] == "Solution")
    rt.call("PUT", f"/ticket/{ticket_id}", {"CustomFields": {solution_cf: "Gateway 4.2.1 deployed; BOM no longer a header"}})
    rt.set_status(ticket_id, "resolved")
    assert [(s.name, s.state) for s in await bridge.poll_once()] == [
        ("Problem_Resolution", "Closed_Pending_Confirmation")]
    resolution = await receive(acme)
    assert resolution.findtext("SOLUTION/SolutionAbstract") == "Gateway 4.2.1 deployed; BOM no longer a header"

    # ACME rejects it: the ticket is open again, and nothing goes back.
    assert await send(acme, "Reject_Resolution", rid, comment="Still rejected with E117") == "Open_Provider"
    await eventually(lambda: rt.ticket(ticket_id)["Status"] == "open", what="the ticket reopened")
    assert await bridge.poll_once() == []

    # Resolved again (solution from the last reply this time); ACME confirms: resolved, Closed.
    rt.call("PUT", f"/ticket/{ticket_id}", {"CustomFields": {solution_cf: None}})
    rt.reply(ticket_id, "The file had a second BOM; reprocessed at 09:20")
    rt.set_status(ticket_id, "resolved")
    assert [s.name for s in await bridge.poll_once()] == ["Provide_Problem_Information", "Problem_Resolution"]
    assert (await receive(acme)).findtext("TransactionName") == "Provide_Problem_Information"
    again = await receive(acme)
    assert again.findtext("SOLUTION/STATEMENT/Text") == "The file had a second BOM; reprocessed at 09:20"
    assert await send(acme, "Confirm_Close", rid, comment="Accepted now, thanks") == "Closed"
    await eventually(lambda: rt.ticket(ticket_id)["cf"]["SISState"] == "Closed", what="Closed in RT")
    assert rt.ticket(ticket_id)["Status"] == "resolved"
    assert await bridge.poll_once() == []
    assert await mailbox_empty(acme)

    # Every delivery to GLOBEX was acknowledged by the adapter with the ticket id.
    rows = rt_hub.query("SELECT transaction_name, state, receiver_ack FROM deliveries "
                        "WHERE recipient_id = 'GLOBEX' ORDER BY id")
    assert [r["transaction_name"] for r in rows] == [
        "Service_Request", "Problem_Submittal", "Provide_Problem_Information", "Reject_Resolution",
        "Confirm_Close"]
    assert {r["state"] for r in rows} == {"acknowledged"}
    assert {etree.fromstring(bytes(r["receiver_ack"])).findtext("ProviderID") for r in rows} == {str(ticket_id)}
    assert [s.split(": ", 1)[1] for s in comments_by_hub(rt, ticket_id)] == [
        "Problem_Submittal", "Provide_Problem_Information", "Reject_Resolution", "Confirm_Close"]
    await bridge.close()


@pytest_twisted.ensureDeferred
async def test_restarts_in_the_middle_lose_and_double_nothing(rt: RtPeople, queue: str, rt_hub: RunningHub,
                                                              acme: HubClient, tmp_path: Path) -> None:
    """A bridge killed between the hub's answer and its cursor save, and a hub restart: nothing lost or doubled."""
    base = rt.url.removesuffix("/REST/2.0")
    state_file = tmp_path / "bridge.json"
    bridge = RequestTrackerBridge(_bridge_settings(rt_hub, base, queue, state_file), reactor=reactor)
    await bridge.poll_once()
    rid = f"ACME-{uuid.uuid4().hex[:8]}"
    await send(acme, "Service_Request", rid, contract_id="C-100", person=REQUESTER,
               problem_title="Gateway down", problem_statements=[("Symptom", "E117")])
    ticket_id = await eventually(lambda: find_ticket(rt, queue), what="the RT ticket")
    assert [(s.name, s.state) for s in await bridge.poll_once()] == [("Entitlement", "Problem_Submitted")]
    assert (await receive(acme)).findtext("TransactionName") == "Entitlement"
    await bridge.close()

    # alice takes the ticket; the bridge sends Accept_Problem and dies before saving its cursor.
    rt.take(ticket_id)

    doomed = RequestTrackerBridge(_bridge_settings(rt_hub, base, queue, state_file), reactor=reactor)
    answers = []
    real_send = doomed.hub.send

    async def send_then_die(document: bytes, **kwargs: Any) -> Any:
        answers.append(await real_send(document, **kwargs))
        raise KeyboardInterrupt("killed right after the hub's answer")

    doomed.hub.send = send_then_die
    with pytest.raises(KeyboardInterrupt):
        await doomed.poll_once()
    await doomed.close()
    assert [(a.transaction_name, a.accepted, a.duplicate) for a in answers] == [("Accept_Problem", True, False)]
    assert rt.ticket(ticket_id)["cf"]["SISState"] == "Problem_Submitted"  # never told
    assert CursorFile(state_file).load() < max(int(t["id"]) for t in rt.history(ticket_id))
    assert rt_hub.scalar("SELECT state FROM incidents WHERE requester_ref = :r", r=rid) == "Open_Provider"

    # The hub restarts too; the bridge runs again as a new process (its command line):
    # it sends the same transaction again, which the hub answers as a duplicate.
    rt_hub.restart()
    config = tmp_path / "bridge.toml"
    settings = _bridge_settings(rt_hub, base, queue, state_file)
    config.write_text("\n".join(f"{key} = {json.dumps(str(value))}" for key, value in {
        "rt_url": settings.rt_url, "queue": settings.queue, "rt_user": settings.rt_user,
        "rt_password": settings.rt_password, "hub_url": settings.hub_url, "cert": settings.cert,
        "key": settings.key, "ca": settings.ca, "state_file": "bridge.json",
        "contact_last_name": settings.contact_last_name, "contact_phone": settings.contact_phone}.items()))

    def bridge_once() -> list[dict[str, Any]]:
        done = subprocess.run([sys.executable, "-m", "chs_adapters.rt_bridge", "--config", str(config), "--once"],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    sent = await deferToThread(bridge_once)
    assert [(s["transaction"], s["accepted"], s["duplicate"]) for s in sent] == [("Accept_Problem", True, True)]
    assert rt.ticket(ticket_id)["cf"]["SISState"] == "Open_Provider"
    assert await deferToThread(bridge_once) == []

    # ACME gets it exactly once; its next message still reaches the one ticket exactly once.
    acme_after = HubClient(f"https://{rt_hub.host}:{rt_hub.port}", cert=rt_hub.identity("ACME").cert,
                           key=rt_hub.identity("ACME").key, ca=rt_hub.ca_cert, reactor=reactor, timeout=10)
    assert (await receive(acme_after)).findtext("TransactionName") == "Accept_Problem"
    assert await mailbox_empty(acme_after)
    await send(acme_after, "Request_Closure", rid, comment="Worked around it")
    await eventually(lambda: rt.ticket(ticket_id)["cf"]["SISState"] == "Closed", what="Closed in RT")
    assert find_ticket(rt, queue) == ticket_id
    assert [s.split(": ", 1)[1] for s in comments_by_hub(rt, ticket_id)] == ["Request_Closure"]
    assert rt_hub.scalar("SELECT count(*) FROM deliveries WHERE recipient_id = 'ACME' "
                         "AND transaction_name = 'Accept_Problem'") == 1
    await acme_after.close()


@pytest_twisted.ensureDeferred
async def test_rt_down_deliveries_wait_and_arrive_when_it_is_back(rt: RtPeople, tmp_path: Path) -> None:
    """With rt-server stopped, deliveries fail as transient and are retried until RT is back."""
    if not PrivateRt.possible():
        pytest.skip("stopping RT needs the instance .ci/rt-start made (its database is copied)")
    private = PrivateRt(tmp_path / "rt")
    try:
        started = private.start()
        print(f"private RT started in {started:.1f} s")
        people = RtPeople(private.url)
        queue = f"gsem-{uuid.uuid4().hex[:10]}"
        people.make_queue(queue, CUSTOM_FIELDS)
        private.stop()
        # RT takes ~7 s to start: retries spaced so that the circuit breaker (5 failures
        # in a row) rarely opens meanwhile; if it does, its 30 s pause only slows the test.
        hub = _start_hub(tmp_path / "hub", private.url, queue, retry=("4", "8"))
        try:
            identity = hub.identity("ACME")
            client = HubClient(f"https://{hub.host}:{hub.port}", cert=identity.cert, key=identity.key,
                               ca=hub.ca_cert, reactor=reactor, timeout=10)
            rid = f"ACME-{uuid.uuid4().hex[:8]}"
            await send(client, "Service_Request", rid, contract_id="C-100", person=REQUESTER, comment="down test")

            def transient_attempts() -> list[Any]:
                return hub.query("SELECT outcome, error, started_at FROM delivery_attempts ORDER BY id")

            failures = await eventually(transient_attempts, what="a failed attempt")
            assert failures[0]["outcome"] == "transient", failures
            assert "did not answer" in failures[0]["error"]
            print(f"private RT restarted in {private.start():.1f} s")
            ticket_id = await eventually(lambda: people.tickets(queue), timeout=60, what="the ticket after RT is back")
            assert len(ticket_id) == 1
            await eventually(lambda: hub.scalar("SELECT state FROM deliveries") == "acknowledged",
                             what="the delivery acknowledged")
            attempts = transient_attempts()
            print("attempts:", [(str(a["started_at"]), a["outcome"]) for a in attempts])
            assert [a["outcome"] for a in attempts][-1] == "acknowledged"
            assert {a["outcome"] for a in attempts[:-1]} == {"transient"}
            await client.close()
        finally:
            hub.stop()
        hub.assert_no_traceback()
    finally:
        private.remove()


def test_bridge_settings_name_every_problem(tmp_path: Path) -> None:
    """A bridge configuration missing several things says all of them at once."""
    with pytest.raises(ValueError) as refused:
        BridgeSettings.from_mapping({"rt_url": "http://127.0.0.1:1", "hub_url": "http://x"}, base=tmp_path)
    message = str(refused.value)
    for problem in ("'queue' is required", "'rt_user' and 'rt_password'", "'hub_url' is required",
                    "'cert' is required", "'state_file' is required", "'contact_phone' is required"):
        assert problem in message, message


def test_cursor_file_is_replaced_whole(tmp_path: Path) -> None:
    """The cursor survives as the last saved value; no temporary file is left behind."""
    cursor = CursorFile(tmp_path / "state" / "bridge.json")
    assert cursor.load() is None
    cursor.save(41)
    cursor.save(42)
    assert CursorFile(tmp_path / "state" / "bridge.json").load() == 42
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["bridge.json"]
