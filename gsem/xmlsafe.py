"""One hardened XML parser for everything partners send (SPEC §3, §5, §8).

No DTD, no entity resolution, no network, no huge trees.  The body size is capped
before parsing; any DOCTYPE or entity node is refused after parsing (a document may
declare entities without using them); depth and element count are capped on the tree.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass

from lxml import etree

from gsem.errors import AckCode, DocumentRejected, Problem

__all__ = ["ParseLimits", "parse_document", "escape_text", "escape_attribute"]


@dataclass(frozen=True)
class ParseLimits:
    """Caps applied to one document (SPEC §8 defaults)."""

    max_bytes: int = 1024 * 1024
    max_depth: int = 32
    max_elements: int = 20_000


# Compiled once: lxml parsers are not shared between threads, but one per thread is
# enough and creating one costs more than parsing a small document.
def _new_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


_local = threading.local()
_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")


def _parser() -> etree.XMLParser:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = _new_parser()
    return parser


def _reject(code: AckCode, message: str) -> DocumentRejected:
    return DocumentRejected([Problem(code, message, None)])


def parse_document(data: bytes, limits: ParseLimits = ParseLimits()) -> etree._ElementTree:
    """Parse *data* as a partner's document or raise :class:`DocumentRejected`.

    Raises with ``too-large`` for bodies, trees or depths over *limits* and with
    ``malformed-xml`` for anything that is not a well-formed UTF-8 XML 1.0 document
    without DOCTYPE and entities.
    """
    if len(data) > limits.max_bytes:
        raise _reject(AckCode.TOO_LARGE, f"the body is {len(data)} bytes; the limit is {limits.max_bytes}")
    if not data.strip():
        raise _reject(AckCode.MALFORMED_XML, "the body is empty")
    declared = _XML_DECL.match(data)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        raise _reject(
            AckCode.MALFORMED_XML,
            f"the document declares encoding {declared.group(1).decode('ascii')!r}; only UTF-8 is accepted",
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _reject(AckCode.MALFORMED_XML, "the document is UTF-16; only UTF-8 is accepted")
    if b"\x00" in data:
        # NUL is never an XML 1.0 character; in practice it means UTF-16/32 without a BOM,
        # which is also valid "UTF-8" and which libxml2 would otherwise auto-detect and parse.
        raise _reject(AckCode.MALFORMED_XML, "the body contains NUL bytes; only UTF-8 is accepted")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _reject(AckCode.MALFORMED_XML, f"the body is not valid UTF-8 (byte {e.start})") from None
    try:
        tree = etree.ElementTree(etree.fromstring(data, _parser()))
    except etree.XMLSyntaxError as e:
        # libxml2's messages are clear ("Extra content at the end of the document"); the
        # position helps the partner find it.
        message = e.msg or "not well-formed"
        if e.code == etree.ErrorTypes.ERR_RESOURCE_LIMIT and "depth" in message:
            # libxml2 stops at 256 levels itself; such a document is well-formed but too
            # deep, which SPEC §5 answers with too-large like any depth over the limit.
            raise _reject(AckCode.TOO_LARGE, f"the document is more than {limits.max_depth} levels deep") from None
        raise _reject(AckCode.MALFORMED_XML, f"not well-formed XML: {message}") from None
    docinfo = tree.docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise _reject(AckCode.MALFORMED_XML, "a DOCTYPE is not allowed")
    root = tree.getroot()
    # Walk in libxml2, not in Python: these checks run on every document (hot path).
    for _ in root.iter(etree.Entity):
        raise _reject(AckCode.MALFORMED_XML, "entity references are not allowed")
    count_elements, too_deep = _tree_checks(limits.max_depth)
    if count_elements(root) > limits.max_elements:
        raise _reject(AckCode.TOO_LARGE, f"more than {limits.max_elements} elements")
    if too_deep(root):
        raise _reject(AckCode.TOO_LARGE, f"the document is more than {limits.max_depth} levels deep")
    return tree


@functools.cache
def _tree_checks(max_depth: int) -> tuple[etree.XPath, etree.XPath]:
    """Compiled XPaths: the element count, and whether any element lies below *max_depth*."""
    return etree.XPath("count(//*)"), etree.XPath("boolean(/*" + "/*" * max_depth + ")")


# xml.sax.saxutils.escape's replacements, in its order.  Most values hold none of these
# characters, and looking for them first costs a fraction of escape()'s replace calls.
_ATTRIBUTE_SPECIAL = re.compile('[&<>"\n\r\t]')


def escape_text(value: str) -> str:
    """*value* as lxml writes element text: for documents joined as text on the hot path."""
    if "&" in value or "<" in value or ">" in value or "\r" in value:
        return value.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;").replace("\r", "&#13;")
    return value


def escape_attribute(value: str) -> str:
    """*value* as lxml writes a double-quoted attribute value."""
    if _ATTRIBUTE_SPECIAL.search(value) is None:
        return value
    return (value.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;").replace('"', "&quot;")
            .replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))
