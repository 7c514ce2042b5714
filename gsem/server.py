"""The running engine: configuration in, a listening hub out.

In the spirit of Twisted's ``web/tap.py``: :class:`Engine` takes a loaded
:class:`~gsem.config.Config` and a reactor and assembles the database, the trust store
(refreshed from the database every second, so partner and certificate changes reach new
connections without a restart), the exchange and the mutual-TLS listener, and once it
listens, the delivery service that forwards accepted transactions (``[delivery]``).
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import IO, Any

from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gsem.acklog import AckLog
from gsem.config import Config, default_node_id
from gsem.db import partners
from gsem.db.connector import Database
from gsem.delivery.service import DeliveryService
from gsem.exchange import Exchange
from gsem.tls import PartnerTrustStore, listen_tls
from gsem.validation import DocumentValidator
from gsem.web import build_site
from gsem.xmlsafe import ParseLimits

__all__ = ["Engine"]

log = Logger()
#: How often the trust snapshot checks the database for partner/certificate changes.
TRUST_REFRESH_SECONDS = 1.0


class Engine:
    """One hub node, or one worker process of it: start it, read its port, stop it.

    A worker process (``gsem.workers``) passes the listening socket it shares with the
    others as *listen_socket*, its number as *worker* (written on its acknowledgement
    lines), and ``deliver=False``: only the first process of a node forwards deliveries.
    """

    def __init__(self, config: Config, reactor: Any, *, ack_stream: IO[str] | None = None,
                 port: int | None = None, listen_socket: socket.socket | None = None,
                 worker: int | None = None, deliver: bool = True) -> None:
        self.config = config
        self.reactor = reactor
        self.port_number = config.port if port is None else port
        self.listen_socket = listen_socket
        self.database = Database(config.database_url, reactor=reactor)
        limits = config.limits
        self.validator = DocumentValidator(
            ParseLimits(limits.max_body_bytes, limits.max_depth, limits.max_elements))
        self.exchange = Exchange(self.database, self.validator,
                                 AckLog(ack_stream, None if worker is None else {"worker": worker}))
        self._trust: dict[str, Any] = {}
        self._strict: dict[str, bool] = {}
        self._trust_version: Any = object()
        self._refresher = LoopingCall(self._refresh_later)
        self._refresher.clock = reactor
        self.listening: IListeningPort | None = None
        delivery = config.delivery
        self.delivery: DeliveryService | None = None
        if delivery.enabled and deliver:
            self.delivery = DeliveryService(
                self.database, reactor, owner=delivery.node_id or default_node_id(config.data_dir),
                hub_cert=config.server_cert,
                hub_key=config.server_key, poll_interval=delivery.poll_interval,
                lease_seconds=delivery.lease_seconds, concurrency=delivery.concurrency,
                log_stream=ack_stream, data_dir=config.data_dir)

    # -- partners and certificates, from a snapshot of the database ----------------

    def _lookup(self, fingerprint: str) -> str | None:
        entry = self._trust.get(fingerprint)
        return entry.partner_id if entry is not None and entry.accepts(datetime.now(UTC)) else None

    def _strict_of(self, partner_id: str) -> bool:
        return self._strict.get(partner_id, False)

    def _load_snapshot(self, conn: Any) -> tuple[Any, dict[str, Any], dict[str, bool]] | None:
        version = partners.trust_version(conn)
        if version == self._trust_version:
            return None
        strict = {p.id: p.strict for p in partners.list_partners(conn)}
        return version, partners.trust_snapshot(conn), strict

    async def refresh_trust(self) -> None:
        """Re-read partners and certificates when they changed."""
        loaded = await self.database.run(self._load_snapshot)
        if loaded is not None:
            self._trust_version, self._trust, self._strict = loaded

    def _refresh_later(self) -> Any:
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(self.refresh_trust())
        d.addErrback(lambda f: log.failure("refreshing partners and certificates", f))
        return d

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> IListeningPort:
        """Check the schema, load trust, listen; returns the listening port."""
        self.database.check_current(data_dir=self.config.data_dir)
        self.database.start()
        await self.refresh_trust()
        trust_store = PartnerTrustStore(self.config.ca_paths, self.config.crl_paths, self.config.server_cert,
                                        self.config.server_key, self._lookup, clock=self.reactor)
        limits = self.config.limits
        site = build_site(self.exchange, strict_of=self._strict_of, max_body_bytes=limits.max_body_bytes,
                          idle_timeout=limits.idle_timeout, reactor=self.reactor)
        self.listening = await listen_tls(self.reactor, self.port_number, self.config.host, site, trust_store,
                                          handshake_timeout=limits.handshake_timeout,
                                          max_connections_per_partner=limits.max_connections_per_partner,
                                          adopt=self.listen_socket)
        self._refresher.start(TRUST_REFRESH_SECONDS, now=False)
        if self.delivery is not None:
            # Leases this node held when it last stopped (a crash) would otherwise keep
            # their deliveries waiting until they expire.
            await self.delivery.release_own_leases()
            self.delivery.start()
        return self.listening

    async def stop(self) -> None:
        """Stop listening and delivering, then let the database finish what it was given."""
        if self._refresher.running:
            self._refresher.stop()
        if self.listening is not None:
            await self.listening.stopListening()
        if self.delivery is not None:
            await self.delivery.stop()
        self.database.stop()
