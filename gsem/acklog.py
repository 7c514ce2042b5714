"""One structured (JSON) line per acknowledgement and per delivery attempt (SPEC §8)."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

__all__ = ["AckLog"]

#: ``json.dumps(record, separators=...)`` builds an encoder per call; one will do.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class AckLog:
    """Writes one JSON object per line to *stream* (standard output by default).

    *fields* are added to every acknowledgement line (``{"worker": 2}`` in a worker
    process).  Each line is flushed on its own, in one write: the worker processes of one
    hub share its standard output, and a pipe or an append-mode file keeps such writes
    whole (on a pipe up to 4 KiB, far more than a line).
    """

    def __init__(self, stream: IO[str] | None = None, fields: dict[str, Any] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.fields = dict(fields or {})

    def write(self, inbound: Any, outcome: Any, timings: dict[str, float]) -> None:
        """Log the acknowledgement *outcome* sent for *inbound*."""
        record = {
            "event": "acknowledgement",
            "time": inbound.received_at.isoformat(timespec="milliseconds") + "Z",
            "partner": inbound.partner_id,
            "fingerprint": inbound.fingerprint[:16],
            "http_status": outcome.http_status,
            "bytes": len(inbound.body),
            **outcome.log_fields,
            **self.fields,
            "timings_ms": timings,
        }
        self.emit(record)

    def emit(self, record: dict[str, Any]) -> None:
        """Write one record as one JSON line."""
        self.stream.write(_ENCODER.encode(record) + "\n")
        self.stream.flush()
