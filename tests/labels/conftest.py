"""Every label-store test runs on both backends: a SQLite file and a real PostgreSQL schema.

PostgreSQL is the server at `HYBRID_AD_TEST_POSTGRES` (default 127.0.0.1:5432, database
`test`); each test gets a fresh schema, dropped afterwards. Without the server these tests
fail: they never skip.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

POSTGRES = os.environ.get("HYBRID_AD_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a new, empty label store may be made."""
    if request.param == "sqlite":
        yield str(tmp_path / "labels.db")
        return
    schema = f"labels_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        separator = "&" if "?" in POSTGRES else "?"
        yield f"{POSTGRES}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def execute_raw(url: str, sql: str) -> None:
    """Run SQL on the store's database directly, past the store's own code."""
    if url.startswith("postgresql://"):
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(sql)
    else:
        connection = sqlite3.connect(url, isolation_level=None)
        try:
            connection.execute(sql)
        finally:
            connection.close()
