"""Two hub nodes on one PostgreSQL database deliver every message exactly once (SPEC §6, §7).

Two ``gsem serve`` processes share a database (and the development PKI, as nodes behind
one address would); partners post a few hundred transactions about a hundred incidents,
alternating between the nodes.  Both nodes deliver by push to the partners' servers.
Every message must arrive exactly once (no raw duplicate at all: no node may deliver a
delivery another node holds), and per incident first in, first out, across nodes and
across the two receivers.

A node that dies for good while it holds a delivery's lease (``kill -9``, never
restarted, so it never gives its leases back) leaves the delivery to the other node
once the lease has expired, and not before.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub import GSEM, HubError, RunningHub, ack_text
from partner_server import (
    PartnerServer,
    assert_received_in_order,
    attempt_lines,
    delivery_rows,
    expected_for,
    lifecycle,
    set_delivery,
    set_delivery_config,
    wait_until,
)

from gsem.config import default_node_id

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

INCIDENTS = 100
STEPS = 3  # Service_Request (to GLOBEX), Entitlement (to ACME), Problem_Submittal (to GLOBEX)


def _second_node(first: RunningHub, directory: Path, database_url: str) -> tuple[RunningHub, str]:
    """A second data directory on the same database; returns it and what it took to make it."""
    done = subprocess.run([GSEM, "init", str(directory), "--demo", "--database-url", database_url, "--port", "0"],
                          capture_output=True, timeout=60)
    said = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
    if done.returncode == 0:
        note = "gsem init --demo on the shared database succeeded; its certs were replaced by the first node's"
    else:
        note = (f"gsem init --demo on the shared database failed (exit {done.returncode}: "
                f"{said.splitlines()[-1] if said else ''}); the first node's gsem.toml and certs were copied")
    # Nodes behind one address share the CA, the hub certificate and the partners' certificates.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    shutil.copy2(first.data_dir / "gsem.toml", directory / "gsem.toml")
    shutil.copytree(first.certs_dir, directory / "certs")
    return RunningHub(directory), note


@pytest.fixture
def nodes(tmp_path: Path, pg_database_url: str,
          record_property: pytest.RecordProperty) -> Iterator[tuple[RunningHub, RunningHub]]:
    """Two hub data directories (not started) on one fresh PostgreSQL database."""
    first = RunningHub.create(tmp_path / "node-a", database_url=pg_database_url, start=False)
    second, note = _second_node(first, tmp_path / "node-b", pg_database_url)
    record_property("second_node", note)
    print(note)
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()
    first.assert_no_traceback()
    second.assert_no_traceback()


def _post_round(hubs: tuple[RunningHub, RunningHub], work: list[tuple[int, str, bytes]]) -> None:
    """Post (node, sender, document) items, each node's share on its own keep-alive connections."""
    failures: list[str] = []

    def post(node: int) -> None:
        clients = {p: hubs[node].client(p) for p in ("ACME", "GLOBEX")}
        try:
            for n, sender, document in work:
                if n != node:
                    continue
                status, ack = clients[sender].post(document)
                if (status, ack_text(ack, "Acknowledge")) != (200, "Yes"):
                    failures.append(f"node {node}: HTTP {status} {ack_text(ack, 'RequesterID')}")
        except Exception as e:  # reported below, in the test's thread
            failures.append(f"node {node}: {type(e).__name__}: {e}")
        finally:
            for client in clients.values():
                client.close()

    threads = [threading.Thread(target=post, args=(node,)) for node in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if failures:
        raise HubError("posting failed: " + "; ".join(failures[:5]))


def test_two_nodes_on_one_database_deliver_every_message_exactly_once_in_order(
        nodes: tuple[RunningHub, RunningHub], tmp_path: Path) -> None:
    """Two nodes sharing PostgreSQL deliver 300 transactions about 100 incidents once each, none lost, none twice, FIFO per incident."""
    first, second = nodes
    globex = PartnerServer.start(tmp_path / "globex-chs", hub_ca=first.ca_cert)
    acme = PartnerServer.start(tmp_path / "acme-chs", hub_ca=first.ca_cert)
    try:
        for hub in nodes:
            set_delivery_config(hub, poll_interval=0.1)
        for partner, server in (("GLOBEX", globex), ("ACME", acme)):
            set_delivery(first, partner, "--mode", "push", "--url", server.url, "--ca", server.ca_cert,
                         "--timeout", 10, "--retry-base", 0.2, "--retry-cap", 1)
        first.start()
        second.start()

        incidents = {f"MN-{n:03d}": lifecycle(f"MN-{n:03d}", f"GX-MN-{n:03d}", steps=STEPS)
                     for n in range(1, INCIDENTS + 1)}
        for number in range(STEPS):  # a step of every incident, then the next step
            _post_round(nodes, [((i + number) % 2, steps[number].sender, steps[number].document)
                                for i, steps in enumerate(incidents.values())])
        all_steps = [s for steps in incidents.values() for s in steps]
        to_globex, to_acme = expected_for("GLOBEX", all_steps), expected_for("ACME", all_steps)

        globex.wait_for_messages(len(to_globex), timeout=120)
        acme.wait_for_messages(len(to_acme), timeout=60)
        wait_until(lambda: all(d["state"] == "acknowledged" for d in delivery_rows(first)), timeout=30,
                   what="every delivery acknowledged")

        # Exactly once: no raw duplicate at all, every delivery attempted once.
        for server, wanted in ((globex, to_globex), (acme, to_acme)):
            raw = server.receptions()
            assert len(raw) == len(wanted), \
                f"{len(raw)} receptions for {len(wanted)} messages: {[r.delivery_id for r in raw]}"
            assert_received_in_order(server.messages(), wanted)
        rows = delivery_rows(first)
        assert len(rows) == len(to_globex) + len(to_acme)
        assert {d["attempts"] for d in rows} == {1}
        attempts = first.query("SELECT delivery_id, node FROM delivery_attempts")
        assert len(attempts) == len(rows)
        nodes_seen = {a["node"] for a in attempts}
        assert len(nodes_seen) == 2, f"only {nodes_seen} delivered"

        # FIFO per incident across nodes and receivers: ACME had acknowledged the
        # Entitlement before GLOBEX got the Problem_Submittal that followed it.
        at = {(r.requester_id, r.transaction): r.at for s in (globex, acme) for r in s.messages()}
        for rid in incidents:
            assert at[(rid, "Service_Request")] < at[(rid, "Entitlement")] < at[(rid, "Problem_Submittal")], rid

        # One JSON line per attempt, from whichever node made it.
        lines = [line for hub in nodes for line in attempt_lines(hub)]
        assert sorted((x["delivery_id"], x["node"]) for x in lines) == \
            sorted((a["delivery_id"], a["node"]) for a in attempts)
    finally:
        globex.stop()
        acme.stop()
    globex.assert_no_traceback()
    acme.assert_no_traceback()


LEASE_SECONDS = 5.0  # [delivery] lease_seconds of both nodes in the takeover test


def test_a_node_killed_holding_a_lease_leaves_the_delivery_to_the_other_once_the_lease_expires(
        nodes: tuple[RunningHub, RunningHub], tmp_path: Path) -> None:
    """kill -9 of the node pushing a document: the other node delivers it after the lease ends, once as a business message."""
    first, second = nodes
    # GLOBEX keeps each document as it arrives, then takes its time to answer: the node
    # that pushed it is still waiting, holding the delivery's lease, when it is killed.
    globex = PartnerServer.start(tmp_path / "globex-chs", hub_ca=first.ca_cert, delay=60)
    try:
        for hub in nodes:
            set_delivery_config(hub, poll_interval=0.1, lease_seconds=LEASE_SECONDS)
        set_delivery(first, "GLOBEX", "--mode", "push", "--url", globex.url, "--ca", globex.ca_cert,
                     "--timeout", 120, "--retry-base", 0.2, "--retry-cap", 1)
        first.start()
        second.start()
        by_node_id = {default_node_id(hub.data_dir): hub for hub in nodes}
        assert len(by_node_id) == 2

        request = lifecycle("LEASE-1", "GX-LEASE-1", steps=1)[0]
        status, ack = first.post(request.sender, request.document)
        assert (status, ack_text(ack, "Acknowledge")) == (200, "Yes")
        pushed = globex.wait_for(lambda got: len(got) >= 1, timeout=30, what="the first push")[0]
        [row] = first.query("SELECT id, lease_owner, lease_until FROM deliveries")
        holder = by_node_id[row["lease_owner"]]
        survivor = second if holder is first else first
        lease_until = row["lease_until"].replace(tzinfo=dt.UTC).timestamp()
        assert lease_until - pushed.at <= LEASE_SECONDS + 0.5, (row, pushed.at)

        globex.configure(delay=0)
        holder.kill(signal.SIGKILL)
        killed_at = time.time()
        receptions = globex.wait_for(lambda got: len(got) >= 2, timeout=LEASE_SECONDS + 30,
                                     what="the push from the node that is left")
        wait_until(lambda: first.query("SELECT state FROM deliveries")[0]["state"] == "acknowledged",
                   timeout=30, what="the delivery acknowledged")

        again = receptions[1]
        # Not before the dead node's lease ended (the timestamps are both this host's clock,
        # the database's to the microsecond), though the survivor polled every 0.1 s.
        assert again.at >= lease_until - 0.05, (again.at, lease_until, killed_at)
        assert again.delivery_id == pushed.delivery_id == str(row["id"])
        assert [(r.outcome, r.transaction) for r in receptions] == [
            ("accepted", "Service_Request"), ("duplicate", "Service_Request")]
        assert len(globex.messages()) == 1
        attempts = first.query("SELECT node, outcome FROM delivery_attempts WHERE delivery_id = :id", id=row["id"])
        assert [(a["node"], a["outcome"]) for a in attempts] == [(default_node_id(survivor.data_dir), "acknowledged")]
    finally:
        globex.stop()
    globex.assert_no_traceback()
