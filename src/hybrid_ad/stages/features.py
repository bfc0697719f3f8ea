"""Feature construction: behavioural history, scaling fitted on training data only, time of
day, outlier summaries.

`prepare_events` validates a frame and adds the behavioural features of each event against the
history before it (`hybrid_ad.behavioural.batch`). `FeatureBuilder` then produces two matrices from
the same fitted state: the autoencoder's input (scaled columns, behavioural features, hour of
day) and the judge's extra inputs (outlier summaries, delayed-label risk). Batch scoring and
live scoring both go through `transform`, so the feature logic exists once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.behavioural.batch import BehaviouralConfig, compute_batch, feature_names
from hybrid_ad.config import Config, FeaturesConfig
from hybrid_ad.data import EVENT_SECONDS, ColumnBlocks, Columns, numeric_column, validate_events
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.stages.base import Stage, json_file, read_json_file
from hybrid_ad.stages.rules import calendar_flags, hour_of_day, joined_names

TRANSFORM_ROWS = 65_536


@dataclass(frozen=True)
class PreparedEvents:
    """Validated events, in input order, with `EVENT_SECONDS` and the behavioural columns.

    Made by `prepare_events`; the `Detector` accepts it wherever it accepts a frame, so a
    caller that splits one long history computes the behavioural features once.
    """

    frame: pd.DataFrame
    feature_columns: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.frame)

    def rows(self, start: int, stop: int) -> PreparedEvents:
        """A slice by position; its behavioural features keep the history they were made with."""
        return PreparedEvents(self.frame.iloc[start:stop], self.feature_columns, self.source)


def prepare_events(
    frame: pd.DataFrame,
    config: Config,
    source: str,
    *,
    require_label: bool = False,
    history: pd.DataFrame | PreparedEvents | None = None,
) -> PreparedEvents:
    """Validate `frame` and add its behavioural features.

    The features of each event describe its entity's events before it, among `history`
    (earlier events, not returned) and `frame` itself. Neither needs to be sorted: events are
    ordered by time, ties in arrival order with `history` first, and returned in input order.
    """
    if len(frame) == 0:
        raise InputError(f"{source}: no events")
    events, columns = validate_events(frame, config.data, source, require_label)
    behavioural = config.features.behavioural
    if behavioural is not None:
        past = None
        if history is not None:
            past = history.frame if isinstance(history, PreparedEvents) else history
            past, _ = validate_events(past, config.data, f"{source} (history)")
        events = _with_behaviour(events, behavioural, config.data.label, past, source)
    return PreparedEvents(events, columns, source)


def compact_behaviour(events: PreparedEvents, config: Config) -> PreparedEvents:
    """The same events with each behavioural column held as float32 where that keeps every
    value exactly (counts, distinct counts, sums of whole numbers), the others as float64.

    Every model input is computed from these columns in float64 (`FeatureBuilder`, the
    rules), so every number downstream is the same; what changes is the memory of a large
    log's features, most of them whole numbers. The frame's columns are replaced one by one,
    so the engine's single float64 block is let go without a second copy of it at once."""
    behavioural = config.features.behavioural
    if behavioural is None:
        return events
    frame = events.frame.copy(deep=False)
    for name in feature_names(behavioural):
        values = frame[name].to_numpy()
        if values.dtype != np.float64:
            continue
        single = values.astype(np.float32)
        frame[name] = single if np.array_equal(single, values) else values  # set: a copy
    return PreparedEvents(frame, events.feature_columns, events.source)


