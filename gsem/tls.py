"""The mutual-TLS listener: a partner is known before any HTTP byte is read (SPEC §2).

A connection is accepted only when the client presents a certificate that

1. chains to one of the configured CAs, is inside its validity dates and is not in a CRL
   (OpenSSL's own verification, with CRL checking always on), and
2. is registered to an enabled partner and inside its registration window right now
   (``lookup``, the engine's view of the partner table, asked during the handshake).

Anything else is refused with a TLS alert during the handshake, so the HTTP layer never
sees an unauthenticated byte.  The resulting :class:`PartnerIdentity` is read by the web
resources with :func:`partner_of`.

Trust material (CAs, CRLs, the hub's own certificate and key) is loaded here, not by
Twisted, so that a bad file is an error naming the file: Twisted's CA-directory loader
skips unreadable files silently.  A new context is built whenever the files change,
which rotates certificates and CRLs without a restart (tahoe-lafs
``storage/http_server.py``, ``_TLSEndpointWrapper``, wraps its endpoint the same way).
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gsem.errors import ConfigError
from gsem.pki import fingerprint_sha256

__all__ = [
    "PartnerIdentity",
    "PartnerLookup",
    "PartnerTrustStore",
    "PartnerTLSEndpoint",
    "TrustMaterialError",
    "listen_tls",
    "partner_of",
]

_log = Logger(namespace="gsem.tls")

PartnerLookup = Callable[[str], "str | None"]
"""Given a certificate fingerprint, the partner id it is registered to now, else None."""

# Files picked up from a directory named in ca_paths / crl_paths; dot-files are skipped
# so that editors' and atomic writers' temporary files are never half-read.
_CA_SUFFIXES = (".pem", ".crt", ".cer")
_CRL_SUFFIXES = (".pem", ".crl")

# Re-checking file times on every connection would stat the files thousands of times a
# second under load; once a second is enough for rotation done by people or cron.
_CHANGE_CHECK_INTERVAL = 1.0

# OpenSSL's X509_V_ERR_* codes for the refusals a partner is likely to cause
# (include/openssl/x509_vfy.h); pyOpenSSL gives the number only.
_X509_ERRORS = {
    2: "unable to get issuer certificate",
    3: "no CRL for the certificate's CA",
    7: "certificate signature failure",
    8: "CRL signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    11: "CRL is not yet valid",
    12: "CRL has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "certificate is not issued by a trusted CA",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "certificate is not for TLS client use (extended key usage)",
    27: "certificate not trusted",
    28: "certificate rejected",
}


@dataclass(frozen=True)
class PartnerIdentity:
    """Who is on the other end of a connection: established during the TLS handshake."""

    partner_id: str
    fingerprint: str


class TrustMaterialError(ConfigError):
    """A CA, CRL, certificate or key file is missing, unreadable or inconsistent.

    ``problems`` lists every problem found, each naming its file.
    """


@dataclass(frozen=True)
class _TrustMaterial:
    """Everything read from the trust files, checked, ready to build a context from."""

    cas: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    server_chain: tuple[x509.Certificate, ...]
    server_key: Any


def _expand(paths: Sequence[Path], suffixes: tuple[str, ...]) -> list[Path]:
    """The files named by *paths*: files as given, directories by suffix, sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                child
                for child in sorted(path.iterdir())
                if child.suffix.lower() in suffixes
                and not child.name.startswith(".")
                and child.is_file()
            )
        else:
            files.append(path)
    return files


def _read(path: Path, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as e:
        problems.append(f"{path}: cannot read: {e.strerror or e}")
        return None


def _parse_certificates(path: Path, data: bytes, problems: list[str]) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        problems.append(f"{path}: not a PEM or DER certificate file ({e})")
        return []


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()!r} (sha256 {fingerprint_sha256(cert)})"


