"""Partners, their client certificates and their agreements (SPEC §2).

Every function takes a connection inside a transaction (run it through
:meth:`gsem.db.connector.Database.run` or ``run_sync``) and returns frozen objects.
Operator mistakes (an unknown partner, a duplicate id, a file that is not a certificate)
raise :class:`PartnerStoreError` subclasses whose message says what to do.

The TLS listener identifies a partner by the SHA-256 fingerprint of its certificate; it
keeps an in-memory :func:`trust_snapshot` and re-reads it when :func:`trust_version`
changes, which is one cheap query.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection

from gsem.db import model
from gsem.errors import GsemError
from gsem.pki import fingerprint_sha256

__all__ = [
    "DELIVERY_MODES",
    "Partner",
    "PartnerCert",
    "Agreement",
    "PartnerDetail",
    "TrustEntry",
    "PartnerStoreError",
    "UnknownPartner",
    "DuplicatePartner",
    "BadCertificate",
    "DuplicateCertificate",
    "UnknownCertificate",
    "BadAgreement",
    "DuplicateAgreement",
    "BadDeliverySettings",
    "DeliverySettings",
    "add_partner",
    "list_partners",
    "get_partner",
    "disable_partner",
    "enable_partner",
    "set_delivery",
    "delivery_problems",
    "delivery_settings",
    "parse_delivery_config",
    "add_cert",
    "list_certs",
    "retire_cert",
    "add_agreement",
    "list_agreements",
    "find_provider",
    "contract_key",
    "trust_snapshot",
    "trust_version",
    "utc_naive",
]

#: How a partner receives messages (SPEC §7).
DELIVERY_MODES = ("pull", "push", "spool", "adapter")

_PARTNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX = re.compile(r"[0-9a-f]+")
#: The shortest fingerprint prefix :func:`retire_cert` accepts.
MIN_FINGERPRINT_PREFIX = 8


# -- errors ------------------------------------------------------------------------------


class PartnerStoreError(GsemError):
    """An operator asked for something about partners that cannot be done."""


class UnknownPartner(PartnerStoreError):
    """No partner has this id."""


class DuplicatePartner(PartnerStoreError):
    """A partner with this id exists already."""


class BadCertificate(PartnerStoreError):
    """The file is not one PEM certificate, or its validity window makes no sense."""


class DuplicateCertificate(PartnerStoreError):
    """This certificate is registered already."""


class UnknownCertificate(PartnerStoreError):
    """No registered certificate has this fingerprint (or the prefix is ambiguous)."""


class BadAgreement(PartnerStoreError):
    """The agreement's parties or contract id are not acceptable."""


class DuplicateAgreement(PartnerStoreError):
    """The requester already has an agreement under this contract id."""


class BadDeliverySettings(PartnerStoreError):
    """A partner's delivery settings are incomplete or wrong; the message lists every problem."""

    def __init__(self, partner_id: str, problems: list[str]) -> None:
        self.partner_id = partner_id
        self.problems = list(problems)
        super().__init__(f"partner {partner_id}: " + "; ".join(self.problems))


# -- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partner:
    """A registered call-handling system."""

    id: str
    name: str
    enabled: bool
    strict: bool
    delivery_mode: str
    delivery_config: str  # JSON text: the settings of its delivery mode
    created_at: dt.datetime


@dataclass(frozen=True)
class PartnerCert:
    """A client certificate of a partner; times are naive UTC."""

    fingerprint: str
    partner_id: str
    subject: str
    issuer: str
    serial: str
    valid_from: dt.datetime
    valid_until: dt.datetime
    retired_at: dt.datetime | None
    added_at: dt.datetime
    pem: str

    def status(self, now: dt.datetime | None = None) -> str:
        """``retired``, ``expired``, ``not-yet-valid`` or ``valid`` at *now* (default: now)."""
        now = utc_naive(now) if now is not None else _now()
        if self.retired_at is not None:
            return "retired"
        if now > self.valid_until:
            return "expired"
        if now < self.valid_from:
            return "not-yet-valid"
        return "valid"


@dataclass(frozen=True)
class Agreement:
    """A requester may pass calls to a provider under *contract_id*."""

    id: int
    requester_id: str
    provider_id: str
    contract_id: str
    created_at: dt.datetime


@dataclass(frozen=True)
class PartnerDetail:
    """A partner with its certificates and the agreements it is a party to."""

    partner: Partner
    certs: tuple[PartnerCert, ...]
    agreements: tuple[Agreement, ...]


