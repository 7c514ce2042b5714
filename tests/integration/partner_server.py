"""A partner's CHS for delivery tests: a real HTTPS receiver in its own process.

``python -m partner_server DIR --hub-ca FILE`` serves ``POST /chs/inbound`` on
127.0.0.1 (a free port) with mutual TLS: its own development CA and server certificate
(made with :mod:`gsem.pki` in *DIR* by :meth:`PartnerServer.start`), and it **requires**
a client certificate issued by the hub's CA (the hub's ``certs/ca-cert.pem``), so a hub
that pushes without presenting ``certs/hub-cert.pem`` is refused in the handshake.

Every request that reaches it is recorded: time, the ``Gsem-Delivery-Id`` header, the
fingerprint of the client certificate, what the document says (RequesterID,
TransactionName, CurrentState, Acknowledge, ProviderID), the body, and what was answered.
Like a real receiver it deduplicates by delivery id: a delivery id it already accepted
is answered Yes again and counted as a duplicate, never as a second business message.

It answers an ``ACKNOWLEDGEMENT``: ``Acknowledge=Yes``, or ``No`` (with an ``ERROR``)
for RequesterIDs and transactions the test chose; scripted HTTP faults (500, 503 with
``Retry-After``) are answered to the next requests; a delay slows every answer (the
document counts as received when it arrives, as a receiver that commits first and then
answers, so a sender killed while waiting causes a duplicate, not a loss).

The test talks to it through a plain-HTTP control port on 127.0.0.1: ``GET /log``
returns the record as JSON, ``POST /config`` changes the behaviour.  It runs in a
subprocess so that the test process needs no reactor.  :class:`PartnerServer` is the
test side.

Beside it, what every delivery test shares: the demo lifecycle rewritten for any
incident, with what each partner must receive of it (:func:`lifecycle`,
:func:`expected_for`, :func:`assert_received_in_order`), and the operator's steps on the
hub (:func:`set_delivery` and friends).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub import COUNTERPARTY, FIXTURES, LIFECYCLE

__all__ = [
    # the partner's server
    "PartnerServer", "Reception", "INBOUND_PATH", "acknowledgement_of", "main",
    # what a partner must receive of the demo lifecycle
    "LIFECYCLE", "Step", "lifecycle", "expected_for", "assert_received_in_order",
    # the operator's side of a delivery test
    "set_delivery", "set_delivery_config", "hub_deliveries", "delivery_rows", "attempt_lines", "wait_until",
]

INBOUND_PATH = "/chs/inbound"
DELIVERY_ID_HEADER = "Gsem-Delivery-Id"  # spelled here, not imported: the receiver is not the hub
START_TIMEOUT = 20.0
_HERE = Path(__file__).resolve().parent




@dataclass(frozen=True)
class Step:
    """One document of a lifecycle: who sends it, and what its receiver must get."""

    number: int  # 1-9, the fixture's number
    sender: str
    recipient: str | None  # None: not delivered (Query_Incident)
    transaction: str
    state_after: str
    requester_id: str
    provider_id: str  # "" while the provider has not named the incident
    document: bytes


def lifecycle(requester_id: str = "ACME-INC-20931", provider_id: str = "GX-55012", *,
              steps: int = len(LIFECYCLE)) -> list[Step]:
    """The demo lifecycle's first *steps* documents for an incident with these ids."""
    out = []
    for number, (name, sender, state) in enumerate(LIFECYCLE[:steps], start=1):
        body = (FIXTURES / name).read_bytes()
        body = body.replace(b"ACME-INC-20931", requester_id.encode()).replace(b"GX-55012", provider_id.encode())
        transaction = body.split(b"<TransactionName>", 1)[1].split(b"<", 1)[0].decode()
        recipient = None if transaction == "Query_Incident" else COUNTERPARTY[sender]
        out.append(Step(number, sender, recipient, transaction, state, requester_id,
                        provider_id if number >= 2 else "", body))
    return out


def expected_for(recipient: str, steps: Sequence[Step]) -> list[Step]:
    """What *recipient* must receive of *steps*, in order."""
    return [s for s in steps if s.recipient == recipient]