def _load_cas(paths: Sequence[Path], problems: list[str]) -> list[x509.Certificate]:
    cas: list[x509.Certificate] = []
    for path in _expand(paths, _CA_SUFFIXES):
        data = _read(path, problems)
        if data is None:
            continue
        for cert in _parse_certificates(path, data, problems):
            if not _is_ca(cert):
                # The usual mistake: a partner's own certificate put in the CA list.
                # Partner certificates are registered by fingerprint instead.
                problems.append(
                    f"{path}: {_describe(cert)} is not a CA certificate "
                    "(basicConstraints CA:TRUE missing); register partner certificates "
                    "by fingerprint instead of trusting them as CAs"
                )
            else:
                cas.append(cert)
    if not cas and not problems:
        problems.append(
            "no CA certificate found in " + ", ".join(str(p) for p in paths)
            if paths
            else "no CA files given: no partner could ever connect"
        )
    return cas


def _load_crls(
    paths: Sequence[Path], cas: list[x509.Certificate], problems: list[str]
) -> list[x509.CertificateRevocationList]:
    crls: list[x509.CertificateRevocationList] = []
    for path in _expand(paths, _CRL_SUFFIXES):
        data = _read(path, problems)
        if data is None:
            continue
        try:
            crl = (
                x509.load_pem_x509_crl(data)
                if b"-----BEGIN" in data
                else x509.load_der_x509_crl(data)
            )
        except ValueError as e:
            problems.append(f"{path}: not a PEM or DER CRL ({e})")
            continue
        issuers = [ca for ca in cas if ca.subject == crl.issuer]
        if not any(crl.is_signature_valid(ca.public_key()) for ca in issuers):
            problems.append(
                f"{path}: CRL issued by {crl.issuer.rfc4514_string()!r} is not signed by "
                "any of the trusted CAs"
            )
            continue
        next_update = crl.next_update_utc
        if next_update is not None and next_update < datetime.datetime.now(datetime.UTC):
            # Not fatal: refusing to start would cut off every partner, not just this
            # CA's.  OpenSSL will refuse this CA's certificates ("CRL has expired").
            _log.warn(
                "{path}: CRL of {issuer} expired at {next_update}; every certificate of "
                "that CA will be refused until a fresh CRL is installed",
                path=str(path),
                issuer=crl.issuer.rfc4514_string(),
                next_update=next_update.isoformat(),
            )
        crls.append(crl)
    if not crls and not problems:
        # With CRL checking on, a CA without a CRL fails every certificate it issued
        # ("unable to get certificate CRL"); say so now rather than per handshake.
        problems.append(
            "no CRL found in " + ", ".join(str(p) for p in paths)
            if paths
            else "no CRL files given: revocation checking is always on, so every client "
            "certificate would be refused; install the CA's (possibly empty) CRL"
        )
    for ca in cas:
        if not any(crl.issuer == ca.subject for crl in crls):
            _log.warn(
                "No CRL for CA {ca}: client certificates it issues directly will be refused",
                ca=_describe(ca),
            )
    return crls


def _load_server_identity(
    cert_path: Path, key_path: Path, problems: list[str]
) -> tuple[list[x509.Certificate], Any]:
    chain: list[x509.Certificate] = []
    key: Any = None
    data = _read(cert_path, problems)
    if data is not None:
        chain = _parse_certificates(cert_path, data, problems)
        if not chain and not problems:
            problems.append(f"{cert_path}: no certificate in the file")
    data = _read(key_path, problems)
    if data is not None:
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            problems.append(f"{key_path}: not an unencrypted PEM private key ({e})")
        else:
            if not isinstance(
                key,
                ec.EllipticCurvePrivateKey
                | rsa.RSAPrivateKey
                | ed25519.Ed25519PrivateKey
                | ed448.Ed448PrivateKey,
            ):
                problems.append(f"{key_path}: unsupported key type {type(key).__name__}")
                key = None
    if chain and key is not None and chain[0].public_key() != key.public_key():
        problems.append(f"{key_path}: this key does not belong to the certificate in {cert_path}")
    return chain, key


