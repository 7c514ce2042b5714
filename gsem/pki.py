"""A development PKI: a CA, the hub's certificate, partner client certificates and a CRL.

``gsem init`` calls :func:`create_dev_pki` so that a newcomer has working mutual TLS
without knowing openssl; the tests use the smaller functions to make every kind of
certificate the listener must refuse (expired, not yet valid, revoked, foreign CA).

Keys are EC P-256: fast to generate, accepted by every TLS 1.2/1.3 client that matters.
Nothing here is meant for production certificates; partners of a real hub bring
certificates from their own CA (see ``certs/README.md``).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gsem.errors import GsemError
from gsem.files import write_atomically

__all__ = [
    "PrivateKey",
    "DevPki",
    "DevPkiExistsError",
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "CRL_VALIDITY",
    "fingerprint_sha256",
    "make_ca",
    "make_server_cert",
    "make_client_cert",
    "make_crl",
    "write_cert",
    "write_key",
    "write_crl",
    "load_cert",
    "load_key",
    "load_crl",
    "create_dev_pki",
]

PrivateKey = ec.EllipticCurvePrivateKey

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=730)
CRL_VALIDITY = datetime.timedelta(days=30)

# Certificates start a little in the past so that a peer whose clock is slightly behind
# does not see a "not yet valid" certificate right after `gsem init`.
_BACKDATE = datetime.timedelta(minutes=5)

# Partner ids become file names; keep them to a safe alphabet (no "/", no "..").
_PARTNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class DevPkiExistsError(GsemError, FileExistsError):
    """``create_dev_pki`` found a CA in its directory and will not replace it."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _validity(
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    default_length: datetime.timedelta,
) -> tuple[datetime.datetime, datetime.datetime]:
    now = _now()
    start = not_before if not_before is not None else now - _BACKDATE
    end = not_after if not_after is not None else (not_before or now) + default_length
    return start, end


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def fingerprint_sha256(cert: x509.Certificate | bytes) -> str:
    """Lowercase hex SHA-256 of the DER encoding of *cert*, without colons.

    *cert* is an ``x509.Certificate`` or PEM bytes (the first certificate is used).  This
    is the value the hub registers partners' certificates under (SPEC §2) and equals
    ``openssl x509 -fingerprint -sha256`` without the colons, lowercased.
    """
    if isinstance(cert, bytes | bytearray):
        cert = x509.load_pem_x509_certificate(bytes(cert))
    return cert.fingerprint(hashes.SHA256()).hex()


def make_ca(
    common_name: str,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA certificate and its key (default validity :data:`CA_VALIDITY`).

    The CA may sign end-entity certificates and CRLs only (path length 0).
    """
    key = _new_key()
    start, end = _validity(not_before, not_after, CA_VALIDITY)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
) -> tuple[x509.Certificate, PrivateKey]:
    key = _new_key()
    start, end = _validity(not_before, not_after, LEAF_VALIDITY)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    common_name: str = "localhost",
    dns_names: Iterable[str] = ("localhost",),
    ip_addresses: Iterable[str] = ("127.0.0.1",),
    client_auth: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A TLS server certificate signed by the CA, for *dns_names* and *ip_addresses*.

    Extended key usage serverAuth, plus clientAuth when *client_auth* is true (the hub
    presents the same certificate when it pushes to partners, SPEC §7).  Clients check
    the subjectAltName, not the common name, so every name the hub is reached by must be
    listed.  Default validity :data:`LEAF_VALIDITY`.
    """
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return _leaf(ca_cert, ca_key, common_name, usages, sans, not_before, not_after)


def make_client_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    common_name: str,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A TLS client certificate (extended key usage clientAuth) signed by the CA.

    The hub identifies partners by certificate fingerprint, not by *common_name*; the
    name is for people reading logs.  Default validity :data:`LEAF_VALIDITY`.
    """
    return _leaf(
        ca_cert, ca_key, common_name, [ExtendedKeyUsageOID.CLIENT_AUTH], [], not_before, not_after
    )


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    revoked: Iterable[x509.Certificate | int],
    *,
    next_update: datetime.datetime | None = None,
    crl_number: int | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by the CA listing the serial numbers of *revoked*.

    *revoked* holds certificates or bare serial numbers (to carry over the entries of a
    previous CRL, whose certificates may be long gone).

    *next_update* defaults to now + :data:`CRL_VALIDITY`; after it, OpenSSL treats the
    CRL as expired and refuses every certificate of that CA, so a real CA must publish a
    fresh CRL before then.  *crl_number* defaults to the current Unix time, which only
    ever grows.
    """
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(next_update if next_update is not None else now + CRL_VALIDITY)
        .add_extension(
            x509.CRLNumber(crl_number if crl_number is not None else int(now.timestamp())),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for entry in revoked:
        serial = entry if isinstance(entry, int) else entry.serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - _BACKDATE)
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def write_cert(path: Path, cert: x509.Certificate) -> None:
    """Write *cert* as PEM to *path* (mode 0644), replacing it atomically."""
    write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def write_key(path: Path, key: PrivateKey) -> None:
    """Write *key* as unencrypted PKCS#8 PEM to *path* with mode 0600, atomically."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, data, mode=0o600)


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    """Write *crl* as PEM to *path* (mode 0644), replacing it atomically."""
    write_atomically(path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)


def load_cert(path: Path) -> x509.Certificate:
    """Read the first certificate of a PEM (or DER) file.

    Raises ``ValueError`` naming *path* when it holds no certificate.
    """
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ValueError(f"{path}: not a PEM or DER certificate ({e})") from None


def load_key(path: Path) -> PrivateKey:
    """Read an unencrypted PEM private key; ``ValueError`` naming *path* if it is not one."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({e})") from None
    return key  # type: ignore[return-value]


