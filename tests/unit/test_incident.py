"""How a transaction changes a stored incident, and what is forwarded (gsem.incident).

The hot path uses :class:`IncidentChange` (prepared before the transaction, joined as bytes
or merged as trees inside it) and :class:`ForwardTemplate`, the faster forms of
:func:`apply_transaction` and :func:`forwarded_document`; these tests hold them to the same
output, byte for byte, and to SPEC §4.2 spelled out, on every lifecycle fixture and on
awkward documents.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from lxml import etree

from gsem import incident as incident_module
from gsem.incident import (
    ForwardTemplate,
    IncidentChange,
    apply_transaction,
    assemble,
    forwarded_document,
    incident_for_query,
    merge_into,
    merge_stored_parts,
    split,
    stored_incident_for_query,
    stored_parts,
)
from gsem.validation import DocumentValidator
from gsem.xmlsafe import parse_document

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "lifecycle").glob("*.xml"))
VALIDATOR = DocumentValidator()
STATES = ["Beginning", "Entitled", "Accepted", "Information_Requested", "Resolved", "Closed"]


def _parse(data: bytes) -> etree._Element:
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))


def test_the_fixtures_are_there() -> None:
    assert len(FIXTURES) == 9


def test_merge_into_stores_what_apply_transaction_stores_over_a_whole_lifecycle() -> None:
    slow: etree._Element | None = None
    stored: bytes | None = None
    for path in FIXTURES:
        document = _parse(path.read_bytes())
        before = etree.tostring(document)
        slow = apply_transaction(slow, document)
        # The hot path parses the stored bytes and merges into that tree.
        fast = merge_into(None if stored is None else _parse(stored), document)
        stored = etree.tostring(fast, encoding="UTF-8")
        assert stored == etree.tostring(slow, encoding="UTF-8"), path.name
        assert etree.tostring(document) == before, "the transaction's document must not change"
    assert stored is not None and b"\n" not in stored, "a stored incident holds no stray whitespace"
    assert stored.count(b"<ACTIVITY>") >= 3, "ACTIVITY entries are appended, not replaced"


def _merged_as_specified(incident: etree._Element | None, document: etree._Element) -> etree._Element:
    """SPEC §4.2 spelled out: each child copied without whitespace; appended or replacing its kind."""
    result = etree.Element("SERVICE_INCIDENT") if incident is None else copy.deepcopy(incident)
    for child in document:
        if child.tag in ("TransactionName", "CurrentState", "Acknowledge"):
            continue
        kept = copy.deepcopy(child)
        for node in kept.iter():
            if len(node):
                node.text = None
            node.tail = None
        existing = None if child.tag in ("ACTIVITY", "SOLUTION", "ATTACHMENT") else result.find(child.tag)
        if existing is None:
            result.append(kept)
        else:
            result.replace(existing, kept)
    if len(result):
        result.text = None
    return result


MERGED = {
    "whitespace everywhere": b"<SERVICE_INCIDENT>\n <RequesterID> R1 </RequesterID>\n <ACTIVITY>\n  <ActionLog>a\n"
                             b"</ActionLog>\n </ACTIVITY> tail\n <Comment>c</Comment>\n</SERVICE_INCIDENT>",
    "the same scalar twice": b"<SERVICE_INCIDENT><Comment>one</Comment><Comment>two</Comment></SERVICE_INCIDENT>",
    "hub-set elements": b"<SERVICE_INCIDENT><TransactionName>X</TransactionName><CurrentState>S</CurrentState>"
                        b"<Acknowledge>Yes</Acknowledge><Comment>kept</Comment></SERVICE_INCIDENT>",
    "appended entries": b"<SERVICE_INCIDENT><SOLUTION><Text>s</Text></SOLUTION><ATTACHMENT><N>1</N></ATTACHMENT>"
                        b"<ACTIVITY><ActionLog>again</ActionLog></ACTIVITY><SOLUTION><Text>t</Text></SOLUTION>"
                        b"<ATTACHMENT><N>2</N></ATTACHMENT></SERVICE_INCIDENT>",
    "mixed content and attributes": b'<SERVICE_INCIDENT><Comment a="1">x<b>y</b>z</Comment></SERVICE_INCIDENT>',
    "nothing": b"<SERVICE_INCIDENT>\n</SERVICE_INCIDENT>",
}


@pytest.mark.parametrize("body", MERGED.values(), ids=MERGED.keys())
def test_parts_prepared_before_merge_as_specified(body: bytes) -> None:
    """stored_parts made first, merged later into a stored incident, store what SPEC §4.2 says."""
    for stored in (None, etree.tostring(apply_transaction(None, _parse(FIXTURES[1].read_bytes())))):
        document = _parse(body)
        before = etree.tostring(document)
        parts = stored_parts(document)
        assert etree.tostring(document) == before, "the transaction's document must not change"
        expected = _merged_as_specified(None if stored is None else _parse(stored), document)
        merged = merge_stored_parts(None if stored is None else _parse(stored), parts)
        assert etree.tostring(merged, encoding="UTF-8") == etree.tostring(expected, encoding="UTF-8")


def test_the_lifecycle_merges_as_specified() -> None:
    """Over the whole lifecycle, the stored incident is what SPEC §4.2 says, byte for byte."""
    stored: bytes | None = None
    expected: etree._Element | None = None
    for path in FIXTURES:
        document = _parse(path.read_bytes())
        expected = _merged_as_specified(expected, document)
        parts = stored_parts(document)
        stored = etree.tostring(merge_stored_parts(None if stored is None else _parse(stored), parts),
                                encoding="UTF-8")
        assert stored == etree.tostring(expected, encoding="UTF-8"), path.name


def test_apply_transaction_leaves_the_stored_incident_alone() -> None:
    incident = apply_transaction(None, _parse(FIXTURES[0].read_bytes()))
    kept = copy.deepcopy(incident)
    apply_transaction(incident, _parse(FIXTURES[1].read_bytes()))
    assert etree.tostring(incident) == etree.tostring(kept)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("provider_ref", [None, "GX-55012", "P&<>\r\"'x"])
def test_the_template_forwards_what_forwarded_document_forwards(path: Path, provider_ref: str | None) -> None:
    body = path.read_bytes()
    template = ForwardTemplate.prepare(body)
    assert template is not None
    for state in STATES:
        assert template.render(state=state, provider_ref=provider_ref) == forwarded_document(
            body, state=state, provider_ref=provider_ref)


AWKWARD = {
    "hub-set elements present": b"<SERVICE_INCIDENT><RequesterID>R1</RequesterID><CurrentState>X</CurrentState>"
                                b"<Acknowledge>No</Acknowledge><ProviderID>P1</ProviderID></SERVICE_INCIDENT>",
    "ProviderID with entities": b"<SERVICE_INCIDENT><ProviderID>P&amp;1</ProviderID>\n  <A>x</A>\n</SERVICE_INCIDENT>",
    "ProviderID with attributes": b'<SERVICE_INCIDENT><ProviderID a="1">P1</ProviderID><B/></SERVICE_INCIDENT>',
    "declaration and unicode": "<?xml version='1.0' encoding='UTF-8'?>\n<SERVICE_INCIDENT>"
                               "<RequesterID>R-\u00e9\u4e2d</RequesterID></SERVICE_INCIDENT>".encode(),
    "only hub-set elements": b"<SERVICE_INCIDENT>\n<CurrentState>X</CurrentState>\n</SERVICE_INCIDENT>",
}


@pytest.mark.parametrize("body", AWKWARD.values(), ids=AWKWARD.keys())
@pytest.mark.parametrize("provider_ref", [None, "GX-1"])
def test_awkward_documents_forward_the_same(body: bytes, provider_ref: str | None) -> None:
    template = ForwardTemplate.prepare(body)
    assert template is not None
    assert template.render(state="Entitled", provider_ref=provider_ref) == forwarded_document(
        body, state="Entitled", provider_ref=provider_ref)


@pytest.mark.parametrize("body", [
    b"<SERVICE_INCIDENT><ProviderID/><A>x</A></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><ProviderID>P<!-- c -->1</ProviderID></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><CurrentState>X</CurrentState></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><ProviderID>\xee\x80\x80gsem-provider-id\xee\x80\x80</ProviderID><A>"
    b"\xee\x80\x80gsem-provider-id\xee\x80\x80</A></SERVICE_INCIDENT>",
    b"not xml",
], ids=["empty ProviderID", "comment in ProviderID", "empty once cleaned", "the marker itself", "not xml"])
def test_shapes_the_template_cannot_keep_exact_fall_back(body: bytes) -> None:
    # None tells the caller to use forwarded_document itself.
    assert ForwardTemplate.prepare(body) is None


@given(provider_ref=st.one_of(st.none(), st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]) | st.sampled_from("\r\t\n&<>"), max_size=30)),
    state=st.sampled_from(STATES), with_provider=st.booleans())
def test_any_provider_ref_forwards_the_same(provider_ref: str | None, state: str, with_provider: bool) -> None:
    body = FIXTURES[1].read_bytes() if with_provider else FIXTURES[0].read_bytes()
    template = ForwardTemplate.prepare(body)
    assert template is not None
    assert template.render(state=state, provider_ref=provider_ref) == forwarded_document(
        body, state=state, provider_ref=provider_ref)


def _hardened(body: bytes) -> etree._Element:
    """*body*'s root as the hub's validator parses it (comments and PIs dropped)."""
    return parse_document(body).getroot()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_the_lifecycle_is_forwarded_from_the_parsed_tree_without_a_second_parse(path: Path) -> None:
    """The hub's case: the template comes from the validator's tree, the same as from the body."""
    body = path.read_bytes()
    root = VALIDATOR.inspect(body).root
    assert root is not None
    before = etree.tostring(root)
    template = ForwardTemplate.of_parsed(body, root)
    assert template is not None
    assert template == ForwardTemplate.prepare(body)
    assert ForwardTemplate.prepare(body, root) == template
    assert etree.tostring(root) == before
    for provider_ref in (None, "GX-1"):
        assert template.render(state="Entitled", provider_ref=provider_ref) == forwarded_document(
            body, state="Entitled", provider_ref=provider_ref)


#: Root children, some in shapes lxml does not write back as they are sent.
FORWARD_CHILDREN = [
    "<RequesterID>R-1</RequesterID>", "<ProviderID>GX-1</ProviderID>", "<ProviderID>P&amp;1 &gt; \u00e9</ProviderID>",
    '<ProviderID a="1">P1</ProviderID>', "<ProviderID a='1'>P1</ProviderID>", "<ProviderID/>",
    "<ProviderID></ProviderID>", "<ProviderID>P<!-- c -->1</ProviderID>", "<ProviderID><![CDATA[P<1]]></ProviderID>",
    "<ProviderID>&#80;1</ProviderID>", "<ProviderID>P\r1</ProviderID>", "<ProviderID>P&#13;1</ProviderID>",
    "<ProviderID>\ue000gsem-provider-id\ue000</ProviderID>", "<Comment>\ue000gsem-provider-id\ue000</Comment>",
    "<ProviderID><X>P</X></ProviderID>", "<CurrentState>X</CurrentState>", "<Acknowledge>No</Acknowledge>",
    "<Comment>a &amp; b &lt;c&gt; \"q\" 'a' \u00e9\u4e2d</Comment>", "<Comment>a > b</Comment>",
    "<!-- a comment -->", "<?pi x?>", "<Comment >spaced</Comment >", "<Empty></Empty>", "<Empty/>",
    '<Spaced xmlns:x="urn:x" x:a="1">n</Spaced>', '<Q a="&quot;&#10;">q</Q>',
    "<ACTIVITY>\n    <LocalDate>2026-11-22 08:03:40</LocalDate>\n    <ActionLog>x</ActionLog>\n  </ACTIVITY>",
    "<Mixed>a<b>b</b>c</Mixed>", "<Nest><ProviderID>inner</ProviderID></Nest>",
]
PROLOGS = ["", '<?xml version="1.0" encoding="UTF-8"?>\n', "<?xml version='1.0'?>", '<?xml version="1.0"?>\n\n',
           "\n", "<!-- before -->\n", '<?xml version="1.0"?><?pi x?>', "\ufeff"]
EPILOGS = ["", "\n", "\n\n  ", "<!-- after -->", "<?pi y?>\n"]


@given(prolog=st.sampled_from(PROLOGS), children=st.lists(st.sampled_from(FORWARD_CHILDREN), max_size=7),
       gap=st.sampled_from(["", "\n  ", " ", "\t"]), epilog=st.sampled_from(EPILOGS),
       provider_ref=st.sampled_from([None, "GX-9", "P&<>\r\"'x"]))
@example(prolog="", children=["<ProviderID>GX-1</ProviderID>"], gap="", epilog="", provider_ref=None)
def test_a_template_from_the_parsed_tree_is_the_template_of_the_body(
        prolog: str, children: list[str], gap: str, epilog: str, provider_ref: str | None) -> None:
    """of_parsed either declines or makes exactly what prepare makes; the tree is left alone."""
    body = (prolog + "<SERVICE_INCIDENT>" + gap + gap.join(children) + gap + "</SERVICE_INCIDENT>" + epilog).encode()
    root = _hardened(body)
    before = etree.tostring(root)
    template = ForwardTemplate.of_parsed(body, root)
    assert etree.tostring(root) == before
    if template is None:
        return
    assert template == ForwardTemplate.prepare(body)
    assert template.render(state="Entitled", provider_ref=provider_ref) == forwarded_document(
        body, state="Entitled", provider_ref=provider_ref)


def test_documents_lxml_writes_as_sent_are_not_parsed_again() -> None:
    """The shapes partners send: declaration or not, indented or not, ProviderID or not."""
    for body in (b"<SERVICE_INCIDENT><RequesterID>R</RequesterID></SERVICE_INCIDENT>",
                 b'<?xml version="1.0" encoding="UTF-8"?>\n<SERVICE_INCIDENT>\n  <ProviderID>P&amp;1</ProviderID>\n'
                 b"  <Comment>x</Comment>\n</SERVICE_INCIDENT>\n"):
        assert ForwardTemplate.of_parsed(body, _hardened(body)) == ForwardTemplate.prepare(body) is not None


#: Children a document may bring, including shapes the joined merge must leave to lxml.
CHILDREN = [
    "<Comment>plain</Comment>", "<Comment>a &amp; b &lt;c&gt; \"q\" 'a' \u00e9\u4e2d &#13;</Comment>",
    '<RequesterSeverity level="2" note="a&quot;b&#10;c">2</RequesterSeverity>', "<ProviderID/>",
    "<ACTIVITY>\n  <LocalDate>2026-11-22 08:03:40</LocalDate>\n  <ActionLog>x</ActionLog>\n</ACTIVITY>",
    "<SOLUTION><Text>s</Text></SOLUTION>", "<ATTACHMENT><N>1</N></ATTACHMENT>",
    "<SERVICE_REQUESTER><PERSON><LastName>N</LastName></PERSON></SERVICE_REQUESTER>",
    "<Nest><Nest>inner</Nest></Nest>", "<Mixed>a<b>b</b>c</Mixed>", "<Empty></Empty>",
    '<Spaced xmlns:x="urn:x" x:a="1">n</Spaced>', "<TransactionName>Entitlement</TransactionName>",
    "<CurrentState>Entitled</CurrentState>", "<Comment>   </Comment>",
]
#: Stored incidents in shapes lxml does not write for a merged tree.
ODD_STORED = [
    b"<SERVICE_INCIDENT>\n  <Comment>x</Comment>\n</SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><Comment></Comment></SERVICE_INCIDENT>",
    b"<?xml version='1.0' encoding='UTF-8'?>\n<SERVICE_INCIDENT><Comment>x</Comment></SERVICE_INCIDENT>",
    b'<SERVICE_INCIDENT a="1"><Comment>x</Comment></SERVICE_INCIDENT>',
    b"<SERVICE_INCIDENT>text<Comment>x</Comment></SERVICE_INCIDENT>",
    b'<SERVICE_INCIDENT><x:Comment xmlns:x="urn:x">x</x:Comment></SERVICE_INCIDENT>',
    b'<SERVICE_INCIDENT><Comment xmlns="urn:x">x</Comment><ACTIVITY><N>1</N></ACTIVITY></SERVICE_INCIDENT>',
    b"<SERVICE_INCIDENT><Nest><Nest>x</Nest></Nest><!-- c --></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><Nest><Nest>x</Nest><Nest/></Nest><Comment>y</Comment></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT/>", b"<SERVICE_INCIDENT></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><Nest><Comment></Comment></Nest></SERVICE_INCIDENT>",
    b'<SERVICE_INCIDENT><Nest><Comment a="1"></Comment><N/></Nest></SERVICE_INCIDENT>',
    b"<SERVICE_INCIDENT><Nest><!-- c --></Nest><Comment>y</Comment></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><Nest><?p x?></Nest></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><Nest>a<![CDATA[<b></b>]]></Nest></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><Comment>x</Comment> </SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><Comment>x</Comment>tail<Nest/></SERVICE_INCIDENT>",
    b"<SERVICE_INCIDENT><Comment\n>x</Comment></SERVICE_INCIDENT>",
]
DOCUMENTS = st.lists(st.sampled_from(CHILDREN), max_size=6).map(
    lambda children: ("<SERVICE_INCIDENT>\n" + "\n".join(children) + "\n</SERVICE_INCIDENT>").encode())


def _merged_tree(stored: bytes | None, document: bytes) -> bytes:
    incident = None if stored is None else _parse(stored)
    return etree.tostring(merge_stored_parts(incident, stored_parts(_parse(document))), encoding="UTF-8")


def _each_odd_stored(history: bytes, **more: object) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Every odd stored shape at least once, under *history* (one document), with *more*."""
    def examples(test: Callable[..., None]) -> Callable[..., None]:
        for stored in ODD_STORED:
            test = example(history=[history], odd=stored, **more)(test)
        return test
    return examples


