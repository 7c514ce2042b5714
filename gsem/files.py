"""Writing files so that readers never see half of one, even after a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace *path* with *data* in one step, durably.

    A temporary file in the same directory (rename is atomic only within one file
    system) is written and fsync'd, given *mode*, renamed over *path*, and the directory
    is fsync'd, so after a power loss the name is either absent or names the whole file.
    ``mkstemp`` creates the file 0600 before any byte is written, so a private key is
    never readable by others on its way.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
