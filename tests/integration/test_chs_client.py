"""The reference CHS client (``gsem.chs``, ``gsem chs``) against a real ``gsem serve`` over mutual TLS.

The demo partners talk to a hub subprocess the way a partner's ticketing system would:
:class:`~gsem.chs.client.HubClient` (treq, a persistent pool, the partner's client
certificate, the hub checked against the dev CA and its address), and the ``gsem chs``
command line as a subprocess.  Pull delivery goes through the hub's mailbox; the push
receiver is served in this process with its own CA and is posted to with the hub's
client certificate.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fault_proxy import FaultProxy
from hub import CURL, FIXTURES, GSEM, LIFECYCLE, RunningHub, sigint_as_in_a_terminal
from lxml import etree
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread

from gsem import cli, pki
from gsem.chs.builder import ack_document, build_transaction
from gsem.chs.client import HubAnswer, HubClient, HubConnectionError
from gsem.chs.receiver import PullLoop, PushReceiver, Receipt, ReceivedTransaction, take_delivery
from gsem.chs.state import LocalIncidents
from gsem.db import partners
from gsem.delivery.policy import RetryPolicy
from gsem.schema import ack_schema

pytestmark = pytest.mark.integration

#: Fast retries, so that tests of retrying take milliseconds.
QUICK_RETRY = RetryPolicy(base=0.05, cap=0.2, max_attempts=4, max_age=10.0)
REQUESTER = ("Priya", "Natarajan", "+44 20 7946 0321")
PROVIDER = (None, "Okafor", "+1 555 0100")

#: A Service_Request with two problems: no AGREEMENT/ContractID, and a severity of 9.
REJECTED_REQUEST = b"""<SERVICE_INCIDENT>
  <TransactionName>Service_Request</TransactionName>
  <RequesterID>CHS-BAD</RequesterID>
  <RequesterSeverity>9</RequesterSeverity>
  <ACTIVITY><LocalDate>2026-11-22 08:02:11</LocalDate><ActionLog>Raised</ActionLog></ACTIVITY>
  <SERVICE_REQUESTER>
    <PERSON><LastName>Natarajan</LastName>
      <LOCATION><LocationType>Primary_Voice</LocationType><LocationID>+44 20 7946 0321</LocationID></LOCATION>
    </PERSON>
  </SERVICE_REQUESTER>
</SERVICE_INCIDENT>
"""


@pytest.fixture(scope="module")
def shared_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One demo hub for the tests that only send (each uses its own RequesterIDs)."""
    hub = RunningHub.create(tmp_path_factory.mktemp("chs") / "hub")
    try:
        # Both partners pull (the demo's default), and a document handed out but not
        # acknowledged is handed out again after 1 s instead of 60.
        _pull_mode(hub, "GLOBEX", 1)
        _pull_mode(hub, "ACME", 1)
        yield hub
    finally:
        hub.stop()
    hub.assert_no_traceback()


def _pull_mode(hub: RunningHub, partner: str, visibility_timeout: float) -> None:
    with hub.engine.begin() as conn:
        partners.set_delivery(conn, partner, mode="pull", config={"visibility_timeout": visibility_timeout})


def _client(hub: RunningHub, partner: str, **kwargs: Any) -> HubClient:
    identity = hub.identity(partner)
    return HubClient(hub.url, cert=identity.cert, key=identity.key, ca=hub.ca_cert, reactor=reactor, **kwargs)


