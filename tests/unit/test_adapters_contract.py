"""The CHS adapter contract, checked the same way for the in-memory, spool and push adapters.

Each adapter is paired with a receiver the test controls: the in-memory adapter is its
own receiver; the spool's receiver reads the outbox and writes acknowledgement files;
push talks to a real Twisted HTTPS receiver on 127.0.0.1 with its own CA, which requires
the hub's client certificate (made with :mod:`gsem.pki`).  Then the push adapter's own
answers to HTTP statuses and network failures, the loader, and the delivery service
pushing through the real store to the real receiver.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import io
import json
import socket
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from lxml import etree
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chs_adapters.base import (
    DELIVERY_ID_HEADER,
    Accepted,
    Acknowledged,
    ChsAdapter,
    OutboundDelivery,
    PermanentFailure,
    TransientFailure,
)
from chs_adapters.loader import AdapterConfigError, AdapterContext, load_adapter
from chs_adapters.memory import InMemoryAdapter, receiver_ack_document
from chs_adapters.push import MutualTLSPolicy, PushAdapter, parse_retry_after
from chs_adapters.spool import SpoolAdapter
from gsem import pki
from gsem.db import deliveries, model, partners
from gsem.delivery.service import DeliveryService
from gsem.tls import PartnerTrustStore, listen_tls, partner_of

DOCUMENT = (b"<?xml version='1.0' encoding='UTF-8'?>\n<SERVICE_INCIDENT><TransactionName>Service_Request"
            b"</TransactionName><RequesterID>REQ-1</RequesterID><CurrentState>Beginning_State</CurrentState>"
            b"<Summary>Leak at the meter \xe2\x80\x94 urgent</Summary></SERVICE_INCIDENT>")


def outbound(delivery_id: int = 41, *, document: bytes = DOCUMENT, attempt: int = 1) -> OutboundDelivery:
    """A delivery as the service hands it to an adapter."""
    return OutboundDelivery(delivery_id=delivery_id, recipient_id="GLOBEX", incident_id=7,
                            transaction_name="Service_Request", requester_ref="REQ-1", document=document,
                            attempt=attempt, message_id=1000 + delivery_id)


# -- a PKI: the hub's (dev PKI) and a partner's own CA for its HTTPS server ---------------------


@dataclass(frozen=True)
class Certs:
    """Files for both sides of a push."""

    hub: pki.DevPki
    partner_ca: Path
    partner_cert: Path
    partner_key: Path
    wrong_name_cert: Path
    wrong_name_key: Path
    stranger_ca: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """The hub's development PKI, and a partner CA with a server certificate for 127.0.0.1."""
    root = tmp_path_factory.mktemp("push-pki")
    hub = pki.create_dev_pki(root / "hub", [])
    ca_cert, ca_key = pki.make_ca("Globex CA")
    server_cert, server_key = pki.make_server_cert(ca_cert, ca_key)
    other_cert, other_key = pki.make_server_cert(ca_cert, ca_key, common_name="other.example",
                                                 dns_names=("other.example",), ip_addresses=())
    stranger, _ = pki.make_ca("Stranger CA")
    files = Certs(hub, root / "partner-ca.pem", root / "partner-cert.pem", root / "partner-key.pem",
                  root / "other-cert.pem", root / "other-key.pem", root / "stranger-ca.pem")
    pki.write_cert(files.partner_ca, ca_cert)
    pki.write_cert(files.partner_cert, server_cert)
    pki.write_key(files.partner_key, server_key)
    pki.write_cert(files.wrong_name_cert, other_cert)
    pki.write_key(files.wrong_name_key, other_key)
    pki.write_cert(files.stranger_ca, stranger)
    return files


# -- the partner's HTTPS receiver ----------------------------------------------------------------


@dataclass
class Reception:
    """One request as the receiver saw it."""

    delivery_id: str | None
    content_type: str | None
    body: bytes
    client_fingerprint: str | None
    duplicate: bool


