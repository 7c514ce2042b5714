"""The pull mailbox, as partners use it: over real mutual TLS against an in-process engine.

Each test makes a data directory with ``gsem init --demo`` (partners ACME and GLOBEX,
contract C-100, both pulling), starts an :class:`~gsem.server.Engine` on a free loopback
port with the global reactor, and talks to it with treq presenting the partners' own
development certificates.  ACME raises a call; GLOBEX fetches and acknowledges it.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from lxml import etree
from treq import content
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from chs_adapters.memory import InMemoryAdapter
from chs_adapters.push import MutualTLSPolicy
from gsem.cli import main as gsem
from gsem.config import load_config
from gsem.db import deliveries, partners
from gsem.server import Engine

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lifecycle"
SERVICE_REQUEST = (FIXTURES / "01-service-request.xml").read_bytes()
VISIBILITY_TIMEOUT = 0.4


@dataclass
class Answer:
    """One HTTP answer as a partner sees it."""

    status: int
    headers: dict[str, str]
    body: bytes


class PartnerClient:
    """A partner's CHS: its client certificate, the hub's CA, one persistent connection pool."""

    def __init__(self, data_dir: Path, partner_id: str, base: str) -> None:
        certs = data_dir / "certs"
        policy = MutualTLSPolicy(certs / "partners" / f"{partner_id}-cert.pem",
                                 certs / "partners" / f"{partner_id}-key.pem", certs / "ca-cert.pem")
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = HTTPClient(Agent(reactor, contextFactory=policy, pool=self.pool))
        self.base = base

    async def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        response = await self.http.request(method, self.base + path, data=body,
                                           headers={"Content-Type": "application/xml"} if body else None)
        data = await content(response)
        headers = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
        assert b"Traceback" not in data
        return Answer(response.code, headers, data)

    async def next(self) -> Answer:
        return await self.request("GET", "/sis/v1/mailbox/next")

    async def ack(self, delivery_id: int | str, document: bytes) -> Answer:
        return await self.request("POST", f"/sis/v1/mailbox/{delivery_id}/ack", document)

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


def ack_document(acknowledged: bool, errors: list[tuple[str, str]] = ()) -> bytes:
    """A receiver's ACKNOWLEDGEMENT."""
    root = etree.Element("ACKNOWLEDGEMENT")
    etree.SubElement(root, "Acknowledge").text = "Yes" if acknowledged else "No"
    etree.SubElement(root, "AckID").text = "GLOBEX-" + uuid.uuid4().hex[:8]
    for code, message in errors:
        etree.SubElement(root, "ERROR", code=code).text = message
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@dataclass
class Hub:
    """A running engine and its two partners' clients."""

    engine: Engine
    data_dir: Path
    acme: PartnerClient
    globex: PartnerClient
    log: io.StringIO

    async def raise_call(self) -> None:
        """ACME sends the Service_Request; the hub accepts it (one delivery for GLOBEX)."""
        answer = await self.acme.request("POST", "/sis/v1/transactions", SERVICE_REQUEST)
        assert answer.status == 200, answer.body

    async def delivery(self, delivery_id: int) -> deliveries.Delivery:
        detail = await self.engine.database.run(deliveries.get_delivery, delivery_id)
        return detail.delivery

    async def set_delivery(self, partner_id: str, mode: str, config: dict[str, Any]) -> None:
        await self.engine.database.run(partners.set_delivery, partner_id, mode=mode, config=config)


@pytest_twisted.async_yield_fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A demo data directory and an engine serving it; GLOBEX's visibility timeout is short."""
    data_dir = tmp_path / "hub"
    assert gsem(["init", str(data_dir), "--demo", "--port", "0"]) == 0
    log = io.StringIO()
    engine = Engine(load_config(data_dir), reactor, ack_stream=log, port=0)
    port = await engine.start()
    await engine.database.run(partners.set_delivery, "GLOBEX", mode="pull",
                              config={"visibility_timeout": VISIBILITY_TIMEOUT})
    base = f"https://127.0.0.1:{port.getHost().port}"
    made = Hub(engine, data_dir, PartnerClient(data_dir, "ACME", base), PartnerClient(data_dir, "GLOBEX", base), log)
    yield made
    await made.acme.close()
    await made.globex.close()
    await engine.stop()


@pytest_twisted.ensureDeferred
async def test_an_empty_mailbox_answers_204(hub: Hub) -> None:
    """Nothing to fetch: 204 with no body."""
    answer = await hub.globex.next()
    assert (answer.status, answer.body) == (204, b"")