def _with_behaviour(
    events: pd.DataFrame,
    config: BehaviouralConfig,
    label: str | None,
    history: pd.DataFrame | None,
    source: str,
) -> pd.DataFrame:
    names = feature_names(config)
    clash = [name for name in names if name in events.columns]
    if clash and history is None and len(clash) == len(names):
        # a backfilled feature table (`hybrid-ad features`): the features are taken as given
        for name in names:
            events[name] = numeric_column(events, name, source)
        return events
    if clash:
        missing = [name for name in names if name not in events.columns]
        why = (
            f"a feature table has all of them, and '{missing[0]}' is missing"
            if missing
            else "a feature table is taken as given only without history"
        )
        raise InputError(
            f"{source}: column '{clash[0]}' has the name of a behavioural feature; {why}"
        )
    label_column = label if config.label_risk is not None else None
    needed = [EVENT_SECONDS, *config.entity_columns, *config.values]
    parts = [events] if history is None else [history, events]
    for part in parts:
        missing = [column for column in needed if column not in part.columns]
        if missing:
            raise InputError(f"{source}: missing behavioural column '{missing[0]}'")
    combined = pd.concat([part[needed] for part in parts], ignore_index=True)
    if label_column is not None:
        # Events without a label column contribute no known labels (NaN = unknown).
        combined[label_column] = pd.concat(
            [part.get(label_column, pd.Series(np.nan, index=part.index)) for part in parts],
            ignore_index=True,
        ).astype(np.float64)
    # compute_batch orders the rows by time itself and answers in row order: reordering the
    # frame and then the features here copied both (measured: 40% of the time).
    behaviour = compute_batch(combined, config, EVENT_SECONDS, label_column, sort=True)
    own = behaviour.iloc[len(combined) - len(events) :].set_axis(events.index)
    return pd.concat([events, own], axis=1)


def label_feature_names(config: BehaviouralConfig) -> list[str]:
    """The behavioural features read from labels: judge inputs only, never label-free stages."""
    if config.label_risk is None:
        return []
    without = set(feature_names(config.model_copy(update={"label_risk": None})))
    return [name for name in feature_names(config) if name not in without]


@dataclass(frozen=True)
class FeatureMatrix:
    """Model inputs for a batch of events, with column names for importance plots."""

    scaled: np.ndarray  # (n, d) float32: autoencoder input
    scaled_names: list[str]
    engineered: np.ndarray  # (n, e) float32: extra judge input
    engineered_names: list[str]
    clipped: np.ndarray  # (n, c) bool: which input column was clipped to the training range
    clipped_columns: list[str]

    def clipped_names(self) -> list[str]:
        """For each event, the input columns clipped to the training range, ';'-joined."""
        return joined_names(self.clipped, self.clipped_columns)


@dataclass(frozen=True)
class _Layout:
    """What a fitted `FeatureBuilder` derives from its state alone: its input columns, the
    clipping bounds, which columns are log-scaled, and the output names."""

    columns: list[str]
    low: np.ndarray
    high: np.ndarray
    logged: np.ndarray
    scaled_names: list[str]
    engineered_names: list[str]


