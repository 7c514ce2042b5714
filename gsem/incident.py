"""How a transaction changes a stored incident (SPEC §4.2), and what is forwarded (SPEC §7).

Scalars overwrite; a whole object replaces the stored one; ACTIVITY, SOLUTION and
ATTACHMENT entries are appended to the incident's history.  Pure functions on lxml trees.

The hub stores an incident in two parts (docs/decisions.md 30): its document without the
appended entries (``incidents.document``, rewritten by each transaction) and each entry
once, as a row of its own with its place among the document's children
(``incident_entries``).  :func:`assemble` puts them back together; :func:`split` takes a
whole incident apart.
"""

from __future__ import annotations

import collections
import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lxml import etree

from gsem.xmlsafe import escape_text

__all__ = ["APPENDED", "apply_transaction", "merge_into", "stored_parts", "merge_stored_parts", "IncidentChange",
           "Entry", "assemble", "split", "incident_for_query", "stored_incident_for_query", "forwarded_document",
           "ForwardTemplate"]

#: Entries appended to the incident's history rather than replaced.
APPENDED = frozenset({"ACTIVITY", "SOLUTION", "ATTACHMENT"})
#: Never stored on the incident: they describe one message, not the incident.
NOT_STORED = frozenset({"TransactionName", "CurrentState", "Acknowledge"})


def apply_transaction(incident: etree._Element | None, document: etree._Element) -> etree._Element:
    """The incident after *document* (already pruned to its matrix); *incident* is not changed."""
    return merge_into(None if incident is None else copy.deepcopy(incident), document)


def merge_into(incident: etree._Element | None, document: etree._Element) -> etree._Element:
    """:func:`apply_transaction` that changes *incident* itself (a tree nobody else holds).

    *incident* is a stored incident, which holds no stray whitespace already, so only what
    *document* brings in is tidied.  *document* is not changed.
    """
    return merge_stored_parts(incident, stored_parts(document))


def stored_parts(document: etree._Element) -> list[etree._Element]:
    """What an incident keeps of *document*: tidied copies of its children, in order.

    Independent of the stored incident, so it can be made before the database transaction;
    :func:`merge_stored_parts` then moves the copies into the incident.
    """
    parts = []
    for child in document:
        if child.tag in NOT_STORED:
            continue
        part = child.__copy__()  # lxml copies the whole subtree, as copy.deepcopy would
        _tidy(part)
        parts.append(part)
    return parts


#: An appended entry as stored: how many of the incident document's children come before
#: it, and its bytes as lxml writes it.
Entry = tuple[int, bytes]


def merge_stored_parts(incident: etree._Element | None, parts: list[etree._Element],
                       entries: list[Entry] | None = None) -> etree._Element:
    """:func:`merge_into` of the document whose :func:`stored_parts` *parts* are; moves them in.

    With *entries*, the appended parts are added to it instead (each with its place),
    and the result is the incident document without them (:func:`assemble`).
    """
    result = etree.Element("SERVICE_INCIDENT") if incident is None else incident
    for part in parts:
        if part.tag in APPENDED:
            if entries is None:
                result.append(part)
            else:
                entries.append((len(result), etree.tostring(part, encoding="UTF-8")))
            continue
        existing = result.find(part.tag)
        if existing is None:
            result.append(part)
        else:
            existing.getparent().replace(existing, part)
    if len(result):
        result.text = None
    return result


