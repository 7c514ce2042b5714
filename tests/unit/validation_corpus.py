"""The golden corpus of document validation: thousands of documents and what gsem made of each.

``tests/data/validation_golden.json.gz`` records, for every document :func:`corpus` yields,
everything a partner or the hub can observe of its validation: the errors and warnings
(code, message, path, in order), the TransactionName, and the pruned tree that the hub
stores and forwards (``etree.tostring`` of the root, by SHA-256; the text too when short),
after :meth:`DocumentValidator.inspect` (lenient and strict), after
:meth:`~DocumentValidator.precheck_matrix`, after :meth:`~DocumentValidator.check_matrix`
for each declaration of the document's transaction, and from :func:`validate_document`.

It was generated from the validator as it was before its fast paths were written, so
``test_validation_golden.py`` holds any later validator to byte-for-byte the same
behaviour.  Regenerate only when a change of behaviour is intended and reviewed::

    .venv/bin/python tests/unit/validation_corpus.py --write

(gzipped JSON, one document's outcomes under its name; ``zcat`` it to read it.)

The documents: every lifecycle fixture (``tests/fixtures/lifecycle``, the same files as
the shared ``examples/``) and the benchmark's Service_Request, each mutated at every
element (an unknown element inside, before and twice; a namespaced one; the hub-set
CurrentState and Acknowledge; the element emptied, blanked, NBSP-only, split by a
comment, CDATA-only, padded, duplicated, duplicated empty, removed; stray text); every
transaction's document built from its own matrix with each field removed, emptied or
varied and each rule broken; every TransactionName on every fixture; attachments with
both or neither content; wrong and namespaced roots; the hostile bodies; documents at
and over the parse limits; and a few hundred random combinations of these mutations.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from documents import SNIPPETS, build, to_bytes
from lxml import etree
from test_hostile_input import HOSTILE

from gsem.contract import Role
from gsem.errors import Problem
from gsem.validation import DocumentValidator, Inspection, validate_document
from gsem.xmlsafe import ParseLimits
from transactions import registry

TESTS = Path(__file__).resolve().parent.parent
GOLDEN = TESTS / "data" / "validation_golden.json.gz"
FIXTURES = TESTS / "fixtures" / "lifecycle"
#: Trees up to this size are kept as text in the golden file, to make a difference readable.
TEXT_LIMIT = 8192

BENCH_DOCUMENT = FIXTURES.parent.parent.parent / "bench" / "validate_speed.py"

#: A parser that keeps what a partner may send (comments, CDATA) so mutations can add it.
_KEEP = etree.XMLParser(remove_blank_text=False, strip_cdata=False)

_NBSP = "\u00a0"


def _bench_document() -> bytes:
    namespace: dict[str, object] = {}
    source = BENCH_DOCUMENT.read_text("utf-8")
    start = source.index('DOCUMENT = b"""')
    end = source.index('"""', start + len('DOCUMENT = b"""')) + 3
    exec(source[start:end], namespace)  # the literal only, not the script
    document = namespace["DOCUMENT"]
    assert isinstance(document, bytes)
    return document


def bases() -> list[tuple[str, bytes]]:
    """The unmutated documents: the fixtures and the benchmark's document."""
    found = [(f"fixture:{path.name}", path.read_bytes()) for path in sorted(FIXTURES.glob("*.xml"))]
    return found + [("bench:validate_speed", _bench_document())]


