"""The PostgreSQL label store, for teams whose analysts label at the same time.

The table lives in the connection's search path (a URL's `options=-csearch_path=…` picks a
schema). Each append is one transaction that first takes a lock only writers contend for, so
appends are ordered as they commit and readers never wait; a trigger refuses updates,
deletes and truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import psycopg

from hybrid_ad.errors import StoreError
from hybrid_ad.labels.store import (
    COLUMN_LIST,
    RECORDED_AT,
    TABLE,
    TIME_FORMAT,
    SQLLabelStore,
    first_line,
    nullable_list,
    safe_location,
)

CONNECT_TIMEOUT_S = 10
SCHEMA_LOCK = 0x6879_6261_6400  # advisory lock key: schema creation, one session at a time
SCHEMA = (
    f"""CREATE TABLE {TABLE} (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL CHECK (event_id <> ''),
        label SMALLINT NOT NULL CHECK (label IN (0, 1)),
        source TEXT NOT NULL CHECK (source <> ''),
        analyst TEXT,
        labelled_at TIMESTAMPTZ NOT NULL,
        note TEXT,
        {RECORDED_AT} TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    f"CREATE INDEX {TABLE}_event ON {TABLE} (event_id, labelled_at, seq)",
    f"""CREATE OR REPLACE FUNCTION {TABLE}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'label verdicts are append-only'; END $$""",
    f"""CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_append_only()""",
)


class PostgresLabelStore(SQLLabelStore):
    """Verdicts in a PostgreSQL table; `create` makes the table when missing."""

    placeholder = "%s"

    def __init__(self, url: str, create: bool = False) -> None:
        self.location = safe_location(url)
        try:
            self._connection = psycopg.connect(
                url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.Error as exc:
            raise StoreError(f"{self.location}: cannot connect ({first_line(exc)})") from None
        try:
            if create:
                self._write(self._create_schema)
            elif not self._exists():
                raise StoreError(f"{self.location}: not a label store (no table {TABLE})")
        except BaseException:
            self._connection.close()
            raise

    def _exists(self) -> bool:
        return self._rows("SELECT to_regclass(%s)", [TABLE])[0][0] is not None

    def _create_schema(self) -> None:
        self._connection.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
        if not self._exists():
            for sql in SCHEMA:
                self._connection.execute(sql)

    def _insert(self, verdicts: pd.DataFrame) -> None:
        rows = zip(
            verdicts["event_id"].tolist(),
            verdicts["label"].astype(int).tolist(),
            verdicts["source"].tolist(),
            nullable_list(verdicts["analyst"]),
            verdicts["labelled_at"].dt.strftime(TIME_FORMAT).tolist(),
            nullable_list(verdicts["note"]),
            strict=True,
        )

        def copy_rows() -> None:
            self._connection.execute(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
            with (
                self._connection.cursor() as cursor,
                cursor.copy(f"COPY {TABLE} ({COLUMN_LIST}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)

        self._write(copy_rows)

    def _write(self, work: Any) -> None:
        """Run `work` in one transaction; on any error nothing of it is kept."""
        try:
            with self._connection.transaction():
                work()
        except psycopg.Error as exc:
            raise StoreError(f"{self.location}: cannot write ({first_line(exc)})") from None

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._connection.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"{self.location}: cannot read ({first_line(exc)})") from None

    def _to_db_time(self, stamp: pd.Timestamp) -> Any:
        return stamp.to_pydatetime()

    def _from_db_times(self, values: Sequence[Any]) -> pd.Series:
        return pd.Series(pd.to_datetime(list(values), utc=True)).astype("datetime64[us, UTC]")

    def close(self) -> None:
        self._connection.close()
