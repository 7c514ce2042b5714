"""Forwarding accepted transactions to push, spool and adapter partners (SPEC §7).

:class:`DeliveryService` runs on the injected reactor's clock.  Every ``poll_interval``
it claims due deliveries from the outbox (:func:`gsem.db.deliveries.claim_due`: per
incident only the head, so each incident goes out first in, first out, while other
incidents flow), hands each to its partner's adapter (at most ``concurrency`` at once,
each bounded by a timeout on the clock) and records what came of it:

=======================  ==================================================================
adapter's answer         the delivery
=======================  ==================================================================
Acknowledged             ``acknowledged`` (the receiver's document kept)
Accepted                 ``sent``: the receiver's acknowledgement comes later (spool acks)
PermanentFailure         ``dead`` at once, with the receiver's errors and document
TransientFailure         ``pending`` again after the partner's :class:`RetryPolicy` delay
                         (``Retry-After`` honoured), or ``dead`` once retries are exhausted
=======================  ==================================================================

A partner whose endpoint keeps failing is paused by its :class:`CircuitBreaker`: its
claimed deliveries are postponed, without an attempt, until one probe may go.  One JSON
line per attempt goes to ``log_stream`` (SPEC §8).  A bug in an adapter never stops the
loop: it is logged and counts as a transient failure.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chs_adapters.base import (
    Accepted,
    Acknowledged,
    ChsAdapter,
    DeliveryResult,
    OutboundDelivery,
    PermanentFailure,
    TransientFailure,
)
from chs_adapters.loader import AdapterConfigError, AdapterContext, load_adapter
from gsem.db import deliveries, partners
from gsem.db.deliveries import Delivery
from gsem.delivery.policy import CircuitBreaker, RetryPolicy

__all__ = ["DeliveryService", "SETTINGS_REFRESH_SECONDS", "ACK_POLL_SECONDS", "DEFAULT_TIMEOUT",
           "STOP_GRACE_SECONDS"]

log = Logger()

#: How often partners' delivery settings are re-read (one small query).
SETTINGS_REFRESH_SECONDS = 5.0
#: How often adapters that receive acknowledgements later (spool) are asked for them.
ACK_POLL_SECONDS = 1.0
#: Seconds an adapter may take for one delivery unless the partner's ``timeout`` says.
DEFAULT_TIMEOUT = 30.0
#: Added to the partner's timeout, so that the adapter's own (clearer) timeout fires first.
_TIMEOUT_MARGIN = 5.0
#: How long stop() lets deliveries in flight finish before it cancels them.
STOP_GRACE_SECONDS = 5.0
#: How long deliveries wait while their partner's circuit breaker lets one probe through.
_PROBE_WAIT_SECONDS = 1.0
#: How long deliveries to a disabled partner or one without settings wait before a new look.
_HOLD_SECONDS = 30.0
_MODES = ("push", "spool", "adapter")


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="milliseconds") + "Z"


class DeliveryService:
    """Claims due deliveries and hands them to partners' adapters, on *reactor*'s clock.

    *database* has ``async run(fn, *args, **kwargs)`` (:class:`gsem.db.connector.Database`).
    *owner* is this node's id (``[delivery] node_id``): it names the leases this node
    holds.  *hub_cert* and *hub_key* are what push presents to partners.  *load* builds
    a partner's adapter (default :func:`chs_adapters.loader.load_adapter`).
    """

    def __init__(self, database: Any, reactor: Any, *, owner: str, hub_cert: Path, hub_key: Path,
                 poll_interval: float = 0.2, lease_seconds: float = 60.0, concurrency: int = 16,
                 log_stream: IO[str] | None = None, rng: random.Random | None = None,
                 data_dir: Path | None = None,
                 load: Callable[[str, str, dict[str, Any], AdapterContext], ChsAdapter] = load_adapter) -> None:
        self.database = database
        self.clock = reactor
        self.owner = owner
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.concurrency = max(1, int(concurrency))
        self.log_stream = log_stream
        self.rng = rng or random.Random()
        self._context = AdapterContext(reactor=reactor, hub_cert=Path(hub_cert), hub_key=Path(hub_key),
                                       data_dir=data_dir)
        self._load = load
        self._settings: dict[str, partners.DeliverySettings] = {}
        self._settings_at: float | None = None
        self._acks_at: float | None = None
        self._adapters: dict[str, tuple[str, ChsAdapter]] = {}
        self._broken: dict[str, tuple[str, str]] = {}  # partner -> (settings key, why)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._in_flight: dict[int, Deferred[None]] = {}
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._loop_done: Deferred[Any] | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------

    async def release_own_leases(self) -> int:
        """Give back the leases this node held when it stopped (a crash); how many."""
        released = await self.database.run(deliveries.release_leases, self.owner)
        if released:
            log.info("delivery: released {count} leases held by this node ({owner}) before it stopped",
                     count=released, owner=self.owner)
        return released

    def start(self) -> None:
        """Start looking for due deliveries every ``poll_interval`` seconds."""
        self._started = True
        self._stopping = False
        self._loop_done = self._loop.start(self.poll_interval, now=True)
        self._loop_done.addErrback(lambda f: log.failure("the delivery loop stopped", f))

    async def stop(self) -> None:
        """Stop claiming; let deliveries in flight finish (for a while); close the adapters."""
        if not self._started:
            return
        self._started = False
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        if self._loop_done is not None:
            await self._loop_done
        if self._in_flight:
            pending = list(self._in_flight.values())
            timer = self.clock.callLater(STOP_GRACE_SECONDS, lambda: [d.cancel() for d in pending])
            await DeferredList(pending, consumeErrors=True)
            if timer.active():
                timer.cancel()
        try:
            # Deliveries cancelled above were not recorded; another start picks them up.
            await self.database.run(deliveries.release_leases, self.owner)
        except Exception:
            log.failure("delivery: giving back this node's leases at stop")
        for _, adapter in list(self._adapters.values()):
            await self._close(adapter)
        self._adapters.clear()

    async def _close(self, adapter: ChsAdapter) -> None:
        try:
            await adapter.close()
        except Exception:
            log.failure("delivery: closing an adapter")

    def _tick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._cycle(wait=False, force=False))
        # Never let a failed cycle stop the LoopingCall: log it and go on.
        d.addErrback(lambda f: log.failure("delivery: one round of the loop failed", f))
        return d

    async def run_once(self) -> int:
        """One round: settings, acknowledgements, claim, deliver; waits for its deliveries.

        Returns how many deliveries were claimed.  For tests and tools; the running
        service does the same every ``poll_interval`` without waiting.
        """
        return await self._cycle(wait=True, force=True)

    async def _cycle(self, *, wait: bool, force: bool) -> int:
        now = self.clock.seconds()
        if force or self._settings_at is None or now - self._settings_at >= SETTINGS_REFRESH_SECONDS:
            await self._refresh_settings()
        if force or self._acks_at is None or now - self._acks_at >= ACK_POLL_SECONDS:
            self._acks_at = now
            await self._poll_acks()
        room = self.concurrency - len(self._in_flight)
        if room <= 0 or self._stopping:
            return 0
        try:
            claimed = await self.database.run(
                deliveries.claim_due, owner=self.owner, now=_utc(self.clock.seconds()),
                lease_seconds=self.lease_seconds, modes=_MODES, limit=room)
        except Exception:
            log.failure("delivery: claiming due deliveries failed; trying again in {interval} s",
                        interval=self.poll_interval)
            return 0
        started = []
        for delivery in claimed:
            d = Deferred.fromCoroutine(self._attempt(delivery))
            d.addErrback(self._attempt_failed, delivery)
            self._in_flight[delivery.id] = d
            d.addBoth(self._finished, delivery.id)
            started.append(d)
        if wait and started:
            await DeferredList(started, consumeErrors=True)
        return len(claimed)

    def _finished(self, result: Any, delivery_id: int) -> Any:
        self._in_flight.pop(delivery_id, None)
        return result

    def _attempt_failed(self, failure: Failure, delivery: Delivery) -> None:
        if failure.check(CancelledError) and self._stopping:
            return None
        log.failure("delivery {id}: recording the attempt failed; its lease expires and it is tried again",
                    failure, id=delivery.id)
        return None

    # -- partners ---------------------------------------------------------------------

    async def _refresh_settings(self) -> None:
        try:
            settings = await self.database.run(partners.delivery_settings)
        except Exception:
            log.failure("delivery: reading partners' delivery settings failed")
            return
        self._settings = settings
        self._settings_at = self.clock.seconds()
        for partner_id in list(self._adapters):
            current = settings.get(partner_id)
            if current is None or current.mode not in _MODES or self._key(current) != self._adapters[partner_id][0]:
                _, adapter = self._adapters.pop(partner_id)
                await self._close(adapter)
        for current in settings.values():
            # Spool partners answer through files: their adapter must exist to read them,
            # even when nothing is being delivered to them right now.
            if current.mode == "spool" and current.enabled:
                try:
                    self._adapter_for(current)
                except AdapterConfigError:
                    pass  # logged once by _adapter_for

    @staticmethod
    def _key(settings: partners.DeliverySettings) -> str:
        return settings.mode + " " + json.dumps(settings.config, sort_keys=True)

    def _adapter_for(self, settings: partners.DeliverySettings) -> ChsAdapter:
        """The partner's adapter, built on first use and again when its settings change.

        Raises :class:`AdapterConfigError` for settings no adapter can be built from.
        """
        key = self._key(settings)
        known = self._adapters.get(settings.partner_id)
        if known is not None and known[0] == key:
            return known[1]
        broken = self._broken.get(settings.partner_id)
        if broken is not None and broken[0] == key:
            raise AdapterConfigError(broken[1])
        try:
            adapter = self._load(settings.partner_id, settings.mode, settings.config, self._context)
        except AdapterConfigError as e:
            self._broken[settings.partner_id] = (key, str(e))
            log.error("delivery: {problem}; deliveries to {partner} fail until it is fixed",
                      problem=str(e), partner=settings.partner_id)
            raise
        self._broken.pop(settings.partner_id, None)
        self._adapters[settings.partner_id] = (key, adapter)
        return adapter

    def _breaker(self, partner_id: str, retry: Any = None) -> CircuitBreaker:
        breaker = self._breakers.get(partner_id)
        if breaker is None:
            breaker = self._breakers[partner_id] = CircuitBreaker()
        # The partner's settings may change while the hub runs; its state (failures, pause)
        # is kept, its limits follow the settings.
        breaker.configure(retry if isinstance(retry, dict) else {})
        return breaker

    # -- one delivery -------------------------------------------------------------------

    async def _attempt(self, delivery: Delivery) -> None:
        settings = self._settings.get(delivery.recipient_id)
        if settings is None or settings.mode not in _MODES:
            # The claim went by the stored mode: the partner was just added or switched.
            await self._refresh_settings()
            settings = self._settings.get(delivery.recipient_id)
        if settings is None or settings.mode not in _MODES or not settings.enabled:
            # Changed to pull or disabled since the claim: hand it back untouched.
            await self._postpone(delivery, self.clock.seconds() + _HOLD_SECONDS)
            return
        breaker = self._breaker(delivery.recipient_id, settings.config.get("retry"))
        now = self.clock.seconds()
        if not breaker.allows(now):
            until = breaker.open_until if breaker.open_until is not None and breaker.open_until > now \
                else now + _PROBE_WAIT_SECONDS
            await self._postpone(delivery, until)
            return
        started = self.clock.seconds()
        wall_started = time.perf_counter()
        outbound = OutboundDelivery(
            delivery_id=delivery.id, recipient_id=delivery.recipient_id, incident_id=delivery.incident_id,
            transaction_name=delivery.transaction_name or "", requester_ref=delivery.requester_ref or "",
            document=delivery.document, attempt=delivery.attempts + 1, message_id=delivery.message_id)
        try:
            adapter = self._adapter_for(settings)
        except AdapterConfigError as e:
            result: DeliveryResult = TransientFailure(str(e))
        else:
            result = await self._deliver(adapter, outbound, settings)
        finished = self.clock.seconds()
        if isinstance(result, TransientFailure):
            breaker.failed(finished)
        else:
            # Any answer, even a refusal, shows that the endpoint works.
            breaker.succeeded()
        await self._record(delivery, settings, result, started, finished,
                           (time.perf_counter() - wall_started) * 1000)

    async def _deliver(self, adapter: ChsAdapter, outbound: OutboundDelivery,
                       settings: partners.DeliverySettings) -> DeliveryResult:
        timeout = float(settings.config.get("timeout", DEFAULT_TIMEOUT)) + _TIMEOUT_MARGIN
        # Finish well inside the lease, or another node may take the delivery meanwhile.
        timeout = min(timeout, max(1.0, self.lease_seconds * 0.9))
        attempt = Deferred.fromCoroutine(adapter.deliver(outbound))
        timed_out = [False]

        def expire() -> None:
            timed_out[0] = True
            attempt.cancel()

        timer = self.clock.callLater(timeout, expire)
        try:
            return await attempt
        except CancelledError:
            if timed_out[0]:
                return TransientFailure(f"no answer within {timeout:g} s")
            raise
        except Exception as e:
            log.failure("delivery {id}: the {mode} adapter failed", id=outbound.delivery_id, mode=settings.mode)
            return TransientFailure(f"the {settings.mode} adapter failed: {type(e).__name__}: {e}")
        finally:
            if timer.active():
                timer.cancel()

    async def _postpone(self, delivery: Delivery, until: float) -> None:
        await self.database.run(deliveries.postpone, delivery.id, owner=self.owner, until=_utc(until))

    async def _record(self, delivery: Delivery, settings: partners.DeliverySettings, result: DeliveryResult,
                      started: float, finished: float, duration_ms: float) -> None:
        attempts_made = delivery.attempts + 1
        now = _utc(finished)
        fields: dict[str, Any] = {"http_status": getattr(result, "http_status", None)}
        next_attempt_at: datetime | None = None
        dead = False
        if isinstance(result, Acknowledged):
            outcome, error = "acknowledged", None
            fields["receiver_ack"] = result.receiver_ack
        elif isinstance(result, Accepted):
            outcome, error = "accepted", None
        elif isinstance(result, PermanentFailure):
            outcome, error, dead = "permanent", result.error, True
            fields["receiver_ack"] = result.receiver_ack
        else:
            assert isinstance(result, TransientFailure)
            outcome, error = "transient", result.error
            retry = settings.config.get("retry")
            policy = RetryPolicy.from_config(retry if isinstance(retry, dict) else {})
            age = (now - delivery.created_at).total_seconds()
            if policy.exhausted(attempts_made, age):
                dead = True
                error = f"{error} (gave up after {attempts_made} attempts in {age:.0f} s)"
            else:
                delay = policy.delay(attempts_made, self.rng, result.retry_after)
                next_attempt_at = now + timedelta(seconds=delay)
        recorded: Delivery | None = None
        lease_lost = False
        try:
            recorded = await self.database.run(
                deliveries.record_attempt, delivery.id, owner=self.owner, started_at=_utc(started),
                finished_at=now, outcome=outcome, error=error, next_attempt_at=next_attempt_at,
                dead=dead, **fields)
            lease_lost = recorded is None
        finally:
            self._log({
                "event": "delivery_attempt",
                "time": _iso(now),
                "node": self.owner,
                "delivery_id": delivery.id,
                "recipient": delivery.recipient_id,
                "mode": settings.mode,
                "incident_id": delivery.incident_id,
                "transaction": delivery.transaction_name,
                "requester_id": delivery.requester_ref,
                "attempt": attempts_made,
                "outcome": outcome,
                "state": recorded.state if recorded is not None else None,
                "error": error,
                "http_status": fields["http_status"],
                "duration_ms": round(duration_ms, 3),
                "next_attempt_at": _iso(next_attempt_at) if not dead else None,
                **({"lease_lost": True} if lease_lost else {}),
            })
        if lease_lost:
            log.info("delivery {id}: this node's lease was lost before the attempt was recorded; "
                     "whoever holds it now decides", id=delivery.id)

    # -- acknowledgements that come later ---------------------------------------------

    async def _poll_acks(self) -> None:
        for partner_id, (_, adapter) in list(self._adapters.items()):
            poll = getattr(adapter, "poll_acks", None)
            if poll is None:
                continue
            try:
                found = poll()
            except Exception:
                log.failure("delivery: reading {partner}'s acknowledgements failed", partner=partner_id)
                continue
            for ack in found:
                await self._record_receiver_ack(partner_id, adapter, ack)

    async def _record_receiver_ack(self, partner_id: str, adapter: Any, ack: Any) -> None:
        now = _utc(self.clock.seconds())

        def thd(conn: Any) -> tuple[str, Delivery | None]:
            try:
                current = deliveries.get_delivery(conn, ack.delivery_id).delivery
            except deliveries.UnknownDelivery:
                return "unknown", None
            if current.recipient_id != partner_id:
                return "unknown", None  # a partner never settles another partner's delivery
            settled = deliveries.receiver_acknowledged(conn, ack.delivery_id, now=now, receiver_ack=ack.receiver_ack,
                                                       acknowledged=ack.acknowledged, error=ack.error)
            return ("recorded", settled) if settled is not None else (current.state, current)

        try:
            status, delivery = await self.database.run(thd)
        except Exception:
            log.failure("delivery {id}: recording {partner}'s acknowledgement failed", id=ack.delivery_id,
                        partner=partner_id)
            return
        if status == "pending":
            # Written but not yet recorded as sent (its attempt is still being recorded,
            # perhaps by another node): read it again next time.
            return
        if status == "unknown":
            reject = getattr(adapter, "reject", None)
            if reject is not None:
                reject(ack, f"no delivery {ack.delivery_id} for {partner_id}")
            return
        settle = getattr(adapter, "settle", None)
        if settle is not None:
            settle(ack)
        self._log({
            "event": "receiver_acknowledgement",
            "time": _iso(now),
            "node": self.owner,
            "delivery_id": ack.delivery_id,
            "recipient": partner_id,
            "acknowledged": ack.acknowledged,
            "error": ack.error,
            "state": delivery.state if delivery is not None else None,
            **({} if status == "recorded" else {"ignored": f"the delivery was already {status}"}),
        })

    # -- the log ------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        stream = self.log_stream or sys.stdout
        stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        stream.flush()