def assert_received_in_order(messages: Sequence[Reception], expected: Sequence[Step]) -> None:
    """*messages* (business messages, as accepted) hold exactly *expected*, per incident in order,
    each as the hub forwards it: CurrentState the state after it, Acknowledge=Yes, ProviderID once known."""
    by_incident: dict[str, list[Reception]] = {}
    for m in messages:
        by_incident.setdefault(m.requester_id, []).append(m)
    wanted: dict[str, list[Step]] = {}
    for s in expected:
        wanted.setdefault(s.requester_id, []).append(s)
    assert sorted(by_incident) == sorted(wanted), \
        f"incidents received {sorted(by_incident)}, expected {sorted(wanted)}"
    ids = [m.delivery_id for m in messages]
    assert len(ids) == len(set(ids)), f"a delivery id was accepted twice: {ids}"
    for rid, steps in wanted.items():
        got = by_incident[rid]
        assert [(m.transaction, m.current_state) for m in got] == [(s.transaction, s.state_after) for s in steps], \
            f"{rid}: received {[(m.transaction, m.current_state) for m in got]}"
        for m, s in zip(got, steps, strict=True):
            assert m.acknowledge == "Yes", f"{rid} {m.transaction}: Acknowledge={m.acknowledge!r}"
            assert m.provider_id == s.provider_id, f"{rid} {m.transaction}: ProviderID={m.provider_id!r}"


@dataclass(frozen=True)
class Reception:
    """One request that reached the partner, and what it answered."""

    seq: int
    at: float  # time.time() when the request arrived
    delivery_id: str | None
    requester_id: str
    provider_id: str
    transaction: str
    current_state: str
    acknowledge: str
    outcome: str  # accepted | duplicate | rejected | fault | malformed
    status: int  # the HTTP status answered
    retry_after: float | None
    peer_fingerprint: str | None
    body: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reception:
        """From one entry of ``GET /log``."""
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    @classmethod
    def of_document(cls, seq: int, delivery_id: str, body: bytes, *, outcome: str = "accepted") -> Reception:
        """A document a pull or spool partner (played by the test) took, as if it had been pushed."""
        from lxml import etree

        root = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
        return cls(seq, time.time(), delivery_id, _text(root, "RequesterID"), _text(root, "ProviderID"),
                   _text(root, "TransactionName"), _text(root, "CurrentState"), _text(root, "Acknowledge"),
                   outcome, 200, None, None, body.decode("utf-8", "replace"))