@given(history=st.lists(DOCUMENTS, min_size=1, max_size=4), odd=st.one_of(st.none(), st.sampled_from(ODD_STORED)))
# A document that replaces one of the odd incident's children.
@_each_odd_stored(b"<SERVICE_INCIDENT><Comment>y</Comment><Nest>z</Nest></SERVICE_INCIDENT>")
def test_a_prepared_change_writes_what_the_merged_tree_writes(history: list[bytes], odd: bytes | None) -> None:
    """IncidentChange.apply, its entries put back, gives lxml's bytes of the merged tree, for any stored incident.

    An odd stored incident is stored as it is, entries and all, as the document of an
    incident that has no entries yet: what a document written before the entries had
    rows of their own looks like, or one written by hand.
    """
    whole, base, entries = odd, odd, []
    for document in history:
        expected = _merged_tree(whole, document)
        base, appended = IncidentChange.prepare(_parse(document)).apply(base)
        entries += appended
        assert assemble(base, entries) == expected
        whole = expected


@given(history=st.lists(DOCUMENTS, min_size=1, max_size=4))
def test_a_whole_incident_splits_into_its_document_and_entries_and_back(history: list[bytes]) -> None:
    """split is what the changes store, and assemble undoes it (migration 0005 relies on both)."""
    whole: bytes | None = None
    base: bytes | None = None
    entries: list[tuple[int, bytes]] = []
    for document in history:
        whole = _merged_tree(whole, document)
        base, appended = IncidentChange.prepare(_parse(document)).apply(base)
        entries += appended
        assert split(whole) == (base, entries)
        assert assemble(*split(whole)) == whole