def _mutations(element: etree._Element, is_root: bool) -> Iterator[tuple[str, object]]:
    """(name, function of the copied element) for every way of breaking *element*."""

    def append(xml: str):
        return lambda e: e.append(etree.fromstring(xml))

    def before(xml: str):
        return lambda e: e.addprevious(etree.fromstring(xml))

    def set_text(text: str | None, keep_children: bool = False):
        def apply(e: etree._Element) -> None:
            if not keep_children:
                for child in list(e):
                    e.remove(child)
            e.text = text

        return apply

    def comment_split(e: etree._Element) -> None:
        text = e.text or "x"
        for child in list(e):
            e.remove(child)
        e.text = text[:1]
        comment = etree.Comment("c")
        comment.tail = text[1:]
        e.append(comment)

    def comment_only(e: etree._Element) -> None:
        for child in list(e):
            e.remove(child)
        e.text = None
        e.append(etree.Comment("only a comment"))

    def duplicate(e: etree._Element) -> None:
        e.addnext(copy.deepcopy(e))

    def duplicate_empty(e: etree._Element) -> None:
        twin = etree.Element(e.tag)
        twin.tail = e.tail
        e.addprevious(twin)

    def remove(e: etree._Element) -> None:
        e.getparent().remove(e)

    def pad(e: etree._Element) -> None:
        if len(e) == 0:
            e.text = f" {e.text or ''}\n"

    yield "unknown-child", append("<Zz>x</Zz>")
    yield "unknown-children-twice", lambda e: (append("<Zz/>")(e), append("<Zz>y</Zz>")(e))
    yield "namespaced-child", append('<ns:Comment xmlns:ns="urn:x">x</ns:Comment>')
    yield "hub-set-children", lambda e: (append("<CurrentState>Closed</CurrentState>")(e),
                                         append("<Acknowledge>Yes</Acknowledge>")(e))
    yield "stray-text", set_text("stray", keep_children=True)
    if is_root:
        return
    yield "unknown-before", before("<Zz>x</Zz>")
    yield "empty", set_text(None)
    yield "blank", set_text(" \n\t ")
    yield "nbsp", set_text(_NBSP)
    yield "cdata-blank", set_text(etree.CDATA("  "))
    yield "comment-split", comment_split
    yield "comment-only", comment_only
    yield "pad", pad
    yield "duplicate", duplicate
    yield "duplicate-empty", duplicate_empty
    yield "remove", remove


