"""The SQLite label store: one file, no server.

Writers take turns (`BEGIN IMMEDIATE`, waiting up to `BUSY_TIMEOUT_S` for each other) and
readers never wait for them (write-ahead log). Times are stored as integer microseconds since
the epoch, UTC, so they sort and compare exactly. Triggers refuse updates and deletes, so the
row id (`seq`, one more than the largest so far) is the insertion order.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.errors import StoreError
from hybrid_ad.labels.store import (
    COLUMN_LIST,
    RECORDED_AT,
    TABLE,
    SQLLabelStore,
    nullable_list,
    utc_timestamp,
)

BUSY_TIMEOUT_S = 60.0
CACHE_KIB = 65_536  # the index of a large import fits: 100,000 verdicts 1.7 -> 1.3 s
SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL CHECK (event_id <> ''),
        label INTEGER NOT NULL CHECK (label IN (0, 1)),
        source TEXT NOT NULL CHECK (source <> ''),
        analyst TEXT,
        labelled_at INTEGER NOT NULL,
        note TEXT,
        {RECORDED_AT} INTEGER NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_event ON {TABLE} (event_id, labelled_at, seq)",
    *(
        f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_{action.lower()} BEFORE {action} ON {TABLE}
        BEGIN SELECT RAISE(ABORT, 'label verdicts are append-only'); END"""
        for action in ("UPDATE", "DELETE")
    ),
)


class SQLiteLabelStore(SQLLabelStore):
    """Verdicts in a SQLite file; `create` makes the file and table when missing."""

    placeholder = "?"

    def __init__(self, path: Path, create: bool = False) -> None:
        self.location = str(path)
        if not create and not path.is_file():
            raise StoreError(f"{path}: no label store here (file not found)")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open as a label store ({exc})") from None
        try:
            self._use_wal()
            self._connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            if create:
                self._write(lambda: [self._connection.execute(sql) for sql in SCHEMA])
            elif not self._rows("SELECT 1 FROM sqlite_master WHERE name = ?", [TABLE]):
                raise StoreError(f"{path}: not a label store (no table {TABLE})")
        except sqlite3.Error as exc:
            self._connection.close()
            raise StoreError(f"{path}: cannot open as a label store ({exc})") from None
        except StoreError:
            self._connection.close()
            raise

    def _use_wal(self) -> None:
        """Switch the file to WAL (readers never block the writer). The switch needs the file
        to itself and SQLite answers "database is locked" at once, without the busy timeout,
        while another process opens it too (two analysts' first imports): retry until then."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _insert(self, verdicts: pd.DataFrame) -> None:
        recorded = self._to_db_time(utc_timestamp(pd.Timestamp.now("UTC")))
        rows = zip(
            verdicts["event_id"].tolist(),
            verdicts["label"].astype(int).tolist(),
            verdicts["source"].tolist(),
            nullable_list(verdicts["analyst"]),
            _micros(verdicts["labelled_at"]).tolist(),
            nullable_list(verdicts["note"]),
            repeat(recorded),
            strict=False,
        )
        sql = f"INSERT INTO {TABLE} ({COLUMN_LIST}, {RECORDED_AT}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        self._write(lambda: self._connection.executemany(sql, rows))

    def _write(self, work: Any) -> None:
        """Run `work` in one write transaction; on any error nothing of it is kept."""
        try:
            self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.location}: cannot write ({exc})") from None
        try:
            work()
            self._connection.execute("COMMIT")
        except BaseException as exc:
            self._connection.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.location}: cannot write ({exc})") from None
            raise

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._connection.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.location}: cannot read ({exc})") from None

    def _to_db_time(self, stamp: pd.Timestamp) -> int:
        return int(stamp.value // 1000)

    def _from_db_times(self, values: Sequence[Any]) -> pd.Series:
        micros = pd.Series(list(values), dtype=np.int64)
        return pd.to_datetime(micros, unit="us", utc=True).astype("datetime64[us, UTC]")

    def close(self) -> None:
        self._connection.close()


def _micros(times: pd.Series) -> np.ndarray:
    return times.to_numpy(dtype="datetime64[us]").astype(np.int64)
