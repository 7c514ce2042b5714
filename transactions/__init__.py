"""One module per SIS transaction (SPEC §4.1): its matrix, rules, states and transitions.

Pure declarations: no I/O, no reactor.  :mod:`transactions.registry` finds them by name.
"""

__all__: list[str] = []
