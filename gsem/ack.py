"""The ACKNOWLEDGEMENT document (SPEC §5)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from gsem.errors import Problem, http_status_for
from gsem.xmlsafe import escape_attribute, escape_text

__all__ = ["Acknowledgement", "sis_date", "mark_duplicate"]


def sis_date(moment: datetime) -> str:
    """A UTC moment in the SIS form ``YYYY-MM-DD hh:mm:ss``."""
    if moment.year >= 1000:
        # What strftime writes, in a fraction of its time (isoformat pads years below 1000).
        return moment.isoformat(" ", "seconds")[:19]
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Acknowledgement:
    """Everything an acknowledgement says; :meth:`to_bytes` writes it."""

    ack_id: str
    received_at: datetime
    digest: str
    transaction_name: str | None = None
    requester_ref: str | None = None
    provider_ref: str | None = None
    current_state: str | None = None
    errors: Sequence[Problem] = field(default_factory=list)
    warnings: Sequence[Problem] = field(default_factory=list)
    incident: etree._Element | None = None

    @property
    def accepted(self) -> bool:
        """``Acknowledge=Yes``: no error."""
        return not self.errors

    @property
    def http_status(self) -> int:
        """The HTTP status that goes with it (SPEC §5)."""
        return http_status_for(list(self.errors))

    @property
    def error_codes(self) -> list[str]:
        """The distinct error codes, in order of first appearance."""
        return list(dict.fromkeys(p.code.code for p in self.errors))

    def to_element(self) -> etree._Element:
        """The ACKNOWLEDGEMENT element."""
        ack = etree.Element("ACKNOWLEDGEMENT")

        def add(tag: str, text: str | None) -> etree._Element:
            child = etree.SubElement(ack, tag)
            if text:
                child.text = text
            return child

        add("Acknowledge", "Yes" if self.accepted else "No")
        add("AckID", self.ack_id)
        add("TransactionName", self.transaction_name)
        add("RequesterID", self.requester_ref)
        add("ProviderID", self.provider_ref)
        add("CurrentState", self.current_state)
        add("ReceivedAt", sis_date(self.received_at))
        add("Digest", self.digest).set("algorithm", "sha-256")
        for tag, problems in (("ERROR", self.errors), ("WARNING", self.warnings)):
            for problem in problems:
                child = add(tag, problem.message)
                child.set("code", problem.code.code)
                if problem.path:
                    child.set("path", problem.path)
        if self.incident is not None:
            ack.append(self.incident)
        return ack

    def to_bytes(self) -> bytes:
        """The document as sent: UTF-8 with an XML declaration."""
        if self.incident is None:
            written = self._written()
            if written is not None:
                return written
        return self.lxml_bytes()

    def lxml_bytes(self) -> bytes:
        """:meth:`to_bytes` as lxml writes :meth:`to_element` (the reference for :meth:`_written`)."""
        return etree.tostring(self.to_element(), xml_declaration=True, encoding="UTF-8", pretty_print=True)

    def _written(self) -> bytes | None:
        """The same bytes as :meth:`lxml_bytes`, joined as text: an acknowledgement is
        written inside the database transaction, where lxml's element building cost more
        than the rest of the acknowledgement.  None when a value holds a character XML
        cannot carry (lxml then refuses it as it always did)."""
        parts = ["<?xml version='1.0' encoding='UTF-8'?>\n<ACKNOWLEDGEMENT>\n"]
        for tag, text in (("Acknowledge", "Yes" if self.accepted else "No"), ("AckID", self.ack_id),
                          ("TransactionName", self.transaction_name), ("RequesterID", self.requester_ref),
                          ("ProviderID", self.provider_ref), ("CurrentState", self.current_state),
                          ("ReceivedAt", sis_date(self.received_at))):
            parts.append(f"  <{tag}>{escape_text(text)}</{tag}>\n" if text else f"  <{tag}/>\n")
        parts.append(f'  <Digest algorithm="sha-256">{escape_text(self.digest)}</Digest>\n' if self.digest
                     else '  <Digest algorithm="sha-256"/>\n')
        for tag, problems in (("ERROR", self.errors), ("WARNING", self.warnings)):
            for problem in problems:
                path = f' path="{escape_attribute(problem.path)}"' if problem.path else ""
                head = f'  <{tag} code="{escape_attribute(problem.code.code)}"{path}'
                parts.append(f"{head}>{escape_text(problem.message)}</{tag}>\n" if problem.message else f"{head}/>\n")
        parts.append("</ACKNOWLEDGEMENT>\n")
        written = "".join(parts)
        if _NOT_XML.search(written):
            return None
        return written.encode("utf-8")


#: Characters XML 1.0 cannot carry (lxml refuses them).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def mark_duplicate(ack_document: bytes) -> bytes:
    """The stored acknowledgement *ack_document* again, with ``<Duplicate>Yes</Duplicate>``."""
    ack = etree.fromstring(ack_document, etree.XMLParser(resolve_entities=False, no_network=True))
    duplicate = etree.Element("Duplicate")
    duplicate.text = "Yes"
    ack.find("Digest").addnext(duplicate)
    duplicate.tail = ack.find("Digest").tail
    return etree.tostring(ack, xml_declaration=True, encoding="UTF-8", pretty_print=True)
