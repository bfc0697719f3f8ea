"""The label store: verdicts on events from analysts, chargebacks and the like.

One row per verdict (`VERDICT_COLUMNS`). Nothing is ever updated or deleted (the backends
refuse it): a relabel is a new verdict, so the audit trail stays, and the verdict that counts
for an event is its latest by `labelled_at`, then by insertion order. `labelled_at` is when
the label became known, so `latest(as_of=T)` looks only at verdicts known by T and a retrain
at T cannot see labels from its future.

`open_store` picks the backend by location: a `postgresql://` URL, or else a SQLite file.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from hybrid_ad.data import canonical_text, write_table
from hybrid_ad.errors import InputError, StoreError

VERDICT_COLUMNS = ("event_id", "label", "source", "analyst", "labelled_at", "note")
REQUIRED_COLUMNS = ("event_id", "label", "source")
RECORDED_AT = "recorded_at"
"""When the store received a verdict (one value per append); in `history` and `verdicts`."""
TABLE = "label_verdicts"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
POSTGRES_SCHEMES = ("postgresql", "postgres")

TimeLike = str | datetime | pd.Timestamp


def utc_timestamp(value: TimeLike, what: str = "time") -> pd.Timestamp:
    """A point in time as a UTC timestamp in microseconds; naive times are taken as UTC."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        stamp = pd.NaT
    if pd.isna(stamp):
        raise InputError(
            f"{what}: {value!r} is not a timestamp (use ISO 8601, e.g. 2026-01-05T10:00:00Z)"
        )
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.floor("us").as_unit("us")


def read_verdicts(path: str | Path) -> pd.DataFrame:
    """A verdict CSV (or CSV.gz) as text, every cell as written; `validate_verdicts` checks it."""
    path = Path(path)
    if not path.name.lower().endswith((".csv", ".csv.gz")):
        raise InputError(f"{path}: unsupported file type; labels are read from .csv or .csv.gz")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except (EOFError, zlib.error, OSError) as exc:
        raise InputError(f"{path}: file is truncated or corrupt ({first_line(exc)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot parse ({first_line(exc)})") from None
    if frame.empty:
        raise InputError(f"{path}: no data rows")
    return frame


@dataclass(frozen=True)
class Verdicts:
    """Verdicts that passed `validate_verdicts`: typed, in `VERDICT_COLUMNS` order.

    A store appends these without checking them again.
    """

    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)


def validate_verdicts(
    frame: pd.DataFrame, source: str = "verdicts", now: TimeLike | None = None
) -> Verdicts:
    """Check every verdict and return them typed, in `VERDICT_COLUMNS` order.

    The first problem is an `InputError` naming the data row: an unknown or missing column, an
    empty event id or source, a label other than 0/1, a timestamp that does not parse, or two
    verdicts on one event at the same `labelled_at` with different labels (which one would
    win?). An empty `labelled_at` means `now` (default: the current time); empty `analyst`
    and `note` are stored as missing. Event ids are taken verbatim; other fields are stripped.
    """
    unknown = [column for column in frame.columns if column not in VERDICT_COLUMNS]
    if unknown:
        known = ", ".join(VERDICT_COLUMNS)
        raise InputError(f"{source}: unknown column '{unknown[0]}' (columns: {known})")
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise InputError(f"{source}: missing column '{missing[0]}'")
    event_id = _event_id_text(frame["event_id"], source)
    _first_bad(source, (event_id.str.strip() == "").to_numpy(), lambda row: "empty event_id")
    label = _labels(frame["label"], source)
    verdict_source = _text(frame, "source")
    _first_bad(source, (verdict_source == "").to_numpy(), lambda row: "empty source")
    labelled_at = _labelled_at(frame, source, utc_timestamp(now or pd.Timestamp.now("UTC")))
    verdicts = pd.DataFrame(
        {
            "event_id": event_id.to_numpy(),
            "label": label,
            "source": verdict_source.to_numpy(),
            "analyst": _optional(_text(frame, "analyst")),
            "labelled_at": labelled_at,
            "note": _optional(_text(frame, "note")),
        }
    )
    _refuse_conflicts(verdicts, source)
    return Verdicts(verdicts)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _first_bad(source: str, bad: np.ndarray, problem: Any) -> None:
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{source}: data row {row + 1}: {problem(row)}")


