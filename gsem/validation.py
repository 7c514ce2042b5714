"""Validation of one document (SPEC §3–§5), stage by stage, collecting every problem.

hardened parse → unknown and hub-set elements pruned (warnings) → declared cardinalities
and the schema → TransactionName → field matrix and rules → state.  Each stage that can
still run after an earlier one failed does run, so a rejection lists all problems found.

Most documents are clean, and for them the pruning walk, a Python call per element,
cost more than parsing and validating together.  So libxml2 and a byte scan first say
whether the walk could find anything (:meth:`DocumentValidator._untouched_children`);
only when they cannot rule it out does the walk run.  Both ways give the same results,
problem for problem and byte for byte (``tests/unit/test_validation_golden.py``).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field

from lxml import etree

from gsem.contract import NO_INCIDENT, IncidentFacts, Mark, Role, State, TransactionSpec
from gsem.errors import AckCode, DocumentRejected, Problem, WarningCode
from gsem.rules import RULES
from gsem.schema import ChildDecl, catalogue, counting_schema, incident_schema
from gsem.xmlsafe import ParseLimits, parse_document
from transactions import registry

__all__ = ["Inspection", "DocumentValidator", "check_state", "validate_document", "HUB_SET_ELEMENTS"]

ROOT = "SERVICE_INCIDENT"
#: Elements the hub fills in on what it forwards; partners' values are ignored (SPEC §3.1).
HUB_SET_ELEMENTS = frozenset({"CurrentState", "Acknowledge"})

#: The ATTACHMENT rule of the walk: exactly one of these children (SPEC §3.1).
_ATTACHMENT = "ATTACHMENT"
_ATTACHMENT_CONTENT = ("AttachmentReference", "AttachmentObject")

#: A matrix field as check_matrix reads it: (path, its names or None when they are not
#: plain names, mandatory, rule numbers).
_Field = tuple[str, tuple[str, ...] | None, bool, tuple[int, ...]]
#: id(spec) -> (spec, its fields), as TransactionSpec is not hashable.  Declarations are
#: module constants; the bound is for code that makes specs on the fly.
_FIELDS: dict[int, tuple[TransactionSpec, list[_Field]]] = {}
_MAX_CACHED_SPECS = 256

#: What ``str.strip()`` strips, every character whose ``isspace()`` is true: the walk
#: prunes an element whose text is only these as empty (SPEC §5).
_SPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _one_of(characters: str) -> bytes:
    """A bytes pattern for the UTF-8 of any one of *characters*.

    One character class per leading bytes, so that the regex engine tries a handful of
    branches rather than one per character.
    """
    by_prefix: dict[bytes, list[bytes]] = {}
    for character in characters:
        encoded = character.encode("utf-8")
        by_prefix.setdefault(encoded[:-1], []).append(re.escape(encoded[-1:]))
    return b"|".join(re.escape(prefix) + b"[" + b"".join(lasts) + b"]" for prefix, lasts in by_prefix.items())


#: A start tag (its quoted values may hold ``>`` and ``/``) followed by nothing but spaces
#: and character references up to an end tag.  In a body with no ``/>``, comment, CDATA
#: section or processing instruction, an element that parses with no child and a text of
#: spaces is written so: entity references other than the five predefined ones, which
#: are not spaces, need a DOCTYPE, which is refused.  Possessive quantifiers, as there is
#: nothing to backtrack into: without them the search costs three times as much.
_EMPTY_ELEMENT = re.compile(
    rb"<[^/!?<>\"']*+(?:(?:\"[^\"]*+\"|'[^']*+')[^<>\"']*+)*+>(?:"
    + _one_of(_SPACE)
    + rb"|&#[0-9A-Fa-fx]++;)*+</"
)


def _may_have_empty_element(data: bytes) -> bool:
    """False only when no element of the well-formed *data* parses as empty; True may be a false alarm."""
    start = data.index(b"?>") + 2 if data.startswith(b"<?xml") else 0
    return (
        b"/>" in data
        or data.find(b"<!", start) >= 0
        or data.find(b"<?", start) >= 0
        or _EMPTY_ELEMENT.search(data, start) is not None
    )


@dataclass
class Inspection:
    """A document after the stages that do not depend on the transaction's sender."""

    tree: etree._ElementTree | None
    transaction_name: str | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    #: What :meth:`DocumentValidator.precheck_matrix` found, kept aside until the decision
    #: knows the sender's declaration: (that declaration, its errors, its warnings).
    prechecked: tuple[TransactionSpec, list[Problem], list[Problem]] | None = None

    @property
    def root(self) -> etree._Element | None:
        """The (pruned) SERVICE_INCIDENT element, when the document parsed."""
        return None if self.tree is None else self.tree.getroot()

    def text(self, name: str) -> str | None:
        """The stripped text of a root child, or None when absent or empty."""
        root = self.root
        if root is None:
            return None
        return _child_text(root, name)

    @property
    def accepted(self) -> bool:
        """True while no error has been found."""
        return not self.errors


