"""Validation's shortcuts decide nothing: the full walk gives the same results on any document.

:meth:`DocumentValidator.inspect` skips the pruning walk when a byte scan, the counting
schema and a compiled XPath say it would find nothing.  Random documents built from the
schema's own declarations, with the things that make the walk work (unknown, namespaced,
hub-set, repeated, missing and empty elements; blank, NBSP-only and padded texts;
comments, CDATA sections, character references, attributes) are validated both ways and
must give the same errors, warnings, TransactionName and pruned tree.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from validation_corpus import SMALL_LIMITS, _mutations, _Trees, bases, outcomes

from gsem.schema import SCHEMA_DIR, ChildDecl, catalogue
from gsem.validation import _SPACE, HUB_SET_ELEMENTS, DocumentValidator
from gsem.xmlsafe import ParseLimits, parse_document
from transactions import registry


class _AlwaysWalk(DocumentValidator):
    """The validator with its shortcut off: every document goes through the walk."""

    def _untouched_children(self, data: bytes, tree: etree._ElementTree) -> None:
        return None


_CATALOGUE = catalogue()
_XS = "{http://www.w3.org/2001/XMLSchema}"
_WORDS = st.sampled_from(["x", "Title", "a > b", "Störung №7", "x\ny", " padded "]) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFFFD, blacklist_categories=("Cs", "Zs", "Zl", "Zp")),
    min_size=1, max_size=6,
)
#: Values valid for each simple type of the schema, so that clean documents are valid.
_VALUES = {
    "Level": st.sampled_from(["1", "5"]),
    "SISDate": st.sampled_from(["2026-11-22 08:02", "2026-11-22 08:02:11,2026-11-22 09:02:11"]),
    "TaggedValue": st.sampled_from(["C-100", "C-100;CN=1;SN=4471"]),
    "xs:anyURI": st.sampled_from(["https://x.example/a"]),
    "xs:base64Binary": st.sampled_from(["YQ==", "MjAyNg=="]),
}


def _simple_types() -> dict[tuple[str, str], st.SearchStrategy[str]]:
    """(complex type, child name) -> values of the child's simple type, read from the XSD."""
    xsd = etree.parse(str(SCHEMA_DIR / "service_incident.xsd")).getroot()
    enumerations = {
        t.get("name"): [e.get("value") for e in t.iter(f"{_XS}enumeration")] for t in xsd.findall(f"{_XS}simpleType")
    }
    found = {}
    for complex_type in xsd.findall(f"{_XS}complexType"):
        for particle in complex_type.iter(f"{_XS}element"):
            type_name = particle.get("type")
            if enumerations.get(type_name):
                found[complex_type.get("name"), particle.get("name")] = st.sampled_from(enumerations[type_name])
            else:
                found[complex_type.get("name"), particle.get("name")] = _VALUES.get(type_name, _WORDS)
    return found


_SIMPLE = _simple_types()
_ATTACHMENT_CONTENT = [_CATALOGUE.types["AttachmentType"][name] for name in ("AttachmentReference", "AttachmentObject")]
_BLANKS = st.sampled_from(["", " ", "\n  ", "\xa0", "\u3000", "\x85", "&#32;", "&#65;", " x", "x "])


@st.composite
def _element(draw: st.DrawFn, name: str, type_name: str, depth: int) -> etree._Element:
    """A clean, valid *name* element: known children within their declared counts, valid values."""
    element = etree.Element(name, nsmap={"p": "http://x.example/ns"} if draw(st.integers(0, 40)) == 0 else None)
    for decl in _CATALOGUE.types[type_name].values():
        if decl.name in HUB_SET_ELEMENTS and depth == 0:
            continue
        high = decl.max_occurs if decl.max_occurs is not None else 2
        for _ in range(draw(st.integers(decl.min_occurs, max(decl.min_occurs, high)))):
            element.append(draw(_child(type_name, decl, depth)))
    if len(element) == 0:  # an empty element is pruned: clean ones have a child
        decl = draw(st.sampled_from(list(_CATALOGUE.types[type_name].values())))
        element.append(draw(_child(type_name, decl, depth)))
    if name == "ATTACHMENT":  # exactly one content
        for content in element.findall("AttachmentReference") + element.findall("AttachmentObject"):
            element.remove(content)
        element.append(draw(_child("AttachmentType", draw(st.sampled_from(_ATTACHMENT_CONTENT)), depth)))
    children = list(element)
    order = draw(st.permutations(range(len(children))))
    for child in children:
        element.remove(child)
    element.extend(children[i] for i in order)
    return element


@st.composite
def _child(draw: st.DrawFn, type_name: str, decl: ChildDecl, depth: int) -> etree._Element:
    """A clean, valid child *decl* of a *type_name* element."""
    if decl.type_name is not None:
        return draw(_element(decl.name, decl.type_name, depth + 1))
    child = etree.Element(decl.name)
    child.text = draw(_SIMPLE[type_name, decl.name])
    return child