@dataclass
class ReceiverScript:
    """What the HTTPS receiver answers: acknowledgements, or scripted HTTP answers first."""

    refuse: list[tuple[str, str]] | None = None  # Acknowledge=No with these ERRORs
    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    silent: bool = False  # never answer


class InboundResource(Resource):
    """A partner's CHS endpoint: dedupes by delivery id, answers an ACKNOWLEDGEMENT."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.receptions: list[Reception] = []
        self.script = ReceiverScript()
        self.waiting: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:  # noqa: N802
        """Record the document; answer as scripted."""
        identity = partner_of(request.channel.transport)
        delivery_id = request.getHeader(DELIVERY_ID_HEADER)
        body = request.content.read()
        seen = {r.delivery_id for r in self.receptions}
        self.receptions.append(Reception(delivery_id, request.getHeader("Content-Type"), body,
                                         identity.fingerprint if identity else None, delivery_id in seen))
        if self.script.silent:
            self.waiting.append(request)
            return NOT_DONE_YET
        if self.script.answers:
            status, headers, answer = self.script.answers.pop(0)
            request.setResponseCode(status)
            for name, value in headers.items():
                request.setHeader(name, value)
            return answer
        refuse = self.script.refuse
        ack = receiver_ack_document(outbound(int(delivery_id or 0)), acknowledged=refuse is None, errors=refuse)
        request.setResponseCode(200 if refuse is None else 422)
        request.setHeader("Content-Type", "application/xml")
        return ack


@dataclass
class HttpsReceiver:
    """A running receiver and its URL."""

    resource: InboundResource
    port: Any

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port.getHost().port}/chs/inbound"


async def start_receiver(certs: Certs, *, cert: Path | None = None, key: Path | None = None) -> HttpsReceiver:
    """Listen on 127.0.0.1 with mutual TLS: only the hub's certificate gets in."""
    hub_fingerprint = pki.fingerprint_sha256(certs.hub.hub_cert.read_bytes())
    trust = PartnerTrustStore([certs.hub.ca_cert], [certs.hub.crl], cert or certs.partner_cert,
                              key or certs.partner_key, {hub_fingerprint: "HUB"}.get)
    resource = InboundResource()
    root = Resource()
    chs = Resource()
    root.putChild(b"chs", chs)
    chs.putChild(b"inbound", resource)
    site = Site(root)
    site.noisy = False
    port = await listen_tls(reactor, 0, "127.0.0.1", site, trust)
    return HttpsReceiver(resource, port)


# -- the three receivers behind one interface -----------------------------------------------------


class Pairing:
    """An adapter and the receiver at its other end, as the shared tests need them."""

    adapter: ChsAdapter

    def script_refusal(self, code: str, message: str) -> None:
        """Make the receiver answer Acknowledge=No with one ERROR."""
        raise NotImplementedError

    def received(self) -> list[tuple[int, bytes, bool]]:
        """(delivery id, document, recognised as a re-delivery) of everything that arrived."""
        raise NotImplementedError

    async def final_answer(self, delivery: OutboundDelivery) -> Any:
        """Deliver, then the receiver's final word (a spool's comes back as a file)."""
        return await self.adapter.deliver(delivery)

    async def close(self) -> None:
        await self.adapter.close()


class MemoryPairing(Pairing):
    def __init__(self) -> None:
        self.adapter = InMemoryAdapter()

    def script_refusal(self, code: str, message: str) -> None:
        self.adapter.reject(code, message)

    def received(self) -> list[tuple[int, bytes, bool]]:
        seen: list[tuple[int, bytes, bool]] = []
        for attempt in self.adapter.attempts:
            kept = self.adapter.get(attempt.delivery_id)
            if kept is not None:
                seen.append((attempt.delivery_id, kept.document, any(s[0] == attempt.delivery_id for s in seen)))
        return seen