def _path(element: etree._Element) -> str:
    return element.getroottree().getpath(element)


def _child_text(element: etree._Element, name: str) -> str | None:
    """``(element.findtext(name) or "").strip() or None``, for the root children read on every document.

    ``findtext`` with a plain name selects ``iterchildren(name)`` through lxml's
    ElementPath, whose parsing and cache lookup cost more than the selection itself.
    """
    if not name.isidentifier():
        return (element.findtext(name) or "").strip() or None
    for child in element.iterchildren(name):
        return (child.text or "").strip() or None
    return None


@dataclass(frozen=True)
class _Shortcut:
    """What :meth:`DocumentValidator._untouched_children` checks besides the byte scan."""

    counting_schema: etree.XMLSchema
    #: True for a document with a count below the root that the counting schema does not check
    miscounted: etree.XPath
    #: the walk's counts at the root: how many times a child may occur at most ...
    root_limits: dict[str, int]
    #: ... and the children that must occur
    root_required: tuple[ChildDecl, ...]


@functools.cache
def _shortcut() -> _Shortcut:
    """Built once: validate_document makes a validator per call unless given one."""
    declared = catalogue()
    schema, counted = counting_schema()
    (_, root_type), *positions = declared.positions()
    return _Shortcut(
        counting_schema=schema,
        miscounted=_miscounted_xpath(positions, declared.types, counted),
        root_limits={name: most for name, decl in declared.types[root_type].items() if (most := _most(decl))},
        root_required=declared.required(root_type),
    )


