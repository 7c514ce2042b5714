"""Delivery by HTTPS POST over mutual TLS to the partner's endpoint (SPEC §7, push).

The hub presents its own certificate (``gsem.pki`` gives it clientAuth) and checks the
partner's server certificate against the partner's CA file, host name included
(``optionsForClientTLS`` with ``service_identity``).  The request carries the document
as ``application/xml`` and the delivery id in ``Gsem-Delivery-Id``, by which the
receiver recognises a re-delivery.  The receiver answers with an ACKNOWLEDGEMENT:

=====================================  ===========================================
answer                                 result
=====================================  ===========================================
2xx and ``Acknowledge=Yes``            :class:`Acknowledged` (its document kept)
``Acknowledge=No`` (4xx or 2xx)        :class:`PermanentFailure`, its ERRORs kept
other 4xx                              :class:`PermanentFailure`
429, 5xx (whatever the body)           :class:`TransientFailure`, ``Retry-After`` kept
2xx without an ACKNOWLEDGEMENT, 3xx    :class:`TransientFailure`
refused, reset, timeout, TLS failure   :class:`TransientFailure` saying which
=====================================  ===========================================

429 and 5xx stay transient even with ``Acknowledge=No``: in SIS the codes that go with
them (``rate-limited``, ``unavailable``, SPEC §5) mean "nothing was kept, send again".

Connections are kept open between deliveries (one persistent pool per partner).
"""

from __future__ import annotations

import email.utils
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from OpenSSL import SSL
from treq import collect
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from chs_adapters.base import (
    DELIVERY_ID_HEADER,
    Acknowledged,
    DeliveryResult,
    MalformedReceiverAck,
    OutboundDelivery,
    PermanentFailure,
    TransientFailure,
    read_receiver_ack,
)

__all__ = ["PushAdapter", "MutualTLSPolicy", "parse_retry_after", "MAX_RESPONSE_BYTES",
           "DEFAULT_TIMEOUT"]

#: An acknowledgement is a few KiB; anything longer than this is cut off and refused.
MAX_RESPONSE_BYTES = 1024 * 1024
#: Seconds for connecting, sending and reading the answer, unless the partner's config says.
DEFAULT_TIMEOUT = 30.0


class _TooLong(Exception):
    pass


def _load_chain(path: Path) -> list[x509.Certificate]:
    data = Path(path).read_bytes()
    chain = x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else [
        x509.load_der_x509_certificate(data)]
    if not chain:
        raise ValueError(f"{path}: no certificate in the file")
    return chain


@implementer(IPolicyForHTTPS)
class MutualTLSPolicy:
    """TLS for outgoing connections: present *cert*/*key*, trust only *ca*, check the host name.

    *ca* None trusts the platform's CAs.  The files are read again when they change, so
    rotating the hub's certificate needs no restart.
    """

    def __init__(self, cert: Path, key: Path, ca: Path | None) -> None:
        self.cert = Path(cert)
        self.key = Path(key)
        self.ca = Path(ca) if ca is not None else None
        self._stamp: tuple[Any, ...] | None = None
        # The client certificate, its key and the rest of its chain, as cryptography objects:
        # pyOpenSSL 24.3+ deprecates its own X509 and PKey in the Context calls they reach.
        self._client_cert: tuple[x509.Certificate, PrivateKeyTypes] | None = None
        self._extra_chain: list[x509.Certificate] = []
        self._trust: Any = None
        self._load()

    def _files_stamp(self) -> tuple[Any, ...]:
        stamp = []
        for path in (self.cert, self.key, self.ca):
            if path is None:
                continue
            st = os.stat(path)
            stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamp)

    def _load(self) -> None:
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return
        chain = _load_chain(self.cert)
        self._client_cert = (chain[0], load_pem_private_key(self.key.read_bytes(), password=None))
        self._extra_chain = chain[1:]
        if self.ca is None:
            self._trust = platformTrust()
        else:
            self._trust = trustRootFromCertificates(
                [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in _load_chain(self.ca)])
        self._stamp = stamp

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802 - Twisted's name
        """A client connection creator for *hostname*:*port* (IPolicyForHTTPS)."""
        self._load()
        assert self._client_cert is not None
        certificate, key = self._client_cert
        # What optionsForClientTLS's clientCertificate would pass on, as cryptography objects.
        extra: dict[str, Any] = {"raiseMinimumTo": TLSVersion.TLSv1_2, "certificate": certificate,
                                 "privateKey": key}
        if self._extra_chain:
            extra["extraCertChain"] = self._extra_chain
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust, extraCertificateOptions=extra)


