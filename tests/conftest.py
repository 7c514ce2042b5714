"""Fixtures shared by every test: databases (SQLite files and a real PostgreSQL server).

PostgreSQL comes from ``GSEM_TEST_PG_URL`` (``make test`` starts a throw-away cluster with
``.ci/pg-start`` and sets it).  Without it, or when the server does not answer, the tests
that need it are skipped with the reason; ``-ra`` prints it in the summary.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy.pool import NullPool

from gsem.db import model
from gsem.db.connector import Database

PG_URL_VARIABLE = "GSEM_TEST_PG_URL"


def _admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool,
                            connect_args={"connect_timeout": 5})


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a reachable PostgreSQL server whose role may create databases; else skip."""
    url = os.environ.get(PG_URL_VARIABLE)
    if not url:
        reason = os.environ.get("GSEM_TEST_PG_SKIP_REASON") or (
            f"{PG_URL_VARIABLE} is not set; 'make test' starts a server with .ci/pg-start "
            "and sets it (see docs/operations.md)"
        )
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError as e:
        pytest.skip(f"PostgreSQL unavailable: cannot connect to {PG_URL_VARIABLE}={url}: "
                    f"{str(e.orig or e).strip().splitlines()[0]}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def pg_database_url(pg_server_url: str) -> Iterator[str]:
    """URL of a new, empty PostgreSQL database, dropped after the test."""
    name = f"gsem_test_{uuid.uuid4().hex[:16]}"
    engine = _admin_engine(pg_server_url)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            # FORCE: a test that failed may have left a connection open.
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    """URL of an SQLite file (not created yet) in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'gsem.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres,
                                                                  pytest.mark.integration])])
def database_url(request: pytest.FixtureRequest) -> str:
    """URL of a fresh, EMPTY (not migrated) database: an SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_database_url")
    return request.getfixturevalue("pg_database_url")


@pytest.fixture
def migrated_database(database_url: str) -> Iterator[Database]:
    """A started :class:`Database` on :func:`database_url`, upgraded to the newest schema."""
    database = Database(database_url)
    database.upgrade()
    database.start()
    try:
        yield database
    finally:
        database.stop()


# -- certificates and rows for storage tests ---------------------------------------------


def _make_cert_pem(common_name: str, *, not_before: dt.datetime | None = None,
                   not_after: dt.datetime | None = None) -> bytes:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_before = not_before or now - dt.timedelta(days=1)
    not_after = not_after or now + dt.timedelta(days=365)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


@pytest.fixture
def make_cert() -> Callable[..., bytes]:
    """``make_cert(cn, not_before=None, not_after=None)``: a new self-signed PEM certificate."""
    return _make_cert_pem


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_at(when: dt.datetime) -> str:
    """A ULID for the time *when* (naive UTC), independent of other ids made in the process."""
    millis = int(when.replace(tzinfo=dt.UTC).timestamp() * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


class StoreRows:
    """Writes rows the way the exchange engine does, for tests of the read side."""

    @staticmethod
    def ack(conn: sa.Connection, *, partner: str = "ACME", transaction: str | None = "Service_Request",
            requester_ref: str | None = "REQ-1", provider_ref: str | None = None, result: str = "Yes",
            http_status: int = 200, error_codes: Sequence[str] = (), state_before: str | None = None,
            state_after: str | None = None, created_at: dt.datetime | None = None,
            incident_id: int | None = None) -> tuple[str, int]:
        """A message and its acknowledgement; returns ``(ack_id, message_id)``."""
        when = created_at or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        ack_id = ulid_at(when)
        message_id = conn.execute(model.messages.insert().values(
            partner_id=partner, cert_fingerprint="0" * 64, received_at=when, body=b"<SERVICE_INCIDENT/>",
            digest="0" * 64, idempotency_key=ack_id, transaction_name=transaction,
            requester_ref=requester_ref, incident_id=incident_id, accepted=result == "Yes",
            state_before=state_before, state_after=state_after, ack_id=ack_id, timings="{}",
        )).inserted_primary_key[0]
        conn.execute(model.acknowledgements.insert().values(
            ack_id=ack_id, message_id=message_id, partner_id=partner, created_at=when,
            transaction_name=transaction, requester_ref=requester_ref, provider_ref=provider_ref,
            result=result, http_status=http_status,
            error_codes=("," + ",".join(error_codes) + ",") if error_codes else "",
            state_after=state_after, document=b"<ACKNOWLEDGEMENT/>",
        ))
        return ack_id, message_id

    @staticmethod
    def incident(conn: sa.Connection, *, requester: str = "ACME", provider: str = "GLOBEX",
                 requester_ref: str = "REQ-1", provider_ref: str | None = None,
                 state: str = "Beginning_State", when: dt.datetime | None = None) -> int:
        """An incident; returns its id."""
        when = when or dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        return conn.execute(model.incidents.insert().values(
            requester_id=requester, provider_id=provider, requester_ref=requester_ref,
            provider_ref=provider_ref, state=state, document=b"<SERVICE_INCIDENT/>",
            problem_with_request=False, version=1, created_at=when, updated_at=when,
        )).inserted_primary_key[0]

    @staticmethod
    def delivery(conn: sa.Connection, *, message_id: int, incident_id: int, recipient: str = "GLOBEX",
                 state: str = "pending", attempts: int = 0, last_error: str | None = None,
                 receiver_ack: bytes | None = None) -> int:
        """An outbound delivery record; returns its id."""
        when = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        return conn.execute(model.deliveries.insert().values(
            message_id=message_id, incident_id=incident_id, recipient_id=recipient, state=state,
            document=b"<SERVICE_INCIDENT/>", attempts=attempts, next_attempt_at=None,
            last_error=last_error, receiver_ack=receiver_ack, created_at=when, updated_at=when,
        )).inserted_primary_key[0]


@pytest.fixture
def store_rows() -> type[StoreRows]:
    """Helpers that insert messages, acknowledgements, incidents and deliveries directly."""
    return StoreRows