@given(history=st.lists(DOCUMENTS, min_size=1, max_size=4), odd=st.one_of(st.none(), st.sampled_from(ODD_STORED)))
@_each_odd_stored(b"<SERVICE_INCIDENT><Comment>y</Comment><Nest>z</Nest></SERVICE_INCIDENT>")
def test_the_children_remembered_for_an_incident_are_those_the_scan_finds(
        history: list[bytes], odd: bytes | None) -> None:
    """What apply remembers of an incident it wrote, for the next change not to scan it, is
    exactly what scanning it finds (the nested, empty-pair and namespaced children among them)."""
    base = odd
    for document in history:
        base, _ = IncidentChange.prepare(_parse(document)).apply(base)
        remembered = incident_module._RECENT_CHILDREN.get(base)
        if remembered is not None:
            assert list(remembered) == incident_module._children(base)


def test_an_incident_this_process_wrote_is_changed_without_scanning_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Along the lifecycle, each change after the first finds the incident's children remembered."""
    changes = [IncidentChange.prepare(_parse(path.read_bytes())) for path in FIXTURES]
    assert all(change.scannable for change in changes)
    stored, _ = changes[0].apply(None)

    def no_scan(stored: bytes) -> None:
        raise AssertionError("the stored incident was scanned again")

    monkeypatch.setattr(incident_module, "_children", no_scan)
    for change in changes[1:]:
        stored, _ = change.apply(stored)
    monkeypatch.undo()
    incident_module._RECENT_CHILDREN.clear()
    assert changes[-1].apply(stored)[0] == stored, "without what was remembered, the same bytes"