class DocumentValidator:
    """Checks documents against the schema and the declared contract; holds no per-document state."""

    def __init__(self, limits: ParseLimits = ParseLimits()) -> None:
        self.limits = limits
        self._catalogue = catalogue()
        self._schema = incident_schema()
        self._shortcut = _shortcut()

    def inspect(self, data: bytes, *, strict: bool = False) -> Inspection:
        """Parse, prune and schema-check *data*; find its TransactionName.

        With *strict*, elements the schema does not know are errors, not warnings.
        """
        try:
            tree = parse_document(data, self.limits)
        except DocumentRejected as e:
            return Inspection(tree=None, errors=list(e.problems))
        inspection = Inspection(tree=tree)
        root = tree.getroot()
        if root.tag != ROOT:
            inspection.errors.append(
                Problem(AckCode.SCHEMA_VIOLATION, f"the root element must be {ROOT}, not {root.tag}", f"/{root.tag}")
            )
            inspection.tree = None
            return inspection
        untouched = self._untouched_children(data, tree)
        tags = None
        if untouched is None:
            self._prune_and_count(root, self._catalogue.root_type, inspection, strict)
            name = inspection.text("TransactionName")
        else:
            children, tags = untouched
            name = None
            if "TransactionName" in tags:
                name = (children[tags.index("TransactionName")].text or "").strip() or None
        specs = registry.specs_named(name) if name else ()
        dropped = False
        if specs:
            # Drop what no declaration of this transaction uses before the schema sees it:
            # an ignored element cannot be a reason to refuse (SPEC §4.1 "ignored if present").
            used = frozenset().union(*(spec.top_level_elements for spec in specs))
            if tags is None or not used.issuperset(tags):
                dropped = self._drop_unused(root, used, name, inspection)
        # An untouched document is valid against the counting schema, so against the
        # incident schema too; it is validated again only if elements were dropped since.
        if (untouched is None or dropped) and not self._schema.validate(tree):
            for entry in self._schema.error_log:
                inspection.errors.append(
                    # libxml2 says "Element 'X': [facet 'pattern'] The value …": precise; kept as is.
                    Problem(AckCode.SCHEMA_VIOLATION, entry.message, entry.path or None)
                )
        inspection.transaction_name = name
        if name is None:
            inspection.errors.append(
                Problem(AckCode.UNKNOWN_TRANSACTION, "TransactionName is missing", f"/{ROOT}/TransactionName")
            )
        elif not registry.specs_named(name):
            inspection.errors.append(
                Problem(
                    AckCode.UNKNOWN_TRANSACTION,
                    f"{name!r} is not a supported transaction; supported: {', '.join(registry.names())}",
                    f"/{ROOT}/TransactionName",
                )
            )
        return inspection

    def _untouched_children(
        self, data: bytes, tree: etree._ElementTree
    ) -> tuple[list[etree._Element], list[object]] | None:
        """The root's children and their tags, when :meth:`_prune_and_count` would leave *tree* as it is.

        The walk removes unknown, hub-set and empty elements and counts children against
        their declarations.  Here, cheapest first: a scan of the bytes rules out empty
        elements; the tags of the root's children are counted and looked for hub-set
        ones; the counting schema rules out unknown elements and counts children where
        ``xs:all`` can; a compiled XPath does the remaining counts and the ATTACHMENT
        rule.  Any doubt answers None and the walk decides.
        """
        if _may_have_empty_element(data):
            return None
        children = list(tree.getroot())
        tags = [child.tag for child in children]
        present = set(tags)
        if not HUB_SET_ELEMENTS.isdisjoint(present):
            return None
        shortcut = self._shortcut
        if len(present) < len(tags) or shortcut.root_required:
            counts = Counter(tags)
            limits = shortcut.root_limits
            if any(count > limits[name] for name, count in counts.items() if name in limits):
                return None
            if any(counts[decl.name] < decl.min_occurs for decl in shortcut.root_required):
                return None
        if not shortcut.counting_schema.validate(tree) or shortcut.miscounted(tree):
            return None
        return children, tags

    def _prune_and_count(self, element: etree._Element, type_name: str, inspection: Inspection, strict: bool) -> None:
        declared = self._catalogue.types[type_name]
        counts: dict[str, int] = {}
        for child in list(element):
            name = child.tag
            decl = declared.get(name) if isinstance(name, str) else None
            if decl is None or (element.getparent() is None and name in HUB_SET_ELEMENTS):
                why = "is set by the hub" if decl is not None else "is not known to the schema"
                if strict and decl is None:
                    inspection.errors.append(
                        Problem(AckCode.SCHEMA_VIOLATION, f"{name} {why} (strict mode)", _path(child))
                    )
                else:
                    inspection.warnings.append(
                        Problem(WarningCode.IGNORED_ELEMENT, f"{name} {why}; ignored", _path(child))
                    )
                element.remove(child)
                continue
            if len(child) == 0 and not (child.text or "").strip():
                # SPEC §5: an element that is present but empty counts as absent.
                element.remove(child)
                continue
            counts[name] = counts.get(name, 0) + 1
            if decl.type_name is not None:
                self._prune_and_count(child, decl.type_name, inspection, strict)
        # Only names seen more than once can break a maxOccurs, and only the few
        # children a type requires can break a minOccurs: no loop over every declaration.
        for name, count in counts.items():
            decl = declared[name]
            if count > 1 and decl.max_occurs is not None and count > decl.max_occurs:
                inspection.errors.append(
                    Problem(
                        AckCode.SCHEMA_VIOLATION,
                        f"{name} may appear at most {decl.max_occurs} time(s) in {element.tag}; found {count}",
                        f"{_path(element)}/{name}",
                    )
                )
        for decl in self._catalogue.required(type_name):
            if counts.get(decl.name, 0) < decl.min_occurs:
                inspection.errors.append(
                    Problem(AckCode.SCHEMA_VIOLATION, f"{element.tag} needs {decl.name}", f"{_path(element)}/{decl.name}")
                )
        if element.tag == _ATTACHMENT and sum(counts.get(name, 0) for name in _ATTACHMENT_CONTENT) != 1:
            inspection.errors.append(
                Problem(
                    AckCode.SCHEMA_VIOLATION,
                    "an ATTACHMENT needs exactly one of AttachmentReference and AttachmentObject",
                    _path(element),
                )
            )

    @staticmethod
    def _drop_unused(root: etree._Element, used: frozenset[str], name: str, inspection: Inspection) -> bool:
        """Drop (with a warning each) the root children not in *used*; True if there were any."""
        dropped = False
        for child in list(root):
            if child.tag not in used:
                inspection.warnings.append(
                    Problem(WarningCode.IGNORED_ELEMENT, f"{child.tag} is not used by {name}; ignored", _path(child))
                )
                root.remove(child)
                dropped = True
        return dropped

    def precheck_matrix(self, inspection: Inspection) -> None:
        """Check the field matrix now when only one declaration can apply to the document.

        Which declaration applies depends on the sender's role in the incident, known only
        inside the database transaction; but most transactions have one declaration (with
        one sender, or like Query_Incident one for either party: the same matrix whoever
        sends it).  For those the matrix is checked here, outside the transaction, and
        its problems kept aside: :meth:`apply_matrix` adds them where :meth:`check_matrix`
        would have.  The elements the declaration does not use are dropped already
        (:meth:`inspect` dropped those no declaration of the transaction uses, so with one
        declaration none are left to drop; RequesterID and ProviderID, read before the
        matrix, are used by every declaration that can be addressed to an incident).
        """
        if inspection.root is None or inspection.transaction_name is None:
            return
        specs = registry.specs_named(inspection.transaction_name)
        if len(specs) != 1:
            return
        found = Inspection(tree=inspection.tree)
        self.check_matrix(found, specs[0])
        inspection.prechecked = (specs[0], found.errors, found.warnings)

    def apply_matrix(self, inspection: Inspection, spec: TransactionSpec) -> None:
        """:meth:`check_matrix`, or what :meth:`precheck_matrix` found for *spec* already."""
        if inspection.prechecked is not None and inspection.prechecked[0] is spec:
            _, errors, warnings = inspection.prechecked
            inspection.errors.extend(errors)
            inspection.warnings.extend(warnings)
            return
        assert inspection.prechecked is None, "the matrix was checked for another declaration"
        self.check_matrix(inspection, spec)

    def check_matrix(self, inspection: Inspection, spec: TransactionSpec) -> None:
        """Apply *spec*'s field matrix and rules; drop elements it ignores (with warnings)."""
        root = inspection.root
        assert root is not None
        used = spec.top_level_elements
        children = list(root)
        tags = [child.tag for child in children]
        if not used.issuperset(tags):
            self._drop_unused(root, used, spec.name, inspection)
            children = list(root)
            tags = [child.tag for child in children]
        # One pass over the root's children instead of an ElementPath search per field:
        # root.findall("A/B") is the B children of the root's A children, in order.
        by_name: dict[object, list[etree._Element]] = {}
        for tag, child in zip(tags, children, strict=True):
            by_name.setdefault(tag, []).append(child)
        for path, steps, mandatory, rules in self._fields(spec):
            if steps is None:
                present = root.findall(path)
            else:
                present = by_name.get(steps[0], [])
                for name in steps[1:]:
                    present = [found for parent in present for found in parent if found.tag == name]
            if mandatory and not present:
                inspection.errors.append(
                    Problem(AckCode.MISSING_MANDATORY, f"{spec.name} needs {path}", f"/{ROOT}/{path}")
                )
            if present:
                for number in rules:
                    self._rule(inspection, number, root, present, spec)
        for number in spec.rules:
            self._rule(inspection, number, root, [root], spec)

    @staticmethod
    def _fields(spec: TransactionSpec) -> list[_Field]:
        """*spec*'s matrix as check_matrix reads it, worked out once per declaration."""
        cached = _FIELDS.get(id(spec))
        if cached is not None and cached[0] is spec:
            return cached[1]
        fields = []
        for path, cell in spec.fields.items():
            steps = tuple(path.split("/"))
            plain = all(step.isidentifier() for step in steps)
            fields.append((path, steps if plain else None, cell.mark is Mark.MANDATORY, cell.rules))
        if len(_FIELDS) >= _MAX_CACHED_SPECS:
            _FIELDS.clear()
        _FIELDS[id(spec)] = (spec, fields)
        return fields

    @staticmethod
    def _rule(inspection: Inspection, number: int, root: etree._Element, elements: list, spec: TransactionSpec) -> None:
        for message, path in RULES[number].check(root, elements, spec):
            inspection.errors.append(Problem(AckCode.RULE_VIOLATION, message, path))


