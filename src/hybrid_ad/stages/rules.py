"""Declarative domain rules: learned thresholds, vectorised evaluation, a reason for every hit.

Rules are data, not code: each condition kind is a small, fixed numpy operation, so a config
file can never make the evaluator run anything else. Thresholds that refer to the data
("above the training p99.5") are learned from the training split by `fit` and saved as JSON.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from hybrid_ad.config import (
    Condition,
    HourOfDay,
    MeanPlusStdRef,
    QuantileRef,
    RulesConfig,
    Threshold,
)
from hybrid_ad.data import (
    EVENT_SECONDS,
    ColumnBlocks,
    Columns,
    n_rows,
    numeric_column,
    resolve_columns,
)
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.stages.base import Stage, json_file, read_json_file

SECONDS_PER_DAY = 86_400.0
EVALUATE_ROWS = 65_536
"""`evaluate` works through this many rows at a time, so its temporaries stay small."""

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
        self._compiled: tuple[dict[str, float] | None, _Compiled] | None = None

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
        column name to equally long arrays (with `EVENT_SECONDS`).

        The rules are compiled once per fitted state (`_Compiled`): each distinct test is
        computed once, thresholds and z-scores a run of columns at a time, and the rules made
        of one test or of `all` / `any` of tests in one product with their tests. A one-event
        batch (the live path) evaluated each condition with its own numpy calls: half a
        hundred of them."""
        self.check_fitted()
        compiled = self._compile()
        hits = compiled.hits(self, frame)
        score = hits.astype(np.float64) @ compiled.weights
        return RuleResult(
            names=compiled.names,
            reasons=compiled.reasons,
            hits=hits,
            score=score,
            pseudo_label=self.alerts(score),
        )

    def _compile(self) -> _Compiled:
        if self._compiled is None or self._compiled[0] is not self.statistics_:
            self._compiled = (self.statistics_, _Compiled(self))
        return self._compiled[1]

    def alerts(self, score: np.ndarray) -> np.ndarray:
        """The rules' own decision: a rule score at or above the pseudo-label threshold."""
        return score >= self.config.pseudo_label_threshold

    def _other(
        self, leaf: _Test, frame: Columns, rows: slice, seconds: np.ndarray | None
    ) -> np.ndarray:
        """A test of another kind than threshold and z-score, on a chunk of rows."""
        condition = leaf.condition
        if condition.hour_of_day is not None:
            assert seconds is not None
            return in_hours(hour_of_day(seconds[rows]), condition.hour_of_day)
        assert condition.count_extreme is not None  # the kinds `_test` leaves here
        spec = condition.count_extreme
        count = np.zeros(rows.stop - rows.start, dtype=np.int64)
        for feature in _expand(spec.features, frame, leaf.rule):
            mean, std = self._moments_of(feature)
            count += (
                np.abs(_column(frame, feature, leaf.rule)[rows] - mean) / std > spec.abs_z_above
            )
        return count >= spec.at_least

    def _moments_of(self, feature: str) -> tuple[float, float]:
        return _moments(self.statistics_ or {}, feature)

    def _bound(self, spec: Threshold) -> float:
        """A threshold's bound: as given, or learned (a quantile, mean + k std)."""
        stats = self.statistics_ or {}
        if isinstance(spec.value, QuantileRef):
            return _learned(stats, _quantile_key(spec.feature, spec.value.quantile))
        if isinstance(spec.value, MeanPlusStdRef):
            mean, std = _moments(stats, spec.feature)
            return mean + spec.value.mean_plus_std * std
        return spec.value

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


Node = tuple[str, Any]
"""A rule over its tests: ("test", index), ("all" | "any", [nodes]) or ("not", node)."""


class _Test(NamedTuple):
    """A leaf condition of some rule: a threshold (`numbers`: its bound), a z-score (mean,
    std, bound) or another kind (hour of day, count of extreme features), computed alone."""

    kind: str
    feature: str
    op: str
    numbers: tuple[float, ...]
    condition: Condition
    rule: str


