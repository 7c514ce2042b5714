"""Delivery by files: an outbox directory for the receiver, an acks directory back (SPEC §7).

The conventions a receiver programs against:

``OUTBOX/<message>-<delivery>.xml``
    One document per delivery.  ``<message>`` (the hub's message id) and ``<delivery>``
    (the delivery id, the same as the ``Gsem-Delivery-Id`` of push) are zero-padded to 12
    digits, so sorting the names gives the order the hub accepted the messages in.  A
    file appears whole: it is written under a temporary name starting with ``.`` and
    renamed, so readers must skip names starting with ``.``.  The same delivery written
    again (after a crash of the hub) has the same name: a receiver that sees a name it
    has already processed has seen that delivery already.  The receiver removes or
    moves the files it has taken.

``ACKS/<delivery>.xml`` or ``ACKS/<delivery>-<anything>.xml``
    The receiver's ACKNOWLEDGEMENT (SPEC §5) of delivery ``<delivery>`` (the number,
    with or without leading zeros).  Write it under another name (e.g. starting with
    ``.``) and rename it, so that the hub never reads half a file.  ``Acknowledge=Yes``
    completes the delivery; ``No`` makes it dead with the receiver's errors kept.  Once
    recorded, the hub moves the file to ``ACKS/processed/``; a file it cannot read as an
    acknowledgement goes to ``ACKS/rejected/`` with a log line saying why.

Writing a file counts as handing the delivery over (:class:`~chs_adapters.base.Accepted`);
the next message of the incident waits for the acknowledgement file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from chs_adapters.base import (
    Accepted,
    DeliveryResult,
    MalformedReceiverAck,
    OutboundDelivery,
    TransientFailure,
    read_receiver_ack,
)
from gsem.files import write_atomically

__all__ = ["SpoolAdapter", "SpoolAck", "outbox_name", "MAX_ACK_BYTES"]

log = Logger()

#: Names of acknowledgement files: the delivery id, optionally followed by "-anything".
_ACK_NAME = re.compile(r"(\d{1,18})(?:-[^/]*)?\.xml")
#: An acknowledgement file larger than this is not read (it cannot be a sane ACKNOWLEDGEMENT).
MAX_ACK_BYTES = 1024 * 1024


def outbox_name(delivery: OutboundDelivery) -> str:
    """The outbox file name of *delivery*: ``<message>-<delivery>.xml``, zero-padded to 12."""
    # Without a message id, the delivery id still orders deliveries globally (ids grow).
    message = delivery.message_id if delivery.message_id is not None else delivery.delivery_id
    return f"{message:012d}-{delivery.delivery_id:012d}.xml"


@dataclass(frozen=True)
class SpoolAck:
    """A receiver's acknowledgement found in the acks directory."""

    delivery_id: int
    receiver_ack: bytes
    acknowledged: bool
    error: str | None
    path: Path


class SpoolAdapter:
    """Writes deliveries to *outbox* and reads the receiver's acknowledgements from *acks*.

    The directories are created if missing.  File operations are small and run on the
    calling (reactor) thread.
    """

    def __init__(self, outbox: Path, acks: Path, *, reactor: Any = None) -> None:
        self.outbox = Path(outbox)
        self.acks = Path(acks)
        # Writing and fsyncing a file blocks for milliseconds: it runs in the reactor's
        # thread pool when there is one, so the listener keeps answering meanwhile.  A
        # test Clock has no thread pool; then the write happens in place.
        self.reactor = reactor
        self.processed = self.acks / "processed"
        self.rejected = self.acks / "rejected"
        for directory in (self.outbox, self.acks, self.processed, self.rejected):
            directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any = None) -> SpoolAdapter:
        """The adapter for a partner's ``{"outbox": DIR, "acks": DIR}`` settings.

        Relative directories are relative to the context's ``data_dir`` when it has one.
        """
        base = getattr(context, "data_dir", None)
        problems = [f"spool delivery needs '{key}' (a directory)" for key in ("outbox", "acks")
                    if not isinstance(options.get(key), str) or not options.get(key)]
        if problems:
            raise ValueError("; ".join(problems))

        def resolve(value: str) -> Path:
            path = Path(value)
            return path if path.is_absolute() or base is None else Path(base) / path

        return cls(resolve(options["outbox"]), resolve(options["acks"]),
                   reactor=getattr(context, "reactor", None))

    async def deliver(self, delivery: OutboundDelivery) -> DeliveryResult:
        """Write the document into the outbox; :class:`Accepted` once it is on disk."""
        path = self.outbox / outbox_name(delivery)
        try:
            thread_pool = getattr(self.reactor, "getThreadPool", None)
            if thread_pool is None:
                write_atomically(path, delivery.document)
            else:
                await deferToThreadPool(self.reactor, thread_pool(), write_atomically, path, delivery.document)
        except OSError as e:
            return TransientFailure(f"cannot write {path}: {e.strerror or e}")
        return Accepted(f"written to {path}")

    def poll_acks(self) -> list[SpoolAck]:
        """The acknowledgements waiting in the acks directory, oldest name first.

        Files that are not acknowledgements go to ``rejected/`` at once, with a log line.
        The others stay until :meth:`settle` moves them, so that an acknowledgement read
        but not yet recorded (the hub stopped in between) is read again.
        """
        found: list[SpoolAck] = []
        try:
            names = sorted(os.listdir(self.acks))
        except OSError as e:
            log.warn("cannot read the spool acknowledgements in {acks}: {error}", acks=str(self.acks),
                     error=e.strerror or str(e))
            return found
        for name in names:
            path = self.acks / name
            if name.startswith(".") or not name.endswith(".xml") or not path.is_file():
                continue
            match = _ACK_NAME.fullmatch(name)
            if match is None:
                self._reject(path, "the name does not start with a delivery id (<delivery>.xml or "
                                   "<delivery>-<anything>.xml)")
                continue
            try:
                size = path.stat().st_size
                if size > MAX_ACK_BYTES:
                    self._reject(path, f"the file is {size} bytes; an acknowledgement is at most {MAX_ACK_BYTES}")
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # another hub node took it
            except OSError as e:
                log.warn("cannot read {path}: {error}", path=str(path), error=e.strerror or str(e))
                continue
            try:
                ack = read_receiver_ack(data)
            except MalformedReceiverAck as e:
                self._reject(path, str(e))
                continue
            found.append(SpoolAck(int(match.group(1)), data, ack.acknowledged,
                                  None if ack.acknowledged else ack.error_text or "Acknowledge=No", path))
        return found

    def settle(self, ack: SpoolAck) -> None:
        """Move an acknowledgement the hub has recorded to ``processed/``."""
        self._move(ack.path, self.processed)

    def reject(self, ack: SpoolAck, reason: str) -> None:
        """Move an acknowledgement the hub cannot use (no such delivery) to ``rejected/``."""
        self._reject(ack.path, reason)

    def _reject(self, path: Path, reason: str) -> None:
        log.warn("spool acknowledgement {path} rejected: {reason}; moved to {rejected}",
                 path=str(path), reason=reason, rejected=str(self.rejected))
        self._move(path, self.rejected)

    @staticmethod
    def _move(path: Path, directory: Path) -> None:
        try:
            os.replace(path, directory / path.name)
        except FileNotFoundError:
            pass  # already moved (another hub node)

    async def close(self) -> None:
        """Nothing to release."""