@dataclass(frozen=True)
class DeliverySettings:
    """How the hub delivers to one partner: its mode and that mode's settings (SPEC §7)."""

    partner_id: str
    mode: str  # push | pull | spool | adapter
    config: dict[str, Any]  # the settings, as set with set_delivery
    enabled: bool


@dataclass(frozen=True)
class TrustEntry:
    """What the TLS listener needs to map a certificate fingerprint to a partner."""

    fingerprint: str
    partner_id: str
    valid_from: dt.datetime
    valid_until: dt.datetime
    retired_at: dt.datetime | None
    partner_enabled: bool

    def accepts(self, now: dt.datetime) -> bool:
        """Whether a handshake with this certificate at *now* (naive UTC) identifies the partner."""
        return (
            self.partner_enabled
            and self.retired_at is None
            and self.valid_from <= utc_naive(now) <= self.valid_until
        )


# -- helpers -----------------------------------------------------------------------------


def utc_naive(when: dt.datetime) -> dt.datetime:
    """*when* as naive UTC, the form the store keeps (a naive value is taken as UTC)."""
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when


def _now() -> dt.datetime:
    # Whole seconds: what operators read, and identical on SQLite and PostgreSQL.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _partner(row: sa.Row) -> Partner:
    return Partner(
        id=row.id,
        name=row.name,
        enabled=bool(row.enabled),
        strict=bool(row.strict),
        delivery_mode=row.delivery_mode,
        delivery_config=row.delivery_config,
        created_at=row.created_at,
    )


def _cert(row: sa.Row) -> PartnerCert:
    return PartnerCert(
        fingerprint=row.fingerprint,
        partner_id=row.partner_id,
        subject=row.subject,
        issuer=row.issuer,
        serial=row.serial,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        retired_at=row.retired_at,
        added_at=row.added_at,
        pem=row.pem,
    )


def _agreement(row: sa.Row) -> Agreement:
    return Agreement(
        id=row.id,
        requester_id=row.requester_id,
        provider_id=row.provider_id,
        contract_id=row.contract_id,
        created_at=row.created_at,
    )


def _require_partner(conn: Connection, partner_id: str) -> sa.Row:
    row = conn.execute(sa.select(model.partners).where(model.partners.c.id == partner_id)).first()
    if row is None:
        known = conn.execute(sa.select(model.partners.c.id).order_by(model.partners.c.id)).scalars()
        names = ", ".join(known) or "none yet"
        raise UnknownPartner(
            f"no partner {partner_id!r} (known partners: {names}); "
            "add one with 'gsem partners add ID --name NAME'"
        )
    return row


# -- partners ----------------------------------------------------------------------------


