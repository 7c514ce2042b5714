"""Hostile and broken bodies get their specific code, never a traceback (SPEC §5, STYLE "XML").

Each body goes through ``validate_document`` and through ``gsem validate -`` in a
subprocess, the way a partner's tooling would call it.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from documents import run_gsem
from lxml import etree

from gsem.validation import validate_document
from gsem.xmlsafe import ParseLimits

QUERY = b"<TransactionName>Query_Incident</TransactionName><RequesterID>ACME-1</RequesterID>"


def _incident(inner: bytes = b"", prolog: bytes = b"") -> bytes:
    return prolog + b"<SERVICE_INCIDENT>" + QUERY + inner + b"</SERVICE_INCIDENT>"


def _billion_laughs() -> bytes:
    entities = b"".join(
        b'<!ENTITY lol%d "%s">' % (n, (b"&lol%d;" % (n - 1)) * 10) for n in range(1, 10)
    )
    return _incident(
        b"<Comment>&lol9;</Comment>",
        b'<?xml version="1.0"?>\n<!DOCTYPE SERVICE_INCIDENT [<!ENTITY lol0 "lol">'
        + entities
        + b"]>\n",
    )


def _utf16(text: str, codec: str) -> bytes:
    return text.encode(codec)


_UTF16_TEXT = '<?xml version="1.0" encoding="UTF-16"?>' + _incident().decode()
_MIB = ParseLimits().max_bytes

HOSTILE = [
    (
        "xxe",
        _incident(
            b"<Comment>&xxe;</Comment>",
            b'<?xml version="1.0"?>\n<!DOCTYPE SERVICE_INCIDENT [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n',
        ),
        "malformed-xml",
    ),
    (
        "xxe-parameter-entity",
        _incident(
            b"", b'<!DOCTYPE SERVICE_INCIDENT [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
        ),
        "malformed-xml",
    ),
    ("billion-laughs", _billion_laughs(), "malformed-xml"),
    (
        "small-laughs",
        _incident(b"<Comment>&a;</Comment>", b'<!DOCTYPE SERVICE_INCIDENT [<!ENTITY a "aaaa">]>'),
        "malformed-xml",
    ),
    ("doctype", _incident(b"", b"<!DOCTYPE SERVICE_INCIDENT>"), "malformed-xml"),
    (
        "iso-8859-1",
        _incident(b"<Comment>caf\xe9</Comment>", b'<?xml version="1.0" encoding="ISO-8859-1"?>'),
        "malformed-xml",
    ),
    (
        "iso-8859-1-ascii-only",
        _incident(b"", b"<?xml version='1.0' encoding='iso-8859-1'?>"),
        "malformed-xml",
    ),
    ("utf-16-bom", _utf16(_UTF16_TEXT, "utf-16"), "malformed-xml"),
    ("utf-16-le-no-bom", _utf16(_UTF16_TEXT, "utf-16-le"), "malformed-xml"),
    ("utf-16-be-no-bom", _utf16(_UTF16_TEXT, "utf-16-be"), "malformed-xml"),
    ("utf-32", _utf16(_UTF16_TEXT.replace("UTF-16", "UTF-32"), "utf-32"), "malformed-xml"),
    ("latin-1-bytes-undeclared", _incident(b"<Comment>caf\xe9</Comment>"), "malformed-xml"),
    ("nesting-100", _incident(b"<Foo>" * 100 + b"</Foo>" * 100), "too-large"),
    ("nesting-300", _incident(b"<Foo>" * 300 + b"</Foo>" * 300), "too-large"),
    ("nesting-20000", _incident(b"<Foo>" * 20000 + b"</Foo>" * 20000), "too-large"),
    ("elements-50000", _incident(b"<Foo/>" * 50000), "too-large"),
    ("text-5MB", _incident(b"<Comment>" + b"x" * (5 * 1024 * 1024) + b"</Comment>"), "too-large"),
    ("body-1MiB+1", _incident(b" " * (_MIB + 1 - len(_incident()))), "too-large"),
    ("empty", b"", "malformed-xml"),
    ("whitespace", b" \r\n\t ", "malformed-xml"),
    ("binary", random.Random(20261122).randbytes(4096), "malformed-xml"),
    ("nul-byte", _incident(b"<Comment>a\x00b</Comment>"), "malformed-xml"),
    ("two-roots", _incident() + _incident(), "malformed-xml"),
    ("truncated", _incident()[:-5], "malformed-xml"),
    ("not-xml", b'{"TransactionName": "Query_Incident"}', "malformed-xml"),
]


def _ids() -> list[str]:
    return [name for name, _, _ in HOSTILE]


@pytest.mark.parametrize(("name", "body", "code"), HOSTILE, ids=_ids())
def test_hostile_body_gets_its_code(name, body, code) -> None:
    """validate_document answers a hostile body with exactly one error of the expected code."""
    inspection, spec = validate_document(body, check_states=False)
    assert [p.code.code for p in inspection.errors] == [code]
    assert spec is None


def test_body_of_exactly_the_limit_is_not_too_large() -> None:
    """A valid body of exactly 1 MiB (padded with whitespace) is accepted: the cap is inclusive."""
    body = _incident(b" " * (_MIB - len(_incident())))
    assert len(body) == _MIB
    inspection, _ = validate_document(body, check_states=False)
    assert inspection.errors == []


def test_external_entity_is_never_read() -> None:
    """The XXE body's answer carries nothing of /etc/passwd."""
    body = dict((n, b) for n, b, _ in HOSTILE)["xxe"]
    inspection, _ = validate_document(body, check_states=False)
    assert all("root:" not in p.message for p in inspection.errors + inspection.warnings)