def test_the_lifecycle_is_merged_without_parsing_the_stored_incident(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored incident as the hub writes it is merged by joining bytes, to the same bytes."""
    changes = [IncidentChange.prepare(_parse(path.read_bytes())) for path in FIXTURES]
    expected: etree._Element | None = None
    for path in FIXTURES:
        expected = _merged_as_specified(expected, _parse(path.read_bytes()))

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the stored incident was parsed")

    monkeypatch.setattr("gsem.incident.etree.fromstring", no_parsing)
    stored: bytes | None = None
    entries: list[tuple[int, bytes]] = []
    for change in changes:
        stored, appended = change.apply(stored)
        entries += appended
    monkeypatch.undo()
    assert stored is not None and b"<ACTIVITY>" not in stored, "the entries are kept apart"
    assert assemble(stored, entries) == etree.tostring(expected, encoding="UTF-8")


#: Entries in the shapes lxml may write an appended element, ACTIVITY among them or not.
ENTRY_CHILDREN = [
    "<ACTIVITY><ActionLog>a</ActionLog></ACTIVITY>", '<ACTIVITY n="1"><ActionLog>b</ActionLog></ACTIVITY>',
    "<ACTIVITY/>", "<SOLUTION><Text>s</Text></SOLUTION>", "<ATTACHMENT><N>1</N></ATTACHMENT>",
    '<ACTIVITY xmlns:y="urn:y"><y:Log>c</y:Log></ACTIVITY>', "<Comment>c</Comment>", "<Nest><Nest>i</Nest></Nest>",
]
HISTORIES = st.lists(st.lists(st.sampled_from(ENTRY_CHILDREN + CHILDREN), max_size=6).map(
    lambda children: ("<SERVICE_INCIDENT>" + "".join(children) + "</SERVICE_INCIDENT>").encode()),
    min_size=1, max_size=5)


@given(history=HISTORIES, odd=st.one_of(st.none(), st.sampled_from(ODD_STORED)), state=st.sampled_from(STATES))
# A history that appends activities and more.
@_each_odd_stored(b"<SERVICE_INCIDENT><ACTIVITY><N>1</N></ACTIVITY><Comment>y</Comment>"
                  b"<SOLUTION><T>s</T></SOLUTION><ACTIVITY/></SERVICE_INCIDENT>", state="Entitled")
def test_a_query_answers_the_stored_incident_as_the_whole_incident_parsed(
        history: list[bytes], odd: bytes | None, state: str) -> None:
    """Leaving the ACTIVITY entries out before the parse answers what removing them after it did."""
    base, entries = odd, []
    for document in history:
        base, appended = IncidentChange.prepare(_parse(document)).apply(base)
        entries += appended
    assert base is not None
    expected = incident_for_query(_parse(assemble(base, entries)), state)
    answer = stored_incident_for_query(base, entries, state)
    assert etree.tostring(answer, pretty_print=True) == etree.tostring(expected, pretty_print=True)
    assert answer.find("ACTIVITY") is None