@dataclass(frozen=True)
class IncidentChange:
    """What a document changes in an incident, prepared before the database transaction.

    :func:`stored_parts` of the document, and each part as lxml writes it.  A stored
    incident is what lxml writes for a merged tree: ``<SERVICE_INCIDENT>`` and its
    children, no whitespace between them.  When it has that shape (:func:`_children`),
    :meth:`apply` merges by joining the children's bytes, as :func:`merge_stored_parts`
    would merge the trees, instead of parsing the incident, merging and writing it again
    inside the transaction; otherwise (and for a part it cannot join) it merges the trees.
    For any well-formed stored incident, :meth:`apply` returns what
    ``etree.tostring(merged, encoding="UTF-8")`` returns.
    """

    parts: list[etree._Element]
    #: (tag, bytes) of each part; None when one cannot be joined as bytes.
    written: tuple[tuple[bytes, bytes], ...] | None
    #: Whether :func:`_children` finds each written part, alone, as one whole child: then
    #: it finds the children of an incident joined from them and from children it found
    #: as exactly those, and :meth:`apply` can remember them for the next change.
    scannable: bool = False

    @classmethod
    def prepare(cls, document: etree._Element) -> IncidentChange:
        """The change *document* makes; *document* is not changed."""
        parts = stored_parts(document)
        written: list[tuple[bytes, bytes]] | None = []
        for part in parts:
            text = etree.tostring(part, encoding="UTF-8")
            # A namespace declaration in a part would have to be reconciled with the
            # incident's: only the tree merge does that.
            if not isinstance(part.tag, str) or not _NAME.fullmatch(part.tag) or b"xmlns" in text:
                written = None
                break
            assert written is not None
            written.append((part.tag.encode("ascii"), text))
        if written is None:
            return cls(parts, None)
        # Checked here, before the database transaction, so that apply need not scan.
        scannable = all(tag in _APPENDED_BYTES or (_CHILD.fullmatch(text) and not _EMPTY_PAIR.search(text))
                        for tag, text in written)
        return cls(parts, tuple(written), scannable)

    def apply(self, stored: bytes | None) -> tuple[bytes, list[Entry]]:
        """The incident after the change: *stored* (its document without the appended
        entries; None for a new incident) merged, and the entries the change appends.

        ``assemble(*apply(base))``, with the incident's earlier entries first, is what
        ``etree.tostring(merged, encoding="UTF-8")`` returns for the whole incident.
        """
        entries: list[Entry] = []
        children = None if self.written is None else [] if stored is None else _scanned_children(stored)
        if self.written is None or children is None:
            incident = None if stored is None else etree.fromstring(stored, _PARSER)
            return etree.tostring(merge_stored_parts(incident, self.parts, entries), encoding="UTF-8"), entries
        for tag, text in self.written:
            if tag in _APPENDED_BYTES:
                entries.append((len(children), text))
                continue
            for index, (_, other) in enumerate(children):
                if other == tag:
                    children[index] = (text, tag)
                    break
            else:
                children.append((text, tag))
        if not children:
            return _EMPTY, entries
        merged = _OPEN + b"".join([text for text, _ in children]) + _CLOSE
        if self.scannable:
            _remember_children(merged, children)
        return merged, entries


def assemble(base: bytes, entries: Sequence[Entry]) -> bytes:
    """The whole incident: *base* (``incidents.document``) with *entries* (in the order they
    were appended) put back in their places, as lxml writes the merged tree."""
    if not entries:
        return base
    children = None if any(b"xmlns" in text for _, text in entries) else _scanned_children(base)
    if children is not None:
        # Joined as bytes, as IncidentChange.apply joins them: no parse, the same bytes.
        return _OPEN + b"".join(_interleave([text for text, _ in children], entries)) + _CLOSE
    root = etree.fromstring(base, _PARSER)
    root[:] = _interleave(list(root), [(place, etree.fromstring(text, _PARSER)) for place, text in entries])
    root.text = None
    return etree.tostring(root, encoding="UTF-8")


def _interleave(children: list[Any], entries: list[tuple[int, Any]]) -> list[Any]:
    """*children* with each entry's item put after the first *place* of them, in order."""
    ordered: list[Any] = []
    taken = 0
    for place, item in entries:
        upto = max(taken, min(place, len(children)))
        ordered.extend(children[taken:upto])
        taken = upto
        ordered.append(item)
    ordered.extend(children[taken:])
    return ordered


