"""Fixtures of the unit tests that run the ``gsem`` command line in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gsem.cli import main
from gsem.config import CONFIG_NAME, render_config

#: ``run_gsem("partners", "list")`` → (exit status, stdout, stderr)
Gsem = Callable[..., tuple[int, str, str]]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory whose gsem.toml points at an SQLite file inside it."""
    monkeypatch.delenv("GSEM_DATABASE_URL", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    (tmp_path / CONFIG_NAME).write_text(render_config(database_url="sqlite:///gsem.db"), "utf-8")
    return tmp_path


@pytest.fixture
def run_gsem(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Gsem:
    """Run ``gsem --data-dir DATA_DIR ARGS…`` in this process; returns (exit status, stdout, stderr)."""
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--data-dir", str(data_dir), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