class _Compiled:
    """A fitted rule set as arrays, built once per fitted state.

    Its tests are the distinct leaf conditions of all the rules, in an order that makes one
    numpy call per run: the thresholds grouped by comparison, with their bounds; the z-scores,
    with their moments; then the other kinds, one by one. A rule that is a test, or `all` /
    `any` of tests, is a column of `incidence`: it hits when at least `need` of its tests do
    (all of them, or one). Other rules are evaluated as trees over the tests. Each value goes
    through the arithmetic its condition gave it alone, so the hits are the same.
    """

    def __init__(self, ruleset: RuleSet) -> None:
        rules = ruleset.config.rules
        self.weights = np.array([rule.weight for rule in rules])
        self.names = [rule.name for rule in rules]  # one list for every result: not copied
        self.reasons = [rule.reason for rule in rules]
        found: dict[tuple, int] = {}
        tests: list[_Test] = []

        def node(condition: Condition, rule: str) -> Node:
            if condition.all is not None or condition.any is not None:
                kind = "all" if condition.all is not None else "any"
                return (kind, [node(child, rule) for child in _children(condition)])
            if condition.not_ is not None:
                return ("not", node(condition.not_, rule))
            leaf = _test(ruleset, condition, rule)
            key = (leaf.kind, leaf.feature, leaf.op, leaf.numbers)
            if leaf.kind == "other":
                key = (leaf.kind, len(tests))
            if key not in found:
                found[key] = len(tests)
                tests.append(leaf)
            return ("test", found[key])

        trees = [node(rule.when, rule.name) for rule in rules]
        self.rule_of: dict[str, str] = {}  # a column's first rule: the one its errors name
        for leaf in tests:
            if leaf.kind != "other":
                self.rule_of.setdefault(leaf.feature, leaf.rule)
        rank = {"threshold": 0, "zscore": 1, "other": 2}
        order = sorted(range(len(tests)), key=lambda i: (rank[tests[i].kind], tests[i].op))
        renumbered = {old: new for new, old in enumerate(order)}
        self.tests = [tests[i] for i in order]
        read = [leaf for leaf in self.tests if leaf.kind != "other"]
        self.features = [leaf.feature for leaf in read]
        n_thresholds = sum(leaf.kind == "threshold" for leaf in read)
        self.bounds = np.array([leaf.numbers[0] for leaf in read[:n_thresholds]])
        self.runs: list[tuple[np.ufunc, slice]] = []
        for index, leaf in enumerate(read[:n_thresholds]):
            if index and leaf.op == read[index - 1].op:
                self.runs[-1] = (self.runs[-1][0], slice(self.runs[-1][1].start, index + 1))
            else:
                self.runs.append((_COMPARE[leaf.op], slice(index, index + 1)))
        self.z = slice(n_thresholds, len(read))
        moments = np.array([leaf.numbers for leaf in read[n_thresholds:]]).reshape(-1, 3).T
        self.z_mean, self.z_std, self.z_above = moments
        self.others = [(i, leaf) for i, leaf in enumerate(self.tests) if leaf.kind == "other"]
        flat, columns, need = [], [], []
        self.nested: list[tuple[int, Node]] = []
        for r, tree in enumerate(_renumber(tree, renumbered) for tree in trees):
            leaves = _flat_tests(tree)
            if leaves is None:
                self.nested.append((r, tree))
                continue
            column = np.zeros(len(self.tests))
            column[sorted(leaves)] = 1.0
            flat.append(r)
            columns.append(column)
            need.append(1 if tree[0] == "any" else len(leaves))
        self.flat = np.array(flat, dtype=np.intp)
        self.incidence = np.array(columns).reshape(len(flat), len(self.tests)).T
        self.need = np.array(need, dtype=np.float64)

    def hits(self, ruleset: RuleSet, frame: Columns) -> np.ndarray:
        """(events, rules) bool: which rules hit, a chunk of `EVALUATE_ROWS` at a time."""
        n = n_rows(frame)
        hits = np.empty((n, len(self.weights)), dtype=bool)
        values = self._values(frame)
        seconds = None
        if any(leaf.condition.hour_of_day is not None for _, leaf in self.others):
            seconds = np.asarray(frame[EVENT_SECONDS], dtype=np.float64)
        for start in range(0, n, EVALUATE_ROWS):
            rows = slice(start, min(start + EVALUATE_ROWS, n))
            part = values(rows)
            tests = np.empty((rows.stop - rows.start, len(self.tests)), dtype=bool)
            for compare, run in self.runs:
                compare(part[:, run], self.bounds[run], out=tests[:, run])
            if self.z.stop > self.z.start:
                z = np.abs(part[:, self.z] - self.z_mean) / self.z_std
                np.greater(z, self.z_above, out=tests[:, self.z])
            for at, leaf in self.others:
                tests[:, at] = ruleset._other(leaf, frame, rows, seconds)
            out = hits[rows]
            if len(self.flat):
                out[:, self.flat] = tests @ self.incidence >= self.need
            for r, tree in self.nested:
                out[:, r] = _evaluate(tree, tests)
        return hits

    def _values(self, frame: Columns):
        """The thresholds' and z-scores' columns, a chunk of rows at a time."""
        names = self.features
        missing = (
            frame.missing(names)
            if isinstance(frame, ColumnBlocks)
            else [name for name in names if name not in frame]
        )
        if missing:
            _column(frame, missing[0], self.rule_of[missing[0]])  # the error naming the rule
        if isinstance(frame, ColumnBlocks):  # float columns, in one step
            block = frame.matrix(names)
            return lambda rows: block[rows]
        columns = {name: _column(frame, name, self.rule_of[name]) for name in dict.fromkeys(names)}
        return lambda rows: np.column_stack(
            [columns[name][rows] for name in names] or [np.zeros((rows.stop - rows.start, 0))]
        )


def _test(ruleset: RuleSet, condition: Condition, rule: str) -> _Test:
    if condition.threshold is not None:
        spec = condition.threshold
        return _Test("threshold", spec.feature, spec.op, (ruleset._bound(spec),), condition, rule)
    if condition.zscore is not None:
        spec_z = condition.zscore
        mean, std = ruleset._moments_of(spec_z.feature)
        return _Test("zscore", spec_z.feature, "", (mean, std, spec_z.abs_above), condition, rule)
    return _Test("other", "", "", (), condition, rule)


def _renumber(tree: Node, at: dict[int, int]) -> Node:
    kind, arg = tree
    if kind == "test":
        return (kind, at[arg])
    if kind == "not":
        return (kind, _renumber(arg, at))
    return (kind, [_renumber(child, at) for child in arg])


def _flat_tests(tree: Node) -> set[int] | None:
    """The tests of a rule that is one test or `all` / `any` of tests; None for the others."""
    kind, arg = tree
    if kind == "test":
        return {arg}
    if kind in ("all", "any") and all(child[0] == "test" for child in arg):
        return {child[1] for child in arg}
    return None


def _evaluate(tree: Node, tests: np.ndarray) -> np.ndarray:
    kind, arg = tree
    if kind == "test":
        return tests[:, arg]
    if kind == "not":
        return ~_evaluate(arg, tests)
    parts = [_evaluate(child, tests) for child in arg]
    return np.logical_and.reduce(parts) if kind == "all" else np.logical_or.reduce(parts)


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
