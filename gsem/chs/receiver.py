"""Receiving what the hub delivers to a partner: pushed to us, or pulled from our mailbox (SPEC §7).

Both ways end in :func:`take_delivery`: a delivery id seen before is answered again with
the acknowledgement we gave the first time and not applied again; a new document is
checked (hardened parser, schema, its transaction's matrix), handed to the optional
callback (the partner's ticketing system), recorded in :class:`LocalIncidents` and
acknowledged.  When the callback fails, nothing is recorded and nothing acknowledged:
the hub delivers it again later (at least once; the callback sees it again).

:class:`PushReceiver` is a small HTTPS server: it presents its own certificate and
requires a client certificate issued by the hub's CA (optionally exactly the hub's, by
SHA-256 fingerprint).  :class:`PullLoop` polls the hub's mailbox on an injected clock.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gsem.chs.builder import ack_document, document_facts
from gsem.chs.client import DELIVERY_ID_HEADER, HubClient, read_answer
from gsem.chs.state import LocalIncidents
from gsem.contract import Role
from gsem.errors import AckCode, GsemError, Problem
from gsem.pki import fingerprint_sha256
from gsem.validation import validate_document
from gsem.xmlsafe import ParseLimits

__all__ = [
    "ReceivedTransaction",
    "Receipt",
    "TransactionCallback",
    "check_received",
    "take_delivery",
    "PushReceiver",
    "PullLoop",
]

log = Logger()
_LIMITS = ParseLimits()


@dataclass(frozen=True)
class ReceivedTransaction:
    """A new, valid document from the hub, as the callback sees it."""

    delivery_id: int
    document: bytes
    transaction_name: str | None
    requester_id: str | None
    provider_id: str | None
    current_state: str | None


#: Called with each new valid transaction; may return an awaitable.  Raising means
#: "not taken": nothing is recorded or acknowledged, and the hub delivers it again.
TransactionCallback = Callable[[ReceivedTransaction], Awaitable[None] | None]


@dataclass(frozen=True)
class Receipt:
    """What became of one delivery."""

    delivery_id: int
    ack: bytes | None  # None when not taken (the callback failed)
    acknowledged: bool
    duplicate: bool
    transaction_name: str | None
    requester_id: str | None
    current_state: str | None
    errors: list[tuple[str, str | None, str]] = field(default_factory=list)
    failure: str | None = None  # why it was not taken

    @property
    def http_status(self) -> int:
        """The status a push receiver answers with (SPEC §5 codes; 503 when not taken)."""
        if self.ack is None:
            return 503
        if self.acknowledged:
            return 200
        try:
            return AckCode.from_code(self.errors[0][0]).http_status
        except (KeyError, IndexError):
            return 422

    def line(self) -> str:
        """One line for people: delivery, transaction, incident, state, outcome."""
        outcome = ("not taken: " + (self.failure or "?") if self.ack is None
                   else "Acknowledge=Yes" if self.acknowledged
                   else "Acknowledge=No " + ",".join(code for code, _, _ in self.errors))
        again = " (seen before: acknowledged again, not applied again)" if self.duplicate else ""
        return (f"delivery {self.delivery_id}  {self.transaction_name or '?'}  {self.requester_id or '?'}  "
                f"{self.current_state or '-'}  {outcome}{again}")


def check_received(document: bytes) -> list[Problem]:
    """Problems with a document the hub delivered (empty when it is fine).

    Delivered documents carry hub-set elements (CurrentState, Acknowledge) and may come
    from either party, so each sender's matrix of the transaction is tried and the
    state is not checked (the hub did that).
    """
    attempts: list[tuple[bool, list[Problem]]] = []
    for role in (Role.REQUESTER, Role.PROVIDER):
        inspection, spec = validate_document(document, role=role, check_states=False)
        if spec is not None and inspection.accepted:
            return []
        attempts.append((spec is not None, inspection.errors))
    # The errors against a matrix of the transaction say more than "wrong sender".
    return next((errors for matched, errors in attempts if matched), attempts[0][1])


async def take_delivery(store: LocalIncidents, delivery_id: int, document: bytes,
                        on_transaction: TransactionCallback | None = None) -> Receipt:
    """Deduplicate, check, hand over, record and acknowledge one delivery."""
    facts = document_facts(document)

    def receipt(ack: bytes | None, acknowledged: bool, duplicate: bool, errors: list[Problem] | None = None,
                failure: str | None = None) -> Receipt:
        return Receipt(delivery_id, ack, acknowledged, duplicate, facts["TransactionName"], facts["RequesterID"],
                       facts["CurrentState"], [(p.code.code, p.path, p.message) for p in errors or []], failure)

    previous = store.delivery_ack(delivery_id)
    if previous is not None:
        earlier = read_answer(200, previous)
        return Receipt(delivery_id, previous, earlier.accepted, True, facts["TransactionName"],
                       facts["RequesterID"], facts["CurrentState"], earlier.errors)
    problems = [p for p in check_received(document) if p.is_error]
    if problems:
        ack = ack_document(acknowledged=False, received=document, errors=problems)
        store.record_received(delivery_id, document, ack, acknowledged=False,
                              note=",".join(dict.fromkeys(p.code.code for p in problems)))
        return receipt(ack, False, False, problems)
    if on_transaction is not None:
        try:
            result = on_transaction(ReceivedTransaction(delivery_id, document, facts["TransactionName"],
                                                        facts["RequesterID"], facts["ProviderID"],
                                                        facts["CurrentState"]))
            if inspect.isawaitable(result):
                await result
        except Exception as e:  # the partner's own system failed: the hub must try again
            log.failure("handing delivery {delivery_id} to the CHS", delivery_id=delivery_id)
            return receipt(None, False, False, failure=f"{type(e).__name__}: {e}")
    ack = ack_document(acknowledged=True, received=document)
    if not store.record_received(delivery_id, document, ack, acknowledged=True):
        # The same delivery arrived twice at once (two connections): answer the first's ack.
        stored = store.delivery_ack(delivery_id)
        return receipt(stored, True, True)
    return receipt(ack, True, False)


# -- push --------------------------------------------------------------------------------


def _server_options(server_cert: Path, server_key: Path, hub_ca: Path) -> CertificateOptions:
    problems = []

    def read(path: Path, what: str, loader: Any) -> Any:
        try:
            return loader(Path(path).read_bytes())
        except OSError as e:
            problems.append(f"{path}: cannot read the {what}: {e.strerror or e}")
        except (ValueError, TypeError) as e:
            problems.append(f"{path}: not a PEM {what} ({e})")
        return None

    chain = read(server_cert, "server certificate", x509.load_pem_x509_certificates)
    key = read(server_key, "server key", lambda data: load_pem_private_key(data, password=None))
    cas = read(hub_ca, "hub CA certificate", x509.load_pem_x509_certificates)
    if chain and key is not None and chain[0].public_key() != key.public_key():
        problems.append(f"{server_key}: this key does not belong to the certificate in {server_cert}")
    if problems:
        raise GsemError("; ".join(problems))
    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:] or None,
        # With a trust root, the server requires and verifies a client certificate.
        trustRoot=trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(c)) for c in cas]),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        enableSessions=False,
        enableSessionTickets=False,
    )


def _peer_fingerprint(request: Request) -> str | None:
    transport = request.channel.transport
    for _ in range(4):
        get = getattr(transport, "getPeerCertificate", None)
        if get is not None:
            cert = get()
            return None if cert is None else fingerprint_sha256(cert.to_cryptography())
        transport = getattr(transport, "transport", None)
    return None


class PushedDocumentResource(Resource):
    """``POST`` (any path): one document from the hub with its delivery id in, our ACKNOWLEDGEMENT out."""

    isLeaf = True

    def __init__(self, receiver: PushReceiver) -> None:
        super().__init__()
        self.receiver = receiver

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 - Twisted's name
        request.setResponseCode(405)
        request.setHeader(b"Allow", b"POST")
        return b"The gsem hub POSTs SERVICE_INCIDENT documents here.\n"

    def render_POST(self, request: Request) -> int | bytes:  # noqa: N802 - Twisted's name
        receiver = self.receiver
        if receiver.hub_fingerprint is not None and _peer_fingerprint(request) != receiver.hub_fingerprint:
            request.setResponseCode(403)
            return b"only the hub may deliver here\n"
        request.content.seek(0)
        body = request.content.read(_LIMITS.max_bytes + 1)
        raw_id = request.getHeader(DELIVERY_ID_HEADER)
        problem, status = None, 0
        if len(body) > _LIMITS.max_bytes:
            problem = Problem(AckCode.TOO_LARGE, f"the body is over {_LIMITS.max_bytes} bytes")
            status = problem.code.http_status
        elif raw_id is None or not raw_id.strip().isdigit() or len(raw_id.strip()) > 18:
            # Without it a re-delivery could not be told apart: a bad request, not a bad document.
            problem = Problem(AckCode.MISSING_MANDATORY,
                              f"the {DELIVERY_ID_HEADER} header is missing or not a number")
            status = 400
        if problem is not None:
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", b"application/xml; charset=utf-8")
            return ack_document(acknowledged=False, received=body[:_LIMITS.max_bytes], errors=[problem])

        gone = [False]
        request.notifyFinish().addErrback(lambda _: gone.__setitem__(0, True))

        def respond(receipt: Receipt) -> None:
            receiver._report(receipt)
            if gone[0]:
                return  # the hub went away; it will deliver again and get the same answer
            request.setResponseCode(receipt.http_status)
            request.setHeader(b"Content-Type", b"application/xml; charset=utf-8")
            if receipt.ack is None:
                request.setHeader(b"Retry-After", b"5")
                request.write(ack_document(acknowledged=False, received=body, errors=[
                    Problem(AckCode.UNAVAILABLE, "the receiving system could not take it; send again")]))
            else:
                request.write(receipt.ack)
            request.finish()

        def failed(failure: Any) -> None:
            log.failure("receiving a pushed document", failure)
            if not gone[0]:
                request.setResponseCode(503)
                request.finish()

        d = Deferred.fromCoroutine(take_delivery(receiver.store, int(raw_id), body, receiver.on_transaction))
        d.addCallbacks(respond, failed)
        return NOT_DONE_YET


class PushReceiver:
    """An HTTPS endpoint for the hub's push deliveries (SPEC §7 push mode).

    Presents *server_cert*/*server_key*; accepts only clients whose certificate chains
    to *hub_ca* (and, with *hub_fingerprint*, is exactly that certificate).
    *on_receipt* is told about every delivery (for logs and progress lines).
    """

    def __init__(self, store: LocalIncidents, *, port: int, server_cert: Path, server_key: Path,
                 hub_ca: Path, reactor: Any = None, interface: str = "127.0.0.1",
                 hub_fingerprint: str | None = None, on_transaction: TransactionCallback | None = None,
                 on_receipt: Callable[[Receipt], None] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.store = store
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.hub_fingerprint = hub_fingerprint.replace(":", "").lower() if hub_fingerprint else None
        self.on_transaction = on_transaction
        self.on_receipt = on_receipt
        self._options = _server_options(server_cert, server_key, hub_ca)
        self.listening: IListeningPort | None = None

    def _report(self, receipt: Receipt) -> None:
        if self.on_receipt is not None:
            self.on_receipt(receipt)

    async def start(self) -> IListeningPort:
        """Listen; returns the port (``getHost().port`` when *port* was 0)."""
        context = self._options.getContext()
        context.set_options(SSL.OP_NO_RENEGOTIATION)
        site = Site(PushedDocumentResource(self), reactor=self.reactor)
        site.displayTracebacks = False
        site.noisy = False
        endpoint_type = TCP6ServerEndpoint if ":" in self.interface else TCP4ServerEndpoint
        endpoint = endpoint_type(self.reactor, self.port, interface=self.interface)
        # Twisted's ssl: endpoint strings cannot require client certificates; the
        # options can, so wrap the TCP endpoint ourselves (STYLE.md, TLS).
        self.listening = await endpoint.listen(TLSMemoryBIOFactory(self._options, False, site))
        return self.listening

    async def stop(self) -> None:
        """Stop listening."""
        if self.listening is not None:
            await self.listening.stopListening()
            self.listening = None


# -- pull --------------------------------------------------------------------------------


class PullLoop:
    """Polls the hub's mailbox every *interval* seconds on *clock*, takes and acks each document.

    A round takes documents until the mailbox is empty (at most *batch*).  A failed
    round is logged and the loop goes on.
    """

    def __init__(self, client: HubClient, store: LocalIncidents, *, clock: Any, interval: float = 5.0,
                 batch: int = 100, on_transaction: TransactionCallback | None = None,
                 on_receipt: Callable[[Receipt], None] | None = None) -> None:
        self.client = client
        self.store = store
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.on_transaction = on_transaction
        self.on_receipt = on_receipt
        self._loop = LoopingCall(self._round)
        self._loop.clock = clock
        self._done: Deferred | None = None

    async def poll_once(self) -> list[Receipt]:
        """One round: take documents until the mailbox is empty; the receipts, in order.

        A document whose acknowledgement the hub did not take (or that the callback did
        not take) ends the round: the mailbox would hand the same one out again.
        """
        receipts: list[Receipt] = []
        for _ in range(self.batch):
            item = await self.client.mailbox_next()
            if item is None:
                break
            delivery_id, document = item
            receipt = await take_delivery(self.store, delivery_id, document, self.on_transaction)
            if receipt.ack is not None:
                status = await self.client.mailbox_ack(delivery_id, receipt.ack)
                if status != 200:
                    receipt = replace(receipt, failure=f"the hub answered HTTP {status} to our acknowledgement")
            receipts.append(receipt)
            if self.on_receipt is not None:
                self.on_receipt(receipt)
            if receipt.ack is None or receipt.failure is not None:
                break
        return receipts

    async def _guarded_round(self) -> None:
        try:
            await self.poll_once()
        except GsemError as e:
            log.warn("polling the hub's mailbox failed: {error}", error=str(e))
        except Exception:
            log.failure("polling the hub's mailbox")

    def _round(self) -> Deferred:
        return Deferred.fromCoroutine(self._guarded_round())

    def start(self) -> Deferred:
        """Poll now and every *interval* seconds; the Deferred fires when :meth:`stop` is called."""
        self._done = self._loop.start(self.interval, now=True)
        return self._done

    def stop(self) -> None:
        """Stop polling (a round in progress finishes)."""
        if self._loop.running:
            self._loop.stop()