def _typed(element: etree._Element, type_name: str) -> Iterator[tuple[etree._Element, str]]:
    """*element* and its descendants of a complex type, with that type."""
    yield element, type_name
    for child in element:
        decl = _CATALOGUE.types[type_name].get(child.tag)
        if decl is not None and decl.type_name is not None:
            yield from _typed(child, decl.type_name)


def _flaw(draw: st.DrawFn, root: etree._Element) -> None:
    """One of the things the walk prunes or counts, somewhere in *root*."""
    elements = list(root.iter(etree.Element))
    below = elements[1:] or elements
    kind = draw(st.sampled_from(["blank", "empty", "duplicate", "overcount", "hub-set", "corpus", "corpus"]))
    if kind == "overcount":  # one child more than its declaration allows, or an ATTACHMENT's content
        typed = list(_typed(root, _CATALOGUE.root_type))
        element, type_name = draw(st.sampled_from(typed))
        bounded = [d for d in _CATALOGUE.types[type_name].values() if d.max_occurs is not None]
        if bounded and (element.tag != "ATTACHMENT" or draw(st.booleans())):
            decl = draw(st.sampled_from(bounded))
            for _ in range(decl.max_occurs + 1 - len(element.findall(decl.name))):
                element.append(draw(_child(type_name, decl, 1)))
        elif element.tag == "ATTACHMENT":
            for content in element.findall("AttachmentReference") + element.findall("AttachmentObject"):
                element.remove(content)
            if draw(st.booleans()):
                element.extend(draw(_child(type_name, decl, 1)) for decl in _ATTACHMENT_CONTENT)
    elif kind == "blank":
        leaf = draw(st.sampled_from([e for e in elements if len(e) == 0] or elements))
        leaf.text = draw(_BLANKS | st.none())
    elif kind == "empty":
        element = draw(st.sampled_from(below))
        for child in list(element):
            element.remove(child)
        element.text = None
    elif kind == "duplicate":
        element = draw(st.sampled_from(below))
        element.addnext(copy.deepcopy(element))
    elif kind == "hub-set":
        hub_set = etree.Element(draw(st.sampled_from(sorted(HUB_SET_ELEMENTS))))
        hub_set.text = "x"
        root.insert(draw(st.integers(0, len(root))), hub_set)
    else:  # the corpus's mutations, an attribute: anywhere, the root often
        index = draw(st.sampled_from([0]) | st.integers(0, len(elements) - 1))
        kinds = list(_mutations(elements[index], index == 0))
        kinds.append(("attribute", lambda e: e.set("a", draw(st.sampled_from(["1", "a>b", "x/y"])))))
        _, apply = draw(st.sampled_from(kinds))
        apply(elements[index])


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A SERVICE_INCIDENT drawn from the schema's declarations, clean or with a flaw or two."""
    root = draw(_element(_CATALOGUE.root_name, _CATALOGUE.root_type, 0))
    for old in root.findall("TransactionName"):
        root.remove(old)
    name = draw(st.sampled_from([*registry.names(), "Nope", None]))
    if name is not None:
        transaction = etree.Element("TransactionName")
        transaction.text = name
        root.insert(draw(st.integers(0, len(root))), transaction)
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        _flaw(draw, root)
    data = etree.tostring(root, pretty_print=draw(st.booleans()), xml_declaration=draw(st.booleans()),
                          encoding="UTF-8")
    # lxml escapes the & of "&#32;" and the > of attribute values: undo it, so that
    # character references reach the parser and a > stands in a start tag.
    return data.replace(b"&amp;#32;", b"&#32;").replace(b"&amp;#65;", b"&#65;").replace(b"a&gt;b", b"a>b")


@given(documents())
@settings(max_examples=250, deadline=None)
def test_the_walk_agrees_with_the_shortcut(data: bytes) -> None:
    """Errors, warnings, TransactionName and pruned tree are the same with and without the shortcut."""
    trees = _Trees()
    fast = outcomes(data, DocumentValidator(), trees, DocumentValidator(SMALL_LIMITS))
    walked = outcomes(data, _AlwaysWalk(), trees, _AlwaysWalk(SMALL_LIMITS))
    assert fast == walked


@pytest.mark.parametrize(("name", "data"), bases(), ids=[name for name, _ in bases()])
def test_clean_documents_take_the_shortcut(name: str, data: bytes) -> None:
    """The lifecycle documents and the benchmark's skip the walk (else the shortcut saves nothing)."""
    tree = parse_document(data, ParseLimits())
    assert DocumentValidator()._untouched_children(data, tree) is not None


def test_space_is_what_strip_strips() -> None:
    """The characters that make an element empty to the byte scan are what str.strip() strips, no fewer."""
    assert _SPACE == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
