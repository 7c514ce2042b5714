"""Which client certificates a real ``gsem serve`` serves (SPEC §2), under TLS 1.2 and TLS 1.3.

Certificates are minted with :mod:`gsem.pki` from the data directory's own CA (and from
a CA the hub does not trust), registered with ``gsem partners certs add`` the way an
operator does, and presented with curl.  Only a certificate that chains to the hub's CA,
is inside its dates, is not revoked and is registered (not retired) to an enabled
partner is served; every other one is refused during the TLS handshake, so the partner
gets no HTTP answer and the hub keeps no message for it.

Expired and not-yet-valid certificates are registered with a window that includes now,
and the other CA's certificate is registered too, so their refusal can only come from
the TLS checks themselves (dates, chain), not from the partner lookup.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub import CURL, ClientIdentity, RunningHub, ack_text

from gsem import pki

pytestmark = pytest.mark.integration

TLS_VERSIONS = ["1.2", "1.3"]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"
QUERY = (FIXTURES / "09-query-incident.xml").read_bytes()
#: How long the hub may take to notice a retired certificate or a new CRL (it checks
#: the database and the trust files once a second).
NOTICE_WITHIN = 2.5


@pytest.fixture(scope="module")
def cert_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One demo hub on SQLite shared by this module's tests."""
    if CURL is None:
        pytest.skip("curl is not installed")
    hub = RunningHub.create(tmp_path_factory.mktemp("certs") / "hub")
    try:
        yield hub
    finally:
        hub.stop()
    hub.assert_no_traceback()


class Minter:
    """Mints client certificates into a directory, from the hub's CA or another one."""

    def __init__(self, hub: RunningHub, directory: Path) -> None:
        self.hub = hub
        self.directory = directory
        self.ca_cert = pki.load_cert(hub.ca_cert)
        self.ca_key = pki.load_key(hub.ca_key)
        self._count = 0

    def mint(self, name: str, *, other_ca: bool = False, not_before: dt.datetime | None = None,
             not_after: dt.datetime | None = None) -> ClientIdentity:
        """A new client certificate and key on disk."""
        self._count += 1
        if other_ca:
            ca_cert, ca_key = pki.make_ca("Not the hub's CA")
        else:
            ca_cert, ca_key = self.ca_cert, self.ca_key
        cert, key = pki.make_client_cert(ca_cert, ca_key, name, not_before=not_before, not_after=not_after)
        identity = ClientIdentity(self.directory / f"{self._count}-{name}-cert.pem",
                                  self.directory / f"{self._count}-{name}-key.pem")
        pki.write_cert(identity.cert, cert)
        pki.write_key(identity.key, key)
        return identity

    def register(self, identity: ClientIdentity, partner: str = "ACME", *extra: str) -> str:
        """``gsem partners certs add PARTNER CERT``; returns the fingerprint."""
        self.hub.gsem("partners", "certs", "add", partner, str(identity.cert), *extra)
        return fingerprint(identity)


def fingerprint(identity: ClientIdentity) -> str:
    """The SHA-256 fingerprint the hub registers the certificate under."""
    return pki.fingerprint_sha256(identity.cert.read_bytes())


@pytest.fixture(scope="module")
def revocations() -> list:
    """The certificates this module's tests revoked so far (the CRL lists them all)."""
    return []


@pytest.fixture
def minter(cert_hub: RunningHub, tmp_path: Path) -> Minter:
    """Mints certificates for one test."""
    return Minter(cert_hub, tmp_path)