def load_crl(path: Path) -> x509.CertificateRevocationList:
    """Read a PEM (or DER) CRL; ``ValueError`` naming *path* if it is not one."""
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as e:
        raise ValueError(f"{path}: not a PEM or DER CRL ({e})") from None


@dataclass(frozen=True)
class DevPki:
    """Where :func:`create_dev_pki` wrote the development PKI."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    crl: Path
    hub_cert: Path
    hub_key: Path
    partners_dir: Path
    partner_ids: tuple[str, ...]

    def partner_cert(self, partner_id: str) -> Path:
        """The client certificate file of *partner_id*."""
        return self.partners_dir / f"{partner_id}-cert.pem"

    def partner_key(self, partner_id: str) -> Path:
        """The private key file of *partner_id*."""
        return self.partners_dir / f"{partner_id}-key.pem"


def create_dev_pki(directory: Path, partner_ids: Iterable[str]) -> DevPki:
    """Create a development CA, an empty CRL, the hub's certificate and partner certificates.

    Writes into *directory* (created 0700 if missing): ``ca-cert.pem``, ``ca-key.pem``,
    ``crl.pem``, ``hub-cert.pem``/``hub-key.pem`` (serverAuth and clientAuth, for
    localhost, 127.0.0.1 and ::1), and ``partners/<ID>-cert.pem``/``<ID>-key.pem`` for
    each partner id.  Keys are mode 0600.  The CA lasts :data:`CA_VALIDITY`, the other
    certificates and the CRL :data:`LEAF_VALIDITY`.

    Raises :class:`DevPkiExistsError` if a CA is already there: replacing it would
    silently invalidate every certificate it issued.  Raises ``ValueError`` for a
    partner id that is not a safe file name.
    """
    directory = Path(directory)
    ids = tuple(partner_ids)
    for partner_id in ids:
        if not _PARTNER_ID.fullmatch(partner_id):
            raise ValueError(
                f"partner id {partner_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "and start with a letter or digit"
            )
    pki = DevPki(
        directory=directory,
        ca_cert=directory / "ca-cert.pem",
        ca_key=directory / "ca-key.pem",
        crl=directory / "crl.pem",
        hub_cert=directory / "hub-cert.pem",
        hub_key=directory / "hub-key.pem",
        partners_dir=directory / "partners",
        partner_ids=ids,
    )
    for existing in (pki.ca_cert, pki.ca_key):
        if existing.exists():
            raise DevPkiExistsError(
                f"{existing} already exists; refusing to replace the development CA "
                "(every certificate it issued would stop working). "
                f"Remove {directory} first to start over."
            )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki.partners_dir.mkdir(mode=0o700, exist_ok=True)

    ca_cert, ca_key = make_ca("gsem development CA")
    now = _now()
    hub_cert, hub_key = make_server_cert(
        ca_cert,
        ca_key,
        common_name="gsem hub (development)",
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1", "::1"),
        client_auth=True,
    )
    write_crl(pki.crl, make_crl(ca_cert, ca_key, [], next_update=now + LEAF_VALIDITY))
    write_key(pki.hub_key, hub_key)
    write_cert(pki.hub_cert, hub_cert)
    for partner_id in ids:
        cert, key = make_client_cert(ca_cert, ca_key, partner_id)
        write_key(pki.partner_key(partner_id), key)
        write_cert(pki.partner_cert(partner_id), cert)
    # The CA goes last: if anything above failed, running again is not refused.
    write_key(pki.ca_key, ca_key)
    write_cert(pki.ca_cert, ca_cert)
    return pki