def test_xinclude_is_not_processed() -> None:
    """An XInclude element is an unknown element (ignored), never an inclusion of the named file."""
    body = (
        b'<SERVICE_INCIDENT xmlns:xi="http://www.w3.org/2001/XInclude">'
        + QUERY
        + b'<xi:include href="file:///etc/passwd" parse="text"/></SERVICE_INCIDENT>'
    )
    inspection, _ = validate_document(body, check_states=False)
    assert inspection.errors == []
    assert [p.code.code for p in inspection.warnings] == ["ignored-element"]
    assert b"root:" not in etree.tostring(inspection.root)


def _assert_refused(status: int, out: bytes, err: str, body: bytes, code: str) -> None:
    assert "Traceback" not in err, err
    assert status == 1
    ack = etree.fromstring(out)
    assert ack.tag == "ACKNOWLEDGEMENT"
    assert ack.findtext("Acknowledge") == "No"
    assert [e.get("code") for e in ack.findall("ERROR")] == [code]
    assert ack.findtext("Digest") == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(("name", "body", "code"), HOSTILE, ids=_ids())
def test_hostile_body_through_gsem_validate(name, body, code) -> None:
    """`gsem validate -` answers a hostile body with an ACKNOWLEDGEMENT carrying the code, exit 1."""
    status, out, err = run_gsem("validate", "-", stdin=body)
    _assert_refused(status, out, err, body, code)


# The bodies the issue names, also sent to a real `gsem` process: a second at least each,
# nearly all of it start-up, so not every variant above.
IN_A_PROCESS = [
    "xxe",
    "billion-laughs",
    "doctype",
    "iso-8859-1",
    "utf-16-bom",
    "utf-16-le-no-bom",
    "nesting-100",
    "nesting-300",
    "elements-50000",
    "text-5MB",
    "body-1MiB+1",
    "empty",
    "binary",
    "two-roots",
]


def _gsem() -> list[str]:
    script = Path(sys.executable).with_name("gsem")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gsem.cli"]


def _run_process(body: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        _gsem() + ["validate", "-"], input=body, capture_output=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def process_results() -> dict[str, subprocess.CompletedProcess[bytes]]:
    """`gsem validate -` run once per body of IN_A_PROCESS, a process per core at a time."""
    bodies = {name: body for name, body, _ in HOSTILE}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = pool.map(_run_process, [bodies[name] for name in IN_A_PROCESS])
        return dict(zip(IN_A_PROCESS, results, strict=True))


@pytest.mark.parametrize(
    ("name", "body", "code"),
    [pytest.param(*case, id=case[0]) for case in HOSTILE if case[0] in IN_A_PROCESS],
)
def test_hostile_body_in_a_gsem_process(process_results, name, body, code) -> None:
    """A `gsem validate -` process answers a hostile body with the code, exit 1, and no traceback on stderr."""
    result = process_results[name]
    _assert_refused(
        result.returncode, result.stdout, result.stderr.decode(errors="replace"), body, code
    )