def element_mutations(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """*data* broken at each of its elements in each way of :func:`_mutations`."""
    original = etree.fromstring(data, _KEEP)
    for index, element in enumerate(original.iter(etree.Element)):
        for kind, apply in _mutations(element, element is original):
            root = copy.deepcopy(original)
            target = list(root.iter(etree.Element))[index]
            apply(target)  # type: ignore[operator]
            yield f"{name}#{index}:{element.tag}:{kind}", to_bytes(root)


def transaction_names(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """*data* with each supported TransactionName, and with missing, empty, odd and two names."""
    original = etree.fromstring(data, _KEEP)
    values = [*registry.names(), "Provide_Admin_Information", " Query_Incident ", "", _NBSP, None]
    for value in values:
        root = copy.deepcopy(original)
        found = root.find("TransactionName")
        if value is None:
            root.remove(found)
        else:
            found.text = value
        yield f"{name}:TransactionName={value!r}", to_bytes(root)
    root = copy.deepcopy(original)
    root.insert(0, etree.fromstring("<TransactionName>Query_Incident</TransactionName>"))
    yield f"{name}:TransactionName-twice", to_bytes(root)
    root = copy.deepcopy(original)
    root.insert(0, etree.fromstring("<TransactionName> </TransactionName>"))
    yield f"{name}:TransactionName-blank-then-real", to_bytes(root)


def built() -> Iterator[tuple[str, bytes]]:
    """Each declaration's document from its own matrix, whole and with each field changed."""
    for index, spec in enumerate(registry.all_specs()):
        label = f"built:{index}:{spec.name}"
        yield f"{label}:all", to_bytes(build(spec))
        mandatory = [p for p, cell in spec.fields.items() if cell.mark.value == "M"]
        yield f"{label}:mandatory-only", to_bytes(build(spec, mandatory))
        for path in spec.fields:
            yield f"{label}:without:{path}", to_bytes(build(spec, [p for p in spec.fields if p != path]))
            root = build(spec)
            element = root.find(path)
            element.getparent().replace(element, etree.Element(element.tag))
            yield f"{label}:empty:{path}", to_bytes(root)
            for variant in range(1, len(SNIPPETS[path])):
                yield f"{label}:variant:{path}={variant}", to_bytes(build(spec, variants={path: variant}))
            yield f"{label}:twice:{path}", to_bytes(build(spec, variants={path: (0, 0)}))
        for breaker, (without, xml, under) in _RULE_BREAKERS.items():
            root = build(spec, [p for p in spec.fields if p not in without])
            parent = root if under is None else root.find(under)
            if parent is None:
                parent = etree.SubElement(root, under)
            parent.extend(etree.fromstring(f"<added>{xml}</added>"))
            yield f"{label}:rule-breaker:{breaker}", to_bytes(root)


_CONTACT_VOICE = "<LOCATION><LocationType>Primary_Voice</LocationType><LocationID>1</LocationID></LOCATION>"
_STATEMENT = "<STATEMENT><StatementRole>Fix</StatementRole><Text>t</Text></STATEMENT>"
_NAMED = "<AttachmentName>n</AttachmentName><Format>f</Format>"

#: Elements that break (or nearly break) a numbered rule: name -> (matrix paths left out,
#: the elements added, the path of their parent (None: the root)).
_RULE_BREAKERS: dict[str, tuple[tuple[str, ...], str, str | None]] = {
    "contact-no-voice": (("SERVICE_REQUESTER",), "<SERVICE_REQUESTER><PERSON><LastName>N</LastName><LOCATION>"
                         "<LocationType>Fax</LocationType><LocationID>1</LocationID></LOCATION></PERSON>"
                         "</SERVICE_REQUESTER>", None),
    "contact-blank-lastname": (("SERVICE_REQUESTER",), "<SERVICE_REQUESTER><PERSON><LastName> </LastName>"
                               f"{_CONTACT_VOICE}</PERSON></SERVICE_REQUESTER>", None),
    "contact-padded-type": (("SERVICE_REQUESTER",), "<SERVICE_REQUESTER><PERSON><LastName>N</LastName><LOCATION>"
                            "<LocationType> Alternate_Voice </LocationType><LocationID>1</LocationID></LOCATION>"
                            "</PERSON></SERVICE_REQUESTER>", None),
    "contact-voice-on-other-person": (("SERVICE_REQUESTER",), "<SERVICE_REQUESTER><PERSON><LastName>N</LastName>"
                                      f"</PERSON><PERSON>{_CONTACT_VOICE}</PERSON></SERVICE_REQUESTER>", None),
    "contact-no-person": (("SERVICE_REQUESTER",), "<SERVICE_REQUESTER><ORGANIZATION><Name>O</Name></ORGANIZATION>"
                          "</SERVICE_REQUESTER>", None),
    "contact-lastname-with-child": (("SERVICE_PROVIDER",), "<SERVICE_PROVIDER><PERSON><LastName><b>N</b></LastName>"
                                    f"{_CONTACT_VOICE}</PERSON></SERVICE_PROVIDER>", None),
    "contact-provider-no-voice": (("SERVICE_PROVIDER",), "<SERVICE_PROVIDER><PERSON><LastName>N</LastName></PERSON>"
                                  "</SERVICE_PROVIDER>", None),
    "contact-nbsp-lastname": (("SERVICE_PROVIDER",), "<SERVICE_PROVIDER><PERSON><LastName>\u00a0</LastName>"
                              f"{_CONTACT_VOICE}</PERSON></SERVICE_PROVIDER>", None),
    "problem-no-title": (("PROBLEM",), "<PROBLEM><STATEMENT><StatementRole>Symptom</StatementRole><Text>t</Text>"
                         "</STATEMENT></PROBLEM>", None),
    "problem-padded-title": (("PROBLEM",), "<PROBLEM><STATEMENT><StatementRole>\nTitle </StatementRole>"
                             "<Text>t</Text></STATEMENT></PROBLEM>", None),
    "problem-no-statement": (("PROBLEM",), "<PROBLEM><PRODUCT><Vendor>V</Vendor></PRODUCT></PROBLEM>", None),
    "entitled-no-without-comment": (("Comment", "Entitled"), "<Entitled>No</Entitled>", None),
    "entitled-padded-no-without-comment": (("Comment", "Entitled"), "<Entitled> No </Entitled>", None),
    "entitled-no-blank-comment": (("Comment", "Entitled"), "<Entitled>No</Entitled><Comment> </Comment>", None),
    "solution-no-statement": (("SOLUTION",), "<SOLUTION><Title>T</Title><SolutionAbstract>A</SolutionAbstract>"
                              "</SOLUTION>", None),
    "solution-blank-title": (("SOLUTION",), "<SOLUTION><Title> </Title><SolutionAbstract>A</SolutionAbstract>"
                             f"{_STATEMENT}</SOLUTION>", None),
    "solution-no-abstract": (("SOLUTION",), f"<SOLUTION><Title>T</Title>{_STATEMENT}</SOLUTION>", None),
    "activity-no-date": (("ACTIVITY",), "<ACTIVITY><ActionLog>a</ActionLog></ACTIVITY>", None),
    "activity-blank-date": (("ACTIVITY",), "<ACTIVITY><LocalDate>\n</LocalDate><ActionLog>a</ActionLog></ACTIVITY>",
                            None),
    "agreement-type-only": (("AGREEMENT/ContractID",), "<AgreementType>Basic</AgreementType>", "AGREEMENT"),
    "attachment-both": (("ATTACHMENT",), f"<ATTACHMENT>{_NAMED}<AttachmentReference>https://x.example/a"
                        "</AttachmentReference><AttachmentObject>YQ==</AttachmentObject></ATTACHMENT>", None),
    "attachment-neither": (("ATTACHMENT",), f"<ATTACHMENT>{_NAMED}</ATTACHMENT>", None),
    "attachment-two-objects": (("ATTACHMENT",), f"<ATTACHMENT>{_NAMED}<AttachmentObject>YQ==</AttachmentObject>"
                               "<AttachmentObject>Yg==</AttachmentObject></ATTACHMENT>", None),
    "attachment-no-name": (("ATTACHMENT",), "<ATTACHMENT><Format>f</Format><AttachmentObject>YQ==</AttachmentObject>"
                           "</ATTACHMENT>", None),
    "problem-attachment-neither": (("PROBLEM",), "<PROBLEM><STATEMENT><StatementRole>Title</StatementRole>"
                                   f"<Text>t</Text></STATEMENT><ATTACHMENT>{_NAMED}</ATTACHMENT></PROBLEM>", None),
}


def odd_documents() -> Iterator[tuple[str, bytes]]:
    """Roots, namespaces, limits and the hostile bodies."""
    query = b"<TransactionName>Query_Incident</TransactionName><RequesterID>R-1</RequesterID>"
    yield "root:wrong", b"<NOT_SIS>" + query + b"</NOT_SIS>"
    yield "root:namespaced", b'<SERVICE_INCIDENT xmlns="urn:sis">' + query + b"</SERVICE_INCIDENT>"
    yield "root:prefixed", b'<s:SERVICE_INCIDENT xmlns:s="urn:sis">' + query + b"</s:SERVICE_INCIDENT>"
    yield "root:empty", b"<SERVICE_INCIDENT/>"
    yield "root:blank", b"<SERVICE_INCIDENT> \n </SERVICE_INCIDENT>"
    yield "root:text-only", b"<SERVICE_INCIDENT>Query_Incident</SERVICE_INCIDENT>"
    yield "root:lowercase", b"<service_incident>" + query + b"</service_incident>"
    yield "namespace:default-on-child", (
        b'<SERVICE_INCIDENT>' + query + b'<ACTIVITY xmlns="urn:x"><LocalDate>2026-11-22 08:02</LocalDate>'
        b"<ActionLog>a</ActionLog></ACTIVITY></SERVICE_INCIDENT>"
    )
    yield "namespace:xinclude", (
        b'<SERVICE_INCIDENT xmlns:xi="http://www.w3.org/2001/XInclude">' + query
        + b'<xi:include href="file:///etc/passwd" parse="text"/></SERVICE_INCIDENT>'
    )
    yield "attributes", b'<SERVICE_INCIDENT a="1">' + query.replace(b"<RequesterID>", b'<RequesterID x="y">') + (
        b"</SERVICE_INCIDENT>"
    )
    yield "pi-and-comments", (
        b"<?xml version='1.0' encoding='utf-8'?><!-- c --><?pi x?><SERVICE_INCIDENT><!-- c -->" + query
        + b"<?pi y?><Comment><!-- only --></Comment></SERVICE_INCIDENT><!-- after -->"
    )
    yield "cdata", b"<SERVICE_INCIDENT>" + query + b"<Comment><![CDATA[<x>&]]></Comment></SERVICE_INCIDENT>"
    for depth in (30, 31, 32, 33):
        inner = b"<Zz>" * depth + b"</Zz>" * depth
        yield f"depth:{depth}", b"<SERVICE_INCIDENT>" + query + inner + b"</SERVICE_INCIDENT>"
    # 3 + 3 per ACTIVITY + the extras: 19,998 to 20,001 elements around the 20,000 limit.
    activity = b"<ACTIVITY><LocalDate>2026-11-22 08:02</LocalDate><ActionLog>a</ActionLog></ACTIVITY>"
    for activities, extras in ((6665, b""), (6665, b"<ProviderID>P</ProviderID>"),
                               (6665, b"<ProviderID>P</ProviderID><Comment>c</Comment>"), (6666, b"")):
        body = b"<SERVICE_INCIDENT>" + query + extras + activity * activities + b"</SERVICE_INCIDENT>"
        yield f"elements:{3 + 3 * activities + extras.count(b'</')}", body
    yield "many-unknown", b"<SERVICE_INCIDENT>" + query + b"<Zz/>" * 300 + b"</SERVICE_INCIDENT>"
    yield "many-bad-activities", (
        b"<SERVICE_INCIDENT>" + query + b"<ACTIVITY><LocalDate/></ACTIVITY>" * 300 + b"</SERVICE_INCIDENT>"
    )
    big = b"<ATTACHMENT><AttachmentName>n</AttachmentName><Format>f</Format><AttachmentObject>"
    big += b"QUFB" * 200_000 + b"</AttachmentObject></ATTACHMENT>"
    yield "big-attachment", b"<SERVICE_INCIDENT>" + query + activity + big + b"</SERVICE_INCIDENT>"
    limit = ParseLimits().max_bytes
    padded = b"<SERVICE_INCIDENT>" + query + b"</SERVICE_INCIDENT>"
    yield "body-exactly-the-limit", padded + b" " * (limit - len(padded))
    for name, body, _ in HOSTILE:
        yield f"hostile:{name}", body


def random_combinations(count: int, seed: int = 20261122) -> Iterator[tuple[str, bytes]]:
    """*count* documents each broken in two to four random places."""
    rng = random.Random(seed)
    sources = bases() + [(f"built:{spec.name}", to_bytes(build(spec))) for spec in registry.all_specs()]
    for number in range(count):
        name, data = rng.choice(sources)
        steps = []
        for _ in range(rng.randint(2, 4)):
            root = etree.fromstring(data, _KEEP)
            elements = list(root.iter(etree.Element))
            index = rng.randrange(len(elements))
            kind, apply = rng.choice(list(_mutations(elements[index], index == 0)))
            apply(elements[index])  # type: ignore[operator]
            data = to_bytes(root)
            steps.append(f"{index}:{kind}")
        yield f"random:{number}:{name}:{','.join(steps)}", data


def corpus() -> Iterator[tuple[str, bytes]]:
    """Every document of the corpus, named; names are unique."""
    for name, data in bases():
        yield name, data
        yield from element_mutations(name, data)
        yield from transaction_names(name, data)
    yield from built()
    yield from odd_documents()
    yield from random_combinations(600)


#: A validator with limits small enough that ordinary documents reach them.
SMALL_LIMITS = ParseLimits(max_bytes=4096, max_depth=4, max_elements=40)


def _problems(problems: list[Problem]) -> list[list[str | None]]:
    return [[p.code.code, p.message, p.path] for p in problems]


class _Trees:
    """Serialised trees, by SHA-256, so a tree shared by several outcomes is stored once."""

    def __init__(self) -> None:
        self.texts: dict[str, str | None] = {}

    def key(self, tree: etree._ElementTree | None) -> str | None:
        if tree is None:
            return None
        data = etree.tostring(tree.getroot())
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.texts:
            self.texts[digest] = data.decode("utf-8") if len(data) <= TEXT_LIMIT else None
        return digest


def _inspection(inspection: Inspection, trees: _Trees) -> dict[str, object]:
    return {
        "transaction_name": inspection.transaction_name,
        "errors": _problems(inspection.errors),
        "warnings": _problems(inspection.warnings),
        "tree": trees.key(inspection.tree),
    }


def outcomes(data: bytes, validator: DocumentValidator, trees: _Trees, small: DocumentValidator) -> dict[str, object]:
    """Everything observable of validating *data*, as JSON-ready data."""
    result: dict[str, object] = {}
    lenient = validator.inspect(data)
    result["inspect"] = _inspection(lenient, trees)
    result["inspect_strict"] = _inspection(validator.inspect(data, strict=True), trees)
    if len(data) <= SMALL_LIMITS.max_bytes * 2:
        result["inspect_small_limits"] = _inspection(small.inspect(data), trees)
    prechecked = validator.inspect(data)
    validator.precheck_matrix(prechecked)
    if prechecked.prechecked is None:
        result["precheck"] = None
    else:
        spec, errors, warnings = prechecked.prechecked
        result["precheck"] = {
            "spec": registry.all_specs().index(spec),
            "errors": _problems(errors),
            "warnings": _problems(warnings),
            "tree": trees.key(prechecked.tree),
        }
    matrices = []
    if lenient.root is not None and lenient.transaction_name is not None:
        for spec in registry.specs_named(lenient.transaction_name):
            inspection = validator.inspect(data)
            validator.check_matrix(inspection, spec)
            matrices.append(_inspection(inspection, trees))
    result["check_matrix"] = matrices
    documents = []
    for role in (None, Role.REQUESTER, Role.PROVIDER):
        inspection, spec = validate_document(data, role=role, validator=validator)
        documents.append(
            {**_inspection(inspection, trees), "spec": None if spec is None else registry.all_specs().index(spec)}
        )
    result["validate_document"] = documents
    return result


def generate() -> dict[str, object]:
    """The golden data of the whole corpus, from the validator as it is now."""
    validator = DocumentValidator()
    small = DocumentValidator(SMALL_LIMITS)
    trees = _Trees()
    documents: dict[str, object] = {}
    for name, data in corpus():
        assert name not in documents, f"two corpus documents are named {name}"
        documents[name] = {"sha256": hashlib.sha256(data).hexdigest(), **outcomes(data, validator, trees, small)}
    return {"documents": documents, "trees": trees.texts}


def main() -> int:
    """Write (with --write) or summarise the golden file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(TESTS.parent)}")
    args = parser.parse_args()
    golden = generate()
    documents = golden["documents"]
    assert isinstance(documents, dict)
    print(f"{len(documents)} documents, {len(golden['trees'])} distinct trees", file=sys.stderr)  # type: ignore[arg-type]
    if args.write:
        text = json.dumps(golden, indent=0, ensure_ascii=False, sort_keys=True) + "\n"
        GOLDEN.parent.mkdir(exist_ok=True)
        # gzip: the JSON is 12 MB of repetitive text; mtime 0 so the same data gives the same bytes.
        with open(GOLDEN, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
            out.write(text.encode("utf-8"))
    return 0


def load() -> dict[str, dict]:
    """The golden file's data."""
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as stream:
        return json.load(stream)


if __name__ == "__main__":
    sys.exit(main())
