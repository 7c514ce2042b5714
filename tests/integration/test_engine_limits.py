"""Limits and hostile input against a real ``gsem serve`` (SPEC §5, §8), with curl.

The hub runs with a small body limit (``[limits] max_body_bytes = 10000``) so that a
50 MB upload is 5000 times over it: refused from its ``Content-Length`` (or, chunked,
as soon as the limit is crossed) without the server reading or keeping it.  Hostile
XML is answered ``malformed-xml`` and the server goes on serving.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub import CURL, RunningHub, ack_codes, ack_text

pytestmark = pytest.mark.integration

LIMIT = 10_000
BIG = 50 * 1024 * 1024
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"
QUERY = (FIXTURES / "09-query-incident.xml").read_bytes()


@pytest.fixture(scope="module")
def limited_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One demo hub on SQLite with a body limit of 10,000 bytes, shared by this module's tests."""
    if CURL is None:
        pytest.skip("curl is not installed")
    hub = RunningHub.create(tmp_path_factory.mktemp("limits") / "hub", limits={"max_body_bytes": LIMIT})
    try:
        yield hub
    finally:
        hub.stop()
    hub.assert_no_traceback()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 50 MB file of 'a's (made once; curl streams it from disk)."""
    path = tmp_path_factory.mktemp("big") / "big.xml"
    with path.open("wb") as f:
        chunk = b"a" * (1024 * 1024)
        for _ in range(BIG // len(chunk)):
            f.write(chunk)
    return path


def _too_large_acks(hub: RunningHub) -> list[str]:
    """The AckIDs of the too-large refusals, as the operator CLI lists them."""
    acks = json.loads(hub.gsem("acks", "--code", "too-large", "--format", "json"))
    assert all(a["partner"] == "ACME" and a["http_status"] == 413 for a in acks)
    return [a["ack_id"] for a in acks]


def _still_serving(hub: RunningHub) -> None:
    status, ack = hub.post("ACME", QUERY)
    assert (status, ack_codes(ack)) == (404, ["unknown-incident"]), "the hub still answers documents"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_refused_without_being_read(limited_hub: RunningHub, big_file: Path, chunked: bool) -> None:
    """A 50 MB upload gets 413 too-large long before curl could send it all, and the server's memory stays low."""
    hub = limited_hub
    before = _too_large_acks(hub)
    rss_before = hub.peak_rss_kib()
    headers = ["Transfer-Encoding: chunked"] if chunked else []
    result = hub.curl("ACME", b"", body_file=big_file, headers=headers, max_time=60)

    assert result.http_status == 413, result.stderr
    ack = result.ack
    assert ack is not None
    assert ack_text(ack, "Acknowledge") == "No"
    assert ack_codes(ack) == ["too-large"]
    # The answer came while most of the body was still on the client's side.
    assert result.bytes_sent < BIG // 4, f"curl sent {result.bytes_sent} of {BIG} bytes before the answer"
    grown_kib = hub.peak_rss_kib() - rss_before
    assert grown_kib < 16 * 1024, f"the server's peak memory grew by {grown_kib} KiB for a refused upload"

    assert set(_too_large_acks(hub)) == {*before, ack_text(ack, "AckID")}, "the refusal is in the acknowledgement log"
    assert hub.scalar("SELECT COUNT(*) FROM incidents") == 0
    _still_serving(hub)


def test_body_at_the_limit_is_read(limited_hub: RunningHub) -> None:
    """A document just under the limit is read and answered on its merits, not refused as too large."""
    body = QUERY.replace(b"</SERVICE_INCIDENT>", b"<!--" + b"x" * (LIMIT - len(QUERY) - 10) + b"-->\n</SERVICE_INCIDENT>")
    assert LIMIT - 100 < len(body) <= LIMIT
    status, ack = limited_hub.post("ACME", body)
    assert (status, ack_codes(ack)) == (404, ["unknown-incident"])


HOSTILE = {
    "xxe-file": b"""<?xml version="1.0"?>
<!DOCTYPE SERVICE_INCIDENT [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<SERVICE_INCIDENT><TransactionName>Query_Incident</TransactionName><RequesterID>&x;</RequesterID></SERVICE_INCIDENT>
""",
    "xxe-network": b"""<?xml version="1.0"?>
<!DOCTYPE SERVICE_INCIDENT SYSTEM "http://127.0.0.1:9/evil.dtd">
<SERVICE_INCIDENT><TransactionName>Query_Incident</TransactionName><RequesterID>R1</RequesterID></SERVICE_INCIDENT>
""",
    "billion-laughs": b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<SERVICE_INCIDENT><TransactionName>Query_Incident</TransactionName><RequesterID>&lol4;</RequesterID></SERVICE_INCIDENT>
""",
    "not-well-formed": b"<SERVICE_INCIDENT><TransactionName>Query_Incident</TransactionName><RequesterID>R1",
    "not-utf8": "<SERVICE_INCIDENT><Comment>caf\u00e9</Comment></SERVICE_INCIDENT>".encode("latin-1"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_xml_is_malformed(limited_hub: RunningHub, kind: str) -> None:
    """DOCTYPEs, entities, broken and non-UTF-8 XML get 400 malformed-xml; nothing leaks and the hub goes on."""
    hub = limited_hub
    status, ack = hub.post("ACME", HOSTILE[kind])
    assert status == 400
    assert ack_text(ack, "Acknowledge") == "No"
    assert ack_codes(ack) == ["malformed-xml"]
    text = "".join(ack.itertext())
    assert "root:" not in text and "lollol" not in text, "no entity was expanded into the answer"
    _still_serving(hub)


def test_too_deep_document_is_too_large(limited_hub: RunningHub) -> None:
    """A document nested deeper than the depth limit gets 413 too-large."""
    body = (b"<SERVICE_INCIDENT><TransactionName>Query_Incident</TransactionName><RequesterID>R1</RequesterID>"
            b"<Comment>" + b"<a>" * 40 + b"</a>" * 40 + b"</Comment></SERVICE_INCIDENT>")
    status, ack = limited_hub.post("ACME", body)
    assert (status, ack_codes(ack)) == (413, ["too-large"])


def test_partner_leaving_before_its_answer(limited_hub: RunningHub) -> None:
    """A partner that closes its connection right after its request: the answer is logged, not sent, and the hub serves on."""
    identity = limited_hub.identity("ACME")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(limited_hub.ca_cert))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    key = "leaves-before-its-answer"
    request = (b"POST /sis/v1/transactions HTTP/1.1\r\nHost: hub\r\nContent-Type: application/xml\r\n"
               b"Idempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(QUERY), QUERY))
    with socket.create_connection((limited_hub.host, limited_hub.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=limited_hub.host) as tls:
            tls.sendall(request)
    # Its acknowledgement is still decided, kept and logged.
    deadline = time.monotonic() + 15
    while not limited_hub.query("SELECT ack_id FROM messages WHERE idempotency_key = :key", key=key):
        assert time.monotonic() < deadline, "the request of a partner that left was not kept"
        time.sleep(0.05)
    _still_serving(limited_hub)
