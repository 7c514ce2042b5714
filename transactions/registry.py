"""Finds a transaction's declaration by name and sending role."""

from __future__ import annotations

from functools import cache
from importlib import import_module

from gsem.contract import Role, TransactionSpec

__all__ = ["MODULES", "all_specs", "specs_named", "find", "names"]

#: The supported transactions, in the order of SPEC §4.1's matrices.
MODULES = (
    "service_request",
    "problem_submittal",
    "provide_problem_information",
    "reject_resolution",
    "confirm_close",
    "request_closure",
    "query_incident",
    "entitlement",
    "accept_problem",
    "request_problem_information",
    "problem_resolution",
)


@cache
def all_specs() -> tuple[TransactionSpec, ...]:
    """Every declaration of every supported transaction."""
    specs: list[TransactionSpec] = []
    for module in MODULES:
        specs.extend(import_module(f"transactions.{module}").TRANSACTIONS)
    return tuple(specs)


def names() -> tuple[str, ...]:
    """The supported transaction names, each once."""
    return tuple(dict.fromkeys(spec.name for spec in all_specs()))


def specs_named(name: str) -> tuple[TransactionSpec, ...]:
    """The declarations of transaction *name* (two for Provide_Problem_Information)."""
    return _by_name().get(name, ())


@cache
def _by_name() -> dict[str, tuple[TransactionSpec, ...]]:
    by_name: dict[str, tuple[TransactionSpec, ...]] = {}
    for spec in all_specs():
        by_name[spec.name] = by_name.get(spec.name, ()) + (spec,)
    return by_name


def find(name: str, role: Role) -> TransactionSpec | None:
    """The declaration of *name* as sent by *role*, or None."""
    for spec in specs_named(name):
        if role in spec.sender:
            return spec
    return None
