"""Drift of numeric columns against a reference profile: PSI and a KS statistic per time window.

A `ReferenceProfile` keeps, per named column, the reference data's quantile bins (for the
population stability index) and its percentiles (for the Kolmogorov-Smirnov statistic), so
it is small, stored as JSON, and needs none of the reference rows later. `drift` cuts new
events into time windows aligned to multiples of the window length (days start at midnight
UTC for date-times) and flags a column in a window where its PSI exceeds the threshold.

Definitions, so the figures can be checked by hand:

- Bins: the distinct reference quantiles at 0, 1/B, …, 1 are the edges e_0 < … < e_k; a value
  x falls in bin i, the number of edges below it (x <= e_0 is bin 0, x > e_k is bin k+1), so
  values beyond the reference range get bins of their own and a column with few distinct
  values gets one bin per value.
- PSI = sum over bins of (w - r) * ln(w / r), with the window's and the reference's shares w
  and r each floored at `PSI_FLOOR`. Under 0.1 is usually read as stable, over 0.2 as drift.
- KS = the largest gap between the window's empirical distribution function and the
  reference's, the latter interpolated linearly between its percentiles (steps where
  percentiles tie), evaluated on both sides of every window value.
- Values that are not finite are left out and counted in `missing_share`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, model_validator

from hybrid_ad.artifacts import atomic_write_json
from hybrid_ad.behavioural.batch import parse_duration
from hybrid_ad.config import StrictModel
from hybrid_ad.errors import ArtifactError, InputError, format_validation_error

DEFAULT_BINS = 10
PERCENTILES = 101
PSI_FLOOR = 1e-4
DEFAULT_THRESHOLD = 0.2
DEFAULT_MIN_ROWS = 100


class ColumnProfile(StrictModel):
    """One column of the reference: bin edges, the share in each bin, percentiles."""

    rows: int = Field(ge=1, description="finite reference values")
    edges: list[float] = Field(min_length=1)
    proportions: list[float]
    percentiles: list[float] = Field(min_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> ColumnProfile:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError("proportions must have one entry more than edges")
        if np.any(np.diff(self.edges) <= 0):
            raise ValueError("edges must be strictly increasing")
        if np.any(np.diff(self.percentiles) < 0):
            raise ValueError("percentiles must be non-decreasing")
        if abs(sum(self.proportions) - 1.0) > 1e-6:
            raise ValueError("proportions must sum to 1")
        return self

    @classmethod
    def of(cls, values: np.ndarray, bins: int) -> ColumnProfile:
        """The profile of the finite `values` (at least one)."""
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
        return cls(
            rows=len(values),
            edges=edges.tolist(),
            proportions=(counts / len(values)).tolist(),
            percentiles=np.quantile(values, np.linspace(0.0, 1.0, PERCENTILES)).tolist(),
        )

    def psi(self, values: np.ndarray) -> float:
        """Population stability index of finite `values` against this reference."""
        edges = np.asarray(self.edges)
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
        window = np.maximum(counts / len(values), PSI_FLOOR)
        reference = np.maximum(np.asarray(self.proportions), PSI_FLOOR)
        return float(np.sum((window - reference) * np.log(window / reference)))

    def ks(self, values: np.ndarray) -> float:
        """Kolmogorov-Smirnov statistic of finite `values` against the reference percentiles."""
        ordered = np.sort(values)
        points = np.unique(ordered)
        below = np.searchsorted(ordered, points, side="left") / len(ordered)
        at_or_below = np.searchsorted(ordered, points, side="right") / len(ordered)
        left, right = self._reference_cdf(points)
        return float(max(np.max(np.abs(below - left)), np.max(np.abs(at_or_below - right))))

    def _reference_cdf(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The reference distribution function just below and at each point."""
        percentiles = np.asarray(self.percentiles)
        probabilities = np.linspace(0.0, 1.0, len(percentiles))
        atoms, first, count = np.unique(percentiles, return_index=True, return_counts=True)
        low, high = probabilities[first], probabilities[first + count - 1]
        index = np.searchsorted(atoms, points, side="right") - 1
        safe = np.clip(index, 0, len(atoms) - 1)
        following = np.clip(index + 1, 0, len(atoms) - 1)
        span = atoms[following] - atoms[safe]
        fraction = np.divide(points - atoms[safe], span, out=np.zeros_like(points), where=span > 0)
        between = high[safe] + fraction * (low[following] - high[safe])
        at_atom = atoms[safe] == points
        right = np.where(at_atom, high[safe], between)
        left = np.where(at_atom, low[safe], between)
        outside_low, outside_high = index < 0, index >= len(atoms) - 1
        right = np.where(outside_low, 0.0, np.where(outside_high & ~at_atom, 1.0, right))
        left = np.where(outside_low, 0.0, np.where(outside_high & ~at_atom, 1.0, left))
        return left, right


