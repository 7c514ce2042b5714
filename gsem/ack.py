"""The ACKNOWLEDGEMENT document (SPEC §5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from gsem.errors import Problem, http_status_for

__all__ = ["Acknowledgement", "sis_date", "mark_duplicate"]


def sis_date(moment: datetime) -> str:
    """A UTC moment in the SIS form ``YYYY-MM-DD hh:mm:ss``."""
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
        return etree.tostring(self.to_element(), xml_declaration=True, encoding="UTF-8", pretty_print=True)


def mark_duplicate(ack_document: bytes) -> bytes:
    """The stored acknowledgement *ack_document* again, with ``<Duplicate>Yes</Duplicate>``."""
    ack = etree.fromstring(ack_document, etree.XMLParser(resolve_entities=False, no_network=True))
    duplicate = etree.Element("Duplicate")
    duplicate.text = "Yes"
    ack.find("Digest").addnext(duplicate)
    duplicate.tail = ack.find("Digest").tail
    return etree.tostring(ack, xml_declaration=True, encoding="UTF-8", pretty_print=True)
