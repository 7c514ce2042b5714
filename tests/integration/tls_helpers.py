"""Shared pieces for tests that talk to the mutual-TLS listener with real clients.

A test PKI with every kind of client certificate the listener must refuse, a tiny web
resource that answers with the caller's partner id, and ``curl`` / ``openssl s_client``
run in a thread so that the reactor keeps serving while they wait.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gsem import pki
from gsem.tls import PartnerTrustStore, listen_tls, partner_of

__all__ = [
    "ClientCert",
    "TestPki",
    "make_test_pki",
    "PartnerIdResource",
    "Listener",
    "start_listener",
    "curl",
    "s_client",
]

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class ClientCert:
    """A client certificate and key on disk, with the fingerprint the hub registers."""

    cert: Path
    key: Path
    fingerprint: str


@dataclass(frozen=True)
class TestPki:
    """A development PKI plus the certificates a listener must refuse.

    ``registry`` maps fingerprint -> partner id for every client certificate except
    ``unregistered``, so that a refusal of any other certificate can only come from
    OpenSSL's own checks (chain, dates, CRL), not from the partner lookup.
    """

    __test__ = False  # not a pytest test class despite the name

    dev: pki.DevPki
    ca_cert: Path
    crl: Path
    hub_cert: Path
    hub_key: Path
    acme: ClientCert
    retiring: ClientCert
    expired: ClientCert
    not_yet_valid: ClientCert
    revoked: ClientCert
    unregistered: ClientCert
    foreign: ClientCert

    @property
    def registry(self) -> dict[str, str]:
        """A fresh fingerprint -> partner id mapping (tests mutate their own copy)."""
        return {
            self.acme.fingerprint: "ACME",
            self.retiring.fingerprint: "BETA",
            self.expired.fingerprint: "ACME",
            self.not_yet_valid.fingerprint: "ACME",
            self.revoked.fingerprint: "ACME",
            self.foreign.fingerprint: "ACME",
        }


def _write_client(
    directory: Path, name: str, made: tuple[x509.Certificate, pki.PrivateKey]
) -> ClientCert:
    cert, key = made
    cert_path, key_path = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    pki.write_cert(cert_path, cert)
    pki.write_key(key_path, key)
    return ClientCert(cert_path, key_path, pki.fingerprint_sha256(cert))


def make_test_pki(directory: Path) -> TestPki:
    """Create the development PKI with ``create_dev_pki`` and add the awkward certificates."""
    dev = pki.create_dev_pki(directory / "certs", ["ACME", "BETA"])
    ca_cert = pki.load_cert(dev.ca_cert)
    ca_key = pki.load_key(dev.ca_key)
    extra = directory / "clients"
    extra.mkdir()
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    expired = _write_client(
        extra,
        "expired",
        pki.make_client_cert(
            ca_cert, ca_key, "EXPIRED", not_before=now - 10 * day, not_after=now - day
        ),
    )
    not_yet_valid = _write_client(
        extra,
        "not-yet-valid",
        pki.make_client_cert(
            ca_cert, ca_key, "LATER", not_before=now + day, not_after=now + 10 * day
        ),
    )
    revoked_made = pki.make_client_cert(ca_cert, ca_key, "REVOKED")
    revoked = _write_client(extra, "revoked", revoked_made)
    pki.write_crl(dev.crl, pki.make_crl(ca_cert, ca_key, [revoked_made[0]]))
    unregistered = _write_client(
        extra, "unregistered", pki.make_client_cert(ca_cert, ca_key, "NOBODY")
    )
    stranger_cert, stranger_key = pki.make_ca("Stranger CA")
    foreign = _write_client(
        extra, "foreign", pki.make_client_cert(stranger_cert, stranger_key, "ACME")
    )

    def partner(partner_id: str) -> ClientCert:
        cert = dev.partner_cert(partner_id)
        return ClientCert(
            cert, dev.partner_key(partner_id), pki.fingerprint_sha256(cert.read_bytes())
        )

    return TestPki(
        dev=dev,
        ca_cert=dev.ca_cert,
        crl=dev.crl,
        hub_cert=dev.hub_cert,
        hub_key=dev.hub_key,
        acme=partner("ACME"),
        retiring=partner("BETA"),
        expired=expired,
        not_yet_valid=not_yet_valid,
        revoked=revoked,
        unregistered=unregistered,
        foreign=foreign,
    )


class PartnerIdResource(Resource):
    """Answers every GET with the partner id the TLS handshake established."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        """The caller's partner id, or 403 when the transport carries none."""
        identity = partner_of(request.channel.transport)
        if identity is None:
            request.setResponseCode(403)
            return b"no partner"
        return identity.partner_id.encode()