@pytest_twisted.ensureDeferred
async def test_fetch_and_acknowledge_a_call(hub: Hub) -> None:
    """GLOBEX fetches ACME's call with its delivery id, acknowledges it, and the mailbox is empty."""
    await hub.raise_call()
    fetched = await hub.globex.next()
    assert fetched.status == 200
    assert fetched.headers["content-type"] == "application/xml"
    delivery_id = int(fetched.headers["gsem-delivery-id"])
    document = etree.fromstring(fetched.body)
    assert document.findtext("RequesterID") == "ACME-INC-20931"
    assert document.findtext("CurrentState") == "Beginning_State"
    assert (await hub.globex.next()).status == 204  # handed out: invisible for now

    answer = await hub.globex.ack(delivery_id, ack_document(True))
    assert answer.status == 200 and b"acknowledged" in answer.body
    stored = await hub.delivery(delivery_id)
    assert stored.state == "acknowledged" and b"<Acknowledge>Yes</Acknowledge>" in stored.receiver_ack
    assert (await hub.globex.ack(delivery_id, ack_document(True))).status == 200  # a lost answer, resent
    await deferLater(reactor, VISIBILITY_TIMEOUT + 0.1)
    assert (await hub.globex.next()).status == 204


@pytest_twisted.ensureDeferred
async def test_an_unacknowledged_document_is_handed_out_again(hub: Hub) -> None:
    """After the visibility timeout the same delivery comes back, under the same id."""
    await hub.raise_call()
    first = await hub.globex.next()
    await deferLater(reactor, VISIBILITY_TIMEOUT + 0.1)
    again = await hub.globex.next()
    assert again.status == 200
    assert again.headers["gsem-delivery-id"] == first.headers["gsem-delivery-id"]
    assert again.body == first.body
    assert (await hub.delivery(int(first.headers["gsem-delivery-id"]))).attempts == 2


@pytest_twisted.ensureDeferred
async def test_a_refusal_makes_the_delivery_dead_with_the_partners_errors(hub: Hub) -> None:
    """Acknowledge=No is recorded (200) and the delivery is dead with the partner's error."""
    await hub.raise_call()
    delivery_id = (await hub.globex.next()).headers["gsem-delivery-id"]
    answer = await hub.globex.ack(delivery_id, ack_document(False, [("unknown-contract", "C-100 expired")]))
    assert answer.status == 200
    stored = await hub.delivery(int(delivery_id))
    assert (stored.state, stored.last_error) == ("dead", "unknown-contract: C-100 expired")


@pytest_twisted.ensureDeferred
async def test_acknowledgement_mistakes_get_clear_answers(hub: Hub) -> None:
    """Malformed ack 400, another partner's or an unknown delivery 404, not handed out 409."""
    await hub.raise_call()
    fetched = await hub.globex.next()
    delivery_id = fetched.headers["gsem-delivery-id"]

    malformed = await hub.globex.ack(delivery_id, b"<ACKNOWLEDGEMENT><Acknowledge>Sure")
    assert malformed.status == 400 and malformed.headers["content-type"].startswith("text/plain")
    assert b"not an ACKNOWLEDGEMENT" in malformed.body
    assert (await hub.acme.ack(delivery_id, ack_document(True))).status == 404  # GLOBEX's, not ACME's
    assert (await hub.globex.ack(999_999, ack_document(True))).status == 404
    assert (await hub.globex.ack("abc", ack_document(True))).status == 404
    assert (await hub.delivery(int(delivery_id))).state == "pending"

    await hub.globex.ack(delivery_id, ack_document(False, [("x", "y")]))
    late = await hub.globex.ack(delivery_id, ack_document(True))
    assert late.status == 409 and b"dead" in late.body


@pytest_twisted.ensureDeferred
async def test_a_delivery_not_yet_fetched_cannot_be_acknowledged(hub: Hub) -> None:
    """Acknowledging before fetching is 409: the partner cannot have seen it."""
    await hub.raise_call()
    (pending,) = await hub.engine.database.run(deliveries.list_deliveries, recipient="GLOBEX")
    answer = await hub.globex.ack(pending.id, ack_document(True))
    assert answer.status == 409 and b"fetch it from the mailbox first" in answer.body


@pytest_twisted.ensureDeferred
async def test_a_partner_that_is_not_pulling_is_told_so(hub: Hub) -> None:
    """A push partner asking the mailbox gets 409 naming its mode."""
    await hub.set_delivery("ACME", "push", {"url": "https://127.0.0.1:9/inbound"})
    answer = await hub.acme.next()
    assert answer.status == 409 and b"push" in answer.body


@pytest_twisted.ensureDeferred
async def test_the_engine_forwards_to_an_adapter_partner(hub: Hub) -> None:
    """With GLOBEX on an adapter, the running engine delivers ACME's call and logs the attempt."""
    instance = uuid.uuid4().hex
    await hub.set_delivery("GLOBEX", "adapter", {"adapter": "memory", "options": {"instance": instance}})
    await hub.raise_call()
    received = InMemoryAdapter.named(instance)
    for _ in range(100):
        if received.received:
            break
        await deferLater(reactor, 0.1)
    stored = await hub.engine.database.run(deliveries.list_deliveries, recipient="GLOBEX")
    assert [etree.fromstring(r.document).findtext("RequesterID") for r in received.received] == [
        "ACME-INC-20931"], (stored, hub.log.getvalue())
    attempts = [json.loads(line) for line in hub.log.getvalue().splitlines()
                if '"delivery_attempt"' in line]
    assert attempts and attempts[0]["outcome"] == "acknowledged"
