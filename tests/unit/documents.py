"""Documents for the contract tests: a valid SERVICE_INCIDENT for any declaration, and ways to break it.

A document is built from a :class:`~gsem.contract.TransactionSpec`'s own ``fields``: for each
matrix path, :data:`SNIPPETS` holds known-good XML for the element at that path (several
alternatives, the first being the default).  A declaration naming a path without a snippet
makes :func:`build` fail loudly, so a new matrix row cannot go untested.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from unittest import mock

from lxml import etree

from gsem import cli
from gsem.contract import NO_INCIDENT, Mark, Role, State, TransactionSpec
from gsem.validation import Inspection, validate_document

ROOT = "SERVICE_INCIDENT"

_CONTACTS = (
    # One reachable person: the smallest contact rule 1 accepts.
    "<PERSON><LastName>Natarajan</LastName>"
    "<LOCATION><LocationType>Primary_Voice</LocationType><LocationID>+44 20 7946 0321</LocationID></LOCATION>"
    "</PERSON>",
    # Everything a contact may carry; the voice line is the person's second LOCATION.
    "<PERSON><FirstName>Priya</FirstName><LastName>Natarajan</LastName><Salutation>Ms</Salutation>"
    "<Title>Service manager</Title>"
    "<LOCATION><LocationType>Email</LocationType><LocationID>p.natarajan@acme.example</LocationID></LOCATION>"
    "<LOCATION><LocationType>Alternate_Voice</LocationType><LocationID>+44 7700 900123</LocationID></LOCATION>"
    "</PERSON>"
    "<ORGANIZATION><Name>ACME Water Retail</Name><Business>Utilities</Business></ORGANIZATION>"
    "<ADDRESS><AddressType>Primary</AddressType><Address1>1 Quay St</Address1><Address2>Floor 3</Address2>"
    "<Address3>Wing B</Address3><Address4>Desk 12</Address4><City>Bristol</City><Region>Avon</Region>"
    "<PostalCode>BS1 4DJ</PostalCode><Country>GB</Country></ADDRESS>",
    # The first person cannot be phoned, the second one can.
    "<PERSON><LastName>Nobody</LastName>"
    "<LOCATION><LocationType>Fax</LocationType><LocationID>+1 555 0199</LocationID></LOCATION></PERSON>"
    "<PERSON><LastName>Okafor</LastName>"
    "<LOCATION><LocationType>Primary_Voice</LocationType><LocationID>+1 555 0100</LocationID></LOCATION></PERSON>"
    "<ADDRESS><AddressType>Service</AddressType><City>Lagos</City></ADDRESS>",
)

_ATTACHMENTS = (
    "<AttachmentName>upload.log</AttachmentName><Format>text/plain</Format>"
    "<AttachmentObject>MjAyNi0xMS0yMSBFMTE3Cg==</AttachmentObject>",
    "<AttachmentName>trace.pcap</AttachmentName><Format>application/vnd.tcpdump.pcap</Format>"
    "<AttachmentType>Trace</AttachmentType>"
    "<AttachmentReference>https://files.acme.example/inc/20931/trace.pcap</AttachmentReference>",
)

_DATES = (
    "2026-11-22 08:02",
    "2026-11-22 08:02:11",
    "2026-11-22 08:02:11,2026-11-22 09:02:11",
    "2024-02-29 23:59:59,2024-03-01 00:59",
    "1999-12-31 00:00",
)

#: Known-good XML for the element at each matrix path, alternatives first-is-default.
SNIPPETS: dict[str, tuple[str, ...]] = {
    "RequesterID": (
        "<RequesterID>ACME-INC-20931</RequesterID>",
        "<RequesterID>r</RequesterID>",
        "<RequesterID>" + "R" * 64 + "</RequesterID>",
        "<RequesterID>Störung №7 &amp; co</RequesterID>",
    ),
    "ProviderID": (
        "<ProviderID>GX-55012</ProviderID>",
        "<ProviderID>p</ProviderID>",
        "<ProviderID>" + "P" * 64 + "</ProviderID>",
    ),
    "RequesterSeverity": tuple(f"<RequesterSeverity>{n}</RequesterSeverity>" for n in range(1, 6)),
    "ProviderPriority": tuple(f"<ProviderPriority>{n}</ProviderPriority>" for n in range(1, 6)),
    "ResponseTime": tuple(f"<ResponseTime>{d}</ResponseTime>" for d in _DATES),
    "Comment": (
        "<Comment>Settlement file for 21 Nov rejected by the market gateway</Comment>",
        "<Comment>x</Comment>",
        "<Comment>" + "c" * 4000 + "</Comment>",
        "<Comment>Ünïcödé, &lt;angle&gt; brackets &amp; a\nsecond line</Comment>",
    ),
    "Entitled": ("<Entitled>Yes</Entitled>", "<Entitled>No</Entitled>"),
    "ACTIVITY": tuple(
        f"<ACTIVITY><LocalDate>{d}</LocalDate><ActionLog>Raised by the service desk</ActionLog>{extra}</ACTIVITY>"
        for d in _DATES
        for extra in ("", "<ParameterList>queue=gateway;attempt=2</ParameterList>")
    ),
    "AGREEMENT/ContractID": (
        "<ContractID>C-100;CN=C-100</ContractID>",
        "<ContractID>C-100</ContractID>",
        "<ContractID>C-100;CN=1;DT=2026-11-22;LN=SD-1;PN=GW;RI=EU;SN=4471</ContractID>",
    ),
    "AGREEMENT/AgreementType": (
        "<AgreementType>Premium 24x7;SN=GW-4471;LN=SD-88120</AgreementType>",
        "<AgreementType>Basic</AgreementType>",
    ),
    "SERVICE_REQUESTER": tuple(f"<SERVICE_REQUESTER>{c}</SERVICE_REQUESTER>" for c in _CONTACTS),
    "SERVICE_PROVIDER": tuple(f"<SERVICE_PROVIDER>{c}</SERVICE_PROVIDER>" for c in _CONTACTS),
    "PROBLEM": (
        "<PROBLEM><STATEMENT><StatementRole>Title</StatementRole><Text>Settlement file rejected</Text></STATEMENT>"
        "<STATEMENT><StatementRole>Symptom</StatementRole><Text>E117 duplicate header</Text></STATEMENT>"
        "<PRODUCT><Vendor>Globex</Vendor><ProductName>Market Gateway</ProductName><Version>4.2</Version></PRODUCT>"
        "</PROBLEM>",
        "<PROBLEM><STATEMENT><StatementRole>Title</StatementRole><Text>Gateway down</Text></STATEMENT></PROBLEM>",
        "<PROBLEM><STATEMENT><StatementRole>Error_Message</StatementRole><Text>E117</Text></STATEMENT>"
        "<STATEMENT><StatementRole>Title</StatementRole><Text>E117 on upload</Text></STATEMENT>"
        f"<ATTACHMENT>{_ATTACHMENTS[0]}</ATTACHMENT></PROBLEM>",
    ),
    "SOLUTION": (
        "<SOLUTION><Title>Header de-duplication fixed in 4.2.1</Title>"
        "<SolutionAbstract>4.2.1 deployed, file reprocessed</SolutionAbstract><SolutionType>Diagnostic</SolutionType>"
        "<STATEMENT><StatementRole>Cause</StatementRole><Text>BOM treated as a header row</Text></STATEMENT>"
        "<STATEMENT><StatementRole>Fix</StatementRole><Text>Gateway 4.2.1</Text></STATEMENT></SOLUTION>",
        "<SOLUTION><Title>Restart</Title><SolutionAbstract>Restarted the gateway</SolutionAbstract>"
        "<STATEMENT><StatementRole>Work_Around</StatementRole><Text>Restart daily</Text></STATEMENT></SOLUTION>",
    ),
    "ATTACHMENT": tuple(f"<ATTACHMENT>{a}</ATTACHMENT>" for a in _ATTACHMENTS),
}

#: Root children no matrix uses, for the "ignored by the matrix" tests.
OTHER_ROOT_CHILDREN: dict[str, str] = {
    "WorkflowStatus": "<WorkflowStatus>Waiting for customer</WorkflowStatus>",
    "CurrentState": "<CurrentState>Closed</CurrentState>",
    "Acknowledge": "<Acknowledge>Yes</Acknowledge>",
}


def sender(spec: TransactionSpec) -> Role:
    """A role that may send *spec* (the requester when both may)."""
    return min(spec.sender, key=lambda role: role.value)


def label(spec: TransactionSpec) -> str:
    """``Provide_Problem_Information(R)``: a test id for a declaration."""
    return f"{spec.name}({'/'.join(sorted(r.letter for r in spec.sender))})"


def allowed_state(spec: TransactionSpec) -> State | None:
    """One state *spec* is allowed in (NO_INCIDENT for the transaction that opens one)."""
    if spec.creates_incident:
        return NO_INCIDENT
    return next(state for state in State if state in spec.allowed_in)


def paths_marked(spec: TransactionSpec, mark: Mark) -> list[str]:
    """The matrix paths of *spec* with *mark*, in declaration order."""
    return [path for path, cell in spec.fields.items() if cell.mark is mark]


def snippet(path: str, variant: int = 0) -> etree._Element:
    """A fresh element for matrix *path* (the leaf for ``AGREEMENT/ContractID``)."""
    try:
        alternatives = SNIPPETS[path]
    except KeyError:
        raise AssertionError(
            f"tests/unit/documents.py has no snippet for matrix path {path!r}"
        ) from None
    return etree.fromstring(alternatives[variant])


def root_child(name: str) -> etree._Element:
    """A valid element for any root child the schema knows, used or not by a matrix."""
    if name in OTHER_ROOT_CHILDREN:
        return etree.fromstring(OTHER_ROOT_CHILDREN[name])
    if name in SNIPPETS:
        return snippet(name)
    element = etree.Element(name)
    for path in SNIPPETS:
        if path.startswith(name + "/"):
            element.append(snippet(path))
    if len(element) == 0:
        raise AssertionError(f"tests/unit/documents.py cannot build a {name}")
    return element


def build(
    spec: TransactionSpec,
    paths: Iterable[str] | None = None,
    variants: Mapping[str, int | Sequence[int]] | None = None,
    transaction_name: str | None = None,
) -> etree._Element:
    """A SERVICE_INCIDENT for *spec* with the elements at *paths* (default: every matrix path).

    *variants* picks a snippet per path; a sequence of indexes repeats the element (for
    ACTIVITY, SOLUTION, ATTACHMENT).
    """
    variants = variants or {}
    root = etree.Element(ROOT)
    etree.SubElement(root, "TransactionName").text = transaction_name or spec.name
    for path in spec.fields if paths is None else paths:
        *parents, _ = path.split("/")
        parent = root
        for name in parents:
            found = parent.find(name)
            parent = etree.SubElement(parent, name) if found is None else found
        chosen = variants.get(path, 0)
        for variant in [chosen] if isinstance(chosen, int) else chosen:
            parent.append(snippet(path, variant))
    return root


def shuffle(root: etree._Element, rng: random.Random) -> etree._Element:
    """A copy of *root* with the children of every element in random order (SPEC §3: order is free)."""
    root = copy.deepcopy(root)
    for element in root.iter():
        children = list(element)
        rng.shuffle(children)
        for child in children:
            element.remove(child)
        element.extend(children)
    return root


def to_bytes(root: etree._Element) -> bytes:
    """The document as a partner sends it: UTF-8 with an XML declaration."""
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def document(spec: TransactionSpec, **kwargs: object) -> bytes:
    """:func:`build` serialised."""
    return to_bytes(build(spec, **kwargs))  # type: ignore[arg-type]


def remove(root: etree._Element, path: str) -> etree._Element:
    """*root* without the elements at *path* (below SERVICE_INCIDENT)."""
    found = root.findall(path)
    assert found, f"nothing at {path} to remove"
    for element in found:
        element.getparent().remove(element)
    return root


def empty(root: etree._Element, path: str) -> etree._Element:
    """*root* with the element at *path* present but empty (``<Comment/>``)."""
    element = root.find(path)
    assert element is not None, f"nothing at {path} to empty"
    element.getparent().replace(element, etree.Element(element.tag))
    return root


def set_text(root: etree._Element, path: str, text: str) -> etree._Element:
    """*root* with the text of the (first) element at *path* replaced."""
    element = root.find(path)
    assert element is not None, f"nothing at {path}"
    element.text = text
    return root


def add(root: etree._Element, xml: str, under: str | None = None) -> etree._Element:
    """*root* with the element *xml* appended to the root or to the element at *under*."""
    parent = root if under is None else root.find(under)
    assert parent is not None, f"nothing at {under}"
    parent.append(etree.fromstring(xml))
    return root


def validate(
    data: bytes | etree._Element,
    spec: TransactionSpec | None = None,
    *,
    role: Role | None = None,
    **kwargs: object,
) -> Inspection:
    """Validate as *spec*'s sender (or *role*); the state is not checked unless asked."""
    if isinstance(data, etree._Element):
        data = to_bytes(data)
    if role is None and spec is not None:
        role = sender(spec)
    kwargs.setdefault("check_states", False)
    inspection, _ = validate_document(data, role=role, **kwargs)  # type: ignore[arg-type]
    return inspection


def errors(inspection: Inspection) -> list[tuple[str, str | None]]:
    """What a partner sees of the errors: (code, path) in acknowledgement order."""
    return [(p.code.code, p.path) for p in inspection.errors]


def warnings(inspection: Inspection) -> list[tuple[str, str | None]]:
    """What a partner sees of the warnings: (code, path)."""
    return [(p.code.code, p.path) for p in inspection.warnings]


def run_gsem(*argv: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
    """Run ``gsem ARGV`` in-process with *stdin*; returns (exit status, stdout bytes, stderr text)."""
    out, err = io.BytesIO(), io.StringIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    with (
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(err),
        mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")),
    ):
        try:
            status = cli.main(list(argv))
        except SystemExit as e:  # argparse: --help, usage errors
            status = e.code if isinstance(e.code, int) else 2
    stdout.flush()
    return status, out.getvalue(), err.getvalue()
