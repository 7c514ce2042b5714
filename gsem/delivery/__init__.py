"""Forwarding accepted transactions to the counterparty (SPEC §7)."""

__all__: list[str] = []