def _assert_valid_ack(answer: HubAnswer) -> None:
    schema = ack_schema()
    assert schema.validate(etree.ElementTree(etree.fromstring(answer.document))), schema.error_log


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GSEM_DATABASE_URL", "GSEM_DATA_DIR", "GSEM_CHS_STATE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _chs(hub: RunningHub, *args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """``gsem --data-dir HUB chs ARGS…``: exit status, standard output and error as text."""
    command = [GSEM, "--data-dir", str(hub.data_dir), "chs", *(str(a) for a in args)]
    return subprocess.run(command, capture_output=True, input=stdin.decode() if stdin else None, text=True,
                          env=_env(), timeout=60)


def _connection(hub: RunningHub, partner: str) -> list[str]:
    return ["--partner", partner, "--hub", hub.url]


# -- sending --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_example_lifecycle_through_the_reference_client(shared_hub: RunningHub, tmp_path: Path) -> None:
    """ACME and GLOBEX send the nine example documents; each is acknowledged Yes with the expected state."""
    clients = {p: _client(shared_hub, p) for p in ("ACME", "GLOBEX")}
    stores = {p: LocalIncidents(tmp_path / f"{p}.sqlite") for p in clients}
    try:
        answers = []
        for name, sender, state in LIFECYCLE:
            document = (FIXTURES / name).read_bytes()
            answer = await clients[sender].send(document)
            stores[sender].record_sent(document, answer)
            assert (answer.http_status, answer.accepted, answer.errors, answer.duplicate) == (200, True, [], False), name
            assert answer.current_state == state, name
            assert answer.requester_id == "ACME-INC-20931"
            _assert_valid_ack(answer)
            answers.append(answer)
    finally:
        for client in clients.values():
            await client.close()
    assert len({a.ack_id for a in answers}) == len(LIFECYCLE)
    assert [a.provider_id for a in answers[1:]] == ["GX-55012"] * 8
    incident = etree.fromstring(answers[-1].incident)
    assert (incident.findtext("CurrentState"), incident.findtext("ProviderID")) == ("Closed", "GX-55012")

    acme = stores["ACME"].get("ACME-INC-20931")
    globex = stores["GLOBEX"].get("ACME-INC-20931")
    assert (acme.role, acme.state, acme.provider_id, acme.last_transaction) == (
        "requester", "Closed", "GX-55012", "Confirm_Close")
    # GLOBEX last heard of it when it resolved it; the Confirm_Close is in its mailbox.
    assert (globex.role, globex.state, globex.last_transaction) == (
        "provider", "Closed_Pending_Confirmation", "Problem_Resolution")
    assert [h.transaction_name for h in stores["ACME"].history("ACME-INC-20931")] == [
        "Service_Request", "Problem_Submittal", "Provide_Problem_Information", "Confirm_Close", "Query_Incident"]
    for store in stores.values():
        store.close()


@pytest_twisted.ensureDeferred
async def test_every_transaction_built_by_the_client_is_accepted(shared_hub: RunningHub) -> None:
    """An incident driven through every transaction, each document made by build_transaction."""
    acme, globex = _client(shared_hub, "ACME"), _client(shared_hub, "GLOBEX")
    rid, pid = "CHS-BUILT-1", "GX-BUILT-1"
    steps = [
        (acme, "Service_Request", {"contract_id": "C-100", "person": REQUESTER, "severity": 2,
                                   "problem_title": "Gateway rejects uploads"}, "Beginning_State"),
        (globex, "Entitlement", {"provider_id": pid, "entitled": True, "priority": 2,
                                 "response_time": "2026-11-22 10:00", "person": PROVIDER}, "Problem_Submitted"),
        (globex, "Accept_Problem", {"provider_id": pid}, "Open_Provider"),
        (globex, "Provide_Problem_Information", {"priority": 1, "comment": "Raised to P1"}, "Open_Provider"),
        (globex, "Request_Problem_Information", {"comment": "Send the upload log"}, "Open_Requester"),
        (acme, "Provide_Problem_Information", {"attachments": [("upload.log", "text/plain", b"E117\n")]},
         "Open_Provider"),
        (globex, "Problem_Resolution", {"solution": ("Fixed in 4.2.1", "Deployed", ["Upgrade to 4.2.1"])},
         "Closed_Pending_Confirmation"),
        (acme, "Reject_Resolution", {"comment": "Still failing"}, "Open_Provider"),
        (acme, "Request_Closure", {"comment": "Worked around it"}, "Closed"),
        (globex, "Query_Incident", {"role": "provider", "provider_id": pid}, "Closed"),
    ]
    try:
        for client, name, kwargs, state in steps:
            answer = await client.send(build_transaction(name, requester_id=rid, **kwargs))
            assert (answer.accepted, answer.errors, answer.current_state) == (True, [], state), name
            assert answer.provider_id == (pid if name != "Service_Request" else None), name
    finally:
        await acme.close()
        await globex.close()


@pytest_twisted.ensureDeferred
async def test_a_rejected_document_is_answered_with_every_error(shared_hub: RunningHub) -> None:
    """A document the hub refuses comes back accepted=False with its status and every (code, path, message)."""
    acme, globex = _client(shared_hub, "ACME"), _client(shared_hub, "GLOBEX")
    try:
        answer = await acme.send(REJECTED_REQUEST)
        _assert_valid_ack(answer)
        assert (answer.http_status, answer.accepted, answer.current_state, answer.duplicate) == (422, False, None, False)
        assert answer.ack_id and answer.requester_id == "CHS-BAD"
        paths = {(code, path) for code, path, _ in answer.errors}
        assert ("missing-mandatory", "/SERVICE_INCIDENT/AGREEMENT/ContractID") in paths
        assert any(code == "schema-violation" and "RequesterSeverity" in path for code, path in paths)
        assert all(message for _, _, message in answer.errors)

        opened = await acme.send(build_transaction("Service_Request", requester_id="CHS-REJ-2", contract_id="C-100",
                                                   person=REQUESTER))
        assert opened.accepted
        # Only the requester confirms a close; and there is nothing to confirm yet.
        wrong = await globex.send(build_transaction("Confirm_Close", requester_id="CHS-REJ-2"))
        assert (wrong.accepted, wrong.http_status) == (False, 403)
        assert wrong.error_codes == ["not-authorized"]
        early = await acme.send(build_transaction("Confirm_Close", requester_id="CHS-REJ-2"))
        assert (early.http_status, early.error_codes) == (409, ["not-allowed-in-state"])
    finally:
        await acme.close()
        await globex.close()


@pytest_twisted.ensureDeferred
async def test_a_resend_after_a_lost_answer_is_a_duplicate(shared_hub: RunningHub) -> None:
    """Sending again with the same Idempotency-Key returns the first acknowledgement, marked duplicate."""
    acme = _client(shared_hub, "ACME")
    document = build_transaction("Service_Request", requester_id="CHS-DUP-1", contract_id="C-100", person=REQUESTER)
    try:
        first = await acme.send(document, idempotency_key="chs-dup-1")  # its answer "got lost"
        again = await acme.send(document, idempotency_key="chs-dup-1")
        assert (first.accepted, first.duplicate) == (True, False)
        assert (again.accepted, again.duplicate, again.ack_id, again.current_state) == (
            True, True, first.ack_id, "Beginning_State")
        # Without a key the hub keys by the body's digest: the same bytes are a duplicate too.
        unkeyed = build_transaction("Service_Request", requester_id="CHS-DUP-2", contract_id="C-100",
                                    person=REQUESTER)
        assert (await acme.send(unkeyed)).duplicate is False
        assert (await acme.send(unkeyed)).duplicate is True
        changed = await acme.send(document.replace(b"CHS-DUP-1", b"CHS-DUP-3"), idempotency_key="chs-dup-1")
        assert (changed.accepted, changed.error_codes) == (False, ["idempotency-conflict"])
    finally:
        await acme.close()
    count = shared_hub.scalar("SELECT count(*) FROM incidents WHERE requester_ref IN ('CHS-DUP-1', 'CHS-DUP-3')")
    assert count == 1


@pytest_twisted.ensureDeferred
async def test_dropped_connections_are_retried_until_the_hub_answers(shared_hub: RunningHub) -> None:
    """Connections reset by the network are retried; the transaction is taken exactly once."""
    proxy = FaultProxy(shared_hub.host, shared_hub.port).start()
    identity = shared_hub.identity("ACME")
    client = HubClient(proxy.url("/"), cert=identity.cert, key=identity.key, ca=shared_hub.ca_cert,
                       reactor=reactor, retry=QUICK_RETRY)
    try:
        proxy.script(["close", "close"])
        answer = await client.send(build_transaction("Service_Request", requester_id="CHS-RETRY-1",
                                                     contract_id="C-100", person=REQUESTER))
        assert (answer.accepted, answer.duplicate, answer.current_state) == (True, False, "Beginning_State")
        assert [c.mode for c in proxy.log()] == ["close", "close", "pass"]

        await client.close()
        proxy.set_mode("close")
        with pytest.raises(HubConnectionError, match="after 4 attempt"):
            await client.send(build_transaction("Service_Request", requester_id="CHS-RETRY-2",
                                                contract_id="C-100", person=REQUESTER))
        assert len(proxy.log()) == 3 + 4
    finally:
        await client.close()
        proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_hub_not_signed_by_our_ca_is_refused_at_once(shared_hub: RunningHub, tmp_path: Path) -> None:
    """A hub certificate from another CA fails the handshake, without pointless retries."""
    ca_cert, _ = pki.make_ca("someone else's CA")
    other_ca = tmp_path / "other-ca.pem"
    pki.write_cert(other_ca, ca_cert)
    identity = shared_hub.identity("ACME")
    client = HubClient(shared_hub.url, cert=identity.cert, key=identity.key, ca=other_ca, reactor=reactor)
    started = time.monotonic()
    try:
        with pytest.raises(HubConnectionError, match="TLS"):
            await client.send(b"<SERVICE_INCIDENT/>")
    finally:
        await client.close()
    assert time.monotonic() - started < 2


# -- the command line -------------------------------------------------------------------------


def _chs_parallel(hub: RunningHub, *runs: tuple[list[str | Path], bytes | None]) -> list[subprocess.CompletedProcess[str]]:
    """Several ``gsem chs`` commands at once (each is a process that mostly waits)."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: _chs(hub, *run[0], stdin=run[1]), runs))


def test_chs_send_exit_status_says_whether_the_hub_said_yes(shared_hub: RunningHub, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """gsem chs send prints the acknowledgement; exit 0 on Yes, 1 on No, 2 on errors, never a traceback."""
    state = tmp_path / "acme.sqlite"
    acme = [*_connection(shared_hub, "ACME"), "--state", state]
    build = ["send", *acme, "--transaction", "Service_Request", "--requester-id", "CHS-CLI-1",
             "--contract-id", "C-100", "--last-name", "Natarajan", "--phone", "+44 20 7946 0321",
             "--comment", "Gateway down"]
    bad = tmp_path / "bad.xml"
    bad.write_bytes(REJECTED_REQUEST)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done, refused, from_stdin, unreachable = _chs_parallel(
        shared_hub,
        (build, None),
        (["send", *acme, bad], None),
        (["send", *acme, "-"], (FIXTURES / "09-query-incident.xml").read_bytes()),
        (["send", "--partner", "ACME", "--hub", f"https://127.0.0.1:{port}", "--retries", "1", "--state", state,
          bad], None),
    )
    assert done.returncode == 0, done.stderr
    ack = etree.fromstring(done.stdout.encode())
    assert (ack.findtext("Acknowledge"), ack.findtext("CurrentState")) == ("Yes", "Beginning_State")
    assert "Acknowledge=Yes: Service_Request CHS-CLI-1" in done.stderr
    assert refused.returncode == 1, refused.stderr
    assert etree.fromstring(refused.stdout.encode()).findtext("Acknowledge") == "No"
    assert "ERROR missing-mandatory /SERVICE_INCIDENT/AGREEMENT/ContractID" in refused.stderr
    assert from_stdin.returncode in (0, 1) and "Query_Incident ACME-INC-20931" in from_stdin.stderr
    assert unreachable.returncode == 2
    assert "cannot reach the hub" in unreachable.stderr and "after 2 attempt(s)" in unreachable.stderr

    (again,) = _chs_parallel(shared_hub, (build, None))  # a new document (new LocalDate), same RequesterID
    assert again.returncode == 1, again.stderr
    assert "ERROR duplicate-incident" in again.stderr
    for result in (done, refused, from_stdin, unreachable, again):
        assert "Traceback" not in result.stderr

    # What fails before any connection is made, and the local view, run in this process.
    data_dir = ["--data-dir", str(shared_hub.data_dir), "chs"]
    assert cli.main([*data_dir, "send", *_connection(shared_hub, "GLOBEX"), "--transaction", "Entitlement",
                     "--requester-id", "CHS-CLI-1"]) == 2
    assert "cannot build Entitlement" in (err := capsys.readouterr().err) and "(option --entitled)" in err
    assert cli.main([*data_dir, "send", "--state", str(state), str(bad)]) == 2
    assert "--hub is needed" in capsys.readouterr().err
    assert cli.main([*data_dir, "incidents", "--state", str(state)]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"CHS-CLI-1\s+-\s+requester\s+Beginning_State\s+Service_Request", listing), listing


# -- pull mailbox ------------------------------------------------------------------------------


async def _drain_mailboxes(hub: RunningHub) -> None:
    """Acknowledge whatever earlier tests left in the demo partners' mailboxes."""
    clients = [_client(hub, partner) for partner in ("ACME", "GLOBEX")]
    try:
        emptied = False
        while not emptied:
            emptied = True
            for client in clients:
                while (item := await client.mailbox_next()) is not None:
                    await client.mailbox_ack(item[0], ack_document(acknowledged=True, received=item[1]))
                    emptied = False
    finally:
        for client in clients:
            await client.close()


async def _chs_async(hub: RunningHub, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return await deferToThread(_chs, hub, *args)


@pytest_twisted.ensureDeferred
async def test_pull_takes_the_service_request_and_acknowledges_it_once(shared_hub: RunningHub, tmp_path: Path) -> None:
    """GLOBEX pulls ACME's Service_Request; one handed out twice is acknowledged again but applied once."""
    hub = shared_hub
    await _drain_mailboxes(hub)
    acme, globex = _client(hub, "ACME"), _client(hub, "GLOBEX")
    state = tmp_path / "globex.sqlite"
    pull = ["pull", "--once", *_connection(hub, "GLOBEX"), "--state", state]
    try:
        sent = await acme.send(build_transaction("Service_Request", requester_id="CHS-PULL-1", contract_id="C-100",
                                                 person=REQUESTER))
        assert sent.accepted
        # GLOBEX's CHS takes the document but its acknowledgement never reaches the hub.
        delivery_id, document = await globex.mailbox_next()
        assert etree.fromstring(document).findtext("RequesterID") == "CHS-PULL-1"
        with LocalIncidents(state) as store:
            first = await take_delivery(store, delivery_id, document)
        assert (first.acknowledged, first.duplicate) == (True, False)
        assert await globex.mailbox_next() is None  # handed out: invisible for a while
        await deferLater(reactor, 1.2)

        done = await _chs_async(hub, *pull)
        assert done.returncode == 0, done.stderr
        (line,) = done.stdout.splitlines()
        assert line.startswith(f"delivery {delivery_id}  Service_Request  CHS-PULL-1  Beginning_State  "
                               "Acknowledge=Yes (seen before"), line
        assert "0 taken, 1 seen before" in done.stderr
        row = hub.query("SELECT state, receiver_ack FROM deliveries WHERE id = :id", id=delivery_id)[0]
        assert row["state"] == "acknowledged" and row["receiver_ack"] == first.ack

        await acme.send(build_transaction("Service_Request", requester_id="CHS-PULL-2", contract_id="C-100",
                                          person=REQUESTER))
        done = await _chs_async(hub, *pull)
        assert done.returncode == 0, done.stderr
        assert re.fullmatch(r"delivery \d+  Service_Request  CHS-PULL-2  Beginning_State  Acknowledge=Yes\n",
                            done.stdout), done.stdout
        assert "1 taken, 0 seen before" in done.stderr
        empty = await _chs_async(hub, *pull)
        assert (empty.returncode, empty.stdout) == (0, "")
        assert "0 taken, 0 seen before" in empty.stderr
    finally:
        await acme.close()
        await globex.close()
    with LocalIncidents(state) as store:
        assert [h.direction for h in store.history("CHS-PULL-1")] == ["received"]
        assert [(i.requester_id, i.role, i.state) for i in sorted(store.incidents(), key=lambda i: i.requester_id)] \
            == [("CHS-PULL-1", "provider", "Beginning_State"), ("CHS-PULL-2", "provider", "Beginning_State")]


@pytest_twisted.ensureDeferred
async def test_the_pull_loop_polls_on_its_clock_and_feeds_the_callback(shared_hub: RunningHub,
                                                                       tmp_path: Path) -> None:
    """PullLoop polls at start and then every interval of its injected clock; the callback sees each document."""
    hub = shared_hub
    await _drain_mailboxes(hub)
    acme, globex = _client(hub, "ACME"), _client(hub, "GLOBEX")
    clock = Clock()
    seen: list[ReceivedTransaction] = []
    receipts: list[Receipt] = []
    store = LocalIncidents(tmp_path / "acme.sqlite")
    loop = PullLoop(acme, store, clock=clock, interval=30, on_transaction=seen.append, on_receipt=receipts.append)

    async def settle(count: int) -> None:
        for _ in range(200):
            if len(receipts) >= count:
                return
            await deferLater(reactor, 0.02)
        raise AssertionError(f"expected {count} receipts, got {receipts}")

    try:
        await acme.send(build_transaction("Service_Request", requester_id="CHS-LOOP-1", contract_id="C-100",
                                          person=REQUESTER))
        # Per incident, nothing reaches ACME before GLOBEX has acknowledged the request (SPEC §7).
        with LocalIncidents(tmp_path / "globex.sqlite") as globex_store:
            (taken,) = await PullLoop(globex, globex_store, clock=Clock()).poll_once()
        assert (taken.transaction_name, taken.acknowledged) == ("Service_Request", True)
        loop.start()
        await deferLater(reactor, 0.5)  # the first round found ACME's mailbox empty
        assert receipts == []
        entitled = await globex.send(build_transaction(
            "Entitlement", requester_id="CHS-LOOP-1", provider_id="GX-LOOP-1", entitled=True, priority=3,
            response_time="2026-11-23 09:00", person=PROVIDER))
        assert entitled.current_state == "Entitled"
        await deferLater(reactor, 0.5)
        assert receipts == [], "nothing is polled before the clock moves"
        clock.advance(30)
        await settle(1)
    finally:
        loop.stop()
        await acme.close()
        await globex.close()
    assert [(s.transaction_name, s.requester_id, s.provider_id, s.current_state) for s in seen] == [
        ("Entitlement", "CHS-LOOP-1", "GX-LOOP-1", "Entitled")]
    assert receipts[0].acknowledged
    incident = store.get("CHS-LOOP-1")
    assert (incident.role, incident.state, incident.provider_id) == ("requester", "Entitled", "GX-LOOP-1")
    store.close()


# -- push receiver -----------------------------------------------------------------------------


class _Pushes:
    """A PushReceiver with its own CA, and curl posting to it with chosen client certificates."""

    def __init__(self, hub: RunningHub, directory: Path) -> None:
        self.hub = hub
        ca_cert, ca_key = pki.make_ca("partner CHS CA")
        cert, key = pki.make_server_cert(ca_cert, ca_key)
        self.ca = directory / "partner-ca.pem"
        self.server_cert = directory / "receiver-cert.pem"
        self.server_key = directory / "receiver-key.pem"
        pki.write_cert(self.ca, ca_cert)
        pki.write_cert(self.server_cert, cert)
        pki.write_key(self.server_key, key)
        self.port = 0

    def post(self, body: bytes, delivery_id: int | None, *, client: str = "hub") -> tuple[int, bytes, int]:
        """(HTTP status or 0, body, curl exit status) for one POST."""
        certs = self.hub.certs_dir
        identity = {"hub": (certs / "hub-cert.pem", certs / "hub-key.pem"),
                    "ACME": (certs / "partners" / "ACME-cert.pem", certs / "partners" / "ACME-key.pem")}
        command = [CURL, "-sS", "--max-time", "20", "--cacert", str(self.ca), "-o", "-", "-w", "\n%{http_code}",
                   "-H", "Content-Type: application/xml", "--data-binary", "@-"]
        if client != "none":
            cert, key = identity[client]
            command += ["--cert", str(cert), "--key", str(key)]
        if delivery_id is not None:
            command += ["-H", f"Gsem-Delivery-Id: {delivery_id}"]
        done = subprocess.run([*command, f"https://127.0.0.1:{self.port}/chs/inbound"], input=body,
                              capture_output=True, timeout=30)
        content, _, status = done.stdout.rpartition(b"\n")
        return int(status or 0), content, done.returncode


@pytest_twisted.ensureDeferred
async def test_the_push_receiver_takes_each_delivery_once_from_the_hub_only(shared_hub: RunningHub,
                                                                            tmp_path: Path) -> None:
    """Pushed documents are acknowledged, deduplicated by delivery id, refused without the hub's certificate."""
    if CURL is None:
        pytest.skip("curl is not installed")
    pushes = _Pushes(shared_hub, tmp_path)
    store = LocalIncidents(tmp_path / "globex.sqlite")
    taken: list[ReceivedTransaction] = []
    fail_next = [True]

    def on_transaction(received: ReceivedTransaction) -> None:
        if received.requester_id == "CHS-PUSH-FLAKY" and fail_next[0]:
            fail_next[0] = False
            raise RuntimeError("the ticketing system is down")
        taken.append(received)

    hub_fingerprint = pki.fingerprint_sha256(pki.load_cert(shared_hub.certs_dir / "hub-cert.pem"))
    receiver = PushReceiver(store, port=0, server_cert=pushes.server_cert, server_key=pushes.server_key,
                            hub_ca=shared_hub.ca_cert, reactor=reactor, hub_fingerprint=hub_fingerprint,
                            on_transaction=on_transaction)
    pushes.port = (await receiver.start()).getHost().port
    request = (FIXTURES / "01-service-request.xml").read_bytes()
    try:
        status, body, _ = await deferToThread(pushes.post, request, 41)
        ack = etree.fromstring(body)
        assert (status, ack.findtext("Acknowledge"), ack.findtext("RequesterID")) == (200, "Yes", "ACME-INC-20931")
        assert ack_schema().validate(etree.ElementTree(ack))
        status, again, _ = await deferToThread(pushes.post, request, 41)
        assert (status, again) == (200, body), "a re-delivery gets the same acknowledgement"
        assert len(taken) == 1

        bad_status, bad_body, _ = await deferToThread(pushes.post, REJECTED_REQUEST, 42)
        refusal = etree.fromstring(bad_body)
        assert (bad_status, refusal.findtext("Acknowledge")) == (422, "No")
        assert "missing-mandatory" in [e.get("code") for e in refusal.findall("ERROR")]

        no_id, no_id_body, _ = await deferToThread(pushes.post, request, None)
        assert no_id == 400 and b"Gsem-Delivery-Id" in no_id_body

        flaky = request.replace(b"ACME-INC-20931", b"CHS-PUSH-FLAKY")
        down, _, _ = await deferToThread(pushes.post, flaky, 43)
        assert down == 503, "the CHS could not take it: the hub must try again"
        up, _, _ = await deferToThread(pushes.post, flaky, 43)
        assert up == 200
        assert [t.requester_id for t in taken] == ["ACME-INC-20931", "CHS-PUSH-FLAKY"]

        partner_status, _, _ = await deferToThread(pushes.post, request, 44, client="ACME")
        assert partner_status == 403, "another partner's certificate (same CA) is not the hub's"
        anonymous, _, curl_exit = await deferToThread(pushes.post, request, 45, client="none")
        assert anonymous == 0 and curl_exit != 0, "no client certificate: refused in the handshake"
    finally:
        await receiver.stop()
    assert [(h.delivery_id, h.acknowledged) for h in store.history()] == [(41, True), (42, False), (43, True)]
    store.close()


def test_gsem_chs_receive_takes_what_the_hub_pushes(shared_hub: RunningHub, tmp_path: Path) -> None:
    """With GLOBEX on push, the hub delivers ACME's request to 'gsem chs receive', which acknowledges it."""
    pushes = _Pushes(shared_hub, tmp_path)
    hub_fingerprint = pki.fingerprint_sha256(pki.load_cert(shared_hub.certs_dir / "hub-cert.pem"))
    out, err = tmp_path / "receive.out", tmp_path / "receive.err"
    state = tmp_path / "globex-push.sqlite"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [GSEM, "chs", "receive", "--port", "0", "--server-cert", str(pushes.server_cert),
             "--server-key", str(pushes.server_key), "--hub-ca", str(shared_hub.ca_cert),
             "--hub-fingerprint", hub_fingerprint, "--state", str(state)],
            stdout=stdout, stderr=stderr, env=_env(), preexec_fn=sigint_as_in_a_terminal)

    def wait_for(path: Path, pattern: str, seconds: float) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        while not (found := re.search(pattern, path.read_text())):
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, f"no {pattern!r} in {path.name}:\n{path.read_text()}"
            time.sleep(0.05)
        return found

    try:
        port = int(wait_for(err, r"receiving pushed documents on https://127\.0\.0\.1:(\d+)/", 30).group(1))
        with shared_hub.engine.begin() as conn:
            partners.set_delivery(conn, "GLOBEX", mode="push",
                                  config={"url": f"https://127.0.0.1:{port}/chs/inbound", "ca": str(pushes.ca)})
        status, ack = shared_hub.post("ACME", build_transaction(
            "Service_Request", requester_id="CHS-PUSHED-1", contract_id="C-100", person=REQUESTER))
        assert status == 200, etree.tostring(ack)
        line = wait_for(out, r"delivery (\d+)  Service_Request  CHS-PUSHED-1  Beginning_State  Acknowledge=Yes\n",
                        30)
        delivery_id = int(line.group(1))
        deadline = time.monotonic() + 15
        while (row := shared_hub.query("SELECT state, receiver_ack FROM deliveries WHERE id = :id",
                                       id=delivery_id)[0])["state"] != "acknowledged":
            assert time.monotonic() < deadline, row
            time.sleep(0.1)
        assert etree.fromstring(row["receiver_ack"]).findtext("RequesterID") == "CHS-PUSHED-1"
    finally:
        _pull_mode(shared_hub, "GLOBEX", 1)
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            # Say where it was stuck (kill -USR1 makes gsem dump its threads' stacks).
            process.send_signal(signal.SIGUSR1)  # gsem dumps its threads' stacks
            time.sleep(1)
            process.kill()
            pytest.fail(f"gsem chs receive did not stop within 15 s of SIGINT; its stderr:\n{err.read_text()}")
    assert code == 0, err.read_text()
    assert re.search(r"gsem chs: [1-9]\d* taken", err.read_text()), err.read_text()
    assert "Traceback" not in err.read_text()
    with LocalIncidents(state) as store:
        incident = store.get("CHS-PUSHED-1")
        assert (incident.role, incident.state) == ("provider", "Beginning_State")
