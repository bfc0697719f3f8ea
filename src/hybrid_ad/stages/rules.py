"""Declarative domain rules: learned thresholds, vectorised evaluation, a reason for every hit.

Rules are data, not code: each condition kind is a small, fixed numpy operation, so a config
file can never make the evaluator run anything else. Thresholds that refer to the data
("above the training p99.5") are learned from the training split by `fit` and saved as JSON.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.config import (
    Condition,
    HourOfDay,
    MeanPlusStdRef,
    QuantileRef,
    RulesConfig,
)
from hybrid_ad.data import EVENT_SECONDS, Columns, n_rows, numeric_column, resolve_columns
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.stages.base import Stage, json_file, read_json_file

SECONDS_PER_DAY = 86_400.0

_COMPARE = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
}


def hour_of_day(seconds: np.ndarray) -> np.ndarray:
    """Hour in [0, 24) of event times given in seconds (epoch seconds are read as UTC)."""
    return np.mod(seconds, SECONDS_PER_DAY) / 3600.0


def in_hours(hours: np.ndarray, window: HourOfDay) -> np.ndarray:
    """Hours in [start, end), wrapping past midnight when start > end."""
    if window.start <= window.end:
        return (hours >= window.start) & (hours < window.end)
    return (hours >= window.start) | (hours < window.end)


def is_weekend(seconds: np.ndarray) -> np.ndarray:
    """Saturday or Sunday of event times in seconds, read as UTC epoch seconds (day 0,
    1970-01-01, is a Thursday), as `hour_of_day` reads them."""
    weekday = (np.floor_divide(seconds, SECONDS_PER_DAY) + 3) % 7  # Monday = 0
    return weekday >= 5


def calendar_flags(seconds: np.ndarray, flags: list[str], night: HourOfDay) -> np.ndarray:
    """One 0/1 column per flag (`weekend`, `night`), in the order given."""
    columns = {
        "weekend": lambda: is_weekend(seconds),
        "night": lambda: in_hours(hour_of_day(seconds), night),
    }
    return np.column_stack([columns[flag]() for flag in flags]).astype(np.float64)


def joined_names(flags: np.ndarray, names: list[str]) -> list[str]:
    """Per row of a (rows, names) bool matrix, the names flagged, ';'-joined ('' for none).
    Only rows with a flag are joined: most events hit no rule and clip nothing."""
    joined = [""] * len(flags)
    if flags.size:
        labels = np.array(names, dtype=object)
        for row in np.flatnonzero(flags.any(axis=1)).tolist():
            joined[row] = ";".join(labels[flags[row]])
    return joined


@dataclass(frozen=True)
class RuleResult:
    """Per-event rule output: which rules hit, the weighted score and the pseudo-label."""

    names: list[str]
    reasons: list[str]
    hits: np.ndarray  # (n_events, n_rules) bool
    score: np.ndarray  # (n_events,) sum of the weights of the rules that hit
    pseudo_label: np.ndarray  # (n_events,) bool: score >= pseudo_label_threshold

    def hit_names(self) -> list[str]:
        """For each event, the names of the rules that hit, joined by ';' ('' for none)."""
        return joined_names(self.hits, self.names)


class RuleSet(Stage):
    """Domain rules from config, fitted on training data to learn data-relative thresholds."""

    def __init__(self, config: RulesConfig) -> None:
        self.config = config
        self.statistics_: dict[str, float] | None = None

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, frame: Columns) -> RuleSet:
        """Learn every quantile, mean and standard deviation the rules refer to."""
        statistics: dict[str, float] = {}
        for rule in self.config.rules:
            self._learn(rule.when, frame, statistics, rule.name)
        self.statistics_ = statistics
        return self

    def _learn(
        self, condition: Condition, frame: Columns, stats: dict[str, float], rule: str
    ) -> None:
        if condition.threshold is not None:
            spec = condition.threshold
            values = _column(frame, spec.feature, rule)
            if isinstance(spec.value, QuantileRef):
                key = _quantile_key(spec.feature, spec.value.quantile)
                stats[key] = float(np.quantile(values, spec.value.quantile))
            elif isinstance(spec.value, MeanPlusStdRef):
                _learn_moments(values, spec.feature, stats, rule)
        elif condition.zscore is not None:
            feature = condition.zscore.feature
            _learn_moments(_column(frame, feature, rule), feature, stats, rule)
        elif condition.count_extreme is not None:
            for feature in _expand(condition.count_extreme.features, frame, rule):
                _learn_moments(_column(frame, feature, rule), feature, stats, rule)
        else:
            for child in _children(condition):
                self._learn(child, frame, stats, rule)

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self, frame: Columns) -> RuleResult:
        """Evaluate every rule on every event (vectorised): `frame` is a frame or a mapping of
        column name to equally long arrays (with `EVENT_SECONDS`)."""
        self.check_fitted()
        rules = self.config.rules
        hits = np.zeros((n_rows(frame), len(rules)), dtype=bool)
        for index, rule in enumerate(rules):
            hits[:, index] = self._mask(rule.when, frame, rule.name)
        weights = np.array([rule.weight for rule in rules])
        score = hits.astype(np.float64) @ weights
        return RuleResult(
            names=[rule.name for rule in rules],
            reasons=[rule.reason for rule in rules],
            hits=hits,
            score=score,
            pseudo_label=self.alerts(score),
        )

    def alerts(self, score: np.ndarray) -> np.ndarray:
        """The rules' own decision: a rule score at or above the pseudo-label threshold."""
        return score >= self.config.pseudo_label_threshold

    def _mask(self, condition: Condition, frame: Columns, rule: str) -> np.ndarray:
        stats = self.statistics_ or {}
        if condition.threshold is not None:
            spec = condition.threshold
            values = _column(frame, spec.feature, rule)
            if isinstance(spec.value, QuantileRef):
                bound = _learned(stats, _quantile_key(spec.feature, spec.value.quantile))
            elif isinstance(spec.value, MeanPlusStdRef):
                mean, std = _moments(stats, spec.feature)
                bound = mean + spec.value.mean_plus_std * std
            else:
                bound = spec.value
            return _COMPARE[spec.op](values, bound)
        if condition.zscore is not None:
            spec_z = condition.zscore
            mean, std = _moments(stats, spec_z.feature)
            return np.abs(_column(frame, spec_z.feature, rule) - mean) / std > spec_z.abs_above
        if condition.count_extreme is not None:
            spec_c = condition.count_extreme
            count = np.zeros(n_rows(frame), dtype=np.int64)
            for feature in _expand(spec_c.features, frame, rule):
                mean, std = _moments(stats, feature)
                count += np.abs(_column(frame, feature, rule) - mean) / std > spec_c.abs_z_above
            return count >= spec_c.at_least
        if condition.hour_of_day is not None:
            hours = hour_of_day(np.asarray(frame[EVENT_SECONDS], dtype=np.float64))
            return in_hours(hours, condition.hour_of_day)
        if condition.all is not None:
            return np.logical_and.reduce([self._mask(c, frame, rule) for c in condition.all])
        if condition.any is not None:
            return np.logical_or.reduce([self._mask(c, frame, rule) for c in condition.any])
        assert condition.not_ is not None  # guaranteed by Condition's validator
        return ~self._mask(condition.not_, frame, rule)

    def describe(self) -> list[dict[str, Any]]:
        """Each rule with its weight, reason and the thresholds it learned, for people."""
        stats = self.statistics_ or {}
        return [
            {
                "name": rule.name,
                "weight": rule.weight,
                "reason": rule.reason,
                "learned": {k: v for k, v in stats.items() if _refers_to(rule.when, k)},
            }
            for rule in self.config.rules
        ]

    # -- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        return {"statistics": self.statistics_}

    @property
    def is_fitted(self) -> bool:
        return self.statistics_ is not None

    def to_files(self) -> dict[str, bytes]:
        return {"rules.json": json_file(self.to_dict())}

    def from_files(self, files: Mapping[str, bytes]) -> RuleSet:
        payload = read_json_file(files, "rules.json")
        if not isinstance(payload, dict):
            raise ArtifactError("rules.json: expected a JSON object")
        self.statistics_ = self.from_dict(self.config, payload).statistics_
        return self

    @classmethod
    def from_dict(cls, config: RulesConfig, payload: dict[str, Any]) -> RuleSet:
        ruleset = cls(config)
        statistics = payload.get("statistics")
        if not isinstance(statistics, dict):
            raise ArtifactError("rules.json: missing learned statistics")
        try:
            ruleset.statistics_ = {str(k): float(v) for k, v in statistics.items()}
        except (TypeError, ValueError):
            raise ArtifactError("rules.json: a learned statistic is not a number") from None
        if not all(np.isfinite(value) for value in ruleset.statistics_.values()):
            raise ArtifactError("rules.json: a learned statistic is not finite")
        return ruleset


