"""The mutual-TLS listener as partners' clients (curl, openssl s_client) see it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from tls_helpers import (
    ClientCert,
    Listener,
    TestPki,
    curl,
    make_test_pki,
    s_client,
    start_listener,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from gsem import pki
from gsem.tls import PartnerTrustStore, TrustMaterialError

pytestmark = pytest.mark.integration

TLS_VERSIONS = ["1.2", "1.3"]


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """One PKI for the session: the dev PKI plus every certificate that must be refused."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _trust_store(test_pki: TestPki, registry: dict[str, str]) -> PartnerTrustStore:
    return PartnerTrustStore(
        [test_pki.ca_cert], [test_pki.crl], test_pki.hub_cert, test_pki.hub_key, registry.get
    )


async def _listen(test_pki: TestPki, registry: dict[str, str], **kwargs: float) -> Listener:
    return await start_listener(_trust_store(test_pki, registry), **kwargs)


# curl's exit codes for a connection the peer ended with a TLS alert: 35 during the
# handshake (TLS 1.2), 56 on the first read (TLS 1.3: the client's certificate is checked
# after the client considers the handshake done), 60 when the alert says the certificate
# is expired.  An HTTP answer of any status would be exit 0 with a body.
TLS_REFUSAL_EXITS = {35, 56, 60}


def _refused(result: subprocess.CompletedProcess[str]) -> bool:
    """curl failed in the TLS layer and got no HTTP answer."""
    return result.returncode in TLS_REFUSAL_EXITS and result.stdout == ""


@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_registered_partner_is_answered(test_pki: TestPki, tls_version: str) -> None:
    """A valid, registered partner certificate gets the HTTP answer with its partner id."""
    listener = await _listen(test_pki, test_pki.registry)
    try:
        result = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.acme, tls_version=tls_version
        )
    finally:
        await listener.port.stopListening()
    assert (result.returncode, result.stdout) == (0, "ACME"), result.stderr


REFUSED = ["none", "foreign", "expired", "not_yet_valid", "revoked", "unregistered"]


@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
@pytest.mark.parametrize("which", REFUSED)
@pytest_twisted.ensureDeferred
async def test_bad_client_certificate_is_refused_in_handshake(
    test_pki: TestPki, which: str, tls_version: str
) -> None:
    """No certificate, another CA's, expired, not yet valid, revoked or unregistered: a TLS alert, no HTTP answer."""
    client: ClientCert | None = None if which == "none" else getattr(test_pki, which)
    listener = await _listen(test_pki, test_pki.registry)
    try:
        result = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=client, tls_version=tls_version
        )
    finally:
        await listener.port.stopListening()
    assert _refused(result), (result.returncode, result.stdout, result.stderr)


@pytest_twisted.ensureDeferred
async def test_retired_certificate_is_refused_on_next_connection(test_pki: TestPki) -> None:
    """A certificate accepted once is refused on the next connection after it is retired."""
    registry = test_pki.registry
    listener = await _listen(test_pki, registry)
    try:
        first = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.retiring, tls_version="1.3"
        )
        del registry[test_pki.retiring.fingerprint]
        second = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.retiring, tls_version="1.3"
        )
    finally:
        await listener.port.stopListening()
    assert (first.returncode, first.stdout) == (0, "BETA"), first.stderr
    assert _refused(second), (second.returncode, second.stdout, second.stderr)


@pytest_twisted.ensureDeferred
async def test_newly_registered_certificate_is_accepted_without_restart(
    test_pki: TestPki,
) -> None:
    """A certificate refused while unregistered is accepted once registered, same listener."""
    registry = test_pki.registry
    listener = await _listen(test_pki, registry)
    try:
        before = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.unregistered, tls_version="1.2"
        )
        registry[test_pki.unregistered.fingerprint] = "GAMMA"
        after = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.unregistered, tls_version="1.2"
        )
    finally:
        await listener.port.stopListening()
    assert _refused(before), (before.returncode, before.stdout, before.stderr)
    assert (after.returncode, after.stdout) == (0, "GAMMA"), after.stderr