class ReferenceProfile(StrictModel):
    """Quantile bins and percentiles per named numeric column, fitted on reference data."""

    format_version: Literal[1] = 1
    bins: int = Field(ge=1)
    columns: dict[str, ColumnProfile]

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, columns: list[str], bins: int = DEFAULT_BINS
    ) -> ReferenceProfile:
        """Profile `columns` of `frame` (each needs at least one finite value)."""
        profiles = {}
        for column in columns:
            values = _finite(frame, column, "reference data")
            if len(values) == 0:
                raise InputError(f"reference data: column '{column}' has no finite values")
            profiles[column] = ColumnProfile.of(values, bins)
        return cls(bins=bins, columns=profiles)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.model_dump())

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        """Read a saved profile; a truncated or edited file is an `ArtifactError` naming it."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{path}: reference profile not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArtifactError(f"{path}: reference profile is truncated or corrupt") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ArtifactError(format_validation_error(str(path), error)) from None


def drift(
    frame: pd.DataFrame,
    profile: ReferenceProfile,
    seconds: np.ndarray | None = None,
    window: str = "1d",
    threshold: float = DEFAULT_THRESHOLD,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> dict[str, Any]:
    """PSI and KS of every profiled column per time window, flagged where PSI > threshold.

    `window` is a duration as in the behavioural features (`6h`, `1d`, `2w`). `seconds` is each
    row's event time (`hybrid_ad.data.EVENT_SECONDS`); without it the whole
    frame is one window. A window with fewer than `min_rows` rows gets no figures (too noisy
    to judge) and no flags. Returns a JSON-ready dict.
    """
    width = window_seconds(window)
    missing = [column for column in profile.columns if column not in frame.columns]
    if missing:
        raise InputError(f"drift input: missing column '{missing[0]}'")
    values = {column: _values(frame, column) for column in profile.columns}
    if seconds is None:
        groups = [(None, np.arange(len(frame)))]
    else:
        starts = np.floor(np.asarray(seconds, dtype=np.float64) / width) * width
        order = np.argsort(starts, kind="stable")
        unique, first = np.unique(starts[order], return_index=True)
        groups = list(zip(unique.tolist(), np.split(order, first[1:]), strict=True))
    windows = [
        _window(start, width, rows, values, profile, threshold, min_rows) for start, rows in groups
    ]
    flagged = sorted({column for entry in windows for column in entry["flagged"]})
    return {
        "threshold": threshold,
        "window_seconds": None if seconds is None else width,
        "min_rows": min_rows,
        "flagged_columns": flagged,
        "windows": windows,
    }


def window_seconds(window: str) -> float:
    """The length of a drift window (`6h`, `1d`, `2w`) in seconds; an `InputError` if bad."""
    try:
        width = parse_duration(window)
    except ValueError as exc:
        raise InputError(f"drift window: {exc}") from None
    if width <= 0:
        raise InputError(f"drift window: {window!r} must be longer than zero")
    return width


def _window(
    start: float | None,
    width: float,
    rows: np.ndarray,
    values: dict[str, np.ndarray],
    profile: ReferenceProfile,
    threshold: float,
    min_rows: int,
) -> dict[str, Any]:
    columns: dict[str, dict[str, float | None]] = {}
    for column, reference in profile.columns.items():
        chosen = values[column][rows]
        finite = chosen[np.isfinite(chosen)]
        judged = len(rows) >= min_rows and len(finite) > 0
        columns[column] = {
            "psi": reference.psi(finite) if judged else None,
            "ks": reference.ks(finite) if judged else None,
            "missing_share": 1.0 - len(finite) / len(rows),
        }
    flagged = [name for name, entry in columns.items() if (entry["psi"] or 0.0) > threshold]
    return {
        "start_seconds": start,
        "end_seconds": None if start is None else start + width,
        "rows": len(rows),
        "flagged": flagged,
        "columns": columns,
    }


def _values(frame: pd.DataFrame, column: str) -> np.ndarray:
    try:
        return frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    except (ValueError, TypeError):
        raise InputError(f"drift input: column '{column}' is not numeric") from None


def _finite(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    if column not in frame.columns:
        raise InputError(f"{source}: missing column '{column}'")
    values = _values(frame, column)
    return values[np.isfinite(values)]
