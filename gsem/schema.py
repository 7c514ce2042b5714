"""The SIS schemas and what gsem reads from them.

lxml's ``XMLSchema`` (libxml2) checks element content on the hot path.  Because element
order is free (SPEC §3), every content model in ``schemas/service_incident.xsd`` is a
repeating ``xs:choice``, which XSD 1.0 cannot bound per child; each particle still
declares its ``minOccurs``/``maxOccurs``, and :class:`SchemaCatalogue` reads those
declarations and enforces them.  The same walk prunes elements the schema does not know
(SPEC §3: ignored, reported as warnings).

That walk runs in Python and costs more than parsing and validating together, so the
validator first asks libxml2 whether it can have anything to do: :func:`counting_schema`
is the schema with every content model whose children each occur at most once written as
the ``xs:all`` it amounts to, so that libxml2 enforces those declarations too, and
:meth:`SchemaCatalogue.positions` lists where each complex type can occur, for the
declarations ``xs:all`` cannot express.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lxml import etree

__all__ = [
    "SCHEMA_DIR",
    "ChildDecl",
    "SchemaCatalogue",
    "catalogue",
    "incident_schema",
    "counting_schema",
    "ack_schema",
]

XS = "{http://www.w3.org/2001/XMLSchema}"

#: Where the XSD files live: ``schemas/`` at the top of the source tree.
SCHEMA_DIR = Path(os.environ.get("GSEM_SCHEMA_DIR", Path(__file__).resolve().parent.parent / "schemas"))


@dataclass(frozen=True)
class ChildDecl:
    """One child element as the XSD declares it."""

    name: str
    min_occurs: int
    max_occurs: int | None  # None = unbounded
    type_name: str | None  # the complex type, or None for a simple (text) element


class SchemaCatalogue:
    """Per complex type, its declared children; read from the XSD, never restated in code."""

    def __init__(self, xsd: etree._ElementTree) -> None:
        root = xsd.getroot()
        complex_names = {t.get("name") for t in root.iter(f"{XS}complexType") if t.get("name")}
        self.types: dict[str, dict[str, ChildDecl]] = {}
        for complex_type in root.findall(f"{XS}complexType"):
            children: dict[str, ChildDecl] = {}
            for particle in complex_type.iter(f"{XS}element"):
                type_name = particle.get("type")
                max_occurs = particle.get("maxOccurs", "1")
                children[particle.get("name")] = ChildDecl(
                    name=particle.get("name"),
                    min_occurs=int(particle.get("minOccurs", "1")),
                    max_occurs=None if max_occurs == "unbounded" else int(max_occurs),
                    type_name=type_name if type_name in complex_names else None,
                )
            self.types[complex_type.get("name")] = children
        self._required = {
            name: tuple(decl for decl in children.values() if decl.min_occurs > 0)
            for name, children in self.types.items()
        }
        top = root.find(f"{XS}element")
        self.root_name: str = top.get("name")
        self.root_type: str = top.get("type")

    def positions(self) -> list[tuple[str, str]]:
        """Every place a complex type occurs: (absolute path like ``/SERVICE_INCIDENT/PROBLEM``, type).

        The walk that prunes a document knows an element's type from its parent's; this is
        the same knowledge laid out as paths, for checks that libxml2 evaluates.  A schema
        with a recursive type has no finite list: ValueError.
        """
        found: list[tuple[str, str]] = []

        def visit(path: str, type_name: str, inside: tuple[str, ...]) -> None:
            if type_name in inside:
                raise ValueError(f"{type_name} contains itself; its positions cannot be listed")
            found.append((path, type_name))
            for decl in self.types[type_name].values():
                if decl.type_name is not None:
                    visit(f"{path}/{decl.name}", decl.type_name, inside + (type_name,))

        visit(f"/{self.root_name}", self.root_type, ())
        return found

    def required(self, type_name: str) -> tuple[ChildDecl, ...]:
        """The children *type_name* must have (``minOccurs`` above zero)."""
        return self._required[type_name]

    def child(self, path: str) -> ChildDecl | None:
        """The declaration at a slash path below the root, e.g. ``AGREEMENT/ContractID``."""
        type_name: str | None = self.root_type
        decl = None
        for name in path.split("/"):
            if type_name is None:
                return None
            decl = self.types[type_name].get(name)
            if decl is None:
                return None
            type_name = decl.type_name
        return decl


@cache
def _xsd(name: str) -> etree._ElementTree:
    path = SCHEMA_DIR / name
    # The schema is ours and trusted, but parse it like everything else: no network.
    return etree.parse(str(path), etree.XMLParser(no_network=True, resolve_entities=False))


@cache
def catalogue() -> SchemaCatalogue:
    """The catalogue of ``service_incident.xsd``."""
    return SchemaCatalogue(_xsd("service_incident.xsd"))


@cache
def incident_schema() -> etree.XMLSchema:
    """lxml's compiled SERVICE_INCIDENT schema."""
    return etree.XMLSchema(_xsd("service_incident.xsd"))


@cache
def counting_schema() -> tuple[etree.XMLSchema, frozenset[str]]:
    """The SERVICE_INCIDENT schema that also counts children where XSD 1.0 can; and those types.

    A repeating ``xs:choice`` (``minOccurs="0"``) whose particles each occur at most once
    (and at least zero or one time), with the minOccurs and maxOccurs that gsem enforces,
    allows exactly the child sequences that ``xs:all`` over the same particles allows; this
    schema has such content models written as ``xs:all``, and those types are the set
    returned.  So a document valid against it is valid against :func:`incident_schema`
    and breaks none of those types' declared cardinalities.
    """
    xsd = copy.deepcopy(_xsd("service_incident.xsd"))
    types = catalogue().types
    counted = set()
    for complex_type in xsd.getroot().findall(f"{XS}complexType"):
        choice = complex_type.find(f"{XS}choice")
        name = complex_type.get("name")
        if (
            choice is None
            or choice.get("minOccurs") != "0"
            or choice.get("maxOccurs") != "unbounded"
            or len(choice) != len(choice.findall(f"{XS}element"))
            or not all(d.max_occurs == 1 and d.min_occurs <= 1 for d in types[name].values())
        ):
            continue
        choice.tag = f"{XS}all"
        del choice.attrib["minOccurs"], choice.attrib["maxOccurs"]
        counted.add(name)
    return etree.XMLSchema(xsd), frozenset(counted)


@cache
def ack_schema() -> etree.XMLSchema:
    """lxml's compiled ACKNOWLEDGEMENT schema (used by tests and clients)."""
    return etree.XMLSchema(_xsd("acknowledgement.xsd"))