def parse_retry_after(value: bytes | str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date, RFC 9110 §10.2.3)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def _ssl_text(value: SSL.Error) -> str:
    details = value.args[0] if value.args else []
    if isinstance(details, list):
        texts = [entry[-1] for entry in details if isinstance(entry, tuple) and entry and entry[-1]]
        if texts:
            return "; ".join(dict.fromkeys(texts))
    return str(value) or "TLS error"


def _flatten(failure: Failure) -> list[Failure]:
    """The failures inside Agent's wrapper exceptions (ResponseNeverReceived etc.)."""
    found = [failure]
    reasons = getattr(failure.value, "reasons", None)
    if isinstance(reasons, list):
        for reason in reasons:
            if isinstance(reason, Failure):
                found.extend(_flatten(reason))
    return found


def describe_failure(failure: Failure, url: str) -> str:
    """A one-line explanation of why talking to *url* failed, for operators."""
    failures = _flatten(failure)
    for f in failures:
        value = f.value
        if type(value).__name__ == "VerificationError":  # service_identity: wrong host name
            return (f"TLS: the server certificate of {url} is not for {urlsplit(url).hostname} "
                    "(host name check failed)")
        if isinstance(value, SSL.Error):
            return f"TLS handshake with {url} failed: {_ssl_text(value)}"
    for f in failures:
        value = f.value
        if isinstance(value, net_error.ConnectionRefusedError):
            return f"connection to {url} refused"
        if isinstance(value, net_error.DNSLookupError):
            return f"cannot resolve the host of {url}"
        if isinstance(value, net_error.TimeoutError | net_error.TCPTimedOutError):
            return f"connecting to {url} timed out"
        if isinstance(value, net_error.ConnectError):
            return f"cannot connect to {url}: {value}"
        if isinstance(value, _TooLong):
            return f"the answer of {url} is over {MAX_RESPONSE_BYTES} bytes"
    for f in failures:
        if isinstance(f.value, net_error.ConnectionLost | net_error.ConnectionDone):
            return f"{url} closed the connection before answering"
    if isinstance(failure.value, ResponseFailed):
        return f"the answer of {url} was cut off"
    return f"talking to {url} failed: {failure.getErrorMessage()}"


