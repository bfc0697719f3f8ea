"""Reading event tables, checking their columns, and the time-ordered split.

Every problem with the input becomes an `InputError` naming the file and the column, so the
command line can print one line instead of a traceback.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import hashlib
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow

from hybrid_ad.config import DataConfig, SplitConfig
from hybrid_ad.errors import InputError

SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
OTHER_DELIMITERS = (";", "\t", "|")
MAX_TRAINING_MAGNITUDE = 1e15
"""Largest |value| training accepts: past float64's exact integers, far past any amount or
count, and small enough that squares and sums stay finite. Beyond it a value is a data error
(a sentinel such as 1e20 or 1e308); scoring clips such values instead (`FeatureBuilder`)."""
EVENT_SECONDS = "_event_seconds"
"""Column holding the timestamp as float seconds, added by `validate_events`."""

Columns = pd.DataFrame | Mapping[str, Any]
"""Events as columns: a frame, or a mapping of column name to equally long arrays."""


class ColumnBlocks(Mapping[str, np.ndarray]):
    """Events as named float columns, some of them held together as the columns of 2-D
    blocks: the live path gets its behavioural features as one (events, features) array, and
    `matrix` takes many columns out of a block in one step rather than one by one."""

    def __init__(
        self,
        columns: Mapping[str, np.ndarray],
        blocks: list[tuple[list[str], np.ndarray]] | None = None,
    ) -> None:
        self._columns = dict(columns)
        self._blocks = [block for _, block in blocks or []]
        self._where = {
            name: (index, position)
            for index, (names, _) in enumerate(blocks or [])
            for position, name in enumerate(names)
            if name not in self._columns
        }

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._columns:
            return self._columns[name]
        index, position = self._where[name]
        return self._blocks[index][:, position]

    def __contains__(self, name: object) -> bool:
        return name in self._columns or name in self._where

    def __iter__(self) -> Iterator[str]:
        yield from self._columns
        yield from self._where

    def __len__(self) -> int:
        return len(self._columns) + len(self._where)

    def matrix(self, names: list[str]) -> np.ndarray:
        """These columns as a new (events, len(names)) float64 array."""
        out = np.empty((n_rows(self), len(names)))
        taken: dict[int, tuple[list[int], list[int]]] = {}
        for at, name in enumerate(names):
            if name in self._columns:
                out[:, at] = self._columns[name]
            else:
                index, position = self._where[name]
                targets, sources = taken.setdefault(index, ([], []))
                targets.append(at)
                sources.append(position)
        for index, (targets, sources) in taken.items():
            out[:, targets] = self._blocks[index][:, sources]
        return out


def n_rows(columns: Columns) -> int:
    """How many events `columns` holds."""
    if isinstance(columns, pd.DataFrame):
        return len(columns)
    return len(next(iter(columns.values()))) if columns else 0


def table_parts(directory: Path) -> list[Path]:
    """The Parquet files of a table directory (as Spark and `hybrid-ad features` write it),
    in name order, which is row order; names starting with '.' or '_' are not data."""
    return sorted(
        part
        for part in directory.iterdir()
        if part.is_file()
        and not part.name.startswith((".", "_"))
        and part.name.lower().endswith((".parquet", ".pq"))
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV, gzip-compressed CSV or Parquet, or a directory of Parquet parts; any failure
    names the file."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        parts = table_parts(path)
        if not parts:
            raise InputError(f"{path}: directory holds no Parquet files")
        try:
            frame = pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)
        except (OSError, pyarrow.ArrowException) as exc:
            reason = _first_line(exc)
            raise InputError(f"{path}: cannot read the Parquet parts ({reason})") from None
        if frame.empty:
            raise InputError(f"{path}: no data rows")
        return frame
    if not name.endswith(SUPPORTED_SUFFIXES):
        kinds = ", ".join(SUPPORTED_SUFFIXES)
        raise InputError(f"{path}: unsupported file type; use one of {kinds}")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        if name.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            _check_csv_header(path)
            frame = pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except (EOFError, zlib.error, OSError) as exc:
        raise InputError(f"{path}: file is truncated or corrupt ({_first_line(exc)})") from None
    except (pd.errors.ParserError, csv.Error, UnicodeDecodeError, pyarrow.ArrowException) as exc:
        raise InputError(f"{path}: cannot parse ({_first_line(exc)})") from None
    if frame.empty:
        raise InputError(f"{path}: no data rows")
    return frame


def _check_csv_header(path: Path) -> None:
    """Refuse what pandas would misread: another delimiter (one wide column), or a repeated
    name (pandas renames the second `V3` to `V3.1` and it would be trained on)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as stream:
        header = next(csv.reader(stream), [])
    if len(header) == 1:
        for delimiter in OTHER_DELIMITERS:
            if delimiter in header[0]:
                shown = header[0] if len(header[0]) <= 40 else header[0][:37] + "..."
                raise InputError(
                    f"{path}: the header is one column, {shown!r}, with {delimiter!r} inside it; "
                    f"the file looks {delimiter!r}-separated, and hybrid-ad reads comma-separated "
                    "CSV"
                )
    _refuse_duplicates(header, str(path))