def _utc(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def _window(start_days: float, end_days: float) -> tuple[str, ...]:
    fmt = "%Y-%m-%d %H:%M:%S"
    return ("--valid-from", _utc(start_days).strftime(fmt), "--valid-until", _utc(end_days).strftime(fmt))


def assert_served(hub: RunningHub, identity: str | ClientIdentity, tls: str) -> None:
    """The certificate gets an acknowledgement from the hub."""
    result = hub.curl(identity, QUERY, tls=tls)
    assert result.http_status == 404, f"curl exit {result.returncode}: {result.stderr}"
    assert result.ack is not None and ack_text(result.ack, "Acknowledge") == "No"  # unknown-incident: served


def assert_refused(hub: RunningHub, identity: ClientIdentity | None, tls: str, reason: str) -> None:
    """The handshake fails: no HTTP answer, no message kept, and the hub logs why for this certificate."""
    kept_before = hub.scalar("SELECT COUNT(*) FROM messages")
    result = hub.curl(identity, QUERY, tls=tls)
    assert result.http_status == 0, f"served with HTTP {result.http_status}: {result.body[:300]!r}"
    assert result.returncode != 0 and result.ack is None
    assert hub.scalar("SELECT COUNT(*) FROM messages") == kept_before, "nothing is read from a refused connection"
    # Operators see why in the server's log (the line may trail the handshake a little).
    wanted = f"sha256 {fingerprint(identity) if identity is not None else 'none'}"
    deadline = time.monotonic() + 2
    while not any("refused: " + reason in line and wanted in line for line in hub.stderr_text().splitlines()):
        assert time.monotonic() < deadline, f"the server did not log {reason!r} for {wanted}:\n{hub.stderr_text()[-3000:]}"
        time.sleep(0.05)


def _wait_until_refused(hub: RunningHub, identity: ClientIdentity, tls: str) -> float:
    started = time.monotonic()
    while hub.curl(identity, QUERY, tls=tls).http_status != 0:
        elapsed = time.monotonic() - started
        assert elapsed < NOTICE_WITHIN + 2, "still served"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_registered_partner_certificate_is_served(cert_hub: RunningHub, tls: str) -> None:
    """The demo partners' certificates are served and identify their partner."""
    assert_served(cert_hub, "ACME", tls)
    assert_served(cert_hub, "GLOBEX", tls)
    partners = {row["partner_id"] for row in cert_hub.query("SELECT partner_id FROM messages")}
    assert partners >= {"ACME", "GLOBEX"}


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_no_client_certificate_is_refused(cert_hub: RunningHub, tls: str) -> None:
    """A client without a certificate gets no HTTP answer."""
    assert_refused(cert_hub, None, tls, "peer did not return a certificate")


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_certificate_of_another_ca_is_refused(cert_hub: RunningHub, minter: Minter, tls: str) -> None:
    """A certificate from a CA the hub does not trust is refused even when its fingerprint is registered."""
    identity = minter.mint("other-ca", other_ca=True)
    minter.register(identity)
    assert_refused(cert_hub, identity, tls, "certificate is not issued by a trusted CA")


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_expired_certificate_is_refused(cert_hub: RunningHub, minter: Minter, tls: str) -> None:
    """An expired certificate is refused even though its registration window includes now."""
    identity = minter.mint("expired", not_before=_utc(-30), not_after=_utc(-1))
    minter.register(identity, "ACME", *_window(-2, 2))
    assert_refused(cert_hub, identity, tls, "certificate has expired")


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_not_yet_valid_certificate_is_refused(cert_hub: RunningHub, minter: Minter, tls: str) -> None:
    """A certificate whose validity starts tomorrow is refused even though its registration window includes now."""
    identity = minter.mint("future", not_before=_utc(1), not_after=_utc(30))
    minter.register(identity, "ACME", *_window(-2, 30))
    assert_refused(cert_hub, identity, tls, "certificate is not yet valid")


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_unregistered_certificate_is_refused(cert_hub: RunningHub, minter: Minter, tls: str) -> None:
    """A certificate from the hub's own CA that no partner registered is refused."""
    identity = minter.mint("unregistered")
    assert_refused(cert_hub, identity, tls, "certificate is not registered to an enabled partner")


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_revoked_certificate_is_refused_without_restart(cert_hub: RunningHub, minter: Minter,
                                                        revocations: list, tls: str) -> None:
    """A served certificate is refused within seconds of being written into the hub's CRL file."""
    hub = cert_hub
    identity = minter.mint("to-revoke")
    minter.register(identity)
    _wait_until_served(hub, identity, tls)
    # The CRL is the hub's, shared by this module's tests: it keeps what they revoked.
    revocations.append(pki.load_cert(identity.cert))
    crl = pki.make_crl(minter.ca_cert, minter.ca_key, revocations, crl_number=int(time.time() * 1000))
    pki.write_crl(hub.crl, crl)
    pid = hub.pid
    elapsed = _wait_until_refused(hub, identity, tls)
    assert elapsed < NOTICE_WITHIN, f"refused only after {elapsed:.1f} s"
    assert hub.pid == pid and hub.running, "no restart"
    assert_refused(hub, identity, tls, "certificate revoked")
    assert_served(hub, "ACME", tls)


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_retired_certificate_is_refused_without_restart(cert_hub: RunningHub, minter: Minter, tls: str) -> None:
    """A second ACME certificate is served once registered and refused within seconds of being retired."""
    hub = cert_hub
    identity = minter.mint("rotated")
    fp = minter.register(identity)
    _wait_until_served(hub, identity, tls)
    rows = hub.query("SELECT partner_id FROM messages WHERE cert_fingerprint = :f", f=fp)
    assert rows and {r["partner_id"] for r in rows} == {"ACME"}, "the new certificate identifies ACME"

    hub.gsem("partners", "certs", "retire", fp)
    elapsed = _wait_until_refused(hub, identity, tls)
    assert elapsed < NOTICE_WITHIN, f"refused only after {elapsed:.1f} s"
    assert_refused(hub, identity, tls, "certificate is not registered to an enabled partner")
    assert "retired" in hub.gsem("partners", "certs", "list", "ACME")
    assert_served(hub, "ACME", tls)  # the partner's other certificate still works


def _wait_until_served(hub: RunningHub, identity: ClientIdentity, tls: str) -> None:
    # A certificate registered a moment ago reaches the running server within a second.
    deadline = time.monotonic() + NOTICE_WITHIN + 2
    while hub.curl(identity, QUERY, tls=tls).http_status == 0:
        assert time.monotonic() < deadline, "a newly registered certificate was never served"
        time.sleep(0.1)
    assert_served(hub, identity, tls)


@pytest.mark.parametrize("tls", TLS_VERSIONS)
def test_disabled_partner_is_refused_without_restart(cert_hub: RunningHub, minter: Minter, tls: str) -> None:
    """Every certificate of a partner is refused within seconds of 'gsem partners disable'."""
    hub = cert_hub
    partner = f"HOOLI-{tls.replace('.', '')}"
    hub.gsem("partners", "add", partner, "--name", "Hooli Support")
    identity = minter.mint(partner)
    minter.register(identity, partner)
    _wait_until_served(hub, identity, tls)

    hub.gsem("partners", "disable", partner)
    elapsed = _wait_until_refused(hub, identity, tls)
    assert elapsed < NOTICE_WITHIN, f"refused only after {elapsed:.1f} s"
    assert_refused(hub, identity, tls, "certificate is not registered to an enabled partner")
