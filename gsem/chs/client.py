"""Talking to the hub as a partner's CHS: transactions and the pull mailbox, over mutual TLS.

:class:`HubClient` keeps one persistent connection pool (treq over Twisted's ``Agent``),
presents the partner's client certificate, and verifies the hub's certificate against
the given CA *and* the host name in the URL (subjectAltName, via service_identity).

Sending is safe to retry: every attempt of one :meth:`HubClient.send` carries the same
``Idempotency-Key`` (or none, and then the hub keys it by the body's digest, SPEC §6), so
an answer lost on the way back is answered again with ``<Duplicate>Yes</Duplicate>``
instead of being applied twice.  Only connection failures and ``503 unavailable`` are
retried, a few times with jittered backoff on the injected clock; every other answer
is the hub's decision and is returned as it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import treq
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from lxml import etree
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.task import deferLater
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gsem.delivery.policy import RetryPolicy
from gsem.errors import DocumentRejected, GsemError
from gsem.xmlsafe import parse_document

__all__ = [
    "HubAnswer",
    "HubClient",
    "HubConnectionError",
    "HubProtocolError",
    "read_answer",
    "DELIVERY_ID_HEADER",
    "TRANSACTIONS_PATH",
    "MAILBOX_NEXT_PATH",
    "DEFAULT_RETRY",
]

#: The hub's delivery id on a pushed or pulled document; receivers deduplicate by it.
#: The same name as ``chs_adapters.base.DELIVERY_ID_HEADER``: adapters depend on gsem,
#: never the other way round (docs/chs-client.md).
DELIVERY_ID_HEADER = "Gsem-Delivery-Id"
TRANSACTIONS_PATH = "/sis/v1/transactions"
MAILBOX_NEXT_PATH = "/sis/v1/mailbox/next"
#: Up to 4 attempts in all, waiting at most 0.5, 1 and 2 s (full jitter) in between.
DEFAULT_RETRY = RetryPolicy(base=0.5, cap=4.0, max_attempts=4, max_age=60.0)
_CONTENT_TYPE = b"application/xml; charset=utf-8"


class HubConnectionError(GsemError):
    """The hub could not be reached (or kept failing) after every retry."""


class HubProtocolError(GsemError):
    """The hub answered something that is not what the protocol says it answers."""


@dataclass(frozen=True)
class HubAnswer:
    """The hub's ACKNOWLEDGEMENT of one transaction, read (SPEC §5).

    ``errors`` are ``(code, path, message)``; ``duplicate`` is true when the hub had
    already taken this transaction and answered it again (SPEC §6).
    """

    http_status: int
    document: bytes
    accepted: bool
    ack_id: str | None
    current_state: str | None
    errors: list[tuple[str, str | None, str]]
    duplicate: bool
    transaction_name: str | None = None
    requester_id: str | None = None
    provider_id: str | None = None
    warnings: list[tuple[str, str | None, str]] = field(default_factory=list)
    #: the SERVICE_INCIDENT a Query_Incident acknowledgement embeds, as bytes
    incident: bytes | None = None

    @property
    def error_codes(self) -> list[str]:
        """The distinct error codes, in order."""
        return list(dict.fromkeys(code for code, _, _ in self.errors))


def read_answer(http_status: int, body: bytes) -> HubAnswer:
    """Read the hub's ACKNOWLEDGEMENT *body*; :class:`HubProtocolError` if it is not one."""
    try:
        root = parse_document(body).getroot()
    except DocumentRejected as e:
        raise HubProtocolError(f"HTTP {http_status} without an acknowledgement ({e}): {body[:200]!r}") from None
    if root.tag != "ACKNOWLEDGEMENT":
        raise HubProtocolError(f"HTTP {http_status} answered with {root.tag}, not an ACKNOWLEDGEMENT")

    def text(tag: str) -> str | None:
        return (root.findtext(tag) or "").strip() or None

    def problems(tag: str) -> list[tuple[str, str | None, str]]:
        return [(e.get("code", ""), e.get("path"), (e.text or "").strip()) for e in root.findall(tag)]

    embedded = root.find("SERVICE_INCIDENT")
    return HubAnswer(
        http_status=http_status,
        document=body,
        accepted=text("Acknowledge") == "Yes",
        ack_id=text("AckID"),
        current_state=text("CurrentState"),
        errors=problems("ERROR"),
        duplicate=text("Duplicate") == "Yes",
        transaction_name=text("TransactionName"),
        requester_id=text("RequesterID"),
        provider_id=text("ProviderID"),
        warnings=problems("WARNING"),
        incident=None if embedded is None else etree.tostring(embedded, encoding="UTF-8"),
    )


