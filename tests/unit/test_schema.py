"""The XSDs themselves, checked with xmlschema (a second, independent XSD implementation).

lxml/libxml2 validates on the hot path; xmlschema here checks that the schemas are valid
XSD 1.0, that they declare every element the matrices name with the cardinality gsem
enforces, and that what ``gsem validate`` answers is a valid ACKNOWLEDGEMENT.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import xmlschema
from documents import build, remove, run_gsem, set_text, to_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gsem.contract import Role
from gsem.schema import SCHEMA_DIR, ack_schema, catalogue
from transactions import registry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"
REPEATABLE = {"ACTIVITY", "SOLUTION", "ATTACHMENT"}


def _load(name: str) -> xmlschema.XMLSchema10:
    # "sandbox": only files under schemas/ (acknowledgement.xsd includes service_incident.xsd).
    return xmlschema.XMLSchema10(str(SCHEMA_DIR / name), allow="sandbox", defuse="always")


@pytest.fixture(scope="module")
def incident_xsd() -> xmlschema.XMLSchema10:
    """service_incident.xsd as xmlschema reads it."""
    return _load("service_incident.xsd")


@pytest.fixture(scope="module")
def ack_xsd() -> xmlschema.XMLSchema10:
    """acknowledgement.xsd as xmlschema reads it."""
    return _load("acknowledgement.xsd")


def test_schemas_are_valid_xsd(incident_xsd, ack_xsd) -> None:
    """Both XSDs are valid XSD 1.0 and declare the documented roots."""
    assert incident_xsd.validity == "valid" and ack_xsd.validity == "valid"
    assert set(incident_xsd.elements) == {"SERVICE_INCIDENT"}
    assert set(ack_xsd.elements) == {"ACKNOWLEDGEMENT", "SERVICE_INCIDENT"}


def _matrix_paths() -> list[str]:
    return sorted({path for spec in registry.all_specs() for path in spec.fields})


def _walk(root: xmlschema.validators.XsdElement, path: str) -> list:
    """The particles along *path* below *root*, looked up child by child."""
    found, element = [], root
    for name in path.split("/"):
        children = {child.name: child for child in element.type.content.iter_elements()}
        assert name in children, f"{path}: {element.name} declares no {name}"
        element = children[name]
        found.append(element)
    return found


@pytest.mark.parametrize("path", _matrix_paths())
def test_matrix_element_is_declared_with_expected_cardinality(incident_xsd, path) -> None:
    """Every matrix path exists under SERVICE_INCIDENT; only ACTIVITY/SOLUTION/ATTACHMENT repeat."""
    leaf = _walk(incident_xsd.elements["SERVICE_INCIDENT"], path)[-1]
    expected = None if path.split("/")[0] in REPEATABLE else 1
    assert leaf.max_occurs == expected
    # No matrix element is required by the schema: its absence is the matrix's missing-mandatory.
    assert leaf.min_occurs == 0
    decl = catalogue().child(path)
    assert decl is not None
    assert (decl.min_occurs, decl.max_occurs) == (leaf.min_occurs, leaf.max_occurs)


def _all_declared_paths(element, prefix: str = "") -> list[tuple[str, object]]:
    if not element.type.is_complex():
        return []
    out = []
    for child in element.type.content.iter_elements():
        path = f"{prefix}{child.name}"
        out.append((path, child))
        if path.count("/") < 6:  # ATTACHMENT inside PROBLEM is as deep as it gets
            out += _all_declared_paths(child, path + "/")
    return out


def test_catalogue_agrees_with_xmlschema_everywhere(incident_xsd) -> None:
    """gsem's own reading of the XSD gives every element's min/maxOccurs exactly as xmlschema does."""
    declared = _all_declared_paths(incident_xsd.elements["SERVICE_INCIDENT"])
    assert len(declared) > 50
    for path, particle in declared:
        decl = catalogue().child(path)
        assert decl is not None, path
        assert (decl.min_occurs, decl.max_occurs) == (particle.min_occurs, particle.max_occurs), (
            path
        )
        assert (decl.type_name is not None) == particle.type.is_complex(), path


def test_lifecycle_examples_are_schema_valid(incident_xsd) -> None:
    """xmlschema, like libxml2, finds the nine examples valid."""
    for path in sorted(FIXTURES.glob("*.xml")):
        incident_xsd.validate(str(path))


def _acknowledged_documents() -> list:
    service_request = registry.find("Service_Request", Role.REQUESTER)
    bad = build(service_request)
    set_text(bad, "RequesterSeverity", "7")
    remove(bad, "AGREEMENT/ContractID")
    bad.append(etree.fromstring("<Foo>bar</Foo>"))
    # The examples in order, each sent by its party to the incident's state at the time.
    before = [
        ("requester", "none"),
        ("provider", "Beginning_State"),
        ("requester", "Entitled"),
        ("provider", "Problem_Submitted"),
        ("provider", "Open_Provider"),
        ("requester", "Open_Requester"),
        ("provider", "Open_Provider"),
        ("requester", "Closed_Pending_Confirmation"),
        ("requester", "Closed"),
    ]
    cases = [
        pytest.param(path.read_bytes(), ("--as", role, "--state", state), id=path.name)
        for path, (role, state) in zip(sorted(FIXTURES.glob("*.xml")), before, strict=True)
    ]
    return [
        *cases,
        pytest.param(to_bytes(build(service_request)), ("--state", "none"), id="accepted"),
        pytest.param(to_bytes(bad), (), id="three-faults-and-a-warning"),
        pytest.param(b"", (), id="empty"),
        pytest.param(b"<!DOCTYPE x><x/>", (), id="doctype"),
        pytest.param(b"\xff\xfe<\x00", (), id="utf-16"),
        pytest.param(b"<SERVICE_INCIDENT/>", (), id="no-transaction"),
        pytest.param(b"<NOT_SIS/>", (), id="wrong-root"),
        pytest.param(
            (FIXTURES / "02-entitlement.xml").read_bytes(),
            ("--as", "requester"),
            id="not-authorized",
        ),
    ]


@pytest.mark.parametrize(("data", "args"), _acknowledged_documents())
def test_cli_acknowledgement_is_schema_valid(ack_xsd, data, args) -> None:
    """Every ACKNOWLEDGEMENT `gsem validate` prints is valid against acknowledgement.xsd."""
    _, out, _ = run_gsem("validate", "-", *args, stdin=data)
    # Parsed like anything read from outside: no resource access (STYLE.md "XML").
    ack_xsd.validate(xmlschema.XMLResource(out, allow="none", defuse="always"))
    assert ack_schema().validate(etree.fromstring(out))


def _with_transaction_name(name: str) -> bytes:
    escaped = name.replace("&", "&amp;").replace("<", "&lt;")
    return f"<SERVICE_INCIDENT><TransactionName>{escaped}</TransactionName></SERVICE_INCIDENT>".encode()


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(max_size=200)
    | st.text(max_size=200).map(str.encode)
    # unknown-transaction echoes the name back: any text must still make a valid acknowledgement
    | st.text(max_size=80).map(_with_transaction_name)
)
def test_acknowledgement_of_any_body_is_schema_valid(body: bytes) -> None:
    """Whatever bytes arrive, `gsem validate` answers with a valid ACKNOWLEDGEMENT."""
    status, out, _ = run_gsem("validate", "-", stdin=body)
    assert status in (0, 1)
    assert ack_schema().validate(etree.fromstring(out)), out
