"""Acknowledgement ids: ULIDs (26 Crockford base-32 characters, sortable by creation time)."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_ulid"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last = (0, 0)


def new_ulid(now: float | None = None) -> str:
    """A new ULID; ids made in the same millisecond by this process still sort in order."""
    global _last
    millis = int((time.time() if now is None else now) * 1000)
    with _lock:
        last_millis, last_random = _last
        if millis <= last_millis:
            # Monotonic within a millisecond (and across a clock step back): increment.
            millis, random = last_millis, last_random + 1
        else:
            random = int.from_bytes(os.urandom(10), "big")
        _last = (millis, random)
    value = (millis << 80) | (random & ((1 << 80) - 1))
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))