def _load_pem(path: Path, what: str, loader: Any) -> Any:
    try:
        return loader(Path(path).read_bytes())
    except OSError as e:
        raise GsemError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise GsemError(f"{path}: not a PEM {what} ({e})") from None


@implementer(IPolicyForHTTPS)
class _MutualTLSPolicy:
    """Client TLS for the hub: our certificate, the hub checked against *ca* and its name."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        chain = _load_pem(cert, "client certificate", x509.load_pem_x509_certificates)
        private_key = _load_pem(key, "private key", lambda data: load_pem_private_key(data, password=None))
        if chain[0].public_key() != private_key.public_key():
            raise GsemError(f"{key}: this key does not belong to the certificate in {cert}")
        cas = _load_pem(ca, "CA certificate", x509.load_pem_x509_certificates)
        self._trust = trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(c)) for c in cas])
        # cryptography objects, not pyOpenSSL ones: pyOpenSSL deprecates its own in
        # Context.use_certificate (as gsem/tls.py does for the hub's side).
        self._extra = {"privateKey": private_key, "certificate": chain[0],
                       "extraCertChain": chain[1:] or None, "raiseMinimumTo": TLSVersion.TLSv1_2}
        self._creators: dict[str, Any] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802 - Twisted's name
        """The connection creator for *hostname* (verifies the hub's name), cached."""
        name = hostname.decode("ascii")
        if name not in self._creators:
            self._creators[name] = optionsForClientTLS(name, trustRoot=self._trust,
                                                       extraCertificateOptions=dict(self._extra))
        return self._creators[name]


_RETRYABLE = (
    net_error.ConnectError,  # refused, no route, DNS, TCP timeout
    net_error.ConnectionLost,
    net_error.ConnectionClosed,
    ResponseFailed,  # includes ResponseNeverReceived
    RequestTransmissionFailed,
    RequestNotSent,
    CancelledError,  # our own timeout
    net_error.TimeoutError,
)


class HubClient:
    """A partner's connection to the hub: ``send`` transactions, read the pull mailbox.

    *base_url* is ``https://host:port`` (a URL ending in ``/sis/v1/transactions`` is
    accepted too).  *cert*/*key* are the partner's client certificate and key, *ca* the
    CA the hub's server certificate must chain to.  *reactor* provides TCP and time
    (the global reactor when None); *timeout* bounds each attempt, in seconds.
    """

    def __init__(self, base_url: str, *, cert: Path, key: Path, ca: Path, reactor: Any = None,
                 timeout: float = 30.0, retry: RetryPolicy = DEFAULT_RETRY,
                 rng: random.Random | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise GsemError(f"{base_url!r}: the hub's URL must be https://HOST:PORT")
        self.base_url = f"https://{parts.netloc}"
        self.reactor = reactor
        self.timeout = timeout
        self.retry = retry
        self._rng = rng or random.Random()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._pool.retryAutomatically = False  # we retry POSTs ourselves, with the same key
        agent = Agent(reactor, contextFactory=_MutualTLSPolicy(cert, key, ca), pool=self._pool)
        self._http = treq.client.HTTPClient(agent)

    async def _request(self, method: str, path: str, *, body: bytes | None = None,
                       headers: dict[bytes, bytes] | None = None) -> tuple[int, Any, bytes]:
        """One request with retries on connection failures and 503; (status, headers, body)."""
        url = self.base_url + path
        started = self.reactor.seconds()
        attempts = 0
        while True:
            attempts += 1
            retry_after = None
            try:
                response = await self._http.request(method, url, data=body, headers=headers or {},
                                                    timeout=self.timeout, reactor=self.reactor)
                content = await treq.content(response)
            except _RETRYABLE as e:
                failure = f"{type(e).__name__}: {_reason(e)}"
                if _is_tls_refusal(e):
                    # A certificate problem does not go away by itself: say so at once.
                    raise HubConnectionError(f"TLS with the hub at {self.base_url} failed: {_reason(e)}") from None
            else:
                if response.code != 503:
                    return response.code, response.headers, content
                failure = "503 unavailable"
                retry_after = _retry_after(response.headers)
                last = (response.code, response.headers, content)
            if self.retry.exhausted(attempts, self.reactor.seconds() - started):
                if failure == "503 unavailable":
                    return last
                raise HubConnectionError(f"cannot reach the hub at {self.base_url} after {attempts} "
                                         f"attempt(s): {failure}")
            await deferLater(self.reactor, self.retry.delay(attempts, self._rng, retry_after))

    async def send(self, document: bytes, *, idempotency_key: str | None = None) -> HubAnswer:
        """POST one SERVICE_INCIDENT; the hub's acknowledgement, read.

        Retries (same body, same key) on connection failures and ``503``; raises
        :class:`HubConnectionError` when every attempt failed to get an answer, and
        :class:`HubProtocolError` when the answer is not an acknowledgement.
        """
        headers = {b"Content-Type": _CONTENT_TYPE}
        if idempotency_key is not None:
            headers[b"Idempotency-Key"] = idempotency_key.encode("utf-8")
        status, _, content = await self._request("POST", TRANSACTIONS_PATH, body=document, headers=headers)
        return read_answer(status, content)

    async def mailbox_next(self) -> tuple[int, bytes] | None:
        """The oldest document waiting in our pull mailbox: ``(delivery id, document)``, or None."""
        status, headers, content = await self._request("GET", MAILBOX_NEXT_PATH)
        if status == 204:
            return None
        if status != 200:
            said = content.decode("utf-8", "replace").strip()[:300]
            raise HubProtocolError(f"the hub's mailbox answered HTTP {status}" + (f": {said}" if said else ""))
        values = headers.getRawHeaders(DELIVERY_ID_HEADER.encode("ascii")) or []
        try:
            delivery_id = int(values[0])
        except (IndexError, ValueError):
            raise HubProtocolError(f"GET {MAILBOX_NEXT_PATH}: a document without a valid "
                                   f"{DELIVERY_ID_HEADER} header ({values!r})") from None
        return delivery_id, content

    async def mailbox_ack(self, delivery_id: int, ack: bytes) -> int:
        """POST our ACKNOWLEDGEMENT of mailbox delivery *delivery_id*; the HTTP status."""
        status, _, _ = await self._request("POST", f"/sis/v1/mailbox/{int(delivery_id)}/ack", body=ack,
                                           headers={b"Content-Type": _CONTENT_TYPE})
        return status

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._pool.closeCachedConnections()


def _reason(e: BaseException) -> str:
    if isinstance(e, ResponseFailed | RequestTransmissionFailed):
        return "; ".join(f.getErrorMessage() for f in e.reasons) or "no response"
    return str(e) or "timed out"


def _is_tls_refusal(e: BaseException) -> bool:
    reasons = e.reasons if isinstance(e, ResponseFailed | RequestTransmissionFailed) else []
    return any(f.check(SSL.Error, VerificationError) for f in reasons)


def _retry_after(headers: Any) -> float | None:
    values = headers.getRawHeaders(b"Retry-After") or []
    try:
        return float(values[0])
    except (IndexError, ValueError):
        return None