class SpoolPairing(Pairing):
    """The receiver lists the outbox and answers with files in the acks directory."""

    def __init__(self, root: Path) -> None:
        self.adapter = SpoolAdapter(root / "outbox", root / "acks")
        self.refusal: list[tuple[str, str]] | None = None
        self.taken: list[tuple[int, bytes, bool]] = []

    def script_refusal(self, code: str, message: str) -> None:
        self.refusal = [(code, message)]

    def _take(self) -> None:
        # What a receiver does: read the files in name order, remember what it took, remove them.
        for path in sorted(self.adapter.outbox.iterdir()):
            if path.name.startswith("."):
                continue
            delivery_id = int(path.stem.split("-")[1])
            self.taken.append((delivery_id, path.read_bytes(), any(t[0] == delivery_id for t in self.taken)))
            path.unlink()

    def received(self) -> list[tuple[int, bytes, bool]]:
        self._take()
        return list(self.taken)

    async def final_answer(self, delivery: OutboundDelivery) -> Any:
        result = await self.adapter.deliver(delivery)
        assert isinstance(result, Accepted)
        self._take()
        ack = receiver_ack_document(delivery, acknowledged=self.refusal is None, errors=self.refusal)
        (self.adapter.acks / f"{delivery.delivery_id}-answer.xml").write_bytes(ack)
        (found,) = self.adapter.poll_acks()
        assert found.delivery_id == delivery.delivery_id
        self.adapter.settle(found)
        if found.acknowledged:
            return Acknowledged(found.receiver_ack)
        return PermanentFailure(found.error or "", receiver_ack=found.receiver_ack)


class PushPairing(Pairing):
    def __init__(self, receiver: HttpsReceiver, certs: Certs) -> None:
        self.receiver = receiver
        self.certs = certs
        self.adapter = PushAdapter(receiver.url, hub_cert=certs.hub.hub_cert, hub_key=certs.hub.hub_key,
                                   partner_ca=certs.partner_ca, timeout=10, reactor=reactor)

    def script_refusal(self, code: str, message: str) -> None:
        self.receiver.resource.script.refuse = [(code, message)]

    def received(self) -> list[tuple[int, bytes, bool]]:
        hub = pki.fingerprint_sha256(self.certs.hub.hub_cert.read_bytes())
        assert {r.client_fingerprint for r in self.receiver.resource.receptions} <= {hub}
        return [(int(r.delivery_id), r.body, r.duplicate) for r in self.receiver.resource.receptions]

    async def close(self) -> None:
        await self.adapter.close()
        await self.receiver.port.stopListening()


@pytest_twisted.async_yield_fixture(params=["memory", "spool", pytest.param("push", marks=pytest.mark.integration)])
async def pairing(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pairing]:
    """Each adapter with its receiver."""
    if request.param == "memory":
        made: Pairing = MemoryPairing()
    elif request.param == "spool":
        made = SpoolPairing(tmp_path)
    else:
        made = PushPairing(await start_receiver(request.getfixturevalue("certs")), request.getfixturevalue("certs"))
    yield made
    await made.close()


# -- the contract ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_document_arrives_intact_with_its_delivery_id(pairing: Pairing) -> None:
    """The receiver gets the exact bytes, under the hub's delivery id."""
    result = await pairing.adapter.deliver(outbound(41))
    assert isinstance(result, Acknowledged | Accepted)
    assert pairing.received() == [(41, DOCUMENT, False)]


@pytest_twisted.ensureDeferred
async def test_a_receivers_yes_is_acknowledged_with_its_document(pairing: Pairing) -> None:
    """Acknowledge=Yes ends as Acknowledged, carrying the receiver's ACKNOWLEDGEMENT."""
    result = await pairing.final_answer(outbound(42))
    assert isinstance(result, Acknowledged)
    assert etree.fromstring(result.receiver_ack).findtext("Acknowledge") == "Yes"


@pytest_twisted.ensureDeferred
async def test_a_receivers_no_is_permanent_with_its_error_codes(pairing: Pairing) -> None:
    """Acknowledge=No ends as PermanentFailure naming the receiver's codes, its document kept."""
    pairing.script_refusal("unknown-incident", "no such call REQ-1")
    result = await pairing.final_answer(outbound(43))
    assert isinstance(result, PermanentFailure)
    assert "unknown-incident" in result.error and "no such call REQ-1" in result.error
    assert etree.fromstring(result.receiver_ack).findtext("Acknowledge") == "No"