def split(document: bytes) -> tuple[bytes, list[Entry]]:
    """A whole incident (as :func:`merge_stored_parts` writes it) as its base and its entries.

    ``assemble(*split(document))`` gives *document* back for any incident the hub wrote.
    """
    root = etree.fromstring(document, _PARSER)
    entries: list[Entry] = []
    kept = 0
    for child in list(root):
        if child.tag in APPENDED:
            child.tail = None
            entries.append((kept, etree.tostring(child, encoding="UTF-8")))
            root.remove(child)
        else:
            kept += 1
    return etree.tostring(root, encoding="UTF-8"), entries


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)
_APPENDED_BYTES = frozenset(tag.encode("ascii") for tag in APPENDED)
#: How lxml starts writing an ACTIVITY element (an entry's tag has no namespace).
_ACTIVITY_STARTS = (b"<ACTIVITY>", b"<ACTIVITY ", b"<ACTIVITY/")
_OPEN = b"<SERVICE_INCIDENT>"
_CLOSE = b"</SERVICE_INCIDENT>"
_EMPTY = b"<SERVICE_INCIDENT/>"
#: Element names joined as bytes: ASCII names without a namespace prefix.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
#: A child element, written, and its tag.  lxml escapes ">" in text and attribute values, so
#: the first one ends the start tag: either ``/>``, or the element ends at the first end tag
#: of its name (only a "<" can start one: the text between is skipped in runs).  Inside an
#: element of its own name, that end tag is the inner one's; the outer one's is then left
#: where a child should start, a gap (:func:`_children`).
_CHILD = re.compile(rb"(<([A-Za-z_][A-Za-z0-9_.-]*)(?=[ />])(?:[^>]*/>|[^>]*>[^<]*(?:<(?!/\2>)[^<]*)*</\2>))")
#: An element written with a start and an end tag and nothing between them: lxml writes
#: one it parsed as ``<a/>``, so such an incident is not what it writes for its tree.
_EMPTY_PAIR = re.compile(rb"<[^/>][^>]*(?<!/)></")


def _children(stored: bytes) -> list[tuple[bytes, bytes]] | None:
    """The children of a well-formed stored incident as (bytes, tag), as lxml would write
    them again after parsing it; None when the incident is written in another shape.

    A namespace declaration anywhere also gives None: a child in a default namespace has
    the tag of a part without one, and the trees would not replace it by that part.
    """
    if stored == _EMPTY:
        return []
    if not (stored.startswith(_OPEN) and stored.endswith(_CLOSE)) or b"xmlns" in stored:
        return None
    if _EMPTY_PAIR.search(stored):
        return None
    end = len(stored) - len(_CLOSE)
    # One pass of the regular expression finds every child; they are the children only when
    # they follow each other from the start to the end: text, a comment or an end tag
    # where a child should start is skipped by findall, and leaves a gap.
    children = _CHILD.findall(stored, len(_OPEN), end)
    if sum(len(text) for text, _ in children) != end - len(_OPEN):
        return None
    return children


#: The children :func:`_children` finds in incidents this process wrote lately, by the
#: incident's bytes: an incident's next change then need not scan it (the scan was most
#: of what a change costs inside the database transaction).  A pure cache of the
#: function; bounded in entries and in the size of what it keeps.
_RECENT_CHILDREN: collections.OrderedDict[bytes, tuple[tuple[bytes, bytes], ...]] = collections.OrderedDict()
_RECENT_MAX = 256
_RECENT_MAX_BYTES = 16 * 1024


def _scanned_children(stored: bytes) -> list[tuple[bytes, bytes]] | None:
    """:func:`_children` of *stored*, from :data:`_RECENT_CHILDREN` when it is there."""
    # Larger incidents are never kept: no need to hash them to look.
    known = _RECENT_CHILDREN.get(stored) if len(stored) <= _RECENT_MAX_BYTES else None
    return list(known) if known is not None else _children(stored)