@dataclass
class Listener:
    """A running listener and the URL clients use to reach it."""

    port: IListeningPort
    trust_store: PartnerTrustStore

    @property
    def number(self) -> int:
        """The TCP port the listener got (it was asked for port 0)."""
        return self.port.getHost().port

    @property
    def url(self) -> str:
        """The HTTPS URL of the resource on this listener."""
        return f"https://127.0.0.1:{self.number}/"


async def start_listener(
    trust_store: PartnerTrustStore,
    *,
    handshake_timeout: float = 10.0,
    max_connections_per_partner: int | None = None,
) -> Listener:
    """Serve :class:`PartnerIdResource` on 127.0.0.1, a free port, with the global reactor."""
    port = await listen_tls(
        _reactor,
        0,
        "127.0.0.1",
        Site(PartnerIdResource()),
        trust_store,
        handshake_timeout=handshake_timeout,
        max_connections_per_partner=max_connections_per_partner,
    )
    return Listener(port, trust_store)


def _run(args: Sequence[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def curl(
    url: str,
    *,
    ca_cert: Path,
    client: ClientCert | None,
    tls_version: str,
    verbose: bool = False,
) -> subprocess.CompletedProcess[str]:
    """GET *url* with curl, presenting *client* (or no certificate), TLS 1.2 or 1.3 only.

    With *verbose*, curl's stderr describes the handshake (server certificate subject).
    """
    assert CURL, "curl is needed for the TLS integration tests"
    versions = {"1.2": ["--tlsv1.2", "--tls-max", "1.2"], "1.3": ["--tlsv1.3", "--tls-max", "1.3"]}
    args = [CURL, "--silent", "--show-error", "--max-time", "20", "--cacert", str(ca_cert)]
    args += versions[tls_version]
    if verbose:
        args.append("--verbose")
    if client is not None:
        args += ["--cert", str(client.cert), "--key", str(client.key)]
    args.append(url)
    return await deferToThread(_run, args)


def _s_client_session(args: list[str], request: bytes, delay: float) -> tuple[int, bytes, bytes]:
    with subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        # Holding the request back keeps a handshaken connection idle for *delay*.
        time.sleep(delay)
        out, err = process.communicate(request, timeout=30)
        return process.returncode, out, err


async def s_client(
    port: int,
    *,
    ca_cert: Path,
    client: ClientCert,
    request: bytes = b"GET / HTTP/1.0\r\n\r\n",
    delay: float = 0.0,
) -> tuple[int, bytes, bytes]:
    """Send *request* through ``openssl s_client`` after *delay* seconds: (status, out, err)."""
    assert OPENSSL, "openssl is needed for the TLS integration tests"
    # -quiet implies -ign_eof: s_client waits for the server to close after the answer.
    args = [
        OPENSSL,
        "s_client",
        "-quiet",
        "-verify_return_error",
        "-connect",
        f"127.0.0.1:{port}",
        "-CAfile",
        str(ca_cert),
        "-cert",
        str(client.cert),
        "-key",
        str(client.key),
    ]
    return await deferToThread(_s_client_session, args, request, delay)