def _most(decl: ChildDecl) -> int | None:
    """How many *decl* children the walk lets pass: maxOccurs, but it never reports just one."""
    return None if decl.max_occurs is None else max(decl.max_occurs, 1)


def _miscounted_xpath(
    positions: list[tuple[str, str]], types: dict[str, dict[str, ChildDecl]], counted: frozenset[str]
) -> etree.XPath:
    """True for a document with a count below the root that the counting schema does not check.

    Those are the declared minOccurs and maxOccurs of the types the schema could not write
    as ``xs:all``, and the one-of-two content of every ATTACHMENT, at every position the
    walk would visit them.
    """
    terms = []
    for path, type_name in positions:
        conditions = []
        if type_name not in counted:
            for decl in types[type_name].values():
                most = _most(decl)
                if most is not None:
                    conditions.append(f"{decl.name}[{most + 1}]")
                if decl.min_occurs > 0:
                    conditions.append(f"not({decl.name}[{decl.min_occurs}])")
        if path.rsplit("/", 1)[1] == _ATTACHMENT:
            conditions.append(" + ".join(f"count({name})" for name in _ATTACHMENT_CONTENT) + " != 1")
        if conditions:
            terms.append(f"{path}[{' or '.join(conditions)}]")
    return etree.XPath(" or ".join(terms) if terms else "false()")


