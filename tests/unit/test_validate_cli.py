"""``gsem validate``: what a partner's developer sees when checking a document offline."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from documents import run_gsem
from lxml import etree

from gsem.schema import ack_schema

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"


def _gsem() -> list[str]:
    script = Path(sys.executable).with_name("gsem")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gsem.cli"]


def _ack(out: bytes) -> etree._Element:
    ack = etree.fromstring(out)
    assert ack.tag == "ACKNOWLEDGEMENT"
    assert ack_schema().validate(ack), ack_schema().error_log
    return ack


def test_accepted_document_exits_0_with_yes(tmp_path) -> None:
    """An acceptable document: exit 0, Acknowledge Yes, the new state, the digest of the bytes."""
    data = (FIXTURES / "01-service-request.xml").read_bytes()
    path = tmp_path / "request.xml"
    path.write_bytes(data)
    status, out, _ = run_gsem("validate", str(path), "--state", "none")
    ack = _ack(out)
    assert status == 0
    assert ack.findtext("Acknowledge") == "Yes"
    assert ack.findtext("TransactionName") == "Service_Request"
    assert ack.findtext("RequesterID") == "ACME-INC-20931"
    assert ack.findtext("CurrentState") == "Beginning_State"
    assert ack.findtext("Digest") == hashlib.sha256(data).hexdigest()
    assert ack.find("ERROR") is None


def test_rejected_document_exits_1_with_no_and_errors() -> None:
    """A rejected document: exit 1, Acknowledge No, every ERROR with its code and path."""
    data = (FIXTURES / "01-service-request.xml").read_bytes()
    data = data.replace(b"<ContractID>C-100;CN=C-100</ContractID>", b"")
    data = data.replace(b"<RequesterSeverity>2<", b"<RequesterSeverity>7<")
    status, out, _ = run_gsem("validate", "-", stdin=data)
    ack = _ack(out)
    assert status == 1
    assert ack.findtext("Acknowledge") == "No"
    assert ack.findtext("CurrentState") == ""
    assert sorted((e.get("code"), e.get("path")) for e in ack.findall("ERROR")) == [
        ("missing-mandatory", "/SERVICE_INCIDENT/AGREEMENT/ContractID"),
        ("schema-violation", "/SERVICE_INCIDENT/RequesterSeverity"),
    ]


def test_warning_is_reported_and_still_accepted() -> None:
    """An unknown element gives a WARNING ignored-element and exit 0; with --strict an ERROR and exit 1."""
    data = (FIXTURES / "09-query-incident.xml").read_bytes()
    data = data.replace(b"</SERVICE_INCIDENT>", b"<Foo>bar</Foo></SERVICE_INCIDENT>")
    status, out, _ = run_gsem("validate", "-", stdin=data)
    ack = _ack(out)
    assert status == 0
    assert [(w.get("code"), w.get("path")) for w in ack.findall("WARNING")] == [
        ("ignored-element", "/SERVICE_INCIDENT/Foo")
    ]
    status, out, _ = run_gsem("validate", "-", "--strict", stdin=data)
    assert status == 1
    assert [(e.get("code"), e.get("path")) for e in _ack(out).findall("ERROR")] == [
        ("schema-violation", "/SERVICE_INCIDENT/Foo")
    ]


def test_wrong_role_is_not_authorized() -> None:
    """`--as requester` on an Entitlement answers not-authorized, exit 1."""
    data = (FIXTURES / "02-entitlement.xml").read_bytes()
    status, out, _ = run_gsem(
        "validate", "-", "--as", "requester", "--state", "Beginning_State", stdin=data
    )
    assert status == 1
    assert [(e.get("code"), e.get("path")) for e in _ack(out).findall("ERROR")] == [
        ("not-authorized", "/SERVICE_INCIDENT/TransactionName")
    ]


@pytest.mark.parametrize(
    ("fixture", "state", "code"),
    [
        ("03-problem-submittal.xml", "none", "unknown-incident"),
        ("03-problem-submittal.xml", "Closed", "not-allowed-in-state"),
        ("01-service-request.xml", "Beginning_State", "duplicate-incident"),
    ],
)
def test_state_is_checked_when_given(fixture, state, code) -> None:
    """--state checks the state machine: the SPEC's code for each refusal, exit 1."""
    status, out, _ = run_gsem(
        "validate", "-", "--state", state, stdin=(FIXTURES / fixture).read_bytes()
    )
    assert status == 1
    assert [e.get("code") for e in _ack(out).findall("ERROR")] == [code]


def test_state_not_checked_without_state_says_so() -> None:
    """Without --state the state is not checked, and stderr says so; CurrentState stays empty."""
    status, out, err = run_gsem(
        "validate", "-", stdin=(FIXTURES / "08-confirm-close.xml").read_bytes()
    )
    assert status == 0
    assert "state not checked" in err
    assert _ack(out).findtext("CurrentState") == ""


def test_lifecycle_through_the_cli() -> None:
    """The nine examples pass `gsem validate` in order, each state feeding the next, ending Closed."""
    roles = ["requester", "provider", "requester", "provider", "provider", "requester", "provider"]
    roles += ["requester", "requester"]
    state = "none"
    for path, role in zip(sorted(FIXTURES.glob("*.xml")), roles, strict=True):
        status, out, _ = run_gsem(
            "validate", "-", "--as", role, "--state", state, stdin=path.read_bytes()
        )
        ack = _ack(out)
        assert (path.name, status, ack.findtext("Acknowledge")) == (path.name, 0, "Yes")
        state = ack.findtext("CurrentState")
    assert state == "Closed"


def test_help_works() -> None:
    """`gsem validate --help` explains the command and its options, exit 0."""
    result = subprocess.run(
        _gsem() + ["validate", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    for option in ("--as", "--state", "--strict", "ACKNOWLEDGEMENT"):
        assert option in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file_is_a_clear_message(tmp_path, kind) -> None:
    """A file that cannot be read: one clear line on stderr naming it, exit 2, no traceback, no output."""
    path = tmp_path / "nope.xml" if kind == "missing" else tmp_path
    result = subprocess.run(
        _gsem() + ["validate", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot read {path}" in result.stderr
    assert result.stdout == ""


def test_bad_option_value_is_a_usage_error() -> None:
    """An unknown --state is refused by the parser with exit 2 and the valid choices."""
    status, _, err = run_gsem("validate", "-", "--state", "Open")
    assert status == 2
    assert "Open_Provider" in err


def test_stdin_is_read_with_dash() -> None:
    """`gsem validate -` reads the document from standard input in a real process."""
    data = (FIXTURES / "09-query-incident.xml").read_bytes()
    result = subprocess.run(
        _gsem() + ["validate", "-", "--state", "Closed"],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert _ack(result.stdout).findtext("CurrentState") == "Closed"
