#!/usr/bin/env python3
"""``make demo``: one incident's whole lifecycle between a requester's CHS and Request Tracker.

What runs, all on 127.0.0.1:

* **the hub**: a fresh data directory (``gsem init --demo``: partners ACME and GLOBEX, an
  agreement for contract C-100) and ``gsem serve`` on a free port; its JSON log lines go
  to ``DIR/hub.log``;
* **ACME, the requester**: the reference CHS client (``gsem.chs``: ``HubClient``,
  ``build_transaction``, ``PullLoop`` over a ``LocalIncidents`` store in
  ``DIR/acme-chs.sqlite``), reading its pull mailbox;
* **GLOBEX, the provider**: a Request Tracker 5 (``.ci/rt-start``, or ``--rt-url``) with a
  queue made for this run.  The hub delivers to it through the ``request_tracker``
  adapter, and the RT bridge (``python -m chs_adapters.rt_bridge``, ``DIR/rt-bridge.log``)
  sends what the agent ``alice`` does in RT (take, reply, resolve, over RT's REST 2.0)
  back to the hub as GLOBEX's transactions.

The incident goes Service_Request → Entitlement → Problem_Submittal → Accept_Problem →
Request_Problem_Information → Provide_Problem_Information → Problem_Resolution →
Confirm_Close, then ACME's Query_Incident shows it Closed.  One line per transaction is
printed as it completes: the hub's acknowledgement, the delivery to the other party (and
so the receiver's own acknowledgement), the incident's state, the RT ticket.  Every wait
is bounded; when something does not happen the demo says what and where to look.
The hub and the bridge are stopped at the end (``--keep-running`` leaves them up); the
data directory stays for ``gsem acks``, ``gsem incidents show`` and the rest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"


def _in_venv() -> None:
    """Run again with the project's virtualenv when started with another Python."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"demo: no virtualenv at {VENV}; run 'make demo' (it creates one)")
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    _in_venv()
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

GSEM = VENV / "bin" / "gsem"
PYTHON = VENV / "bin" / "python"
RT_START = REPO / ".ci" / "rt-start"
#: users .ci/rt-start puts in its RT (docs/request-tracker.md)
RT_ADMIN = ("root", "password")
RT_HUB_USER = ("gsem", "gsem-password")
RT_AGENT = ("alice", "alice-password")
REQUESTER = ("Priya", "Natarajan", "+44 20 7946 0321", "p.natarajan@acme.example")
UPLOAD_LOG = b"2026-11-22 08:51:07 E117 duplicate header line 1 (BOM)\n"


class DemoFailed(Exception):
    """An expected failure: what did not happen, and where to look (no traceback)."""


# -- small helpers ------------------------------------------------------------------------------