def check_state(spec: TransactionSpec, facts: IncidentFacts) -> list[Problem]:
    """Problems when *spec* is not allowed in the incident's state (SPEC §4.2)."""
    if spec.creates_incident:
        if facts.state is not NO_INCIDENT:
            return [Problem(AckCode.DUPLICATE_INCIDENT, "an incident with this RequesterID already exists",
                            f"/{ROOT}/RequesterID")]
        return []
    if facts.state is None:
        return [Problem(AckCode.UNKNOWN_INCIDENT, "no incident with this RequesterID for this partner",
                        f"/{ROOT}/RequesterID")]
    if facts.state not in spec.allowed_in:
        allowed = ", ".join(sorted(s.value for s in spec.allowed_in if s is not None))
        return [
            Problem(
                AckCode.NOT_ALLOWED_IN_STATE,
                f"{spec.name} is not allowed in {facts.state.value}; allowed in: {allowed}",
                f"/{ROOT}/TransactionName",
            )
        ]
    return []


def validate_document(
    data: bytes,
    *,
    role: Role | None = None,
    state: State | None = None,
    check_states: bool = True,
    strict: bool = False,
    problem_with_request: bool = False,
    validator: DocumentValidator | None = None,
) -> tuple[Inspection, TransactionSpec | None]:
    """Validate *data* offline as sent by *role* to an incident in *state*.

    *role* None takes the transaction's only sender (the requester for
    Provide_Problem_Information).  With *check_states* false the state is not checked.
    """
    validator = validator or DocumentValidator()
    inspection = validator.inspect(data, strict=strict)
    if inspection.root is None or inspection.transaction_name is None:
        return inspection, None
    specs = registry.specs_named(inspection.transaction_name)
    if not specs:
        return inspection, None
    if role is None:
        spec = specs[0]
    else:
        spec = registry.find(inspection.transaction_name, role)
        if spec is None:
            senders = " or ".join(sorted(r.value for s in specs for r in s.sender))
            inspection.errors.append(
                Problem(
                    AckCode.NOT_AUTHORIZED,
                    f"{inspection.transaction_name} is sent by the {senders}, not the {role.value}",
                    f"/{ROOT}/TransactionName",
                )
            )
            return inspection, None
    validator.check_matrix(inspection, spec)
    if check_states:
        inspection.errors.extend(check_state(spec, IncidentFacts(state, problem_with_request)))
    return inspection, spec