def _event_id_text(values: pd.Series, source: str) -> pd.Series:
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        return values.fillna("").astype(str).reset_index(drop=True)
    return canonical_text(values, "event_id", source, what="event id").reset_index(drop=True)


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series([""] * len(frame), dtype=str)
    return frame[column].fillna("").astype(str).str.strip().reset_index(drop=True)


def _optional(text: pd.Series) -> pd.Series:
    return pd.Series(text.astype(object).where(text != "", None), dtype=object)


def nullable_list(values: pd.Series) -> list[Any]:
    """Values for a database driver, missing ones (None or NaN) as None (NULL)."""
    return values.astype(object).where(values.notna(), None).tolist()


def _labels(values: pd.Series, source: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isin(numbers, (0.0, 1.0))
        _first_bad(source, bad, lambda row: f"label must be 0 or 1, got {numbers[row]:g}")
        return numbers.astype(np.int8)
    text = values.fillna("").astype(str).str.strip().reset_index(drop=True)
    bad = ~text.isin(("0", "1")).to_numpy()
    _first_bad(source, bad, lambda row: f"label must be 0 or 1, got {text.iloc[row]!r}")
    return (text == "1").to_numpy().astype(np.int8)


def _labelled_at(frame: pd.DataFrame, source: str, now: pd.Timestamp) -> pd.Series:
    if "labelled_at" not in frame.columns:
        return pd.Series(now, index=range(len(frame))).astype("datetime64[us, UTC]")
    values = frame["labelled_at"].reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values.dt.tz_localize("UTC") if values.dt.tz is None else values
        empty = values.isna()
    else:
        text = values.fillna("").astype(str).str.strip()
        empty = text == ""
        parsed = pd.to_datetime(text.where(~empty), utc=True, format="ISO8601", errors="coerce")
        bad = (parsed.isna() & ~empty).to_numpy()
        _first_bad(
            source,
            bad,
            lambda row: (
                f"labelled_at {text.iloc[row]!r} is not a timestamp "
                "(use ISO 8601, e.g. 2026-01-05T10:00:00Z)"
            ),
        )
    parsed = parsed.dt.tz_convert("UTC").dt.floor("us").astype("datetime64[us, UTC]")
    return parsed.where(~empty, now)


def _refuse_conflicts(verdicts: pd.DataFrame, source: str) -> None:
    groups = verdicts.groupby(["event_id", "labelled_at"], sort=False)["label"]
    first_label = groups.transform("first")
    conflict = (verdicts["label"] != first_label).to_numpy()
    if not conflict.any():
        return
    row = int(np.argmax(conflict))
    event, when = verdicts.at[row, "event_id"], verdicts.at[row, "labelled_at"]
    same = (verdicts["event_id"] == event) & (verdicts["labelled_at"] == when)
    other = int(np.argmax(same.to_numpy()))
    raise InputError(
        f"{source}: data row {row + 1}: event {event!r} has label {verdicts.at[row, 'label']} "
        f"here and {verdicts.at[other, 'label']} at data row {other + 1}, both labelled at "
        f"{when.strftime(TIME_FORMAT)}: conflicting verdicts in one file"
    )


@dataclass(frozen=True)
class LabelStats:
    """What a store holds: verdicts per source and label, events, time range, latest labels."""

    verdicts: int
    events: int
    first_labelled_at: pd.Timestamp | None
    last_labelled_at: pd.Timestamp | None
    by_source: list[tuple[str, int, int]]  # (source, label, verdicts), sorted
    latest_by_label: dict[int, int]  # label -> events whose latest verdict it is

    def to_dict(self) -> dict[str, Any]:
        def when(stamp: pd.Timestamp | None) -> str | None:
            return None if stamp is None else stamp.strftime(TIME_FORMAT)

        return {
            "verdicts": self.verdicts,
            "events": self.events,
            "first_labelled_at": when(self.first_labelled_at),
            "last_labelled_at": when(self.last_labelled_at),
            "by_source": [
                {"source": source, "label": label, "verdicts": count}
                for source, label, count in self.by_source
            ],
            "latest_by_label": {str(label): count for label, count in self.latest_by_label.items()},
        }


class LabelStore(ABC):
    """Append verdicts, read the latest per event (as of a time), an event's history, stats.

    A store is a context manager; `close` releases its connection.
    """

    location: str
    """Where the store is, for messages (a PostgreSQL URL without its password)."""

    def append(self, verdicts: pd.DataFrame | Verdicts, source: str = "verdicts") -> int:
        """Store verdicts in one transaction: all of them, or none on any error.

        A frame is validated first (`validate_verdicts`; `source` names it in errors).
        """
        if not isinstance(verdicts, Verdicts):
            verdicts = validate_verdicts(verdicts, source)
        if len(verdicts):
            self._insert(verdicts.frame)
        return len(verdicts)

    @abstractmethod
    def _insert(self, verdicts: pd.DataFrame) -> None:
        """Store validated verdicts in one transaction, after every earlier append's."""

    @abstractmethod
    def latest(self, as_of: TimeLike | None = None) -> pd.DataFrame:
        """One row per event: its latest verdict among those labelled at or before `as_of`."""

    @abstractmethod
    def history(self, event_id: str) -> pd.DataFrame:
        """Every verdict on one event, oldest first; the last row is the one that counts."""

    @abstractmethod
    def verdicts(self) -> pd.DataFrame:
        """Every verdict, in insertion order, with `recorded_at`: the whole audit trail."""

    @abstractmethod
    def stats(self) -> LabelStats:
        """Counts per source and label, distinct events, time range, latest labels."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def export(self, path: str | Path, latest: bool = False, as_of: TimeLike | None = None) -> int:
        """Write verdicts as CSV (or Parquet) in the import format, atomically; returns rows.

        Every verdict in insertion order, or with `latest` one per event; `as_of` keeps those
        labelled by then. An export imports back as the same verdicts.
        """
        if latest:
            frame = self.latest(as_of)
        else:
            frame = self.verdicts()
            if as_of is not None:
                frame = frame[frame["labelled_at"] <= utc_timestamp(as_of, "as_of")]
        frame = frame.loc[:, list(VERDICT_COLUMNS)].copy()
        frame["labelled_at"] = frame["labelled_at"].dt.strftime(TIME_FORMAT)
        write_table(frame, path)
        return len(frame)

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_store(location: str | Path, create: bool = False) -> LabelStore:
    """The store at `location`: `postgresql://…` (psycopg URL), or else a SQLite file path.

    Without `create`, a store that does not exist yet is a `StoreError` (reading commands
    should not leave empty stores behind); with it, the file or table is made.
    """
    text = str(location)
    scheme = urlsplit(text).scheme if "://" in text else ""
    if scheme in POSTGRES_SCHEMES:
        from hybrid_ad.labels.postgres import PostgresLabelStore

        return PostgresLabelStore(text, create)
    if scheme:
        raise StoreError(
            f"{safe_location(text)}: unknown store scheme '{scheme}' "
            "(use a SQLite file path or postgresql://…)"
        )
    from hybrid_ad.labels.sqlite import SQLiteLabelStore

    return SQLiteLabelStore(Path(text), create)


def safe_location(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# --- shared SQL ---------------------------------------------------------------------------------

COLUMN_LIST = ", ".join(VERDICT_COLUMNS)
LATEST_SQL = f"""
SELECT {COLUMN_LIST} FROM (
    SELECT {COLUMN_LIST}, ROW_NUMBER() OVER (
        PARTITION BY event_id ORDER BY labelled_at DESC, seq DESC
    ) AS newest
    FROM {TABLE} {{where}}
) AS ranked WHERE newest = 1 ORDER BY event_id
"""
HISTORY_SQL = (
    f"SELECT {COLUMN_LIST}, {RECORDED_AT} FROM {TABLE} WHERE event_id = {{p}} "
    "ORDER BY labelled_at, seq"
)
VERDICTS_SQL = f"SELECT {COLUMN_LIST}, {RECORDED_AT} FROM {TABLE} ORDER BY seq"
TOTALS_SQL = (
    f"SELECT COUNT(*), COUNT(DISTINCT event_id), MIN(labelled_at), MAX(labelled_at) FROM {TABLE}"
)
BY_SOURCE_SQL = (
    f"SELECT source, label, COUNT(*) FROM {TABLE} GROUP BY source, label ORDER BY source, label"
)

LATEST_BY_LABEL_SQL = "SELECT label, COUNT(*) FROM ({latest}) AS l GROUP BY label ORDER BY label"


class SQLLabelStore(LabelStore):
    """Queries shared by the SQL backends; each says how it connects, inserts and keeps time."""

    placeholder = "?"

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only query."""

    @abstractmethod
    def _to_db_time(self, stamp: pd.Timestamp) -> Any:
        """A UTC timestamp as the backend stores it."""

    @abstractmethod
    def _from_db_times(self, values: Sequence[Any]) -> pd.Series:
        """Stored times back as datetime64[us, UTC]."""

    def latest(self, as_of: TimeLike | None = None) -> pd.DataFrame:
        if as_of is None:
            rows = self._rows(LATEST_SQL.format(where=""))
        else:
            stamp = self._to_db_time(utc_timestamp(as_of, "as_of"))
            rows = self._rows(
                LATEST_SQL.format(where=f"WHERE labelled_at <= {self.placeholder}"), [stamp]
            )
        return self._frame(rows, VERDICT_COLUMNS)

    def history(self, event_id: str) -> pd.DataFrame:
        rows = self._rows(HISTORY_SQL.format(p=self.placeholder), [event_id])
        return self._frame(rows, (*VERDICT_COLUMNS, RECORDED_AT))

    def verdicts(self) -> pd.DataFrame:
        return self._frame(self._rows(VERDICTS_SQL), (*VERDICT_COLUMNS, RECORDED_AT))

    def stats(self) -> LabelStats:
        total, events, first, last = self._rows(TOTALS_SQL)[0]
        by_source = [(str(s), int(label), int(n)) for s, label, n in self._rows(BY_SOURCE_SQL)]
        latest = self._rows(LATEST_BY_LABEL_SQL.format(latest=LATEST_SQL.format(where="")))
        times = self._from_db_times([first, last]) if total else None
        return LabelStats(
            verdicts=int(total),
            events=int(events),
            first_labelled_at=None if times is None else times.iloc[0],
            last_labelled_at=None if times is None else times.iloc[1],
            by_source=by_source,
            latest_by_label={int(label): int(n) for label, n in latest},
        )

    def _frame(self, rows: list[tuple[Any, ...]], columns: Sequence[str]) -> pd.DataFrame:
        frame = pd.DataFrame(rows, columns=list(columns), dtype=object)
        frame["event_id"] = frame["event_id"].astype(str)
        frame["source"] = frame["source"].astype(str)
        frame["label"] = frame["label"].astype(np.int8)
        for column in ("labelled_at", RECORDED_AT):
            if column in frame.columns:
                frame[column] = self._from_db_times(frame[column].tolist()).to_numpy()
        return frame