def shown(path: Path) -> str:
    """*path* relative to the current directory when it is below it (shorter commands)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text("utf-8", "replace").rstrip().splitlines()
    except OSError:
        return f"({path} cannot be read)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (empty)"


class Rt:
    """The few REST 2.0 calls the demo makes to Request Tracker (blocking; RT is another process)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.api = self.url + "/REST/2.0"

    def call(self, method: str, path: str, body: Any = None, *, user: tuple[str, str] = RT_ADMIN) -> Any:
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request = urllib.request.Request(
            self.api + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as e:
            said = e.read().decode("utf-8", "replace").strip()[:300]
            raise DemoFailed(f"Request Tracker answered {e.code} to {method} {path} as {user[0]}: {said}") from None
        except OSError as e:
            reason = getattr(e, "reason", None) or e
            raise DemoFailed(f"Request Tracker at {self.url} did not answer {method} {path}: {reason}") from None
        return json.loads(text) if text.strip() else None

    def check_user(self, user: tuple[str, str], role: str) -> None:
        if user == RT_ADMIN:
            try:
                urllib.request.urlopen(self.url + "/", timeout=10).close()
            except urllib.error.HTTPError:
                pass  # it answers
            except OSError as e:
                raise DemoFailed(f"Request Tracker at {self.url} does not answer ({getattr(e, 'reason', e)}); "
                                 "start it with 'bash .ci/rt-start' or give another --rt-url") from None
        try:
            self.call("GET", "/rt", user=user)
        except DemoFailed as e:
            raise DemoFailed(f"RT user {user[0]!r} ({role}) cannot log in with the password .ci/rt-start "
                             f"gives it: {e}") from None

    def make_queue(self, name: str, fields: tuple[str, ...]) -> None:
        """Queue *name* with the adapter's single-value free-form ticket custom fields."""
        queue = self.call("POST", "/queue", {"Name": name, "Lifecycle": "default"})
        for field in fields:
            self.call("POST", "/customfield", {"Name": field, "Type": "FreeformSingle", "Queue": queue["id"],
                                               "LookupType": "RT::Queue-RT::Ticket"})

    def tickets(self, queue: str) -> list[int]:
        query = urllib.parse.quote(f"Queue = '{queue}'")
        return [int(item["id"]) for item in self.call("GET", f"/tickets?query={query}&per_page=20")["items"]]

    def ticket(self, ticket_id: int) -> dict[str, Any]:
        data = self.call("GET", f"/ticket/{ticket_id}")
        data["cf"] = {cf["name"]: (cf["values"][0] if cf["values"] else "") for cf in data["CustomFields"]}
        data["cf_ids"] = {cf["name"]: cf["id"] for cf in data["CustomFields"]}
        return data

    def hub_comments(self, ticket_id: int) -> list[str]:
        """Subjects of the comments the adapter (the hub's RT user) wrote on the ticket."""
        data = self.call("GET", f"/ticket/{ticket_id}/history?per_page=100&fields=Type,Creator,Data")
        return [t["Data"].strip() for t in data["items"]
                if t["Type"] == "Comment" and t["Creator"]["id"] == RT_HUB_USER[0]]

    def web(self, ticket_id: int) -> str:
        return f"{self.url}/Ticket/Display.html?id={ticket_id}"


# -- the demo -----------------------------------------------------------------------------------

COLUMNS = (("UTC", 8), ("TRANSACTION", 27), ("FROM → TO", 13), ("HUB ACK", 11), ("DELIVERY", 16),
           ("STATE AFTER", 27), ("RT TICKET", 0))
INDENT = " " * (COLUMNS[0][1] + 2)


def row(*cells: str) -> str:
    return "  ".join(c.ljust(w) if w else c for c, (_, w) in zip(cells, COLUMNS, strict=True)).rstrip()


class Demo:
    def __init__(self, args: argparse.Namespace, reactor: Any) -> None:
        self.args = args
        self.reactor = reactor
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.dir: Path = (args.data_dir or REPO / "demo" / f"run-{stamp}").resolve()
        self.queue = f"gsem-demo-{stamp}"
        self.rid = f"ACME-INC-{stamp[-6:]}"
        self.timeout: float = args.timeout
        self.hub: subprocess.Popen[bytes] | None = None
        self.bridge: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.store: Any = None
        self.database: Any = None
        self.rt: Rt | None = None
        self.ticket_id: int | None = None
        self.seen_acks: set[str] = set()
        self.shown_rows: list[Any] = []
        self.started = time.monotonic()

    # -- plumbing -----------------------------------------------------------------------------

    def gsem(self, *args: str) -> str:
        """Run the gsem command on the data directory; its output (DemoFailed when it fails)."""
        command = [str(GSEM), "--data-dir", str(self.dir), *args]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise DemoFailed(f"'{shlex.join(['gsem', *args])}' failed ({done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()}")
        return done.stdout

    def cmd(self, *args: str) -> str:
        """An operator's command line for this data directory, as printed for people."""
        return shlex.join([shown(GSEM), "--data-dir", shown(self.dir), *args])

    async def sleep(self, seconds: float) -> None:
        from twisted.internet.task import deferLater

        await deferLater(self.reactor, seconds, lambda: None)

    def check_processes(self) -> None:
        for process, name, log in ((self.hub, "the hub (gsem serve)", "hub-stderr.log"),
                                   (self.bridge, "the RT bridge", "rt-bridge-stderr.log")):
            if process is not None and process.poll() is not None:
                how = (f"was killed by signal {-process.returncode}" if process.returncode < 0
                       else f"exited with status {process.returncode}")
                raise DemoFailed(f"{name} {how}; the end of "
                                 f"{shown(self.dir / log)}:\n{tail(self.dir / log)}")

    async def wait_for(self, check: Callable[[], Any], what: str, where: str) -> Any:
        """*check*'s first true value, polled for at most --timeout seconds."""
        deadline = time.monotonic() + self.timeout
        while True:
            self.check_processes()
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {self.timeout:g} s waiting for {what}.\n  Look at: {where}")
            await self.sleep(0.25)

    def ack_rows(self, partner: str, transaction: str) -> list[Any]:
        from gsem.db import acks as acks_db

        rows = self.database.run_sync(acks_db.list_acks, partner=partner, transaction=transaction,
                                      requester_ref=self.rid, limit=20, oldest_first=True)
        return rows

    def new_ack(self, partner: str, transaction: str) -> Any:
        """The oldest acknowledgement of *transaction* from *partner* not shown yet, or None."""
        return next((r for r in self.ack_rows(partner, transaction) if r.ack_id not in self.seen_acks), None)

    def ack(self, ack_id: str, partner: str, transaction: str) -> Any:
        found = next((r for r in self.ack_rows(partner, transaction) if r.ack_id == ack_id), None)
        if found is None:
            raise DemoFailed(f"the hub answered {transaction} with AckID {ack_id}, but its acknowledgement "
                             f"log does not have it\n  Look at: {self.cmd('acks', '--partner', partner)}")
        return found

    async def delivered(self, ack_row: Any) -> Any:
        """Wait until the transaction's delivery is acknowledged by its receiver; the ack row then."""
        from gsem.db import deliveries as deliveries_db

        def check() -> Any:
            current = self.ack(ack_row.ack_id, ack_row.partner_id, ack_row.transaction_name)
            if current.delivery_state in ("dead", "discarded"):
                detail = self.database.run_sync(deliveries_db.get_delivery, current.delivery_id).delivery
                raise DemoFailed(
                    f"delivery {current.delivery_id} of {current.transaction_name} to {current.recipient_id} "
                    f"is {current.delivery_state}: {detail.last_error}\n"
                    f"  Look at: {self.cmd('deliveries', 'show', str(current.delivery_id))}")
            return current if current.delivery_state == "acknowledged" else None

        receiver = "ACME's mailbox (the demo pulls it)" if ack_row.recipient_id == "ACME" else "RT"
        return await self.wait_for(
            check, f"delivery {ack_row.delivery_id} of {ack_row.transaction_name} to {ack_row.recipient_id} "
            f"to be acknowledged by {receiver}",
            f"{self.cmd('deliveries', 'show', str(ack_row.delivery_id))}; {shown(self.dir / 'hub.log')}")

    def rt_cell(self) -> str:
        if self.ticket_id is None or self.rt is None:
            return "-"
        ticket = self.rt.ticket(self.ticket_id)
        owner = ticket["Owner"]["id"]
        return f"#{self.ticket_id} {ticket['Status']}" + ("" if owner == "Nobody" else f" ({owner})")

    def header(self) -> None:
        print()
        print("HUB ACK: the end of the hub's AckID and its Acknowledge. DELIVERY: the hub's delivery of the "
              "transaction to the")
        print("other party; 'acknowledged' = the receiver (ACME's client, or RT through the adapter) answered "
              "Acknowledge=Yes.")
        print()
        print(row(*(name for name, _ in COLUMNS)))

    def line(self, ack_row: Any, sender: str, receiver: str, rt: str | None = None) -> None:
        self.seen_acks.add(ack_row.ack_id)
        delivery = "-" if ack_row.delivery_id is None else f"{ack_row.delivery_id} {ack_row.delivery_state}"
        print(row(ack_row.created_at.strftime("%H:%M:%S"), ack_row.transaction_name, f"{sender} → {receiver}",
                  f"…{ack_row.ack_id[-6:]} {ack_row.result}", delivery, ack_row.state_after or "-",
                  rt if rt is not None else self.rt_cell()), flush=True)
        self.shown_rows.append(ack_row)

    def say(self, text: str) -> None:
        print(f"{INDENT}· {text}", flush=True)

    # -- setting up -----------------------------------------------------------------------------

    def rt_url(self) -> str:
        if self.args.rt_url:
            return self.args.rt_url
        print("demo: starting Request Tracker with .ci/rt-start (the first time it installs RT, ~2 minutes)",
              flush=True)
        try:
            done = subprocess.run(["bash", str(RT_START)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                                  timeout=900)
        except subprocess.TimeoutExpired:
            raise DemoFailed(".ci/rt-start did not finish within 15 minutes") from None
        url = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if done.returncode != 0 or not url:
            raise DemoFailed("Request Tracker could not start: .ci/rt-start failed (its messages are above; "
                             f"its server log is {os.environ.get('GSEM_RT_DIR', '/tmp/gsem-rt')}/server.log)")
        return url

    async def setup(self) -> None:
        from chs_adapters.request_tracker import CUSTOM_FIELDS
        from gsem.config import load_config
        from gsem.db.connector import Database

        if (self.dir / "gsem.toml").exists():
            raise DemoFailed(f"{shown(self.dir)} is already a gsem data directory; the demo makes a fresh "
                             "one (leave out --data-dir for demo/run-<time>)")
        rt_url = self.rt_url()
        self.rt = Rt(rt_url)
        self.rt.check_user(RT_ADMIN, "RT's administrator, who makes the queue")
        self.rt.check_user(RT_HUB_USER, "the hub's RT user: the adapter and the bridge act as it")
        self.rt.check_user(RT_AGENT, "the agent of the demo")
        self.rt.make_queue(self.queue, CUSTOM_FIELDS)

        port = self.args.port or free_port()
        self.gsem("init", str(self.dir), "--demo", "--port", str(port))
        self.hub_url = f"https://127.0.0.1:{port}"
        options = {"url": rt_url, "queue": self.queue, "user": RT_HUB_USER[0], "password": RT_HUB_USER[1],
                   "timeout": "10"}
        self.gsem("partners", "delivery", "GLOBEX", "--mode", "adapter", "--adapter", "request_tracker",
                  *(a for k, v in options.items() for a in ("--option", f"{k}={v}")),
                  "--retry-base", "1", "--retry-cap", "5")
        self.gsem("partners", "delivery", "ACME", "--mode", "pull", "--visibility-timeout", "30")
        self.database = Database(load_config(self.dir).database_url)

        print(f"gsem demo — data directory {shown(self.dir)}")
        print(f"  hub     {self.hub_url}  (gsem init --demo; gsem serve, log {shown(self.dir / 'hub.log')})")
        print(f"  ACME    requester: the reference CHS client (gsem.chs), pulling its mailbox; "
              f"its own view in {shown(self.dir / 'acme-chs.sqlite')}")
        print(f"  GLOBEX  provider: Request Tracker {rt_url}, queue {self.queue}; the hub delivers through")
        print("          the request_tracker adapter, the RT bridge sends what agent 'alice' does "
              f"(log {shown(self.dir / 'rt-bridge.log')})")

        hub_log = open(self.dir / "hub.log", "wb")  # noqa: SIM115 - the hub writes it until it stops
        hub_err = open(self.dir / "hub-stderr.log", "wb")  # noqa: SIM115
        self.hub = subprocess.Popen([str(GSEM), "--data-dir", str(self.dir), "serve"], cwd=REPO,
                                    stdin=subprocess.DEVNULL, stdout=hub_log, stderr=hub_err,
                                    start_new_session=self.args.keep_running)
        hub_log.close()
        hub_err.close()
        await self.wait_for(lambda: "gsem: serving" in (self.dir / "hub-stderr.log").read_text("utf-8", "replace"),
                            "the hub to start serving", shown(self.dir / "hub-stderr.log"))

        config = {
            "rt_url": rt_url, "queue": self.queue, "rt_user": RT_HUB_USER[0], "rt_password": RT_HUB_USER[1],
            "hub_url": self.hub_url, "cert": "certs/partners/GLOBEX-cert.pem",
            "key": "certs/partners/GLOBEX-key.pem", "ca": "certs/ca-cert.pem",
            "state_file": "rt-bridge-cursor.json", "contact_first_name": "Chidi", "contact_last_name": "Okafor",
            "contact_phone": "+1 555 0100", "poll_interval": 1, "response_hours": 4, "timeout": 10,
        }
        (self.dir / "rt-bridge.toml").write_text(
            "# The RT bridge of the demo (docs/request-tracker.md); paths are relative to this file.\n"
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()), "utf-8")
        bridge_log = open(self.dir / "rt-bridge.log", "wb")  # noqa: SIM115
        bridge_err = open(self.dir / "rt-bridge-stderr.log", "wb")  # noqa: SIM115
        self.bridge = subprocess.Popen(
            [str(PYTHON), "-m", "chs_adapters.rt_bridge", "--config", str(self.dir / "rt-bridge.toml")],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=bridge_log, stderr=bridge_err,
            start_new_session=self.args.keep_running)
        bridge_log.close()
        bridge_err.close()
        # Its cursor starts at RT's newest transaction on its first poll: wait for that, so
        # that the ticket the hub is about to make is after it.
        await self.wait_for(lambda: (self.dir / "rt-bridge-cursor.json").exists(),
                            "the RT bridge's first poll", shown(self.dir / "rt-bridge-stderr.log"))

        from gsem.chs.client import HubClient
        from gsem.chs.receiver import PullLoop
        from gsem.chs.state import LocalIncidents

        certs = self.dir / "certs"
        self.client = HubClient(self.hub_url, cert=certs / "partners" / "ACME-cert.pem",
                                key=certs / "partners" / "ACME-key.pem", ca=certs / "ca-cert.pem",
                                reactor=self.reactor, timeout=10)
        self.store = LocalIncidents(self.dir / "acme-chs.sqlite")
        self.pull = PullLoop(self.client, self.store, clock=self.reactor)

    # -- the two sides --------------------------------------------------------------------------

    async def acme_sends(self, name: str, **kwargs: Any) -> Any:
        """ACME's CHS sends *name* with the reference client; the hub's answer (refused: DemoFailed)."""
        from gsem.chs.builder import build_transaction
        from gsem.chs.client import HubConnectionError, HubProtocolError

        document = build_transaction(name, requester_id=self.rid, **kwargs)
        try:
            answer = await self.client.send(document)
        except (HubConnectionError, HubProtocolError) as e:
            raise DemoFailed(f"ACME could not send {name}: {e}\n  Look at: {shown(self.dir / 'hub-stderr.log')}"
                             ) from None
        self.store.record_sent(document, answer)
        if not answer.accepted:
            errors = "; ".join(f"{code} {path or ''}: {message}" for code, path, message in answer.errors)
            raise DemoFailed(f"the hub refused ACME's {name} (HTTP {answer.http_status}): {errors}\n"
                             f"  Look at: {self.cmd('acks', '--result', 'No')}")
        return answer

    async def acme_to_globex(self, name: str, rt_check: Callable[[], Any] | None = None,
                             rt_what: str = "", **kwargs: Any) -> Any:
        """ACME sends; the adapter puts it into RT; one timeline line once RT acknowledged it."""
        answer = await self.acme_sends(name, **kwargs)
        ack_row = await self.delivered(self.ack(answer.ack_id, "ACME", name))
        if rt_check is not None:
            await self.wait_for(rt_check, rt_what, f"{self.rt.web(self.ticket_id) if self.ticket_id else 'RT'}; "
                                f"{self.cmd('deliveries', 'show', str(ack_row.delivery_id))}")
        self.line(ack_row, "ACME", "GLOBEX")
        return ack_row

    async def acme_pulls(self, name: str) -> Any:
        """ACME's reference client polls its mailbox until *name* arrives; its receipt."""
        from gsem.errors import GsemError

        async def poll() -> Any:
            try:
                receipts = await self.pull.poll_once()
            except GsemError as e:
                raise DemoFailed(f"ACME could not read its mailbox: {e}") from None
            for receipt in receipts:
                if receipt.ack is None or not receipt.acknowledged or receipt.failure:
                    raise DemoFailed(f"ACME's CHS did not take delivery {receipt.delivery_id} "
                                     f"({receipt.transaction_name}): {receipt.failure or receipt.errors}")
                if receipt.transaction_name == name:
                    return receipt
                self.say(f"ACME also received {receipt.transaction_name} (delivery {receipt.delivery_id})")
            return None

        deadline = time.monotonic() + self.timeout
        while True:
            self.check_processes()
            found = await poll()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {self.timeout:g} s waiting for {name} in ACME's mailbox.\n"
                                 f"  Look at: {self.cmd('deliveries', 'list', '--partner', 'ACME')}")
            await self.sleep(0.5)

    async def globex_to_acme(self, name: str, because: str) -> Any:
        """The RT bridge sends *name* for an agent's action; ACME pulls it; one timeline line."""
        bridge_logs = f"{shown(self.dir / 'rt-bridge.log')}, {shown(self.dir / 'rt-bridge-stderr.log')}"
        ack_row = await self.wait_for(lambda: self.new_ack("GLOBEX", name),
                                      f"the RT bridge to send {name} ({because})",
                                      f"{bridge_logs}; {self.rt.web(self.ticket_id)}")
        if ack_row.result != "Yes":
            raise DemoFailed(f"the hub refused GLOBEX's {name}: {', '.join(ack_row.error_codes)}\n"
                             f"  Look at: {self.cmd('acks', '--partner', 'GLOBEX')}; {bridge_logs}")
        await self.acme_pulls(name)
        self.line(await self.delivered(ack_row), "GLOBEX", "ACME")
        return ack_row

    # -- the lifecycle --------------------------------------------------------------------------

    async def lifecycle(self) -> None:
        rt = self.rt
        assert rt is not None
        self.header()

        def ticket_made() -> int | None:
            tickets = rt.tickets(self.queue)
            return tickets[0] if tickets else None

        answer = await self.acme_sends(
            "Service_Request", severity=2, comment="Settlement file rejected at upload", contract_id="C-100",
            person=REQUESTER)
        ack_row = await self.delivered(self.ack(answer.ack_id, "ACME", "Service_Request"))
        self.ticket_id = await self.wait_for(ticket_made, f"a ticket in RT queue {self.queue}",
                                             self.cmd("deliveries", "show", str(ack_row.delivery_id)))
        self.line(ack_row, "ACME", "GLOBEX")
        self.say(f"the adapter made RT ticket #{self.ticket_id}; the bridge sees its creation and entitles it")

        await self.globex_to_acme("Entitlement", "the ticket's creation")

        def sis_state(state: str) -> Callable[[], bool]:
            return lambda: rt.ticket(self.ticket_id)["cf"]["SISState"] == state

        await self.acme_to_globex(
            "Problem_Submittal", sis_state("Problem_Submitted"), "SISState Problem_Submitted on the ticket",
            problem_title="Settlement file rejected with code E117",
            problem_statements=[("Symptom", "Upload of settlement file returns E117 since 08:50")],
            products=[("Globex", "Market Gateway", "4.2")])

        self.say(f"alice takes ticket #{self.ticket_id} in RT")
        rt.call("PUT", f"/ticket/{self.ticket_id}", {"Owner": RT_AGENT[0]}, user=RT_AGENT)
        await self.globex_to_acme("Accept_Problem", "alice took the ticket")

        ask = "[need-info] Please send the rejected file and the upload log."
        self.say(f"alice replies: {ask!r}")
        rt.call("POST", f"/ticket/{self.ticket_id}/correspond", {"Content": ask, "ContentType": "text/plain"},
                user=RT_AGENT)
        await self.globex_to_acme("Request_Problem_Information", "alice's reply with the [need-info] marker")

        def info_commented() -> bool:
            return any(s.endswith(": Provide_Problem_Information") for s in rt.hub_comments(self.ticket_id))

        await self.acme_to_globex(
            "Provide_Problem_Information", info_commented, "the adapter's comment on the ticket",
            comment="The rejected file's upload log is attached.",
            attachments=[("upload.log", "text/plain", UPLOAD_LOG)], role="requester")
        self.say("the adapter added it to the ticket as a comment, with upload.log attached")

        solution = "Gateway 4.2.1 deployed: a BOM is no longer read as a header"
        self.say(f"alice resolves ticket #{self.ticket_id} with the solution {solution!r}")
        cf_id = rt.ticket(self.ticket_id)["cf_ids"]["Solution"]
        rt.call("PUT", f"/ticket/{self.ticket_id}", {"CustomFields": {cf_id: solution}}, user=RT_AGENT)
        rt.call("PUT", f"/ticket/{self.ticket_id}", {"Status": "resolved"}, user=RT_AGENT)
        await self.globex_to_acme("Problem_Resolution", "alice resolved the ticket")

        def closed_in_rt() -> bool:
            ticket = rt.ticket(self.ticket_id)
            return ticket["cf"]["SISState"] == "Closed" and ticket["Status"] == "resolved"

        await self.acme_to_globex("Confirm_Close", closed_in_rt, "the ticket resolved with SISState Closed",
                                  comment="Settlement files are accepted again, thanks.")

        answer = await self.acme_sends("Query_Incident", role="requester")
        self.line(self.ack(answer.ack_id, "ACME", "Query_Incident"), "ACME", "hub", "-")
        if answer.current_state != "Closed":
            raise DemoFailed(f"ACME's Query_Incident says {answer.current_state}, not Closed\n"
                             f"  Look at: {self.cmd('incidents', 'show', '1')}")
        self.say("the hub answers the query itself (its acknowledgement embeds the incident): nothing to deliver")

    # -- the end --------------------------------------------------------------------------------

    def summary(self) -> None:
        from gsem.db import incidents_read

        detail = self.database.run_sync(incidents_read.list_incidents, requester_ref=self.rid)
        incident = detail[0].id if detail else 1
        rows = self.shown_rows
        delivered = [r for r in rows if r.delivery_id is not None]
        print()
        print(f"Done in {time.monotonic() - self.started:.0f} s. ACME's {self.rid} is incident {incident} on the "
              f"hub and ticket #{self.ticket_id} in GLOBEX's RT.")
        print(f"{len(rows)} transactions, {sum(r.result == 'Yes' for r in rows)} acknowledged Yes by the hub; "
              f"{sum(r.delivery_state == 'acknowledged' for r in delivered)} of the {len(delivered)} to deliver "
              "were delivered and acknowledged by their receiver.")
        print("The incident is Closed; the ticket is resolved.")
        print()
        print("Look at it:")
        for command, what in (
                (self.cmd("acks"), "every acknowledgement, its delivery and the receiver's answer"),
                (self.cmd("incidents", "show", str(incident)), "the incident and its whole history"),
                (self.cmd("deliveries", "list"), "the deliveries to ACME's mailbox and into RT"),
                (shlex.join([shown(GSEM), "chs", "incidents", "--state", shown(self.dir / "acme-chs.sqlite")]),
                 "ACME's own view (the reference client's store)")):
            print(f"  {command}\n      {what}")
        print(f"  {self.rt.web(self.ticket_id)}\n      the RT ticket (log in as alice / alice-password)")
        print(f"  logs: {shown(self.dir / 'hub.log')} (a JSON line per acknowledgement and delivery attempt), "
              f"{shown(self.dir / 'rt-bridge.log')}")

    def stop(self, process: subprocess.Popen[bytes] | None, name: str) -> None:
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            print(f"demo: {name} did not stop within 15 s of SIGTERM; killing it", file=sys.stderr)
            process.kill()
            process.wait(timeout=15)

    async def shutdown(self, succeeded: bool) -> None:
        if self.client is not None:
            await self.client.close()
        if self.store is not None:
            self.store.close()
        if self.database is not None:
            self.database.engine.dispose()
        if self.args.keep_running and succeeded:
            print()
            print(f"Still running (--keep-running): the hub at {self.hub_url} (pid {self.hub.pid}) and the RT "
                  f"bridge (pid {self.bridge.pid}).")
            print(f"Stop them with: kill {self.hub.pid} {self.bridge.pid}")
            return
        self.stop(self.bridge, "the RT bridge")
        self.stop(self.hub, "the hub")
        if self.hub is not None:
            print()
            print("The hub and the RT bridge are stopped; the data directory stays. Request Tracker "
                  "(.ci/rt-start's) keeps running.")