def _s_client_with_session(
    port: int, test_pki: TestPki, client: ClientCert, tls_flag: str, session: Path, mode: str
) -> subprocess.CompletedProcess[bytes]:
    # Without a session to offer (the hub gave none), connect without -sess_in.
    session_args = [mode, str(session)] if mode == "-sess_out" or session.exists() else []
    return subprocess.run(
        [
            "openssl", "s_client", tls_flag, "-quiet", "-verify_return_error",
            "-connect", f"127.0.0.1:{port}", "-CAfile", str(test_pki.ca_cert),
            "-cert", str(client.cert), "-key", str(client.key), *session_args,
        ],
        input=b"GET / HTTP/1.0\r\n\r\n",
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("tls_flag", ["-tls1_2", "-tls1_3"])
@pytest_twisted.ensureDeferred
async def test_retired_certificate_cannot_resume_a_session(
    test_pki: TestPki, tmp_path: Path, tls_flag: str
) -> None:
    """A client offering a saved TLS session after its certificate was retired is still refused."""
    registry = test_pki.registry
    listener = await _listen(test_pki, registry)
    session = tmp_path / "session.pem"
    try:
        first = await deferToThread(
            _s_client_with_session, listener.number, test_pki, test_pki.retiring, tls_flag,
            session, "-sess_out",
        )  # fmt: skip
        del registry[test_pki.retiring.fingerprint]
        second = await deferToThread(
            _s_client_with_session, listener.number, test_pki, test_pki.retiring, tls_flag,
            session, "-sess_in",
        )  # fmt: skip
    finally:
        await listener.port.stopListening()
    assert first.returncode == 0 and first.stdout.endswith(b"BETA"), first.stderr
    assert b"BETA" not in second.stdout
    assert b"alert" in second.stderr, second.stderr


@pytest.fixture
def trust_dirs(test_pki: TestPki, tmp_path: Path) -> tuple[Path, Path]:
    """A CA directory and a CRL directory holding copies of the session CA and CRL."""
    ca_dir, crl_dir = tmp_path / "ca.d", tmp_path / "crl.d"
    ca_dir.mkdir()
    crl_dir.mkdir()
    shutil.copy(test_pki.ca_cert, ca_dir / "dev-ca.pem")
    shutil.copy(test_pki.crl, crl_dir / "dev-ca.crl")
    return ca_dir, crl_dir


def _wait_for_change_check() -> object:
    # The listener looks at file times at most once a second.
    return deferLater(reactor, 1.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_new_ca_is_trusted_without_restart(
    test_pki: TestPki, trust_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Dropping a new CA and its CRL into the trust directories lets its partner in, same listener."""
    ca_dir, crl_dir = trust_dirs
    new_ca, new_ca_key = pki.make_ca("Second partner CA")
    made = pki.make_client_cert(new_ca, new_ca_key, "DELTA")
    newcomer = ClientCert(tmp_path / "delta-cert.pem", tmp_path / "delta-key.pem", "")
    pki.write_cert(newcomer.cert, made[0])
    pki.write_key(newcomer.key, made[1])
    registry = test_pki.registry
    registry[pki.fingerprint_sha256(made[0])] = "DELTA"
    store = PartnerTrustStore(
        [ca_dir], [crl_dir], test_pki.hub_cert, test_pki.hub_key, registry.get
    )
    listener = await start_listener(store)
    try:
        before = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=newcomer, tls_version="1.3"
        )
        pki.write_cert(ca_dir / "second-ca.pem", new_ca)
        pki.write_crl(crl_dir / "second-ca.crl", pki.make_crl(new_ca, new_ca_key, []))
        await _wait_for_change_check()
        after = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=newcomer, tls_version="1.3"
        )
        old_partner = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.acme, tls_version="1.2"
        )
    finally:
        await listener.port.stopListening()
    assert _refused(before), (before.returncode, before.stdout, before.stderr)
    assert (after.returncode, after.stdout) == (0, "DELTA"), after.stderr
    assert (old_partner.returncode, old_partner.stdout) == (0, "ACME"), old_partner.stderr


@pytest_twisted.ensureDeferred
async def test_updated_crl_refuses_revoked_partner_without_restart(
    test_pki: TestPki, trust_dirs: tuple[Path, Path]
) -> None:
    """Replacing the CRL file with one that revokes a partner refuses that partner from then on."""
    ca_dir, crl_dir = trust_dirs
    store = PartnerTrustStore(
        [ca_dir],
        [crl_dir / "dev-ca.crl"],
        test_pki.hub_cert,
        test_pki.hub_key,
        test_pki.registry.get,
    )
    listener = await start_listener(store)
    try:
        before = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.acme, tls_version="1.2"
        )
        ca_cert = pki.load_cert(test_pki.dev.ca_cert)
        ca_key = pki.load_key(test_pki.dev.ca_key)
        acme = pki.load_cert(test_pki.acme.cert)
        pki.write_crl(crl_dir / "dev-ca.crl", pki.make_crl(ca_cert, ca_key, [acme]))
        await _wait_for_change_check()
        after = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.acme, tls_version="1.2"
        )
    finally:
        await listener.port.stopListening()
    assert (before.returncode, before.stdout) == (0, "ACME"), before.stderr
    assert _refused(after), (after.returncode, after.stdout, after.stderr)
    assert "revoked" in after.stderr


@pytest_twisted.ensureDeferred
async def test_broken_trust_file_keeps_previous_trust(
    test_pki: TestPki, trust_dirs: tuple[Path, Path]
) -> None:
    """A CRL file that becomes garbage is not used: partners keep getting in with the old trust."""
    ca_dir, crl_dir = trust_dirs
    store = PartnerTrustStore(
        [ca_dir], [crl_dir], test_pki.hub_cert, test_pki.hub_key, test_pki.registry.get
    )
    listener = await start_listener(store)
    try:
        (crl_dir / "dev-ca.crl").write_text("half a CRL")
        await _wait_for_change_check()
        result = await curl(
            listener.url, ca_cert=test_pki.ca_cert, client=test_pki.acme, tls_version="1.3"
        )
    finally:
        await listener.port.stopListening()
    assert (result.returncode, result.stdout) == (0, "ACME"), result.stderr


@pytest_twisted.ensureDeferred
async def test_reload_presents_rotated_server_certificate(
    test_pki: TestPki, tmp_path: Path
) -> None:
    """After reload() new connections get the replaced hub certificate; the port stays the same."""
    hub_cert, hub_key = tmp_path / "hub-cert.pem", tmp_path / "hub-key.pem"
    shutil.copy(test_pki.hub_cert, hub_cert)
    shutil.copy(test_pki.hub_key, hub_key)
    store = PartnerTrustStore(
        [test_pki.ca_cert], [test_pki.crl], hub_cert, hub_key, test_pki.registry.get
    )
    listener = await start_listener(store)
    try:
        before = await curl(
            listener.url,
            ca_cert=test_pki.ca_cert,
            client=test_pki.acme,
            tls_version="1.3",
            verbose=True,
        )
        ca_cert = pki.load_cert(test_pki.dev.ca_cert)
        ca_key = pki.load_key(test_pki.dev.ca_key)
        cert, key = pki.make_server_cert(ca_cert, ca_key, common_name="rotated hub")
        pki.write_key(hub_key, key)
        pki.write_cert(hub_cert, cert)
        store.reload()
        after = await curl(
            listener.url,
            ca_cert=test_pki.ca_cert,
            client=test_pki.acme,
            tls_version="1.3",
            verbose=True,
        )
    finally:
        await listener.port.stopListening()
    assert before.returncode == 0 and "rotated hub" not in before.stderr
    assert (after.returncode, after.stdout) == (0, "ACME"), after.stderr
    assert "subject: CN=rotated hub" in after.stderr


def _idle_tcp_connection(port: int) -> tuple[bytes | None, float]:
    """Connect, send nothing, and wait for the hub to close: (what was read, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            data: bytes | None = sock.recv(1024)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            data = None
    return data, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_handshake_timeout_closes_silent_connection(test_pki: TestPki) -> None:
    """A TCP client that never sends a ClientHello is disconnected after the handshake timeout."""
    listener = await _listen(test_pki, test_pki.registry, handshake_timeout=0.5)
    try:
        data, elapsed = await deferToThread(_idle_tcp_connection, listener.number)
    finally:
        await listener.port.stopListening()
    assert data == b"", "the hub should have closed the connection"
    assert 0.4 < elapsed < 5


@pytest_twisted.ensureDeferred
async def test_handshake_timeout_spares_established_connections(test_pki: TestPki) -> None:
    """A partner that finished its handshake may stay quiet longer than the handshake timeout."""
    listener = await _listen(test_pki, test_pki.registry, handshake_timeout=0.5)
    try:
        status, out, err = await s_client(
            listener.number, ca_cert=test_pki.ca_cert, client=test_pki.acme, delay=1.5
        )
    finally:
        await listener.port.stopListening()
    assert status == 0, err
    assert out.endswith(b"\r\n\r\nACME"), out


@pytest.fixture
def tls_log() -> Iterator[list[dict[str, object]]]:
    """The events gsem.tls logs while the test runs."""
    events: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_namespace") == "gsem.tls":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_refusals_are_logged_with_reason_and_fingerprint(
    test_pki: TestPki, tls_log: list[dict[str, object]]
) -> None:
    """Each refused handshake is one log line naming the reason and the certificate fingerprint."""
    listener = await _listen(test_pki, test_pki.registry)
    try:
        for client in (test_pki.revoked, test_pki.unregistered, None):
            await curl(listener.url, ca_cert=test_pki.ca_cert, client=client, tls_version="1.2")
    finally:
        await listener.port.stopListening()
    refusals = [e for e in tls_log if "refused" in str(e.get("log_format"))]
    assert [(e["reason"], e["fingerprint"]) for e in refusals] == [
        ("certificate revoked (X509 error 23)", test_pki.revoked.fingerprint),
        (
            "certificate is not registered to an enabled partner, or is outside its "
            "registration window",
            test_pki.unregistered.fingerprint,
        ),
        ("peer did not return a certificate", "none"),
    ]
    assert not any(e.get("log_failure") for e in tls_log)


def test_missing_ca_file_is_named(test_pki: TestPki, tmp_path: Path) -> None:
    """A CA path that does not exist is an error naming that path."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(TrustMaterialError, match="nope.pem"):
        PartnerTrustStore(
            [missing], [test_pki.crl], test_pki.hub_cert, test_pki.hub_key, dict().get
        )


def test_bad_file_in_ca_directory_is_named(
    test_pki: TestPki, trust_dirs: tuple[Path, Path]
) -> None:
    """A broken file in a CA directory is an error naming it, not silently skipped."""
    ca_dir, crl_dir = trust_dirs
    (ca_dir / "broken.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(TrustMaterialError, match="broken.pem"):
        PartnerTrustStore([ca_dir], [crl_dir], test_pki.hub_cert, test_pki.hub_key, dict().get)


def test_partner_certificate_in_ca_list_is_refused(test_pki: TestPki) -> None:
    """Putting a partner's own certificate among the CAs is an error that says why."""
    with pytest.raises(TrustMaterialError, match="not a CA certificate") as raised:
        PartnerTrustStore(
            [test_pki.ca_cert, test_pki.acme.cert],
            [test_pki.crl],
            test_pki.hub_cert,
            test_pki.hub_key,
            dict().get,
        )
    assert str(test_pki.acme.cert) in str(raised.value)


def test_crl_of_unknown_ca_is_refused(test_pki: TestPki, tmp_path: Path) -> None:
    """A CRL not signed by any trusted CA is an error naming the CRL file."""
    stranger, stranger_key = pki.make_ca("Stranger CA")
    crl = tmp_path / "stranger.crl"
    pki.write_crl(crl, pki.make_crl(stranger, stranger_key, []))
    with pytest.raises(TrustMaterialError, match="stranger.crl"):
        PartnerTrustStore(
            [test_pki.ca_cert], [crl], test_pki.hub_cert, test_pki.hub_key, dict().get
        )


def test_no_crl_is_refused(test_pki: TestPki) -> None:
    """Without any CRL every client would fail revocation checking, so it is an error up front."""
    with pytest.raises(TrustMaterialError, match="CRL"):
        PartnerTrustStore([test_pki.ca_cert], [], test_pki.hub_cert, test_pki.hub_key, dict().get)


def test_mismatched_server_key_is_refused(test_pki: TestPki) -> None:
    """A server key that does not belong to the server certificate is an error naming both files."""
    with pytest.raises(TrustMaterialError, match="does not belong") as raised:
        PartnerTrustStore(
            [test_pki.ca_cert], [test_pki.crl], test_pki.hub_cert, test_pki.acme.key, dict().get
        )
    assert str(test_pki.acme.key) in str(raised.value)
    assert str(test_pki.hub_cert) in str(raised.value)


def test_every_problem_is_reported_at_once(test_pki: TestPki, tmp_path: Path) -> None:
    """Several bad files give one error listing each of them."""
    with pytest.raises(TrustMaterialError) as raised:
        PartnerTrustStore(
            [tmp_path / "ca-missing.pem"],
            [tmp_path / "crl-missing.pem"],
            tmp_path / "cert-missing.pem",
            tmp_path / "key-missing.pem",
            dict().get,
        )
    text = str(raised.value)
    for name in ("ca-missing.pem", "crl-missing.pem", "cert-missing.pem", "key-missing.pem"):
        assert name in text


@pytest_twisted.ensureDeferred
async def test_connections_per_partner_are_limited(test_pki: TestPki) -> None:
    """With a limit of one connection per partner, ACME's second connection is closed while its first is open."""
    listener = await start_listener(_trust_store(test_pki, test_pki.registry), max_connections_per_partner=1)
    try:
        holding = Deferred.fromCoroutine(
            s_client(listener.number, ca_cert=test_pki.ca_cert, client=test_pki.acme, delay=2.0)
        )
        await deferLater(reactor, 0.7, lambda: None)  # the first connection has finished its handshake
        second = await curl(listener.url, ca_cert=test_pki.ca_cert, client=test_pki.acme, tls_version="1.3")
        status, out, err = await holding
        third = await curl(listener.url, ca_cert=test_pki.ca_cert, client=test_pki.acme, tls_version="1.3")
    finally:
        await listener.port.stopListening()
    assert second.returncode != 0 and second.stdout == "", (second.returncode, second.stdout)
    assert status == 0 and out.endswith(b"ACME"), err
    assert (third.returncode, third.stdout) == (0, "ACME"), third.stderr