@pytest_twisted.ensureDeferred
async def test_a_redelivery_is_recognisable_by_the_receiver(pairing: Pairing) -> None:
    """The same delivery sent twice arrives under the same id: the receiver knows it has it."""
    await pairing.adapter.deliver(outbound(44))
    await pairing.adapter.deliver(outbound(44, attempt=2))
    arrived = pairing.received()
    assert [(i, dup) for i, _, dup in arrived] == [(44, False), (44, True)] or arrived == [(44, DOCUMENT, False)]
    assert {doc for _, doc, _ in arrived} == {DOCUMENT}


# -- spool specifics ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_spool_names_sort_in_message_order_and_a_rewrite_replaces_the_file(tmp_path: Path) -> None:
    """Outbox names sort by message id; writing a delivery again leaves one file, whole."""
    spool = SpoolAdapter(tmp_path / "out", tmp_path / "acks")
    await spool.deliver(OutboundDelivery(7, "GLOBEX", 1, "Entitlement", "R", b"<B/>", 1, message_id=20))
    await spool.deliver(OutboundDelivery(9, "GLOBEX", 2, "Service_Request", "S", b"<A/>", 1, message_id=3))
    await spool.deliver(OutboundDelivery(7, "GLOBEX", 1, "Entitlement", "R", b"<B/>", 2, message_id=20))
    assert sorted(p.name for p in spool.outbox.iterdir()) == [
        "000000000003-000000000009.xml", "000000000020-000000000007.xml"]


@pytest_twisted.ensureDeferred
async def test_spool_rejects_ack_files_it_cannot_read(tmp_path: Path) -> None:
    """Malformed or misnamed acknowledgement files go to rejected/ and are not returned."""
    spool = SpoolAdapter(tmp_path / "out", tmp_path / "acks")
    (spool.acks / "12.xml").write_bytes(b"<ACKNOWLEDGEMENT><Acknowledge>Maybe</Acknowledge></ACKNOWLEDGEMENT>")
    (spool.acks / "13.xml").write_bytes(b"<!DOCTYPE x [<!ENTITY e 'x'>]><ACKNOWLEDGEMENT/>")
    (spool.acks / "answer.xml").write_bytes(receiver_ack_document(outbound(14), acknowledged=True))
    (spool.acks / ".15.xml.tmp").write_bytes(b"half")
    (spool.acks / "0016.xml").write_bytes(receiver_ack_document(outbound(16), acknowledged=True))
    found = spool.poll_acks()
    assert [(a.delivery_id, a.acknowledged) for a in found] == [(16, True)]
    assert sorted(p.name for p in spool.rejected.iterdir()) == ["12.xml", "13.xml", "answer.xml"]
    assert (spool.acks / ".15.xml.tmp").exists()


# -- push specifics -----------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def receiver(certs: Certs) -> AsyncIterator[HttpsReceiver]:
    """A running HTTPS receiver (stopped after the test)."""
    made = await start_receiver(certs)
    yield made
    await made.port.stopListening()


async def push_once(certs: Certs, url: str, *, ca: Path | None = None, timeout: float = 10) -> Any:
    adapter = PushAdapter(url, hub_cert=certs.hub.hub_cert, hub_key=certs.hub.hub_key,
                          partner_ca=ca or certs.partner_ca, timeout=timeout, reactor=reactor)
    try:
        return await adapter.deliver(outbound(50))
    finally:
        await adapter.close()