def _load_trust_material(
    ca_paths: Sequence[Path],
    crl_paths: Sequence[Path],
    server_cert_path: Path,
    server_key_path: Path,
) -> _TrustMaterial:
    problems: list[str] = []
    cas = _load_cas(ca_paths, problems)
    crls = _load_crls(crl_paths, cas, problems)
    chain, key = _load_server_identity(server_cert_path, server_key_path, problems)
    if problems:
        raise TrustMaterialError(problems)
    return _TrustMaterial(tuple(cas), tuple(crls), tuple(chain), key)


def _stat_state(paths: Sequence[Path]) -> tuple[tuple[str, int, int, int], ...]:
    """Cheap change detector: (path, mtime, size, inode) of every file and directory."""
    state: list[tuple[str, int, int, int]] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            state.append((str(path), -1, -1, -1))
            continue
        state.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        if path.is_dir():
            for child in sorted(path.iterdir()):
                try:
                    cst = child.stat()
                except OSError:
                    continue
                state.append((str(child), cst.st_mtime_ns, cst.st_size, cst.st_ino))
    return tuple(state)


def _x509_error(errno: int) -> str:
    return f"{_X509_ERRORS.get(errno, 'certificate verification failed')} (X509 error {errno})"


def _ssl_error_text(reason: Failure | None) -> str:
    if reason is None:
        return "connection closed by the client during the handshake"
    if reason.check(SSL.Error):
        details = reason.value.args[0] if reason.value.args else []
        texts = [entry[-1] for entry in details if isinstance(entry, tuple) and entry[-1]]
        return "; ".join(texts) or str(reason.value)
    return f"connection closed during the handshake ({reason.getErrorMessage()})"


