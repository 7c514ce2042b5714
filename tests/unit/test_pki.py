"""The development PKI: what it issues is what OpenSSL and TLS clients expect."""

from __future__ import annotations

import datetime
import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from gsem import pki

UTC = datetime.UTC


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, pki.PrivateKey]:
    """One CA for the module: key generation is the slow part."""
    return pki.make_ca("Test CA")


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )


def test_ca_is_a_self_signed_ca(ca: tuple[x509.Certificate, pki.PrivateKey]) -> None:
    """The CA certificate is self-signed, marked CA, and may sign certificates and CRLs."""
    cert, _ = ca
    cert.verify_directly_issued_by(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


def test_ca_default_validity_is_ten_years(ca: tuple[x509.Certificate, pki.PrivateKey]) -> None:
    """A CA made without dates is valid now and for about ten years."""
    cert, _ = ca
    now = datetime.datetime.now(UTC)
    assert cert.not_valid_before_utc <= now
    assert cert.not_valid_after_utc - now > datetime.timedelta(days=3649)
    assert cert.not_valid_after_utc - now < datetime.timedelta(days=3651)


def test_client_cert_chains_to_ca_with_client_auth_only(
    ca: tuple[x509.Certificate, pki.PrivateKey],
) -> None:
    """A client certificate is signed by the CA, is not a CA, and is for clientAuth only."""
    ca_cert, ca_key = ca
    cert, key = pki.make_client_cert(ca_cert, ca_key, "ACME")
    cert.verify_directly_issued_by(ca_cert)
    assert cert.public_key() == key.public_key()
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.subject.rfc4514_string() == "CN=ACME"


def test_server_cert_names_and_usage(ca: tuple[x509.Certificate, pki.PrivateKey]) -> None:
    """A server certificate carries the requested DNS names and IPs and serverAuth."""
    ca_cert, ca_key = ca
    cert, _ = pki.make_server_cert(
        ca_cert, ca_key, dns_names=("localhost", "hub.example"), ip_addresses=("127.0.0.1", "::1")
    )
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "hub.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_server_cert_can_also_be_a_client_cert(
    ca: tuple[x509.Certificate, pki.PrivateKey],
) -> None:
    """With client_auth the server certificate is valid for both TLS roles."""
    ca_cert, ca_key = ca
    cert, _ = pki.make_server_cert(ca_cert, ca_key, client_auth=True)
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_explicit_validity_window_is_used(ca: tuple[x509.Certificate, pki.PrivateKey]) -> None:
    """not_before/not_after given by the caller end up in the certificate unchanged."""
    ca_cert, ca_key = ca
    start = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    end = datetime.datetime(2031, 1, 1, tzinfo=UTC)
    cert, _ = pki.make_client_cert(ca_cert, ca_key, "LATER", not_before=start, not_after=end)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)


def test_fingerprint_matches_openssl(
    ca: tuple[x509.Certificate, pki.PrivateKey], tmp_path: Path
) -> None:
    """fingerprint_sha256 equals openssl's SHA-256 fingerprint, lowercase without colons."""
    ca_cert, ca_key = ca
    cert, _ = pki.make_client_cert(ca_cert, ca_key, "ACME")
    path = tmp_path / "acme.pem"
    pki.write_cert(path, cert)
    out = _openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha256")
    assert out.returncode == 0, out.stderr
    expected = out.stdout.strip().split("=", 1)[1].replace(":", "").lower()
    assert pki.fingerprint_sha256(cert) == expected
    assert pki.fingerprint_sha256(path.read_bytes()) == expected


def test_crl_lists_revoked_serial_and_is_signed_by_ca(
    ca: tuple[x509.Certificate, pki.PrivateKey],
) -> None:
    """A CRL names the revoked certificate's serial, not others, and verifies with the CA key."""
    ca_cert, ca_key = ca
    revoked, _ = pki.make_client_cert(ca_cert, ca_key, "OLD")
    kept, _ = pki.make_client_cert(ca_cert, ca_key, "NEW")
    crl = pki.make_crl(ca_cert, ca_key, [revoked])
    assert crl.is_signature_valid(ca_cert.public_key())
    assert crl.issuer == ca_cert.subject
    assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None