@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_503_with_retry_after_is_transient(certs: Certs, receiver: HttpsReceiver) -> None:
    """HTTP 503 with Retry-After: 7 is a transient failure that asks for 7 s."""
    receiver.resource.script.answers.append((503, {"Retry-After": "7"}, b"busy"))
    result = await push_once(certs, receiver.url)
    assert isinstance(result, TransientFailure)
    assert (result.retry_after, result.http_status) == (7.0, 503)


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_400_is_permanent(certs: Certs, receiver: HttpsReceiver) -> None:
    """HTTP 400 without an acknowledgement is a permanent failure naming the status."""
    receiver.resource.script.answers.append((400, {}, b"bad request"))
    result = await push_once(certs, receiver.url)
    assert isinstance(result, PermanentFailure)
    assert "HTTP 400" in result.error and result.http_status == 400


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_2xx_without_an_acknowledgement_is_transient(certs: Certs, receiver: HttpsReceiver) -> None:
    """A 200 that is not an ACKNOWLEDGEMENT proves nothing: it is tried again."""
    receiver.resource.script.answers.append((200, {}, b"OK"))
    result = await push_once(certs, receiver.url)
    assert isinstance(result, TransientFailure)
    assert "receiver answered without an acknowledgement" in result.error


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_503_with_acknowledge_no_is_still_transient(certs: Certs, receiver: HttpsReceiver) -> None:
    """A receiver's ``unavailable`` (503, Acknowledge=No) means send again, not dead."""
    ack = receiver_ack_document(outbound(50), acknowledged=False, errors=[("unavailable", "store down")])
    receiver.resource.script.answers.append((503, {"Retry-After": "1"}, ack))
    result = await push_once(certs, receiver.url)
    assert isinstance(result, TransientFailure) and "unavailable: store down" in result.error


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_connection_refused_is_transient(certs: Certs) -> None:
    """Nobody listening: a transient failure saying the connection was refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await push_once(certs, f"https://127.0.0.1:{port}/chs/inbound")
    assert isinstance(result, TransientFailure)
    assert "refused" in result.error and result.http_status is None


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_to_a_server_of_another_ca_is_a_tls_failure(certs: Certs, receiver: HttpsReceiver) -> None:
    """A server certificate not from the partner's CA is refused before any byte is sent."""
    result = await push_once(certs, receiver.url, ca=certs.stranger_ca)
    assert isinstance(result, TransientFailure)
    assert "TLS" in result.error and "certificate verify failed" in result.error
    assert receiver.resource.receptions == []


def _chained_hub_cert(certs: Certs, directory: Path) -> Path:
    """The hub's certificate followed by its CA's, as a file with a chain."""
    chained = directory / "hub-chain.pem"
    chained.write_bytes(certs.hub.hub_cert.read_bytes() + certs.hub.ca_cert.read_bytes())
    return chained