# Twisted calls serverConnectionForTLS on providers of this interface.
@implementer(IOpenSSLServerConnectionCreator)
class PartnerTrustStore:
    """The CAs, CRLs and server identity the listener trusts, and who each client is.

    Builds a pyOpenSSL context from the files: TLS 1.2 minimum, the hub's certificate,
    a client certificate required and verified against the CA files with CRL checking,
    and during the handshake *lookup* (certificate fingerprint -> partner id or None)
    decides whether a verified certificate belongs to a partner allowed in right now.

    Each entry of *ca_paths* and *crl_paths* is a PEM/DER file or a directory whose
    ``*.pem``/``*.crt``/``*.cer`` (CAs) or ``*.pem``/``*.crl`` (CRLs) files are read.
    A bad or missing file raises :class:`TrustMaterialError` naming it.

    The files are re-read by :meth:`reload`, and automatically when a connection
    arrives and their times changed (checked at most once a second on *clock*).
    """

    def __init__(
        self,
        ca_paths: Sequence[Path],
        crl_paths: Sequence[Path],
        server_cert_path: Path,
        server_key_path: Path,
        lookup: PartnerLookup,
        *,
        clock: IReactorTime | None = None,
    ) -> None:
        self._ca_paths = tuple(Path(p) for p in ca_paths)
        self._crl_paths = tuple(Path(p) for p in crl_paths)
        self._server_cert_path = Path(server_cert_path)
        self._server_key_path = Path(server_key_path)
        self._lookup = lookup
        self._now: Callable[[], float] = clock.seconds if clock is not None else time.monotonic
        self._watched = (
            *self._ca_paths,
            *self._crl_paths,
            self._server_cert_path,
            self._server_key_path,
        )
        self._last_check = self._now()
        self._files_state = _stat_state(self._watched)
        self._context = self._build_context()

    def reload(self) -> None:
        """Re-read every trust file and use the result for new connections.

        Connections already open keep the context they were made with.  On a bad file
        this raises :class:`TrustMaterialError` and the previous context stays in use.
        """
        state = _stat_state(self._watched)
        context = self._build_context()
        self._files_state = state
        self._context = context
        _log.info("TLS trust material reloaded")

    def context(self) -> SSL.Context:
        """The context for a new connection, reloaded first if the trust files changed."""
        now = self._now()
        if now - self._last_check >= _CHANGE_CHECK_INTERVAL:
            self._last_check = now
            state = _stat_state(self._watched)
            if state != self._files_state:
                # Remember the state even if loading fails: a half-copied file would
                # otherwise be re-read (and logged) on every connection.  The next
                # write to any of the files triggers another attempt.
                self._files_state = state
                try:
                    self._context = self._build_context()
                except TrustMaterialError as e:
                    _log.error(
                        "TLS trust files changed but cannot be used; keeping the previous "
                        "ones: {problems}",
                        problems="; ".join(e.problems),
                    )
                else:
                    _log.info("TLS trust files changed; reloaded")
        return self._context

    def _build_context(self) -> SSL.Context:
        material = _load_trust_material(
            self._ca_paths, self._crl_paths, self._server_cert_path, self._server_key_path
        )
        leaf, *intermediates = material.server_chain
        # CertificateOptions brings Twisted's vetted cipher list, no compression and
        # single-use ECDH keys.  pyOpenSSL 24.3+ deprecates its own X509/PKey in
        # Context.use_certificate and friends, which CertificateOptions hands its
        # arguments straight to, so give it cryptography objects (the trust root still
        # needs pyOpenSSL X509s).
        options = CertificateOptions(
            privateKey=material.server_key,
            certificate=leaf,  # type: ignore[arg-type]
            extraCertChain=list(intermediates) or None,
            trustRoot=trustRootFromCertificates(
                [Certificate(crypto.X509.from_cryptography(ca)) for ca in material.cas]
            ),
            raiseMinimumTo=TLSVersion.TLSv1_2,
            # No session cache and no tickets: a resumed session skips the verify
            # callback, so a retired certificate could come back in on an old session.
            # Every connection does a full handshake and a fresh partner lookup.
            enableSessions=False,
            enableSessionTickets=False,
        )
        context = options.getContext()
        context.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE,
            self._verify,
        )
        store = context.get_cert_store()
        assert store is not None
        for crl in material.crls:
            store.add_crl(crl)
        # CRL_CHECK checks the client certificate itself against its issuer's CRL.
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        # The identity is fixed by the first handshake; a renegotiation cannot change it.
        context.set_options(SSL.OP_NO_RENEGOTIATION)
        # Tell clients which CAs we accept, so that clients holding several
        # certificates (Java keystores, browsers) offer the right one.
        for ca in material.cas:
            context.add_client_ca(ca)
        context.set_info_callback(_info_callback)
        return context

    def _verify(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        """OpenSSL's verify callback: its own checks first, then the partner lookup."""
        protocol = connection.get_app_data()
        if not isinstance(protocol, _PartnerTLSProtocol):
            # Only connections made by _PartnerTLSFactory can carry an identity.
            return False
        if not ok:
            reason = _x509_error(errno)
            if depth > 0:
                # The fingerprint logged is then an issuer's, not the client's own.
                reason += f" at chain depth {depth}"
            protocol._refuse(reason, fingerprint_sha256(cert.to_cryptography()))
            return False
        if depth > 0:
            return True
        fingerprint = fingerprint_sha256(cert.to_cryptography())
        try:
            partner_id = self._lookup(fingerprint)
        except Exception:
            _log.failure(
                "Partner lookup failed for certificate {fingerprint}", fingerprint=fingerprint
            )
            protocol._refuse("partner lookup failed", fingerprint)
            return False
        if partner_id is None:
            protocol._refuse(
                "certificate is not registered to an enabled partner, or is outside its "
                "registration window",
                fingerprint,
            )
            return False
        protocol._verified = PartnerIdentity(partner_id, fingerprint)
        return True

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        """Twisted's connection-creator hook: a connection on the current context."""
        connection = SSL.Connection(self.context(), None)
        # The verify and info callbacks find the per-connection state through this.
        connection.set_app_data(tlsProtocol)
        return connection


def _info_callback(connection: SSL.Connection, where: int, ret: int) -> None:
    if where & SSL.SSL_CB_HANDSHAKE_DONE:
        protocol = connection.get_app_data()
        if isinstance(protocol, _PartnerTLSProtocol):
            protocol._handshake_done()


class _PartnerTLSProtocol(BufferingTLSTransport):
    """A server TLS connection that remembers its partner and bounds its handshake."""

    factory: _PartnerTLSFactory
    partner: PartnerIdentity | None = None
    _verified: PartnerIdentity | None = None
    _handshake_finished = False
    _refusal_logged = False
    _handshake_timer: IDelayedCall | None = None
    _host: Any = None

    def getHost(self) -> Any:  # noqa: N802 - Twisted's name
        """This end's address, asked of the socket once per connection.

        Twisted web's ``Request`` asks for it on every request, and TCP answers each time
        with a ``getsockname`` system call and a new address object; a connected
        socket's own address does not change.
        """
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        """Start the handshake clock, then the TLS handshake itself."""
        self._handshake_timer = self.factory.clock.callLater(
            self.factory.handshake_timeout, self._handshake_timed_out
        )
        super().makeConnection(transport)

    def _peer(self) -> str:
        try:
            peer = self.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "unknown peer"

    def _refuse(self, reason: str, fingerprint: str | None, *, quiet: bool = False) -> None:
        if self._refusal_logged:
            return
        self._refusal_logged = True
        # Load balancers' health checks and port scans connect and leave without a
        # word; that is worth a line, but not a warning.
        emit = _log.info if quiet else _log.warn
        emit(
            "TLS handshake from {peer} refused: {reason} (client certificate sha256 {fingerprint})",
            peer=self._peer(),
            reason=reason,
            fingerprint=fingerprint or "none",
        )

    def _handshake_done(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        if self._handshake_finished:
            return
        self._handshake_finished = True
        if self._verified is None:
            # Cannot happen while sessions are never resumed (see _build_context).  If
            # it did, the connection stays without a partner (partner_of gives None, so
            # the application refuses) and is closed as soon as OpenSSL has returned:
            # closing from inside its callback would re-enter it.
            self._refuse("handshake completed without a verified partner", None)
            self.factory.clock.callLater(0, self.abortConnection)
            return
        factory = self.factory
        partner_id = self._verified.partner_id
        limit = factory.max_connections_per_partner
        if limit is not None and factory.connections.get(partner_id, 0) >= limit:
            # SPEC §8: connections per partner are limited, so one partner cannot take
            # every connection the hub has.  Closed once OpenSSL has returned.
            self._refuse(f"partner {partner_id} already has {limit} connections open", self._verified.fingerprint)
            factory.clock.callLater(0, self.abortConnection)
            return
        factory.connections[partner_id] = factory.connections.get(partner_id, 0) + 1
        self.partner = self._verified

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self._handshake_finished:
            return
        fingerprint = self._verified.fingerprint if self._verified else None
        self._refuse(
            f"handshake not finished within {self.factory.handshake_timeout:g} s", fingerprint
        )
        self.abortConnection()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        """Stop the handshake clock; log a handshake that never finished."""
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        if self.partner is not None:
            counts = self.factory.connections
            counts[self.partner.partner_id] -= 1
            if not counts[self.partner.partner_id]:
                del counts[self.partner.partner_id]
        if not self._handshake_finished:
            # TLSMemoryBIOProtocol keeps the OpenSSL error that ended the handshake in
            # its documented _reason ivar; the transport's reason is only "closed".
            error = getattr(self, "_reason", None)
            fingerprint = self._verified.fingerprint if self._verified else None
            self._refuse(_ssl_error_text(error), fingerprint, quiet=error is None)
        super().connectionLost(reason)


class _PartnerTLSFactory(TLSMemoryBIOFactory):
    """TLSMemoryBIOFactory whose connections identify partners and time out handshakes."""

    protocol = _PartnerTLSProtocol

    def __init__(
        self,
        trust_store: PartnerTrustStore,
        wrapped_factory: IProtocolFactory,
        clock: IReactorTime,
        handshake_timeout: float,
        max_connections_per_partner: int | None = None,
    ) -> None:
        super().__init__(trust_store, False, wrapped_factory, clock)
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.max_connections_per_partner = max_connections_per_partner
        #: open, identified connections per partner id (SPEC §8 limit)
        self.connections: dict[str, int] = {}


@implementer(IStreamServerEndpoint)
class PartnerTLSEndpoint:
    """Wrap any stream server endpoint so that it serves mutual TLS for partners.

    Twisted's ``ssl:`` endpoint strings cannot require client certificates, hence this
    wrapper (after tahoe-lafs ``storage/http_server.py``, ``_TLSEndpointWrapper``).
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        trust_store: PartnerTrustStore,
        clock: IReactorTime,
        *,
        handshake_timeout: float = 10.0,
        max_connections_per_partner: int | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._trust_store = trust_store
        self._clock = clock
        self._handshake_timeout = handshake_timeout
        self._max_connections_per_partner = max_connections_per_partner

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803
        """Listen on the wrapped endpoint with TLS around *protocolFactory*."""
        return self._endpoint.listen(
            _PartnerTLSFactory(
                self._trust_store,
                protocolFactory,
                self._clock,
                self._handshake_timeout,
                self._max_connections_per_partner,
            )
        )


def listen_tls(
    reactor: Any,
    port: int,
    interface: str,
    factory: IProtocolFactory,
    trust_store: PartnerTrustStore,
    *,
    handshake_timeout: float = 10.0,
    max_connections_per_partner: int | None = None,
    adopt: socket.socket | None = None,
) -> Deferred[IListeningPort]:
    """Listen for partners on TCP *interface*:*port* with mutual TLS around *factory*.

    *reactor* provides ``IReactorTCP`` and ``IReactorTime`` (its clock bounds each
    handshake to *handshake_timeout* seconds).  Port 0 picks a free port; read it from
    the listening port's ``getHost().port``.  A partner's connections beyond
    *max_connections_per_partner* are closed right after their handshake (the count is
    this process's: with several worker processes, each keeps its own).

    With *adopt*, an already listening socket (shared by several worker processes) is
    served instead of binding *interface*:*port*; *reactor* must provide
    ``IReactorSocket``.
    """
    if adopt is not None:
        tls_factory = _PartnerTLSFactory(trust_store, factory, reactor, handshake_timeout,
                                         max_connections_per_partner)
        return succeed(reactor.adoptStreamPort(adopt.fileno(), adopt.family, tls_factory))
    endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    endpoint = endpoint_type(reactor, port, interface=interface)
    wrapped = PartnerTLSEndpoint(
        endpoint,
        trust_store,
        reactor,
        handshake_timeout=handshake_timeout,
        max_connections_per_partner=max_connections_per_partner,
    )
    return wrapped.listen(factory)


def partner_of(transport: Any) -> PartnerIdentity | None:
    """The partner identified by the TLS handshake of the connection *transport* is on.

    Pass what an HTTP request sees as ``request.channel.transport``.  None when the
    transport is not one of this module's TLS connections or its handshake is not
    complete, so callers must treat None as "not authenticated".
    """
    # Protocol wrappers (e.g. twisted.protocols.policies) may sit between the TLS
    # connection and the application; follow their transports a few steps.
    for _ in range(4):
        if isinstance(transport, _PartnerTLSProtocol):
            return transport.partner
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None
