"""Ways to reach a partner's call-handling system (SPEC §7); one module per way."""

__all__: list[str] = []