def test_crl_carries_over_serial_numbers(ca: tuple[x509.Certificate, pki.PrivateKey]) -> None:
    """Serial numbers from an older CRL can be listed again without their certificates."""
    ca_cert, ca_key = ca
    newly, _ = pki.make_client_cert(ca_cert, ca_key, "NEWLY")
    crl = pki.make_crl(ca_cert, ca_key, [12345, newly])
    assert {entry.serial_number for entry in crl} == {12345, newly.serial_number}


def test_openssl_refuses_revoked_and_accepts_valid(
    ca: tuple[x509.Certificate, pki.PrivateKey], tmp_path: Path
) -> None:
    """`openssl verify -crl_check` accepts an unrevoked client certificate and refuses a revoked one."""
    ca_cert, ca_key = ca
    revoked, _ = pki.make_client_cert(ca_cert, ca_key, "OLD")
    kept, _ = pki.make_client_cert(ca_cert, ca_key, "NEW")
    pki.write_cert(tmp_path / "ca.pem", ca_cert)
    pki.write_crl(tmp_path / "crl.pem", pki.make_crl(ca_cert, ca_key, [revoked]))
    pki.write_cert(tmp_path / "old.pem", revoked)
    pki.write_cert(tmp_path / "new.pem", kept)
    check = (
        "verify",
        "-CAfile",
        tmp_path / "ca.pem",
        "-crl_check",
        "-CRLfile",
        tmp_path / "crl.pem",
    )
    assert _openssl(*check, "-purpose", "sslclient", tmp_path / "new.pem").returncode == 0
    out = _openssl(*check, tmp_path / "old.pem")
    assert out.returncode != 0
    assert "revoked" in (out.stdout + out.stderr)


def test_write_key_is_private_and_loadable(
    ca: tuple[x509.Certificate, pki.PrivateKey], tmp_path: Path
) -> None:
    """write_key leaves a 0600 file (also when replacing one) that loads back as the same key."""
    _, key = ca
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    pki.write_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert loaded.public_key() == key.public_key()
    assert pki.load_key(path).public_key() == key.public_key()


def test_load_cert_names_a_bad_file(tmp_path: Path) -> None:
    """load_cert on a file that is not a certificate says which file."""
    path = tmp_path / "junk.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="junk.pem"):
        pki.load_cert(path)


def test_create_dev_pki_writes_every_file(tmp_path: Path) -> None:
    """create_dev_pki writes CA, CRL, hub and partner files; keys 0600, certs chain to the CA."""
    made = pki.create_dev_pki(tmp_path / "certs", ["ACME", "BETA"])
    for path in (made.ca_cert, made.crl, made.hub_cert):
        assert path.is_file()
    keys = [made.ca_key, made.hub_key, made.partner_key("ACME"), made.partner_key("BETA")]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert made.partner_cert("ACME") == tmp_path / "certs" / "partners" / "ACME-cert.pem"

    ca_cert = pki.load_cert(made.ca_cert)
    hub = pki.load_cert(made.hub_cert)
    hub.verify_directly_issued_by(ca_cert)
    assert _eku(hub) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert pki.load_key(made.hub_key).public_key() == hub.public_key()
    for partner_id in ("ACME", "BETA"):
        cert = pki.load_cert(made.partner_cert(partner_id))
        cert.verify_directly_issued_by(ca_cert)
        assert pki.load_key(made.partner_key(partner_id)).public_key() == cert.public_key()
    crl = pki.load_crl(made.crl)
    assert crl.is_signature_valid(ca_cert.public_key())
    assert len(crl) == 0

    leaf_days = (hub.not_valid_after_utc - hub.not_valid_before_utc).days
    assert 729 <= leaf_days <= 731


def test_create_dev_pki_refuses_to_replace_a_ca(tmp_path: Path) -> None:
    """A second create_dev_pki in the same directory fails and leaves the first CA intact."""
    made = pki.create_dev_pki(tmp_path, ["ACME"])
    before = made.ca_cert.read_bytes(), made.ca_key.read_bytes()
    with pytest.raises(pki.DevPkiExistsError, match="ca-cert.pem"):
        pki.create_dev_pki(tmp_path, ["ACME"])
    assert (made.ca_cert.read_bytes(), made.ca_key.read_bytes()) == before


def test_create_dev_pki_rejects_unsafe_partner_ids(tmp_path: Path) -> None:
    """A partner id that is not a plain file name is refused before anything is written."""
    with pytest.raises(ValueError, match="partner id"):
        pki.create_dev_pki(tmp_path / "certs", ["../evil"])
    assert not (tmp_path / "certs").exists()
