"""Fixtures for tests against a real ``gsem serve`` process (see ``hub.py``).

``hub`` is a demo hub on SQLite; ``hub_any_db`` runs the test once on SQLite and once on
PostgreSQL (a fresh database from the top-level ``pg_database_url`` fixture, skipped with
its reason when no server is available).  Both stop the server after the test and fail
the test if the server logged a Python traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub import CURL, RunningHub


def _hub(data_dir: Path, database_url: str | None) -> Iterator[RunningHub]:
    if CURL is None:
        pytest.skip("curl is not installed")
    hub = RunningHub.create(data_dir, database_url=database_url)
    try:
        yield hub
    finally:
        hub.stop()
    hub.assert_no_traceback()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    """A running demo hub (partners ACME and GLOBEX, contract C-100) on SQLite."""
    yield from _hub(tmp_path / "hub", None)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def hub_any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningHub]:
    """A running demo hub, on SQLite and then on a fresh PostgreSQL database."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_database_url")
    yield from _hub(tmp_path / "hub", url)
