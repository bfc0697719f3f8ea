"""Raw micro-batches to parsed columns, event by event, without pandas work per event.

A batch arrives as a DataFrame, a mapping of column name to equally long arrays or lists, or a
pyarrow RecordBatch, with values as numbers or as text (Redis delivers text). Columns are
parsed as `validate_events` parses them (the same `pd.to_numeric` / `pd.to_datetime` rules),
but a bad value refuses only its event, with a one-line reason, instead of the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.config import DataConfig
from hybrid_ad.data import canonical_text
from hybrid_ad.errors import InputError

FEW_VALUES = 16
"""Up to this many values, a column's values are checked one by one (a request's few events)."""

Batch = pd.DataFrame | Mapping[str, Any] | Any
"""A micro-batch of raw events: a DataFrame, a mapping of column name to equally long arrays
or lists, or a pyarrow RecordBatch (or Table)."""


class RawBatch:
    """Column access to a batch of any of the accepted forms, and its events as dicts."""

    def __init__(self, batch: Batch) -> None:
        self._frame: pd.DataFrame | None = None
        self._arrow: Any = None
        self._mapping: Mapping[str, Any] | None = None
        if isinstance(batch, pd.DataFrame):
            self._frame = batch
            self.names = [str(name) for name in batch.columns]
            self.n = len(batch)
        elif isinstance(batch, Mapping):
            self._mapping = batch
            self.names = [str(name) for name in batch]
            lengths = {len(values) for values in batch.values()}
            if len(lengths) > 1:
                raise InputError("score_many: the columns of a batch must be equally long")
            self.n = lengths.pop() if lengths else 0
        else:
            import pyarrow

            if not isinstance(batch, pyarrow.RecordBatch | pyarrow.Table):
                raise InputError(
                    "score_many: a batch is a DataFrame, a mapping of columns or a pyarrow "
                    f"RecordBatch, not {type(batch).__name__}"
                )
            self._arrow = batch
            self.names = list(batch.schema.names)
            self.n = batch.num_rows

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def column(self, name: str) -> Any:
        """The column as a numpy array, or a Series where numpy would lose its type
        (time-zone-aware timestamps)."""
        if self._frame is not None:
            series = self._frame[name]
            if isinstance(series.dtype, pd.DatetimeTZDtype):
                return series
            return series.to_numpy()
        if self._mapping is not None:
            values = self._mapping[name]
            if isinstance(values, pd.Series):
                return values if isinstance(values.dtype, pd.DatetimeTZDtype) else values.to_numpy()
            if isinstance(values, np.ndarray):
                return values
            array = np.array(values)  # numbers become a numeric array, as in a frame
            return array if array.dtype.kind in "fiubO" else np.array(values, dtype=object)
        column = self._arrow.column(name)
        import pyarrow

        if pyarrow.types.is_timestamp(column.type) and column.type.tz is not None:
            return pd.Series(column.to_pandas())
        return column.to_numpy(zero_copy_only=False)

    def event(self, position: int) -> dict[str, Any]:
        """The event at `position` as a dict, for its dead letter."""
        if self._frame is not None:
            return self._frame.iloc[position].to_dict()
        if self._mapping is not None:
            return {name: _item(values, position) for name, values in self._mapping.items()}
        return self._arrow.slice(position, 1).to_pylist()[0]


def _item(values: Any, position: int) -> Any:
    return values.iloc[position] if isinstance(values, pd.Series) else values[position]


def numbers(values: Any, name: str, refused: dict[int, str]) -> np.ndarray:
    """A column as float64, as `numeric_column` reads it; a non-numeric, missing or infinite
    value refuses its event (into `refused`: position -> reason; the first reason stays)."""
    array = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    numeric = array.dtype.kind in "fiub" or (
        array.dtype.kind == "O"
        and pd.api.types.infer_dtype(array, skipna=False)
        in ("floating", "integer", "mixed-integer-float")
    )
    non_numeric = None
    if numeric:
        parsed = array.astype(np.float64)
    else:
        raw = pd.Series(array, dtype=object)
        coerced = pd.to_numeric(raw, errors="coerce")
        parsed = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
        non_numeric = np.isnan(parsed) & raw.notna().to_numpy()
    finite = np.isfinite(parsed)
    if not finite.all():
        for position in np.flatnonzero(~finite).tolist():
            if non_numeric is not None and non_numeric[position]:
                reason = f"column '{name}' has a non-numeric value {array[position]!r}"
            else:
                reason = f"column '{name}' has a missing or infinite value"
            refused.setdefault(position, reason)
    return parsed


def seconds(values: Any, config: DataConfig, refused: dict[int, str]) -> np.ndarray:
    """The timestamp column as float seconds, as `event_seconds` reads it."""
    name = config.timestamp
    if config.timestamp_unit != "datetime":
        parsed = numbers(values, name, refused)
        return parsed / 1000.0 if config.timestamp_unit == "ms" else parsed
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        stamps = values.astype("datetime64[ns]")  # naive: read as UTC, as pd.to_datetime does
        missing = np.isnat(stamps)
        nanos = stamps.astype(np.int64)
    elif isinstance(values, np.ndarray) and _all_timestamps(values):
        nanos = np.array([stamp.value for stamp in values.tolist()], dtype=np.int64)
        missing = np.zeros(len(nanos), dtype=bool)
    else:
        series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
        try:
            parsed = pd.to_datetime(series, utc=True, format="ISO8601", errors="coerce")
        except (ValueError, TypeError):  # mixed kinds pandas cannot coerce as a column
            parsed = pd.Series(
                [pd.to_datetime(value, utc=True, errors="coerce") for value in series],
                dtype="datetime64[ns, UTC]",
            )
        missing = parsed.isna().to_numpy()
        nanos = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        given = series.notna().to_numpy()
        for position in np.flatnonzero(missing & given).tolist():
            refused.setdefault(
                position, f"column '{name}' has a timestamp that cannot be parsed: "
                f"{series.iloc[position]!r}"
            )  # fmt: skip
    if not missing.any():
        return nanos.astype(np.float64) / 1e9
    for position in np.flatnonzero(missing).tolist():
        refused.setdefault(position, f"column '{name}' has a missing timestamp")
    return np.where(missing, np.nan, nanos.astype(np.float64) / 1e9)


def _all_timestamps(values: np.ndarray) -> bool:
    """Whether every value is a `pd.Timestamp` (what a time-zone-aware column gives numpy):
    its `value` is the nanoseconds since the epoch in UTC, as `pd.to_datetime` reads it."""
    return values.dtype.kind == "O" and all(type(v) is pd.Timestamp for v in values.tolist())


def _all_text(array: np.ndarray) -> bool:
    """Whether every value of an object array is text (`infer_dtype` "string"); a few values
    are looked at directly, which costs less than the inference."""
    if len(array) <= FEW_VALUES and all(type(value) is str for value in array.tolist()):
        return True
    return pd.api.types.infer_dtype(array, skipna=False) == "string"


def texts(values: Any, name: str, what: str, refused: dict[int, str]) -> np.ndarray:
    """Ids and keys as `canonical_text` writes them (7, 7.0 and "7" alike), as an object
    array; a missing value refuses its event."""
    array = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if array.dtype.kind in "iu":
        return array.astype(str).astype(object)
    if array.dtype.kind == "O" and _all_text(array):
        return array
    if array.dtype.kind == "U":
        return array.astype(object)
    missing = np.asarray(pd.isna(array), dtype=bool)
    text = np.empty(len(array), dtype=object)
    for position in np.flatnonzero(missing).tolist():
        refused.setdefault(position, f"column '{name}' has a missing {what}")
    present = np.flatnonzero(~missing)
    if present.size:
        series = pd.Series(array[present], dtype=object)
        text[present] = canonical_text(series, name, "event", what).to_numpy()
    return text