def _refuse_duplicates(columns: list[str], source: str) -> None:
    duplicated = list(dict.fromkeys(name for name in columns if columns.count(name) > 1))
    if duplicated:
        names = ", ".join(f"'{name}'" for name in duplicated)
        raise InputError(f"{source}: duplicated column {names} in the header")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_columns(patterns: list[str], columns: list[str], source: str) -> list[str]:
    """Expand names and glob patterns against `columns`, keeping order and dropping repeats."""
    resolved: list[str] = []
    for pattern in patterns:
        matches = [column for column in columns if fnmatch.fnmatchcase(column, pattern)]
        if not matches:
            raise InputError(f"{source}: no column matches '{pattern}'")
        resolved.extend(column for column in matches if column not in resolved)
    return resolved


def feature_columns(frame: pd.DataFrame, config: DataConfig, source: str) -> list[str]:
    """The model's input columns: the configured patterns, never the timestamp or the label."""
    reserved = {config.timestamp, config.label, config.event_id, EVENT_SECONDS, *config.entity_keys}
    candidates = [column for column in frame.columns if column not in reserved]
    return resolve_columns(config.features, candidates, source)


def numeric_column(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """A column as finite float64; a text or missing value is an error naming the row."""
    values = frame[column]
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        coerced = pd.to_numeric(values, errors="coerce")
        bad = coerced.isna() & values.notna()
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise InputError(
                f"{source}: column '{column}' has a non-numeric value {values.iloc[row]!r} "
                f"at data row {row + 1}"
            )
        values = coerced
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(array)
    if not finite.all():
        row = int(np.argmin(finite))
        count = int((~finite).sum())
        raise InputError(
            f"{source}: column '{column}' has {count} missing or infinite value(s), "
            f"first at data row {row + 1}"
        )
    return array


def check_training_range(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    """Refuse a training value beyond `MAX_TRAINING_MAGNITUDE`, naming its column and row."""
    for column in columns:
        values = frame[column].to_numpy(np.float64)
        beyond = ~(np.abs(values) <= MAX_TRAINING_MAGNITUDE)
        if beyond.any():
            position = int(np.argmax(beyond))
            label = frame.index[position]
            row = (
                f"data row {label + 1}" if isinstance(label, int | np.integer) else f"row {label!r}"
            )
            raise InputError(
                f"{source}: column '{column}' has {values[position]:g} at {row}, beyond the "
                f"±{MAX_TRAINING_MAGNITUDE:g} training accepts"
            )


def event_seconds(frame: pd.DataFrame, config: DataConfig, source: str) -> np.ndarray:
    """The timestamp column as float seconds (epoch seconds for date-times)."""
    column = config.timestamp
    if config.timestamp_unit == "datetime":
        try:
            parsed = pd.to_datetime(frame[column], utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{source}: column '{column}' has timestamps that cannot be parsed "
                f"({_first_line(exc)})"
            ) from None
        if parsed.isna().any():
            row = int(np.argmax(parsed.isna().to_numpy()))
            raise InputError(
                f"{source}: column '{column}' has a missing timestamp at data row {row + 1}"
            )
        nanos = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        return nanos.astype(np.float64) / 1e9
    seconds = numeric_column(frame, column, source)
    return seconds / 1000.0 if config.timestamp_unit == "ms" else seconds


def validate_events(
    frame: pd.DataFrame, config: DataConfig, source: str, require_label: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """Check roles and values; return a copy with clean types and the event time in seconds.

    The copy keeps every input column, row order and index; features become float64, the label
    (when present) int8, and `EVENT_SECONDS` is added. Validating a validated frame is a no-op,
    so every entry point can call this without tracking what was checked before.
    """
    _refuse_duplicates([str(name) for name in frame.columns], source)
    required = [config.timestamp, *config.entity_keys]
    if require_label:
        if config.label is None:
            raise InputError(f"{source}: this step needs a label column, and data.label is not set")
        required.append(config.label)
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise InputError(f"{source}: missing column '{missing[0]}'")
    columns = feature_columns(frame, config, source)
    result = frame.copy(deep=False)  # copy-on-write: a deep copy would only duplicate memory
    for column in columns:
        result[column] = numeric_column(frame, column, source)
    result[EVENT_SECONDS] = event_seconds(frame, config, source)
    if config.label is not None and config.label in frame.columns:
        labels = numeric_column(frame, config.label, source)
        is_binary = np.isin(labels, (0.0, 1.0))
        if not is_binary.all():
            row = int(np.argmin(is_binary))
            raise InputError(
                f"{source}: label column '{config.label}' must be 0 or 1, "
                f"found {labels[row]:g} at data row {row + 1}"
            )
        result[config.label] = labels.astype(np.int8)
    return result, columns


def load_events(
    path: str | Path, config: DataConfig, require_label: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate an event file: see `validate_events`."""
    return validate_events(read_table(path), config, str(path), require_label=require_label)


@dataclass(frozen=True)
class Split:
    """Time-ordered train / validation / test frames, with the boundaries used."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def summary(self, label: str | None) -> dict[str, dict[str, float | int]]:
        """Rows, time range and (when labelled) positives of each part, for the report."""
        summary: dict[str, dict[str, float | int]] = {}
        for name in ("train", "validation", "test"):
            part: pd.DataFrame = getattr(self, name)
            entry: dict[str, float | int] = {
                "rows": len(part),
                "start_seconds": float(part[EVENT_SECONDS].min()),
                "end_seconds": float(part[EVENT_SECONDS].max()),
            }
            if label is not None and label in part.columns:
                entry["positives"] = int(part[label].sum())
            summary[name] = entry
        return summary


def time_split(frame: pd.DataFrame, config: SplitConfig) -> Split:
    """Sort by event time (stable, so ties keep arrival order) and cut by row counts. A frame
    already in time order (a log written as it happened) is cut as it is: the sort would only
    copy it, every column of a million events."""
    in_order = frame[EVENT_SECONDS].is_monotonic_increasing
    ordered = frame if in_order else frame.sort_values(EVENT_SECONDS, kind="stable")
    n_rows = len(ordered)
    n_train = round(n_rows * config.train)
    n_validation = round(n_rows * config.validation)
    if min(n_train, n_validation, n_rows - n_train - n_validation) < 1:
        raise InputError(f"too few rows ({n_rows}) to split into train, validation and test")
    return Split(
        train=ordered.iloc[:n_train],
        validation=ordered.iloc[n_train : n_train + n_validation],
        test=ordered.iloc[n_train + n_validation :],
    )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed; recorded in the model manifest. For a table
    directory, of its Parquet parts' bytes in name order (names left out: Spark's carry a
    random id)."""
    path = Path(path)
    digest = hashlib.sha256()
    for part in table_parts(path) if path.is_dir() else [path]:
        with open(part, "rb") as handle:
            for chunk in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write CSV, CSV.gz or Parquet (by suffix) atomically, without the index."""
    from hybrid_ad.artifacts import atomic_write_with

    path = Path(path)
    name = path.name.lower()
    check_table_suffix(path)
    if name.endswith((".parquet", ".pq")):
        atomic_write_with(path, lambda temp: frame.to_parquet(temp, index=False))
    else:
        compression = "gzip" if name.endswith(".gz") else None
        atomic_write_with(
            path, lambda temp: frame.to_csv(temp, index=False, compression=compression)
        )


def check_table_suffix(path: Path) -> None:
    """Refuse an output name `write_table` cannot write, before the work that fills it."""
    if not path.name.lower().endswith(SUPPORTED_SUFFIXES):
        kinds = ", ".join(SUPPORTED_SUFFIXES)
        raise InputError(f"{path}: unsupported output type; use one of {kinds}")


EVENT_ID = "event_id"
"""Name of the id column in every output that carries one (`score`, review queues, labels)."""
EVENT_ID_HEX_DIGITS = 16


def event_ids(frame: pd.DataFrame, config: DataConfig, source: str = "events") -> pd.Series:
    """Each event's id, as text, indexed like `frame`: the key that joins scores and labels.

    With `data.event_id` set, the ids are that column's values as text (integers as decimals,
    integral floats as integers, so CSV and Parquet agree); a missing or empty id, or a
    duplicate, is an `InputError`. Without it, the id is derived from what identifies the event
    to the model, so it is the same whether the event arrives as CSV, Parquet or a dict, and
    whatever the column order or extra columns (the label is never part of it):

    the first 16 hex digits of the sha256 of, per event: the event time in seconds (as
    `event_seconds` gives it: epoch seconds for date-times, milliseconds / 1000) and then each
    feature column's value in order of column name, all float64 little-endian (-0.0 as 0.0);
    followed, in `data.entity_keys` order, by each key's text as a netstring
    (`<characters>:<text>,`, UTF-8). Events identical in all of these share an id.
    """
    if config.event_id is not None:
        return _configured_ids(frame, config.event_id, source)
    missing = [column for column in [config.timestamp, *config.entity_keys] if column not in frame]
    if missing:
        raise InputError(f"{source}: missing column '{missing[0]}'")
    features = feature_columns(frame, config, source)
    seconds = event_seconds(frame, config, source)
    values = {column: numeric_column(frame, column, source) for column in features}
    keys = [
        canonical_text(frame[column], column, source, what="value").tolist()
        for column in config.entity_keys
    ]
    ids = derived_event_ids(seconds, values, keys)
    return pd.Series(ids, index=frame.index, name=EVENT_ID, dtype=str)


def derived_event_ids(
    seconds: np.ndarray, features: Mapping[str, np.ndarray], keys: list[list[str]]
) -> list[str]:
    """The ids `event_ids` derives, from parsed columns: event times in seconds, each feature
    column's float64 values by name, and each entity key's canonical text (`canonical_text`),
    in `data.entity_keys` order. The one definition, for files and live events alike."""
    n = len(seconds)
    if n == 0:
        return []
    names = sorted(features)
    block = np.empty((n, 1 + len(names)), dtype="<f8")
    block[:, 0] = np.asarray(seconds, dtype=np.float64) + 0.0
    for position, name in enumerate(names, start=1):
        block[:, position] = np.asarray(features[name], dtype=np.float64) + 0.0
    width = block.shape[1] * 8
    rows = memoryview(np.ascontiguousarray(block)).cast("B")
    sha256, digits = hashlib.sha256, EVENT_ID_HEX_DIGITS
    if not keys:  # each row's bytes hashed in place, not copied: a quarter less time
        return [
            sha256(rows[at : at + width]).hexdigest()[:digits] for at in range(0, n * width, width)
        ]
    parts = [[f"{len(text)}:{text}," for text in texts] for texts in keys]  # key by key
    tails = ["".join(texts).encode() for texts in zip(*parts, strict=True)]
    ids = []
    for row, tail in enumerate(tails):  # the row's bytes hashed in place, then its keys
        digest = sha256(rows[row * width : (row + 1) * width])
        digest.update(tail)
        ids.append(digest.hexdigest()[:digits])
    return ids


def _configured_ids(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    if column not in frame.columns:
        raise InputError(f"{source}: missing event id column '{column}'")
    ids = canonical_text(frame[column], column, source, what="event id")
    empty = (ids.str.strip() == "").to_numpy()
    if empty.any():
        row = int(np.argmax(empty))
        raise InputError(f"{source}: column '{column}' has an empty event id at data row {row + 1}")
    repeated = ids.duplicated().to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        first = int(np.argmax((ids == ids.iloc[row]).to_numpy()))
        raise InputError(
            f"{source}: column '{column}' has the duplicate event id {ids.iloc[row]!r} "
            f"at data rows {first + 1} and {row + 1}"
        )
    return ids.rename(EVENT_ID)


def canonical_text(values: pd.Series, column: str, source: str, what: str) -> pd.Series:
    """Ids and keys as text that survives a CSV round trip: 7, 7.0 and "7" read back alike.

    A missing value is an `InputError` naming `column`, the `what` and the data row.
    """
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise InputError(f"{source}: column '{column}' has a missing {what} at data row {row + 1}")
    if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
        text = values.astype(np.int64).astype(str)
    elif isinstance(values.dtype, pd.StringDtype):
        text = values.astype(str)
    else:
        text = values.map(_value_text)
    return text.astype(str).set_axis(values.index)


def _value_text(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)