class PartnerServer:
    """A running ``partner_server`` subprocess, seen from the test."""

    def __init__(self, directory: Path, process: subprocess.Popen[bytes], port: int, control_port: int) -> None:
        self.directory = directory
        self.process = process
        self.port = port
        self.control_port = control_port

    @staticmethod
    def make_pki(directory: Path) -> None:
        """The partner's own CA and server certificate (for 127.0.0.1 and localhost)."""
        from gsem import pki

        directory.mkdir(parents=True, exist_ok=True)
        if (directory / "ca-cert.pem").exists():
            return
        ca_cert, ca_key = pki.make_ca(f"partner CA {directory.name}")
        cert, key = pki.make_server_cert(ca_cert, ca_key, common_name=f"partner {directory.name}")
        pki.write_cert(directory / "server-cert.pem", cert)
        pki.write_key(directory / "server-key.pem", key)
        pki.write_cert(directory / "ca-cert.pem", ca_cert)

    @classmethod
    def start(cls, directory: Path, *, hub_ca: Path, port: int = 0, delay: float = 0.0,
              reject_requester_ids: Sequence[str] = (), reject_transactions: Sequence[str] = ()) -> PartnerServer:
        """Make the partner's PKI in *directory* (once) and start serving; wait until it listens."""
        directory = Path(directory)
        cls.make_pki(directory)
        ready = directory / "ready.json"
        ready.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(_HERE), *filter(None, [env.get("PYTHONPATH")])])
        args = [sys.executable, "-m", "partner_server", str(directory), "--hub-ca", str(hub_ca),
                "--port", str(port), "--delay", str(delay)]
        for rid in reject_requester_ids:
            args += ["--reject-requester-id", rid]
        for name in reject_transactions:
            args += ["--reject-transaction", name]
        runs = len(list(directory.glob("server-*.stderr.log"))) + 1
        with (directory / f"server-{runs}.stdout.log").open("wb") as out, \
                (directory / f"server-{runs}.stderr.log").open("wb") as err:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise AssertionError("the partner server did not start:\n" + cls._stderr(directory))
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        return cls(directory, process, info["port"], info["control_port"])

    @staticmethod
    def _stderr(directory: Path) -> str:
        return "".join(p.read_text("utf-8", "replace") for p in sorted(directory.glob("server-*.stderr.log")))

    # -- what the hub is configured with ------------------------------------------------

    @property
    def url(self) -> str:
        """Where the hub pushes (directly, not through a proxy)."""
        return f"https://127.0.0.1:{self.port}{INBOUND_PATH}"

    @property
    def ca_cert(self) -> Path:
        """The partner's CA: the hub verifies the partner's server certificate against it."""
        return self.directory / "ca-cert.pem"

    # -- control ----------------------------------------------------------------------------

    def _control(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.control_port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def configure(self, **settings: Any) -> None:
        """Change behaviour: ``delay`` (s), ``reject_requester_ids``, ``reject_transactions``,
        ``reject_status`` (HTTP status sent with Acknowledge=No, default 200), ``faults``
        (list of ``{"status": 503, "retry_after": 2}`` answered to the next requests, in order;
        ``{}`` answers one request normally),
        ``close_connections`` (answer ``Connection: close``: one request per connection, so
        that a proxy in front sees every attempt as a connection)."""
        self._control("POST", "/config", settings)

    def fail_next(self, *faults: Mapping[str, Any]) -> None:
        """Answer the next ``len(faults)`` requests with these HTTP faults instead of an acknowledgement."""
        self.configure(faults=[dict(f) for f in faults])

    def receptions(self) -> list[Reception]:
        """Every request received so far, in arrival order."""
        return [Reception.from_json(r) for r in self._control("GET", "/log")["receptions"]]

    def messages(self) -> list[Reception]:
        """Business messages: the first accepted reception of each delivery id, in order."""
        return [r for r in self.receptions() if r.outcome == "accepted"]

    def wait_for(self, predicate: Callable[[list[Reception]], bool], *, timeout: float,
                 what: str = "the partner to receive what was expected") -> list[Reception]:
        """Poll the log until *predicate* (given all receptions) holds; fail after *timeout* s."""
        deadline = time.monotonic() + timeout
        while True:
            receptions = self.receptions()
            if predicate(receptions):
                return receptions
            if time.monotonic() > deadline:
                summary = [(r.seq, r.delivery_id, r.requester_id, r.transaction, r.outcome, r.status)
                           for r in receptions[-40:]]
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last receptions: {summary}")
            time.sleep(0.1)

    def wait_for_messages(self, count: int, *, timeout: float) -> list[Reception]:
        """Wait until *count* business messages were accepted; returns them."""
        self.wait_for(lambda rs: sum(r.outcome == "accepted" for r in rs) >= count, timeout=timeout,
                      what=f"{count} business messages")
        return self.messages()

    def stop(self) -> None:
        """Stop the server process."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stderr_text(self) -> str:
        """What the server wrote on standard error."""
        return self._stderr(self.directory)

    def assert_no_traceback(self) -> None:
        """Fail if the partner server itself broke (a bug in the test harness, not the hub)."""
        text = self.stderr_text()
        assert "Traceback" not in text, "the partner server logged a traceback:\n" + text[-4000:]


# -- the hub's side of a delivery test -------------------------------------------------------
# (``hub`` is a ``tests/integration/hub.py`` RunningHub; kept here so that every delivery test
# module shares one spelling of these operator steps.)


def set_delivery(hub: Any, partner_id: str, *options: object) -> str:
    """``gsem partners delivery PARTNER OPTIONS…`` (the operator's command); returns its output."""
    return hub.gsem("partners", "delivery", partner_id, *(str(o) for o in options))


def set_delivery_config(hub: Any, **values: object) -> None:
    """Set keys of ``[delivery]`` in the hub's ``gsem.toml`` (read when the server starts)."""
    import re

    config = hub.data_dir / "gsem.toml"
    text = config.read_text("utf-8")
    head, sep, section = text.partition("\n[delivery]\n")
    assert sep, "gsem.toml has no [delivery] section"
    for name, value in values.items():
        rendered = json.dumps(value) if isinstance(value, str) else str(value).lower() \
            if isinstance(value, bool) else str(value)
        section, count = re.subn(rf"(?m)^#? ?{re.escape(name)} = .*$", f"{name} = {rendered}", section, count=1)
        if count != 1:
            section = section.rstrip("\n") + f"\n{name} = {rendered}\n"
    config.write_text(head + sep + section, "utf-8")


def hub_deliveries(hub: Any, *options: str) -> list[dict[str, Any]]:
    """``gsem deliveries list --format json`` (every delivery, oldest first)."""
    out = hub.gsem("deliveries", "list", "--format", "json", "--limit", "100000", *options)
    rows = json.loads(out) if out.strip().startswith("[") else [json.loads(line) for line in out.splitlines()
                                                                  if line.strip()]
    return sorted(rows, key=lambda r: r["id"])


def delivery_rows(hub: Any) -> list[dict[str, Any]]:
    """Every delivery straight from the hub's database, oldest first: cheap enough to poll
    (each ``gsem`` command is a new Python process, seconds on a busy machine)."""
    return hub.query("SELECT id, state, recipient_id, requester_ref, transaction_name, attempts, message_id "
                     "FROM deliveries ORDER BY id")


def attempt_lines(hub: Any) -> list[dict[str, Any]]:
    """The hub's JSON log lines about delivery attempts (``"event": "delivery_attempt"``), every run."""
    found = []
    for line in hub.stdout_lines():
        if '"delivery_attempt"' in line:
            record = json.loads(line)
            if record.get("event") == "delivery_attempt":
                found.append(record)
    return found


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Call *check* until it returns something true (returned); fail naming *what* after *timeout* s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- the server process ----------------------------------------------------------------------


def _text(root: Any, tag: str) -> str:
    return (root.findtext(tag) or "").strip() if root is not None else ""


def acknowledgement_of(document: bytes, *, ok: bool = True, ack_id: str, error: str | None = None) -> bytes:
    """A receiver's ACKNOWLEDGEMENT of *document* (for pull and spool partners played by the test)."""
    from lxml import etree

    root = etree.fromstring(document, etree.XMLParser(resolve_entities=False, no_network=True))
    return _acknowledgement(ok, root, hashlib.sha256(document).hexdigest(), ack_id, error)


def _acknowledgement(ok: bool, root: Any, digest: str, ack_id: str, error: str | None) -> bytes:
    from lxml import etree

    ack = etree.Element("ACKNOWLEDGEMENT")
    for tag, value in (("Acknowledge", "Yes" if ok else "No"), ("AckID", ack_id),
                       ("TransactionName", _text(root, "TransactionName")),
                       ("RequesterID", _text(root, "RequesterID")), ("ProviderID", _text(root, "ProviderID")),
                       ("ReceivedAt", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))):
        etree.SubElement(ack, tag).text = value or None
    etree.SubElement(ack, "Digest", algorithm="sha-256").text = digest
    if error is not None:
        e = etree.SubElement(ack, "ERROR", code="rule-violation", path="/SERVICE_INCIDENT")
        e.text = error
    return etree.tostring(ack, xml_declaration=True, encoding="UTF-8", pretty_print=True)


class _Receiver:
    """The partner's state: what it received, and how it answers."""

    def __init__(self, name: str, delay: float, reject_requester_ids: Sequence[str],
                 reject_transactions: Sequence[str]) -> None:
        self.name = name
        self.settings: dict[str, Any] = {
            "delay": delay, "reject_requester_ids": list(reject_requester_ids),
            "reject_transactions": list(reject_transactions), "reject_status": 200, "faults": [],
            "close_connections": False,
        }
        self.receptions: list[dict[str, Any]] = []
        self.accepted: dict[str, bytes] = {}  # delivery id -> the ACKNOWLEDGEMENT sent

    def receive(self, delivery_id: str | None, body: bytes, peer: str | None) -> tuple[int, dict[str, str], bytes]:
        """Record one request and decide the answer: (status, headers, body)."""
        from lxml import etree

        digest = hashlib.sha256(body).hexdigest()
        try:
            root = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError:
            root = None
        seq = len(self.receptions) + 1
        record: dict[str, Any] = {
            "seq": seq, "at": time.time(), "delivery_id": delivery_id,
            "requester_id": _text(root, "RequesterID"), "provider_id": _text(root, "ProviderID"),
            "transaction": _text(root, "TransactionName"), "current_state": _text(root, "CurrentState"),
            "acknowledge": _text(root, "Acknowledge"), "peer_fingerprint": peer,
            "body": body.decode("utf-8", "replace"), "retry_after": None,
        }
        self.receptions.append(record)
        headers = {"Content-Type": "application/xml; charset=utf-8"}
        if self.settings["close_connections"]:
            headers["Connection"] = "close"
        faults = self.settings["faults"]
        fault = faults.pop(0) if faults else None
        if fault is not None and fault.get("status") is not None:
            record.update(outcome="fault", status=int(fault["status"]))
            if fault.get("retry_after") is not None:
                record["retry_after"] = float(fault["retry_after"])
                headers["Retry-After"] = str(fault["retry_after"])
            return record["status"], headers, f"scripted fault {fault['status']}\n".encode()
        if root is None or delivery_id is None:
            record.update(outcome="malformed", status=400)
            return 400, headers, _acknowledgement(False, root, digest, f"{self.name}-{seq}",
                                                  "not well-formed XML or no Gsem-Delivery-Id header")
        if delivery_id in self.accepted:
            record.update(outcome="duplicate", status=200)
            return 200, headers, self.accepted[delivery_id]
        if (record["requester_id"] in self.settings["reject_requester_ids"]
                or record["transaction"] in self.settings["reject_transactions"]):
            status = int(self.settings["reject_status"])
            record.update(outcome="rejected", status=status)
            return status, headers, _acknowledgement(
                False, root, digest, f"{self.name}-{seq}",
                f"{self.name} refuses {record['transaction']} for {record['requester_id']} (scripted)")
        ack = _acknowledgement(True, root, digest, f"{self.name}-{seq}", None)
        self.accepted[delivery_id] = ack
        record.update(outcome="accepted", status=200)
        return 200, headers, ack


def _build_resources(receiver: _Receiver, reactor: Any) -> tuple[Any, Any]:
    from cryptography.hazmat.primitives import hashes
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    class InboundResource(Resource):
        """``POST /chs/inbound``: one document from the hub."""

        isLeaf = True

        def render_POST(self, request: Any) -> Any:  # noqa: N802 - Twisted's name
            peer = None
            cert = request.transport.getPeerCertificate()
            if cert is not None:
                peer = cert.to_cryptography().fingerprint(hashes.SHA256()).hex()
            raw_id = request.getHeader(DELIVERY_ID_HEADER)
            status, headers, body = receiver.receive(raw_id, request.content.read(), peer)
            finished = {"lost": False}
            request.notifyFinish().addErrback(lambda _: finished.update(lost=True))

            def answer() -> None:
                if finished["lost"]:
                    return
                request.setResponseCode(status)
                for name, value in headers.items():
                    request.setHeader(name, value)
                request.write(body)
                request.finish()

            delay = float(receiver.settings["delay"])
            if delay > 0:
                reactor.callLater(delay, answer)
            else:
                answer()
            return NOT_DONE_YET

    class LogResource(Resource):
        """``GET /log``: every reception as JSON."""

        isLeaf = True

        def render_GET(self, request: Any) -> bytes:  # noqa: N802
            request.setHeader("Content-Type", "application/json")
            return json.dumps({"receptions": receiver.receptions}).encode()

    class ConfigResource(Resource):
        """``POST /config``: change the behaviour (keys of ``_Receiver.settings``)."""

        isLeaf = True

        def render_POST(self, request: Any) -> bytes:  # noqa: N802
            changes = json.loads(request.content.read() or b"{}")
            unknown = set(changes) - set(receiver.settings)
            if unknown:
                request.setResponseCode(400)
                return json.dumps({"error": f"unknown settings {sorted(unknown)}"}).encode()
            receiver.settings.update(changes)
            return json.dumps(receiver.settings).encode()

    inbound_root = Resource()
    chs = Resource()
    inbound_root.putChild(b"chs", chs)
    chs.putChild(b"inbound", InboundResource())
    control_root = Resource()
    control_root.putChild(b"log", LogResource())
    control_root.putChild(b"config", ConfigResource())
    return inbound_root, control_root


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="partner_server", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="holds ca-cert.pem, server-cert.pem, server-key.pem")
    parser.add_argument("--hub-ca", type=Path, required=True, help="the CA that issued the hub's client certificate")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering each request")
    parser.add_argument("--reject-requester-id", action="append", default=[])
    parser.add_argument("--reject-transaction", action="append", default=[])
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
    from twisted.web.server import Site

    directory: Path = args.directory
    server = PrivateCertificate.loadPEM((directory / "server-cert.pem").read_text()
                                        + (directory / "server-key.pem").read_text())
    hub_ca = Certificate.loadPEM(args.hub_ca.read_bytes())
    options = CertificateOptions(privateKey=server.privateKey.original, certificate=server.original,
                                 verify=True, caCerts=[hub_ca.original], requireCertificate=True)
    receiver = _Receiver(directory.name, args.delay, args.reject_requester_id, args.reject_transaction)
    inbound, control = _build_resources(receiver, reactor)
    listening = reactor.listenSSL(args.port, Site(inbound), options, interface="127.0.0.1")
    control_port = reactor.listenTCP(0, Site(control), interface="127.0.0.1")
    ready = directory / "ready.json"
    tmp = directory / ".ready.json.tmp"
    tmp.write_text(json.dumps({"port": listening.getHost().port, "control_port": control_port.getHost().port}))
    os.replace(tmp, ready)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