class PushAdapter:
    """POST each delivery to *url* over mutual TLS and read the receiver's ACKNOWLEDGEMENT."""

    def __init__(self, url: str, *, hub_cert: Path, hub_key: Path, partner_ca: Path | None,
                 timeout: float = DEFAULT_TIMEOUT, reactor: Any) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"push url {url!r} must be an https:// URL")
        self.url = url
        self.timeout = float(timeout)
        self.reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 8
        self._pool.retryAutomatically = False  # a POST is retried by the service, not behind its back
        agent = Agent(reactor, contextFactory=MutualTLSPolicy(hub_cert, hub_key, partner_ca),
                      pool=self._pool, connectTimeout=self.timeout)
        self._client = HTTPClient(agent, data_to_body_producer=_Body)

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any) -> PushAdapter:
        """The adapter for a partner's ``{"url", "ca", "timeout"}`` settings.

        *context* gives ``hub_cert``, ``hub_key``, ``reactor`` and optionally ``data_dir``
        (relative ``ca`` paths are relative to it).
        """
        url = options.get("url")
        if not isinstance(url, str) or not url:
            raise ValueError("push delivery needs 'url' (the partner's https:// endpoint)")
        ca = options.get("ca")
        ca_path: Path | None = None
        if ca:
            ca_path = Path(ca)
            base = getattr(context, "data_dir", None)
            if not ca_path.is_absolute() and base is not None:
                ca_path = Path(base) / ca_path
        return cls(url, hub_cert=context.hub_cert, hub_key=context.hub_key, partner_ca=ca_path,
                   timeout=float(options.get("timeout", DEFAULT_TIMEOUT)), reactor=context.reactor)

    async def deliver(self, delivery: OutboundDelivery) -> DeliveryResult:
        """POST the document once; translate the answer (see the module's table)."""
        headers = {
            "Content-Type": "application/xml",
            DELIVERY_ID_HEADER: str(delivery.delivery_id),
        }
        timed_out = [False]

        def on_timeout() -> None:
            timed_out[0] = True
            exchange.cancel()

        async def post_and_read() -> tuple[Any, bytes]:
            response = await self._client.post(self.url, data=delivery.document, headers=headers)
            return response, await _read_body(response)

        exchange = Deferred.fromCoroutine(post_and_read())
        timer = self.reactor.callLater(self.timeout, on_timeout)
        try:
            response, body = await exchange
        except Exception:
            failure = Failure()
            if timed_out[0]:
                return TransientFailure(f"no answer from {self.url} within {self.timeout:g} s")
            if any(f.check(CancelledError) for f in _flatten(failure)):
                # The caller gave up (its own timeout, or the hub is stopping); Agent may
                # wrap the cancellation in ResponseNeverReceived.
                raise CancelledError() from None
            return TransientFailure(describe_failure(failure, self.url))
        finally:
            if timer.active():
                timer.cancel()
        return self._translate(response, body)

    def _translate(self, response: Any, body: bytes) -> DeliveryResult:
        status = response.code
        retry_after = parse_retry_after(response.headers.getRawHeaders(b"Retry-After", [None])[0],
                                        self.reactor.seconds())
        try:
            ack = read_receiver_ack(body)
            malformed = None
        except MalformedReceiverAck as e:
            ack = None
            malformed = str(e)
        if status == 429 or status >= 500:
            said = f": {ack.error_text}" if ack is not None and ack.error_text else ""
            return TransientFailure(f"{self.url} answered HTTP {status}{said}", retry_after=retry_after,
                                    http_status=status)
        if ack is not None and not ack.acknowledged:
            return PermanentFailure(ack.error_text or f"Acknowledge=No (HTTP {status}) without an ERROR",
                                    receiver_ack=ack.document, http_status=status)
        if 200 <= status < 300:
            if ack is None:
                return TransientFailure(f"receiver answered without an acknowledgement (HTTP {status}: "
                                        f"{malformed})", http_status=status)
            return Acknowledged(ack.document, http_status=status)
        if 400 <= status < 500:
            snippet = body[:200].decode("utf-8", "replace").strip()
            return PermanentFailure(f"{self.url} refused it: HTTP {status}" + (f": {snippet}" if snippet else ""),
                                    receiver_ack=ack.document if ack is not None else None, http_status=status)
        # 1xx/3xx: a redirect is a misconfigured url; keep the delivery until it is fixed.
        location = response.headers.getRawHeaders(b"Location", [b""])[0].decode("latin-1")
        return TransientFailure(f"{self.url} answered HTTP {status}" + (f" (to {location})" if location else "")
                                + "; check the partner's push url", http_status=status)

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._pool.closeCachedConnections()


@implementer(IBodyProducer)
class _Body:
    """A request body in memory, written at once.

    treq's default (``FileBodyProducer``) feeds it through the global reactor's
    cooperator; this one needs no reactor, so the adapter runs on the injected one.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802
        consumer.write(self._data)
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


async def _read_body(response: Any) -> bytes:
    chunks: list[bytes] = []
    size = [0]

    def gather(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > MAX_RESPONSE_BYTES:
            raise _TooLong()
        chunks.append(data)

    await collect(response, gather)
    return b"".join(chunks)