def _children(condition: Condition) -> list[Condition]:
    if condition.all is not None:
        return condition.all
    if condition.any is not None:
        return condition.any
    if condition.not_ is not None:
        return [condition.not_]
    return []


def _refers_to(condition: Condition, key: str) -> bool:
    feature = key.split(":", 2)[1]
    if condition.threshold is not None:
        return condition.threshold.feature == feature
    if condition.zscore is not None:
        return condition.zscore.feature == feature
    if condition.count_extreme is not None:
        patterns = condition.count_extreme.features
        return any(fnmatch.fnmatchcase(feature, pattern) for pattern in patterns)
    return any(_refers_to(child, key) for child in _children(condition))


def _column(frame: Columns, feature: str, rule: str) -> np.ndarray:
    if feature not in frame:
        raise InputError(f"rule '{rule}': no column '{feature}' in the data")
    values = frame[feature]
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values  # prepared: validated, finite
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame({feature: values})
    return numeric_column(frame, feature, f"rule '{rule}'")


def _expand(patterns: list[str], frame: Columns, rule: str) -> list[str]:
    candidates = [column for column in frame if column != EVENT_SECONDS]
    return resolve_columns(patterns, candidates, f"rule '{rule}'")


def _quantile_key(feature: str, quantile: float) -> str:
    return f"quantile:{feature}:{quantile:g}"


def _learn_moments(values: np.ndarray, feature: str, stats: dict[str, float], rule: str) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(values.std())
    if not np.isfinite(std):
        raise InputError(
            f"rule '{rule}': column '{feature}' has values too large for a mean and a standard "
            "deviation in training"
        )
    stats[f"mean:{feature}"] = float(values.mean())
    stats[f"std:{feature}"] = std if std > 0 else 1.0


def _moments(stats: dict[str, float], feature: str) -> tuple[float, float]:
    return _learned(stats, f"mean:{feature}"), _learned(stats, f"std:{feature}")


def _learned(stats: dict[str, float], key: str) -> float:
    if key not in stats:
        raise ArtifactError(f"rules.json: no learned statistic '{key}'")
    return stats[key]
