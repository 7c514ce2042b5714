"""Validation of one document (SPEC §3–§5), stage by stage, collecting every problem.

hardened parse → unknown and hub-set elements pruned (warnings) → declared cardinalities
and the schema → TransactionName → field matrix and rules → state.  Each stage that can
still run after an earlier one failed does run, so a rejection lists all problems found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from gsem.contract import NO_INCIDENT, IncidentFacts, Mark, Role, State, TransactionSpec
from gsem.errors import AckCode, DocumentRejected, Problem, WarningCode
from gsem.rules import RULES
from gsem.schema import catalogue, incident_schema
from gsem.xmlsafe import ParseLimits, parse_document
from transactions import registry

__all__ = ["Inspection", "DocumentValidator", "check_state", "validate_document", "HUB_SET_ELEMENTS"]

ROOT = "SERVICE_INCIDENT"
#: Elements the hub fills in on what it forwards; partners' values are ignored (SPEC §3.1).
HUB_SET_ELEMENTS = frozenset({"CurrentState", "Acknowledge"})


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
        value = (root.findtext(name) or "").strip()
        return value or None

    @property
    def accepted(self) -> bool:
        """True while no error has been found."""
        return not self.errors


def _path(element: etree._Element) -> str:
    return element.getroottree().getpath(element)


class DocumentValidator:
    """Checks documents against the schema and the declared contract; holds no state."""

    def __init__(self, limits: ParseLimits = ParseLimits()) -> None:
        self.limits = limits
        self._catalogue = catalogue()
        self._schema = incident_schema()

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
        self._prune_and_count(root, self._catalogue.root_type, inspection, strict)
        name = inspection.text("TransactionName")
        specs = registry.specs_named(name) if name else ()
        if specs:
            # Drop what no declaration of this transaction uses before the schema sees it:
            # an ignored element cannot be a reason to refuse (SPEC §4.1 "ignored if present").
            used = frozenset().union(*(spec.top_level_elements for spec in specs))
            self._drop_unused(root, used, name, inspection)
        if not self._schema.validate(tree):
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
        if element.tag == "ATTACHMENT" and counts.get("AttachmentReference", 0) + counts.get("AttachmentObject", 0) != 1:
            inspection.errors.append(
                Problem(
                    AckCode.SCHEMA_VIOLATION,
                    "an ATTACHMENT needs exactly one of AttachmentReference and AttachmentObject",
                    _path(element),
                )
            )

    @staticmethod
    def _drop_unused(root: etree._Element, used: frozenset[str], name: str, inspection: Inspection) -> None:
        for child in list(root):
            if child.tag not in used:
                inspection.warnings.append(
                    Problem(WarningCode.IGNORED_ELEMENT, f"{child.tag} is not used by {name}; ignored", _path(child))
                )
                root.remove(child)

    def precheck_matrix(self, inspection: Inspection) -> None:
        """Check the field matrix now when only one declaration can apply to the document.

        Which declaration applies depends on the sender's role in the incident, known only
        inside the database transaction; but most transactions have one declaration with
        one sender.  For those the matrix is checked here, outside the transaction, and
        its problems kept aside: :meth:`apply_matrix` adds them where :meth:`check_matrix`
        would have.  The elements the declaration does not use are dropped already
        (RequesterID and ProviderID, read before the matrix, are used by every
        declaration that can be addressed to an incident).
        """
        if inspection.root is None or inspection.transaction_name is None:
            return
        specs = registry.specs_named(inspection.transaction_name)
        if len(specs) != 1 or len(specs[0].sender) != 1:
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
        self._drop_unused(root, spec.top_level_elements, spec.name, inspection)
        for path, cell in spec.fields.items():
            present = root.findall(path)
            if cell.mark is Mark.MANDATORY and not present:
                inspection.errors.append(
                    Problem(AckCode.MISSING_MANDATORY, f"{spec.name} needs {path}", f"/{ROOT}/{path}")
                )
            if present:
                for number in cell.rules:
                    self._rule(inspection, number, root, present, spec)
        for number in spec.rules:
            self._rule(inspection, number, root, [root], spec)

    @staticmethod
    def _rule(inspection: Inspection, number: int, root: etree._Element, elements: list, spec: TransactionSpec) -> None:
        for message, path in RULES[number].check(root, elements, spec):
            inspection.errors.append(Problem(AckCode.RULE_VIOLATION, message, path))


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