def test_the_client_tls_context_is_built_without_deprecated_pyopenssl_objects(certs: Certs, tmp_path: Path) -> None:
    """pyOpenSSL 24.3+ deprecates its own X509 and PKey in Context calls: the push client
    hands it cryptography objects, its certificate chain included."""
    policy = MutualTLSPolicy(_chained_hub_cert(certs, tmp_path), certs.hub.hub_key, certs.partner_ca)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        # The context is made with the first connection, for a TLS protocol as a push makes one.
        creator = policy.creatorForNetloc(b"127.0.0.1", 8443)
        tls = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Protocol)).buildProtocol(None)
        connection = creator.clientConnectionForTLS(tls)
    presented = connection.get_certificate()
    assert presented is not None
    assert presented.to_cryptography() == x509.load_pem_x509_certificate(certs.hub.hub_cert.read_bytes())


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_presents_a_certificate_chain(certs: Certs, receiver: HttpsReceiver, tmp_path: Path) -> None:
    """A hub certificate file with its chain is presented whole, and the push goes through."""
    adapter = PushAdapter(receiver.url, hub_cert=_chained_hub_cert(certs, tmp_path), hub_key=certs.hub.hub_key,
                          partner_ca=certs.partner_ca, timeout=10, reactor=reactor)
    try:
        result = await adapter.deliver(outbound(51))
    finally:
        await adapter.close()
    assert isinstance(result, Acknowledged)
    assert len(receiver.resource.receptions) == 1


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_checks_the_host_name(certs: Certs) -> None:
    """A certificate from the right CA but for another host name is refused."""
    other = await start_receiver(certs, cert=certs.wrong_name_cert, key=certs.wrong_name_key)
    try:
        result = await push_once(certs, other.url)
    finally:
        await other.port.stopListening()
    assert isinstance(result, TransientFailure) and "TLS" in result.error
    assert other.resource.receptions == []


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_times_out_when_the_receiver_never_answers(certs: Certs, receiver: HttpsReceiver) -> None:
    """A receiver that takes the request and says nothing is a transient failure after the timeout."""
    receiver.resource.script.silent = True
    result = await push_once(certs, receiver.url, timeout=0.5)
    assert isinstance(result, TransientFailure) and "no answer" in result.error and "0.5 s" in result.error
    for request in receiver.resource.waiting:
        request.transport.loseConnection()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_push_sends_xml_with_the_delivery_id_and_reuses_its_connection(
        certs: Certs, receiver: HttpsReceiver) -> None:
    """Content-Type is application/xml; two deliveries share one persistent connection."""
    adapter = PushAdapter(receiver.url, hub_cert=certs.hub.hub_cert, hub_key=certs.hub.hub_key,
                          partner_ca=certs.partner_ca, timeout=10, reactor=reactor)
    peers: list[Any] = []
    original = receiver.resource.render_POST

    def remember(request: Request) -> Any:
        peers.append(request.channel.transport.getPeer().port)
        return original(request)

    receiver.resource.render_POST = remember  # type: ignore[method-assign]
    try:
        assert isinstance(await adapter.deliver(outbound(51)), Acknowledged)
        assert isinstance(await adapter.deliver(outbound(52)), Acknowledged)
    finally:
        await adapter.close()
    assert [r.content_type for r in receiver.resource.receptions] == ["application/xml"] * 2
    assert [r.delivery_id for r in receiver.resource.receptions] == ["51", "52"]
    assert len(set(peers)) == 1