def _remember_children(stored: bytes, children: list[tuple[bytes, bytes]]) -> None:
    """Keep *children*, which must be what :func:`_children` finds in *stored*."""
    if len(stored) > _RECENT_MAX_BYTES:
        return
    _RECENT_CHILDREN[stored] = tuple(children)
    while len(_RECENT_CHILDREN) > _RECENT_MAX:
        try:
            _RECENT_CHILDREN.popitem(last=False)
        except KeyError:  # emptied meanwhile by another thread (PostgreSQL's several)
            break


def _tidy(element: etree._Element) -> None:
    # Stored documents are re-indented on output; keep no stray whitespace from inputs.
    for node in element.iter():
        if len(node):
            node.text = None
        node.tail = None


def _set(element: etree._Element, tag: str, value: str | None, *, first: bool = False) -> None:
    child = element.find(tag)
    if child is None:
        child = etree.Element(tag)
        if first:
            element.insert(0, child)
        else:
            element.append(child)
    child.text = value


def incident_for_query(incident: etree._Element, state: str) -> etree._Element:
    """The incident as a Query_Incident acknowledgement embeds it: no ACTIVITY history."""
    return _without_activities(copy.deepcopy(incident), state)


def stored_incident_for_query(base: bytes, entries: Sequence[Entry], state: str) -> etree._Element:
    """:func:`incident_for_query` of the stored incident *base* with its *entries*
    (:func:`assemble`), without putting back, parsing and copying the ACTIVITY entries it
    drops.  The history is most of a long-lived incident; answering a query used to parse
    all of it, copy the tree and remove the activities again."""
    kept = [(place, xml) for place, xml in entries if not xml.startswith(_ACTIVITY_STARTS)]
    # Each entry's place counts the base's children only, so the others keep theirs.
    return _without_activities(etree.fromstring(assemble(base, kept), _PARSER), state)


def _without_activities(incident: etree._Element, state: str) -> etree._Element:
    # An incident stored before its entries had rows of their own may still hold some.
    for activity in incident.findall("ACTIVITY"):
        incident.remove(activity)
    _set(incident, "CurrentState", state, first=True)
    return incident


def forwarded_document(document: bytes, *, state: str, provider_ref: str | None) -> bytes:
    """The original document with CurrentState, ProviderID (when known) and Acknowledge filled in."""
    root = etree.fromstring(document, etree.XMLParser(resolve_entities=False, no_network=True))
    for tag in ("CurrentState", "Acknowledge"):
        for old in root.findall(tag):
            root.remove(old)
    if provider_ref:
        _set(root, "ProviderID", provider_ref)
    _set(root, "CurrentState", state)
    _set(root, "Acknowledge", "Yes")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


#: Stands for the ProviderID's text while a :class:`ForwardTemplate` is made.
_MARK = "\ue000gsem-provider-id\ue000"
_CLOSE = b"</SERVICE_INCIDENT>"
#: The XML declaration lxml writes before a document in UTF-8.
_DECLARATION = b"<?xml version='1.0' encoding='UTF-8'?>\n"