def add_partner(conn: Connection, id: str, name: str, *, delivery_mode: str = "pull",
                strict: bool = False) -> Partner:
    """Register a partner; it can connect once it has a certificate."""
    if not _PARTNER_ID.fullmatch(id):
        raise PartnerStoreError(
            f"partner id {id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if not name.strip():
        raise PartnerStoreError(f"partner {id}: the name must not be empty")
    if delivery_mode not in DELIVERY_MODES:
        raise PartnerStoreError(
            f"partner {id}: delivery mode {delivery_mode!r} is not one of {', '.join(DELIVERY_MODES)}"
        )
    t = model.partners
    existing = conn.execute(sa.select(t.c.name).where(t.c.id == id)).first()
    if existing is not None:
        raise DuplicatePartner(f"partner {id} exists already (named {existing.name!r})")
    values = dict(id=id, name=name.strip()[:200], enabled=True, strict=strict,
                  delivery_mode=delivery_mode, delivery_config="{}", created_at=_now())
    conn.execute(t.insert().values(**values))
    return _partner(conn.execute(sa.select(t).where(t.c.id == id)).one())


def list_partners(conn: Connection) -> list[Partner]:
    """Every partner, by id."""
    rows = conn.execute(sa.select(model.partners).order_by(model.partners.c.id))
    return [_partner(row) for row in rows]


def get_partner(conn: Connection, partner_id: str) -> PartnerDetail:
    """A partner with its certificates (newest window first) and its agreements."""
    partner = _partner(_require_partner(conn, partner_id))
    a = model.agreements
    agreements = conn.execute(
        sa.select(a)
        .where(sa.or_(a.c.requester_id == partner_id, a.c.provider_id == partner_id))
        .order_by(a.c.requester_id, a.c.contract_id)
    )
    return PartnerDetail(
        partner=partner,
        certs=tuple(list_certs(conn, partner_id)),
        agreements=tuple(_agreement(row) for row in agreements),
    )


def _set_enabled(conn: Connection, partner_id: str, enabled: bool) -> Partner:
    _require_partner(conn, partner_id)
    t = model.partners
    conn.execute(t.update().where(t.c.id == partner_id).values(enabled=enabled))
    return _partner(conn.execute(sa.select(t).where(t.c.id == partner_id)).one())


def disable_partner(conn: Connection, partner_id: str) -> Partner:
    """Refuse the partner's connections from now on; its history stays."""
    return _set_enabled(conn, partner_id, False)


def enable_partner(conn: Connection, partner_id: str) -> Partner:
    """Accept the partner's connections again (undoes :func:`disable_partner`)."""
    return _set_enabled(conn, partner_id, True)


# -- delivery settings -------------------------------------------------------------------

#: Settings each delivery mode takes, besides ``retry`` (any mode).
_MODE_KEYS = {
    "push": ("url", "ca", "timeout"),
    "pull": ("visibility_timeout",),
    "spool": ("outbox", "acks"),
    "adapter": ("adapter", "options"),
}
_RETRY_KEYS = ("base", "cap", "max_attempts", "max_age", "pause_after", "pause", "max_pause")
#: The command-line option that sets each setting, for messages operators can act on.
_FLAG = {
    "url": "--url", "ca": "--ca", "timeout": "--timeout", "visibility_timeout": "--visibility-timeout",
    "outbox": "--outbox", "acks": "--acks", "adapter": "--adapter", "options": "--option",
    "base": "--retry-base", "cap": "--retry-cap", "max_attempts": "--max-attempts",
    "max_age": "--max-age", "pause_after": "--pause-after", "pause": "--pause", "max_pause": "--max-pause",
}
# "package.module:Class", or a short name of one of gsem's own adapters ("memory").
_ADAPTER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*|[a-z][a-z0-9_]*")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(problems: list[str], key: str, value: object, *, whole: bool = False) -> None:
    if whole:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            problems.append(f"{key} ({_FLAG[key]}) must be a whole number of at least 1, not {value!r}")
    elif not (_is_number(value) and value > 0):  # type: ignore[operator]
        problems.append(f"{key} ({_FLAG[key]}) must be a positive number of seconds, not {value!r}")


def _path(problems: list[str], key: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{key} ({_FLAG[key]}) must be a file or directory path, not {value!r}")


def delivery_problems(mode: str, config: dict[str, Any]) -> list[str]:
    """Everything wrong with *config* as the settings of delivery *mode* (empty when fine)."""
    problems: list[str] = []
    allowed = (*_MODE_KEYS[mode], "retry")
    for key in config:
        if key not in allowed:
            flag = f" ({_FLAG[key]})" if key in _FLAG else ""
            problems.append(f"{key}{flag} is not a setting of {mode} delivery "
                            f"(it takes {', '.join(allowed)})")
    if mode == "push":
        url = config.get("url")
        if url is None:
            problems.append("push delivery needs the partner's url (--url https://HOST/PATH)")
        else:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme != "https" or not parts.hostname:
                problems.append(f"url {url!r} is not an https:// URL with a host: push goes over "
                                "mutual TLS only")
        if "ca" in config:
            _path(problems, "ca", config["ca"])
        if "timeout" in config:
            _positive(problems, "timeout", config["timeout"])
    elif mode == "pull":
        if "visibility_timeout" in config:
            _positive(problems, "visibility_timeout", config["visibility_timeout"])
    elif mode == "spool":
        for key in ("outbox", "acks"):
            if key not in config:
                problems.append(f"spool delivery needs the {key} directory ({_FLAG[key]} DIR)")
            else:
                _path(problems, key, config[key])
        outbox, acks = config.get("outbox"), config.get("acks")
        if isinstance(outbox, str) and outbox.strip() and outbox == acks:
            problems.append("outbox and acks must be different directories: the hub would read "
                            "its own documents as acknowledgements")
    elif mode == "adapter":
        adapter = config.get("adapter")
        if adapter is None:
            problems.append("adapter delivery needs the adapter (--adapter module:Class, or a "
                            "short name such as memory)")
        elif not isinstance(adapter, str) or not _ADAPTER.fullmatch(adapter):
            problems.append(f"adapter {adapter!r} is neither 'package.module:Class' nor a short "
                            "name such as memory")
        options = config.get("options", {})
        if not isinstance(options, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in options.items()):
            problems.append("options (--option KEY=VALUE) must map names to text")
    retry = config.get("retry")
    if retry is not None:
        if not isinstance(retry, dict):
            problems.append(f"retry must be a table of {', '.join(_RETRY_KEYS)}, not {retry!r}")
        else:
            for key, value in retry.items():
                if key not in _RETRY_KEYS:
                    problems.append(f"retry.{key} is not a retry setting (they are "
                                    f"{', '.join(_RETRY_KEYS)})")
                else:
                    _positive(problems, key, value, whole=key in ("max_attempts", "pause_after"))
            base, cap = retry.get("base"), retry.get("cap")
            if _is_number(base) and _is_number(cap) and base > cap:  # type: ignore[operator]
                problems.append(f"the first retry delay ({base} s, --retry-base) is longer than "
                                f"the cap ({cap} s, --retry-cap)")
            pause, max_pause = retry.get("pause"), retry.get("max_pause")
            if _is_number(pause) and _is_number(max_pause) and pause > max_pause:  # type: ignore[operator]
                problems.append(f"the circuit breaker's first pause ({pause} s, --pause) is longer than "
                                f"its longest ({max_pause} s, --max-pause)")
    return problems


def set_delivery(conn: Connection, partner_id: str, *, mode: str, config: dict[str, Any]) -> Partner:
    """Set how the hub delivers to *partner_id*: *mode* and its settings, replacing the old ones.

    push: ``url`` (https, required), ``ca`` (a PEM file of the CA that signed the
    partner's server certificate), ``timeout`` (seconds).  pull: ``visibility_timeout``
    (seconds before an unacknowledged message is handed out again).  spool: ``outbox`` and
    ``acks`` directories (required).  adapter: ``adapter`` (``package.module:Class`` or a
    short name such as ``memory``, required), ``options`` (names to text).  Any mode:
    ``retry`` with ``base``, ``cap``, ``max_attempts``, ``max_age`` (seconds; attempts) and
    the circuit breaker's ``pause_after`` (failures in a row), ``pause``, ``max_pause`` (seconds).
    Every problem is reported at once in one :class:`BadDeliverySettings`.
    """
    _require_partner(conn, partner_id)
    if mode not in DELIVERY_MODES:
        raise BadDeliverySettings(
            partner_id, [f"delivery mode {mode!r} is not one of {', '.join(DELIVERY_MODES)}"])
    problems = delivery_problems(mode, config)
    if problems:
        raise BadDeliverySettings(partner_id, problems)
    t = model.partners
    # Neither column takes part in trust_version: a new delivery setting does not make
    # the TLS listener reload its trust store.
    conn.execute(t.update().where(t.c.id == partner_id).values(
        delivery_mode=mode, delivery_config=json.dumps(config, sort_keys=True)))
    return _partner(conn.execute(sa.select(t).where(t.c.id == partner_id)).one())


def _config(partner_id: str, text: str) -> dict[str, Any]:
    try:
        config = json.loads(text or "{}")
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise PartnerStoreError(
            f"partner {partner_id}: its stored delivery settings are not a JSON object; set them "
            f"again with 'gsem partners delivery {partner_id} --mode MODE …'"
        )
    return config


def parse_delivery_config(partner: Partner) -> dict[str, Any]:
    """A partner's stored delivery settings as a dict."""
    return _config(partner.id, partner.delivery_config)


def delivery_settings(conn: Connection) -> dict[str, DeliverySettings]:
    """Every partner's delivery mode and settings, by partner id."""
    p = model.partners
    rows = conn.execute(sa.select(p.c.id, p.c.delivery_mode, p.c.delivery_config, p.c.enabled))
    return {
        row.id: DeliverySettings(partner_id=row.id, mode=row.delivery_mode,
                                 config=_config(row.id, row.delivery_config),
                                 enabled=bool(row.enabled))
        for row in rows
    }


# -- certificates ------------------------------------------------------------------------


def _load_one_cert(pem: bytes) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise BadCertificate("not a PEM certificate: expected a '-----BEGIN CERTIFICATE-----' block")
    if len(certs) > 1:
        raise BadCertificate(
            f"the file holds {len(certs)} certificates; give the partner's client certificate "
            "alone (not its chain: the CA goes in the [tls] ca setting)"
        )
    return certs[0]


def add_cert(conn: Connection, partner_id: str, pem: bytes, *,
             valid_from: dt.datetime | None = None,
             valid_until: dt.datetime | None = None) -> PartnerCert:
    """Register a client certificate of *partner_id*.

    The hub accepts it from *valid_from* to *valid_until*: the certificate's own
    notBefore/notAfter by default, a narrower window to rotate with an overlap.  Only the
    certificate is kept, never anything else the file holds.
    """
    _require_partner(conn, partner_id)
    cert = _load_one_cert(pem)
    fingerprint = fingerprint_sha256(cert)
    start = utc_naive(valid_from) if valid_from is not None else utc_naive(cert.not_valid_before_utc)
    end = utc_naive(valid_until) if valid_until is not None else utc_naive(cert.not_valid_after_utc)
    if start >= end:
        raise BadCertificate(
            f"certificate {fingerprint}: the window {start:%Y-%m-%d %H:%M:%S} to "
            f"{end:%Y-%m-%d %H:%M:%S} (UTC) is empty; valid-from must come before valid-until"
        )
    t = model.partner_certs
    existing = conn.execute(sa.select(t.c.partner_id).where(t.c.fingerprint == fingerprint)).first()
    if existing is not None:
        raise DuplicateCertificate(
            f"certificate {fingerprint} is already registered for partner {existing.partner_id}"
        )
    conn.execute(t.insert().values(
        fingerprint=fingerprint,
        partner_id=partner_id,
        subject=cert.subject.rfc4514_string()[:500],
        issuer=cert.issuer.rfc4514_string()[:500],
        serial=format(cert.serial_number, "x")[:64],
        valid_from=start.replace(microsecond=0),
        valid_until=end.replace(microsecond=0),
        retired_at=None,
        pem=cert.public_bytes(Encoding.PEM).decode("ascii"),
        added_at=_now(),
    ))
    return _cert(conn.execute(sa.select(t).where(t.c.fingerprint == fingerprint)).one())


def list_certs(conn: Connection, partner_id: str | None = None) -> list[PartnerCert]:
    """Certificates of one partner (or all), by partner, newest window first."""
    t = model.partner_certs
    query = sa.select(t).order_by(t.c.partner_id, t.c.valid_until.desc(), t.c.fingerprint)
    if partner_id is not None:
        _require_partner(conn, partner_id)
        query = query.where(t.c.partner_id == partner_id)
    return [_cert(row) for row in conn.execute(query)]


def _normalise_fingerprint(fingerprint: str) -> str:
    # Accept what openssl prints ("AB:CD:…") as well as our own lowercase hex.
    return fingerprint.strip().replace(":", "").lower()


def retire_cert(conn: Connection, fingerprint: str) -> PartnerCert:
    """Stop accepting a certificate from now on.

    *fingerprint* may be written with colons or in upper case, and may be a unique prefix
    of at least eight hex digits (as ``gsem partners certs list`` shows).
    """
    wanted = _normalise_fingerprint(fingerprint)
    if len(wanted) < MIN_FINGERPRINT_PREFIX or not _HEX.fullmatch(wanted):
        raise UnknownCertificate(
            f"{fingerprint!r} is not a certificate fingerprint: give its SHA-256 in hex, "
            f"or a unique prefix of at least {MIN_FINGERPRINT_PREFIX} hex digits"
        )
    t = model.partner_certs
    rows = conn.execute(
        sa.select(t).where(t.c.fingerprint.startswith(wanted, autoescape=True))
    ).all()
    if not rows:
        raise UnknownCertificate(
            f"no registered certificate has fingerprint {wanted}; "
            "see 'gsem partners certs list'"
        )
    if len(rows) > 1:
        matches = ", ".join(f"{row.fingerprint} ({row.partner_id})" for row in rows)
        raise UnknownCertificate(f"{wanted} matches several certificates: {matches}; give more digits")
    row = rows[0]
    if row.retired_at is None:
        conn.execute(t.update().where(t.c.fingerprint == row.fingerprint).values(retired_at=_now()))
    return _cert(conn.execute(sa.select(t).where(t.c.fingerprint == row.fingerprint)).one())


# -- agreements --------------------------------------------------------------------------


def contract_key(contract_id: str) -> str:
    """The id part of an ``AGREEMENT/ContractID``: the text before the first ``;`` (SPEC §3)."""
    return contract_id.split(";", 1)[0].strip()


def add_agreement(conn: Connection, requester_id: str, provider_id: str,
                  contract_id: str) -> Agreement:
    """Let *requester_id* pass calls to *provider_id* under *contract_id*."""
    _require_partner(conn, requester_id)
    _require_partner(conn, provider_id)
    if requester_id == provider_id:
        raise BadAgreement(f"{requester_id} cannot have an agreement with itself")
    key = contract_id.strip()
    if not key:
        raise BadAgreement("the contract id must not be empty")
    if ";" in key:
        raise BadAgreement(
            f"contract id {contract_id!r}: tags after ';' are not part of the id; "
            f"register {contract_key(key)!r}"
        )
    if len(key) > 200:
        raise BadAgreement("the contract id is longer than 200 characters")
    a = model.agreements
    existing = conn.execute(
        sa.select(a.c.provider_id).where(a.c.requester_id == requester_id, a.c.contract_id == key)
    ).first()
    if existing is not None:
        raise DuplicateAgreement(
            f"{requester_id} already passes contract {key!r} to {existing.provider_id}; "
            "a contract id routes to one provider"
        )
    conn.execute(a.insert().values(requester_id=requester_id, provider_id=provider_id,
                                   contract_id=key, created_at=_now()))
    row = conn.execute(
        sa.select(a).where(a.c.requester_id == requester_id, a.c.contract_id == key)
    ).one()
    return _agreement(row)


def list_agreements(conn: Connection, partner_id: str | None = None) -> list[Agreement]:
    """Every agreement (or those *partner_id* is a party to), by requester and contract."""
    a = model.agreements
    query = sa.select(a).order_by(a.c.requester_id, a.c.contract_id)
    if partner_id is not None:
        _require_partner(conn, partner_id)
        query = query.where(sa.or_(a.c.requester_id == partner_id, a.c.provider_id == partner_id))
    return [_agreement(row) for row in conn.execute(query)]


def find_provider(conn: Connection, requester_id: str, contract_id: str) -> str | None:
    """The provider a Service_Request of *requester_id* under *contract_id* goes to.

    *contract_id* may carry tags (``CN123;SN=42``); only the part before ``;`` counts.
    Returns ``None`` without an agreement.  Whether the provider is enabled is the
    caller's decision.
    """
    a = model.agreements
    return conn.execute(
        sa.select(a.c.provider_id).where(
            a.c.requester_id == requester_id, a.c.contract_id == contract_key(contract_id)
        )
    ).scalar()


# -- trust -------------------------------------------------------------------------------


def trust_snapshot(conn: Connection) -> dict[str, TrustEntry]:
    """Every registered certificate (retired ones too), by fingerprint."""
    c = model.partner_certs
    p = model.partners
    rows = conn.execute(
        sa.select(c.c.fingerprint, c.c.partner_id, c.c.valid_from, c.c.valid_until,
                  c.c.retired_at, p.c.enabled)
        .join(p, p.c.id == c.c.partner_id)
    )
    return {
        row.fingerprint: TrustEntry(
            fingerprint=row.fingerprint,
            partner_id=row.partner_id,
            valid_from=row.valid_from,
            valid_until=row.valid_until,
            retired_at=row.retired_at,
            partner_enabled=bool(row.enabled),
        )
        for row in rows
    }


def trust_version(conn: Connection) -> tuple[object, ...]:
    """A value that changes whenever a partner or certificate changes; compare with ``==``.

    One query of counts and latest times: adding a partner or a certificate changes a
    count, disabling/enabling or switching strict mode changes a sum, retiring changes
    the retired count.  Rows are never deleted by gsem.
    """
    p = model.partners
    c = model.partner_certs
    as_int = sa.Integer()
    parts = [
        sa.select(sa.func.count()).select_from(p),
        sa.select(sa.func.coalesce(sa.func.sum(sa.cast(p.c.enabled, as_int)), 0)),
        sa.select(sa.func.coalesce(sa.func.sum(sa.cast(p.c.strict, as_int)), 0)),
        sa.select(sa.func.max(p.c.created_at)),
        sa.select(sa.func.count()).select_from(c),
        sa.select(sa.func.count(c.c.retired_at)),
        sa.select(sa.func.max(c.c.added_at)),
        sa.select(sa.func.max(c.c.retired_at)),
    ]
    row = conn.execute(sa.select(*(part.scalar_subquery() for part in parts))).one()
    return tuple(row)