async def run(demo: Demo) -> int:
    succeeded = False
    try:
        await demo.setup()
        await demo.lifecycle()
        demo.summary()
        succeeded = True
        return 0
    except DemoFailed as e:
        print(f"\ndemo: {e}", file=sys.stderr, flush=True)
        if demo.hub is not None:
            print(f"demo: the data directory {shown(demo.dir)} stays for a look: "
                  f"{demo.cmd('acks')}; {demo.cmd('deliveries', 'list')}", file=sys.stderr)
        return 1
    finally:
        await demo.shutdown(succeeded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo.py",
        description="Run one SIS incident's whole lifecycle through a gsem hub: ACME (requester) is the "
        "reference CHS client, GLOBEX (provider) is Request Tracker with the request_tracker adapter and "
        "the RT bridge. Prints a timeline, one line per transaction, then the commands to inspect it.",
        epilog="'make demo' runs .ci/rt-start and then this script with --rt-url.")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="the new hub data directory (default demo/run-<UTC time>; must not be one yet)")
    parser.add_argument("--rt-url", metavar="URL", default=os.environ.get("GSEM_DEMO_RT_URL"),
                        help="a Request Tracker started by .ci/rt-start (default $GSEM_DEMO_RT_URL, else "
                        "run .ci/rt-start, which installs RT the first time)")
    parser.add_argument("--port", type=int, default=0, help="the hub's port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for each step before giving up (default 30)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the hub and the RT bridge running at the end (their pids are printed)")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    demo = Demo(args, reactor)
    status: list[int | None] = [None]

    def done(code: int) -> None:
        status[0] = code

    def start() -> None:
        d = ensureDeferred(run(demo))
        d.addCallback(done)
        d.addErrback(lambda failure: failure.printTraceback(file=sys.stderr))
        d.addBoth(lambda _: reactor.stop() if reactor.running else None)

    def interrupted() -> None:
        # Ctrl-C (or SIGTERM) stops the reactor in the middle of a step: stop what we started.
        if status[0] is None:
            print("\ndemo: interrupted; stopping the hub and the RT bridge (the data directory stays)",
                  file=sys.stderr)
        if not (status[0] == 0 and args.keep_running):
            demo.stop(demo.bridge, "the RT bridge")
            demo.stop(demo.hub, "the hub")

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("after", "shutdown", interrupted)
    reactor.run()
    return 130 if status[0] is None else status[0]


if __name__ == "__main__":
    sys.exit(main())