@dataclass(frozen=True)
class ForwardTemplate:
    """:func:`forwarded_document` prepared before the decision, finished after it.

    What is forwarded depends on the decision only through CurrentState and ProviderID,
    so the parse and the serialisation can run before the database transaction (in the
    listener's thread, in parallel with other workers' transactions) and the transaction
    only joins bytes.  :meth:`render` returns exactly what :func:`forwarded_document`
    returns.
    """

    head: bytes
    provider_text: bytes | None  # the ProviderID element's serialised text, if it has one
    tail: bytes

    @classmethod
    def prepare(cls, document: bytes, parsed: etree._Element | None = None) -> ForwardTemplate | None:
        """The template of *document*; None when it cannot be made (then use the function).

        *parsed*, when given, is *document*'s root element as already parsed (by the
        hardened parser): :meth:`of_parsed` then spares a second parse when it can.
        """
        if parsed is not None:
            template = cls.of_parsed(document, parsed)
            if template is not None:
                return template
        try:
            root = etree.fromstring(document, etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError:
            return None
        for tag in ("CurrentState", "Acknowledge"):
            for old in root.findall(tag):
                root.remove(old)
        provider = root.find("ProviderID")
        original = None
        if provider is not None:
            original = etree.tostring(provider, encoding="UTF-8", with_tail=False)
            provider.text = _MARK
        text = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        if not text.endswith(_CLOSE):
            return None  # an empty root: <SERVICE_INCIDENT/>
        text = text[: -len(_CLOSE)]
        if provider is None:
            return cls(text, None, b"")
        mark = _MARK.encode()
        if text.count(mark) != 1 or original is None:
            return None
        head, tail = text.split(mark)
        provider_text = _element_text(original)
        if provider_text is None:
            return None
        return cls(head, provider_text, tail)

    @classmethod
    def of_parsed(cls, document: bytes, root: etree._Element) -> ForwardTemplate | None:
        """:meth:`prepare` of *document* made from *root*, its parsed root element, without
        parsing it again; None when *root* does not show that this is exact.

        It is exact when lxml writes *root* (its ProviderID aside) as exactly the bytes of
        *document* between the XML declaration and trailing white space: then parsing
        *document* again gives a tree lxml writes the same way, and what :meth:`prepare`
        writes for it is those bytes.  Most documents partners send are written so; one
        with a comment, a CDATA section, an entity or character reference, an empty
        element ``<a></a>``, single-quoted attributes, or a tree the validator has pruned
        is not, and gets None.  *root* is left as it was.
        """
        start = 0
        if document.startswith(b"<?xml") and document[5:6].isspace():
            start = document.find(b"?>") + 2  # the XML declaration, which lxml writes its own way
        written = document[start:].strip()
        if not written.endswith(_CLOSE) or root.tag != "SERVICE_INCIDENT":
            return None
        for _ in root.iterchildren("CurrentState", "Acknowledge"):
            return None  # removed by the function: the bytes would have to be cut
        provider = next(root.iterchildren("ProviderID"), None)
        if provider is None:
            if etree.tostring(root, encoding="UTF-8") != written:
                return None
            return cls(_DECLARATION + written[: -len(_CLOSE)], None, b"")
        original = provider.text
        if original is None or len(provider):
            return None  # not ``<ProviderID>text</ProviderID>``, which the function also declines
        provider.text = _MARK
        try:
            marked = etree.tostring(root, encoding="UTF-8")
        finally:
            provider.text = original
        head, mark, tail = marked.partition(_MARK.encode())
        provider_text = _element_text(etree.tostring(provider, encoding="UTF-8", with_tail=False))
        if not mark or mark in tail or provider_text is None or head + provider_text + tail != written:
            return None
        return cls(_DECLARATION + head, provider_text, tail[: -len(_CLOSE)])

    def render(self, *, state: str, provider_ref: str | None) -> bytes:
        """The forwarded document for the decided *state* and *provider_ref*."""
        end = b"<CurrentState>" + _text(state) + b"</CurrentState><Acknowledge>Yes</Acknowledge>" + _CLOSE
        if self.provider_text is None:
            added = b"<ProviderID>" + _text(provider_ref) + b"</ProviderID>" if provider_ref else b""
            return self.head + added + end
        provider = _text(provider_ref) if provider_ref else self.provider_text
        return self.head + provider + self.tail + end


def _text(value: str) -> bytes:
    return escape_text(value).encode("utf-8")


def _element_text(serialised: bytes) -> bytes | None:
    """The serialised text of ``<ProviderID …>text</ProviderID>``; None for any other shape.

    An empty ``<ProviderID/>`` is another shape: lxml writes it back self-closed.
    """
    if serialised.endswith(b"/>"):
        return None
    start = serialised.find(b">") + 1
    end = serialised.rfind(b"</")
    if start <= 0 or end < start or b"<" in serialised[start:end]:
        return None
    return serialised[start:end]
