"""How a transaction changes a stored incident (SPEC §4.2), and what is forwarded (SPEC §7).

Scalars overwrite; a whole object replaces the stored one; ACTIVITY, SOLUTION and
ATTACHMENT entries are appended to the incident's history.  Pure functions on lxml trees.
"""

from __future__ import annotations

import copy

from lxml import etree

__all__ = ["APPENDED", "apply_transaction", "incident_for_query", "forwarded_document"]

#: Entries appended to the incident's history rather than replaced.
APPENDED = frozenset({"ACTIVITY", "SOLUTION", "ATTACHMENT"})
#: Never stored on the incident: they describe one message, not the incident.
NOT_STORED = frozenset({"TransactionName", "CurrentState", "Acknowledge"})


def apply_transaction(incident: etree._Element | None, document: etree._Element) -> etree._Element:
    """The incident after *document* (already pruned to its matrix); *incident* is not changed."""
    result = etree.Element("SERVICE_INCIDENT") if incident is None else copy.deepcopy(incident)
    for child in document:
        if child.tag in NOT_STORED:
            continue
        if child.tag in APPENDED:
            result.append(copy.deepcopy(child))
            continue
        existing = result.find(child.tag)
        replacement = copy.deepcopy(child)
        if existing is None:
            result.append(replacement)
        else:
            existing.getparent().replace(existing, replacement)
    _tidy(result)
    return result


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
    result = copy.deepcopy(incident)
    for activity in result.findall("ACTIVITY"):
        result.remove(activity)
    _set(result, "CurrentState", state, first=True)
    return result


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