def test_retry_after_as_seconds_or_http_date() -> None:
    """Retry-After is read as delta-seconds or as an HTTP date relative to the clock."""
    now = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)
    date = email.utils.format_datetime(now + dt.timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(b"7", now.timestamp()) == 7.0
    assert parse_retry_after(date.encode(), now.timestamp()) == 90.0
    assert parse_retry_after(b"soon", now.timestamp()) is None


# -- the loader -----------------------------------------------------------------------------------


def _context(certs: Certs, tmp_path: Path) -> AdapterContext:
    return AdapterContext(reactor=reactor, hub_cert=certs.hub.hub_cert, hub_key=certs.hub.hub_key,
                          data_dir=tmp_path)


@pytest_twisted.ensureDeferred
async def test_the_loader_builds_each_mode_from_partner_settings(certs: Certs, tmp_path: Path) -> None:
    """push, spool, a short adapter name and a module:Class path each give their adapter."""
    context = _context(certs, tmp_path)
    push = load_adapter("P", "push", {"url": "https://127.0.0.1:1/x", "ca": str(certs.partner_ca),
                                      "timeout": 3, "retry": {"base": 2}}, context)
    spool = load_adapter("S", "spool", {"outbox": "out", "acks": "acks"}, context)
    instance = uuid.uuid4().hex
    short = load_adapter("M", "adapter", {"adapter": "memory", "options": {"instance": instance}}, context)
    dotted = load_adapter("M", "adapter", {"adapter": "chs_adapters.memory:InMemoryAdapter",
                                           "options": {"instance": instance}}, context)
    assert isinstance(push, PushAdapter) and push.timeout == 3
    assert isinstance(spool, SpoolAdapter) and spool.outbox == tmp_path / "out"
    assert short is dotted is InMemoryAdapter.named(instance)
    await push.close()


@pytest.mark.parametrize(("mode", "config", "says"), [
    ("adapter", {"adapter": "nowhere"}, "cannot import chs_adapters.nowhere"),
    ("adapter", {"adapter": "chs_adapters.memory:Nothing"}, "has no Nothing"),
    ("push", {"url": "http://plain.example/"}, "https://"),
    ("spool", {"outbox": "o"}, "acks"),
    ("pull", {}, "mailbox"),
])
def test_the_loader_names_the_partner_and_the_problem(certs: Certs, tmp_path: Path, mode: str,
                                                      config: dict[str, Any], says: str) -> None:
    """Unusable settings raise one error naming the partner and what is wrong."""
    with pytest.raises(AdapterConfigError) as raised:
        load_adapter("GLOBEX", mode, config, _context(certs, tmp_path))
    assert "GLOBEX" in str(raised.value) and says in str(raised.value)



@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_caller_giving_up_cancels_the_push(certs: Certs, receiver: HttpsReceiver) -> None:
    """Cancelling a push in flight raises CancelledError (not a failure the service would record)."""
    receiver.resource.script.silent = True
    adapter = PushAdapter(receiver.url, hub_cert=certs.hub.hub_cert, hub_key=certs.hub.hub_key,
                          partner_ca=certs.partner_ca, timeout=10, reactor=reactor)
    attempt = Deferred.fromCoroutine(adapter.deliver(outbound(60)))
    await deferLater(reactor, 0.3)
    attempt.cancel()
    with pytest.raises(CancelledError):
        await attempt
    await adapter.close()
    for request in receiver.resource.waiting:
        request.transport.loseConnection()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_the_delivery_service_pushes_through_the_real_store(
        certs: Certs, receiver: HttpsReceiver, migrated_database: Any, tmp_path: Path) -> None:
    """A pending delivery to a push partner reaches its HTTPS endpoint and is recorded acknowledged."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def setup(conn: Any) -> int:
        partners.add_partner(conn, "ACME", "Acme")
        partners.add_partner(conn, "GLOBEX", "Globex")
        partners.set_delivery(conn, "GLOBEX", mode="push", config={"url": receiver.url, "ca": str(certs.partner_ca)})
        incident = conn.execute(model.incidents.insert().values(
            requester_id="ACME", provider_id="GLOBEX", requester_ref="REQ-1", state="Beginning_State",
            document=b"<SERVICE_INCIDENT/>", problem_with_request=False, version=1, created_at=now,
            updated_at=now)).inserted_primary_key[0]
        message = conn.execute(model.messages.insert().values(
            partner_id="ACME", cert_fingerprint="0" * 64, received_at=now, body=DOCUMENT, digest="0" * 64,
            idempotency_key="k", transaction_name="Service_Request", requester_ref="REQ-1", incident_id=incident,
            accepted=True, ack_id="A" * 26, timings="{}")).inserted_primary_key[0]
        return conn.execute(model.deliveries.insert().values(
            message_id=message, incident_id=incident, recipient_id="GLOBEX", state="pending", document=DOCUMENT,
            attempts=0, next_attempt_at=now, created_at=now, updated_at=now, transaction_name="Service_Request",
            requester_ref="REQ-1")).inserted_primary_key[0]

    delivery_id = await migrated_database.run(setup)
    log = io.StringIO()
    service = DeliveryService(migrated_database, reactor, owner="node-a", hub_cert=certs.hub.hub_cert,
                              hub_key=certs.hub.hub_key, log_stream=log, data_dir=tmp_path)
    service.start()
    try:
        for _ in range(50):
            stored = (await migrated_database.run(deliveries.get_delivery, delivery_id)).delivery
            if stored.state != "pending":
                break
            await deferLater(reactor, 0.1)
    finally:
        await service.stop()
    assert stored.state == "acknowledged" and b"<Acknowledge>Yes</Acknowledge>" in stored.receiver_ack
    assert [(r.delivery_id, r.body) for r in receiver.resource.receptions] == [(str(delivery_id), DOCUMENT)]
    (line,) = [json.loads(x) for x in log.getvalue().splitlines()]
    assert (line["outcome"], line["http_status"], line["mode"]) == ("acknowledged", 200, "push")