class FeatureBuilder(Stage):
    """Standardises the configured columns with training statistics.

    log1p (keeping the sign) goes first where asked, and always for behavioural features:
    counts, sums and gaps are heavy-tailed. Behavioural features join the autoencoder's input,
    except the delayed-label ones, which only the judge sees.

    A value far outside the training range (one 1e20 in a file) is clipped to that range
    widened by its own width (at least one standard deviation) on each side, and flagged:
    it still stands out, and float32 model arithmetic stays finite.
    """

    def __init__(self, config: FeaturesConfig) -> None:
        self.config = config
        self.columns_: list[str] | None = None
        self.behavioural_: list[str] = []
        self.judge_only_: list[str] = []
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.low_: np.ndarray | None = None
        self.high_: np.ndarray | None = None
        self._cached_layout: tuple[tuple, _Layout] | None = None

    def fit(self, frame: pd.DataFrame, columns: list[str]) -> FeatureBuilder:
        """Learn per-column mean and standard deviation from the training rows only."""
        unknown = [name for name in self.config.log_scale if name not in columns]
        if unknown:
            raise InputError(f"features.log_scale: '{unknown[0]}' is not a feature column")
        behavioural = self.config.behavioural
        self.columns_ = list(columns)
        if behavioural is not None:
            self.judge_only_ = label_feature_names(behavioural)
            self.behavioural_ = [
                name for name in feature_names(behavioural) if name not in self.judge_only_
            ]
        inputs = self._all_columns()
        raw = self._raw(frame, inputs, self._logged(inputs))
        std = raw.std(axis=0)
        self.mean_ = raw.mean(axis=0)
        self.std_ = np.where(std > 0, std, 1.0)
        self.low_, self.high_ = raw.min(axis=0), raw.max(axis=0)
        return self

    def _all_columns(self) -> list[str]:
        assert self.columns_ is not None
        return [*self.columns_, *self.behavioural_, *self.judge_only_]

    def _logged(self, columns: list[str]) -> np.ndarray:
        """Positions of the log-scaled columns: the configured ones and the behavioural."""
        positions = [columns.index(name) for name in self.config.log_scale]
        return np.array(positions + list(range(len(self.columns_ or ()), len(columns))), np.intp)

    def _raw(self, frame: Columns, columns: list[str], logged: np.ndarray) -> np.ndarray:
        if isinstance(frame, ColumnBlocks):  # worked out once per layout, not per name
            missing = frame.missing(columns)
        else:
            missing = [name for name in columns if name not in frame]
        if missing:
            raise InputError(f"missing feature column '{missing[0]}'")
        if isinstance(frame, pd.DataFrame):
            raw = frame[columns].to_numpy(np.float64, copy=True)
        elif isinstance(frame, ColumnBlocks):
            raw = frame.matrix(columns)
        else:
            raw = np.column_stack([np.asarray(frame[name], dtype=np.float64) for name in columns])
        if len(logged):  # one pass over the columns, not four numpy calls per column
            # in row chunks: the copy of the logged columns and their signs were 0.9 GiB each
            # on the training part of a large log (`fit` takes it whole)
            for start in range(0, len(raw), TRANSFORM_ROWS):
                rows = raw[start : start + TRANSFORM_ROWS]
                part = rows[:, logged]
                sign = np.sign(part)
                part = np.log1p(np.abs(part, out=part), out=part)
                rows[:, logged] = np.multiply(sign, part, out=part)
        return raw

    def transform(self, frame: Columns) -> FeatureMatrix:
        """Scaled inputs plus the engineered summaries, for any number of events: `frame` is a
        frame or a mapping of column name to equally long arrays.

        A large frame goes in chunks of rows (each row's inputs are its own): its float64
        temporaries were several times the float32 result, 4 GiB for a million events."""
        if not isinstance(frame, pd.DataFrame) or len(frame) <= TRANSFORM_ROWS:
            return self._transform(frame)
        parts = [
            self._transform(frame.iloc[start : start + TRANSFORM_ROWS])
            for start in range(0, len(frame), TRANSFORM_ROWS)
        ]
        return FeatureMatrix(
            scaled=np.concatenate([part.scaled for part in parts]),
            scaled_names=parts[0].scaled_names,
            engineered=np.concatenate([part.engineered for part in parts]),
            engineered_names=parts[0].engineered_names,
            clipped=np.concatenate([part.clipped for part in parts]),
            clipped_columns=parts[0].clipped_columns,
        )

    def _layout(self) -> _Layout:
        """What `_transform` derives from the fitted state alone, once per fitted state: a
        one-event batch spent a fifth of its feature time rebuilding names and bounds."""
        assert self.columns_ is not None and self.std_ is not None
        assert self.low_ is not None and self.high_ is not None
        key = (self.columns_, self.behavioural_, self.judge_only_, self.low_, self.high_, self.std_)
        cached = self._cached_layout
        if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
            return cached[1]
        margin = np.maximum(self.high_ - self.low_, self.std_)
        columns = self._all_columns()
        layout = _Layout(
            columns=columns,
            low=self.low_ - margin,
            high=self.high_ + margin,
            logged=self._logged(columns),
            scaled_names=[f"z_{name}" for name in self.columns_]
            + self.behavioural_
            + (["hour_sin", "hour_cos"] if self.config.hour_of_day else [])
            + [f"is_{flag}" for flag in self.config.calendar],
            engineered_names=["n_extreme_components", "max_abs_z", "rms_z", *self.judge_only_],
        )
        self._cached_layout = (key, layout)
        return layout

    def _transform(self, frame: Columns) -> FeatureMatrix:
        self.check_fitted()
        assert self.columns_ is not None and self.mean_ is not None and self.std_ is not None
        layout = self._layout()
        raw = self._raw(frame, layout.columns, layout.logged)
        clipped = (raw < layout.low) | (raw > layout.high)
        # clipped in place: np.clip's own checks cost more than the clipping on a few events
        np.maximum(raw, layout.low, out=raw)
        np.minimum(raw, layout.high, out=raw)
        z_all = (raw - self.mean_) / self.std_
        n_base, n_behavioural = len(self.columns_), len(self.behavioural_)
        n = len(raw)
        # the float32 outputs filled in place (the same rounding as astype)
        scaled = np.empty((n, len(layout.scaled_names)), dtype=np.float32)
        at = n_base + n_behavioural
        scaled[:, :at] = z_all[:, :at]
        if self.config.hour_of_day:
            seconds = np.asarray(frame[EVENT_SECONDS], dtype=np.float64)
            angle = hour_of_day(seconds) * (2 * np.pi / 24)
            scaled[:, at] = np.sin(angle)
            scaled[:, at + 1] = np.cos(angle)
            at += 2
        if self.config.calendar:
            seconds = np.asarray(frame[EVENT_SECONDS], dtype=np.float64)
            scaled[:, at:] = calendar_flags(seconds, self.config.calendar, self.config.night_hours)
        z = z_all[:, :n_base]
        abs_z = np.abs(z)
        engineered = np.empty((n, len(layout.engineered_names)), dtype=np.float32)
        engineered[:, 0] = (abs_z > self.config.extreme_z).sum(axis=1)
        engineered[:, 1] = abs_z.max(axis=1)
        engineered[:, 2] = np.sqrt((z**2).mean(axis=1))
        engineered[:, 3:] = z_all[:, n_base + n_behavioural :]
        return FeatureMatrix(
            scaled=scaled,
            scaled_names=layout.scaled_names,
            engineered=engineered,
            engineered_names=layout.engineered_names,
            clipped=clipped,
            clipped_columns=layout.columns,
        )

    @property
    def is_fitted(self) -> bool:
        return self.columns_ is not None and self.mean_ is not None and self.std_ is not None

    def to_files(self) -> dict[str, bytes]:
        return {"features.json": json_file(self.to_dict())}

    def from_files(self, files: Mapping[str, bytes]) -> FeatureBuilder:
        loaded = self.from_dict(self.config, read_json_file(files, "features.json"))
        vars(self).update(vars(loaded))
        return self

    @property
    def n_scaled(self) -> int:
        """Width of `transform(...).scaled`: the autoencoder's input."""
        hour = 2 if self.config.hour_of_day else 0
        return len(self.columns_ or ()) + len(self.behavioural_) + hour

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        assert self.mean_ is not None and self.std_ is not None
        return {
            "columns": self.columns_,
            "behavioural": self.behavioural_,
            "judge_only": self.judge_only_,
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
            "low": None if self.low_ is None else self.low_.tolist(),
            "high": None if self.high_ is None else self.high_.tolist(),
        }

    @classmethod
    def from_dict(cls, config: FeaturesConfig, payload: dict[str, Any]) -> FeatureBuilder:
        builder = cls(config)
        try:
            columns = [str(name) for name in payload["columns"]]
            behavioural = [str(name) for name in payload["behavioural"]]
            judge_only = [str(name) for name in payload["judge_only"]]
            mean = np.asarray(payload["mean"], dtype=np.float64)
            std = np.asarray(payload["std"], dtype=np.float64)
            low = np.asarray(payload["low"], dtype=np.float64)
            high = np.asarray(payload["high"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ArtifactError("features.json: malformed scaler") from None
        expected = None if config.behavioural is None else feature_names(config.behavioural)
        if sorted(behavioural + judge_only) != sorted(expected or []):
            raise ArtifactError("features.json: behavioural features do not match the config")
        width = len(columns) + len(behavioural) + len(judge_only)
        if (
            any(array.ndim != 1 for array in (mean, std, low, high))
            or not (width == len(mean) == len(std) == len(low) == len(high))
            or not np.all(np.isfinite(mean))
            or not np.all((std > 0) & np.isfinite(std))
            or not np.all(np.isfinite(low) & np.isfinite(high) & (low <= high))
        ):
            raise ArtifactError("features.json: scaler shapes or values are inconsistent")
        builder.columns_, builder.mean_, builder.std_ = columns, mean, std
        builder.low_, builder.high_ = low, high
        builder.behavioural_, builder.judge_only_ = behavioural, judge_only
        return builder
