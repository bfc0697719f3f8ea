import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import RulesConfig
from hybrid_ad.data import EVENT_SECONDS, ColumnBlocks
from hybrid_ad.errors import InputError
from hybrid_ad.stages.rules import RuleSet


def _rules(*rules: dict, threshold: float = 1.0) -> RulesConfig:
    return RulesConfig.model_validate({"pseudo_label_threshold": threshold, "rules": list(rules)})


def _frame(**columns: list[float]) -> pd.DataFrame:
    frame = pd.DataFrame(columns, dtype=np.float64)
    if EVENT_SECONDS not in frame:
        frame[EVENT_SECONDS] = 0.0
    return frame


def test_quantile_threshold_is_learned_from_training_only() -> None:
    rule = {
        "name": "high",
        "reason": "above p90",
        "when": {"threshold": {"feature": "a", "op": ">", "value": {"quantile": 0.9}}},
    }
    ruleset = RuleSet(_rules(rule)).fit(_frame(a=list(range(11))))  # p90 = 9
    result = ruleset.evaluate(_frame(a=[9.0, 9.5, 100.0]))
    assert result.hits[:, 0].tolist() == [False, True, True]
    assert ruleset.describe()[0]["learned"] == {"quantile:a:0.9": 9.0}


def test_count_extreme_zscore_hour_and_combinations() -> None:
    train = _frame(a=[-1.0, 1.0] * 50, b=[-1.0, 1.0] * 50, c=[-1.0, 1.0] * 50)
    rules = _rules(
        {
            "name": "two_extreme",
            "weight": 2.0,
            "reason": "two of a..c beyond |z| 3",
            "when": {
                "count_extreme": {"features": ["a", "b", "c"], "abs_z_above": 3, "at_least": 2}
            },
        },
        {
            "name": "night_a",
            "reason": "a beyond |z| 2 between 22h and 2h",
            "when": {
                "all": [
                    {"hour_of_day": {"start": 22, "end": 2}},
                    {"zscore": {"feature": "a", "abs_above": 2}},
                ]
            },
        },
        {
            "name": "not_b_small",
            "reason": "b is not below 0",
            "when": {"not": {"threshold": {"feature": "b", "op": "<", "value": 0}}},
        },
        threshold=2.5,
    )
    ruleset = RuleSet(rules).fit(train)
    events = _frame(a=[4.0, 4.0, 0.0, 0.0], b=[4.0, -4.0, 0.5, -0.5], c=[0.0, 0.0, 0.0, 0.0])
    events[EVENT_SECONDS] = [23 * 3600.0, 12 * 3600.0, 86_400 + 3600.0, 0.0]
    result = ruleset.evaluate(events)
    assert result.hits.tolist() == [
        [True, True, True],
        [True, False, False],
        [False, False, True],
        [False, False, False],
    ]
    assert result.score.tolist() == [4.0, 2.0, 1.0, 0.0]
    assert result.pseudo_label.tolist() == [True, False, False, False]
    assert result.hit_names() == [
        "two_extreme;night_a;not_b_small",
        "two_extreme",
        "not_b_small",
        "",
    ]


def test_unknown_feature_names_the_rule() -> None:
    rule = {
        "name": "ghost",
        "reason": "r",
        "when": {"zscore": {"feature": "nope", "abs_above": 1}},
    }
    with pytest.raises(InputError, match="rule 'ghost': no column 'nope'"):
        RuleSet(_rules(rule)).fit(_frame(a=[1.0, 2.0]))


def test_round_trip_keeps_learned_statistics() -> None:
    rule = {
        "name": "z",
        "reason": "r",
        "when": {"threshold": {"feature": "a", "op": ">=", "value": {"mean_plus_std": 1}}},
    }
    config = _rules(rule)
    fitted = RuleSet(config).fit(_frame(a=[0.0, 2.0, 4.0]))
    restored = RuleSet.from_dict(config, fitted.to_dict())
    events = _frame(a=[3.0, 3.7, 10.0])
    assert fitted.evaluate(events).hits.tolist() == restored.evaluate(events).hits.tolist()


def _oracle(condition: dict, frame: pd.DataFrame, stats: dict[str, float]) -> np.ndarray:
    """Each condition on its own, value by value: what the compiled rules must give."""
    if "threshold" in condition:
        spec = condition["threshold"]
        value = spec["value"]
        if isinstance(value, dict):
            feature = spec["feature"]
            mean, std = stats[f"mean:{feature}"], stats[f"std:{feature}"]
            value = mean + value["mean_plus_std"] * std
        compare = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}
        return compare[spec["op"]](frame[spec["feature"]].to_numpy(), value)
    if "zscore" in condition:
        feature = condition["zscore"]["feature"]
        mean, std = stats[f"mean:{feature}"], stats[f"std:{feature}"]
        return np.abs(frame[feature].to_numpy() - mean) / std > condition["zscore"]["abs_above"]
    if "count_extreme" in condition:
        spec = condition["count_extreme"]
        count = sum(
            np.abs(frame[f].to_numpy() - stats[f"mean:{f}"]) / stats[f"std:{f}"]
            > spec["abs_z_above"]
            for f in spec["features"]
        )
        return count >= spec["at_least"]
    if "hour_of_day" in condition:
        hours = np.mod(frame[EVENT_SECONDS].to_numpy(), 86_400.0) / 3600.0
        return (hours >= condition["hour_of_day"]["start"]) | (
            hours < condition["hour_of_day"]["end"]
        )
    if "not" in condition:
        return ~_oracle(condition["not"], frame, stats)
    parts = [_oracle(child, frame, stats) for child in condition.get("all", condition.get("any"))]
    return np.logical_and.reduce(parts) if "all" in condition else np.logical_or.reduce(parts)


def test_compiled_rules_hit_as_each_condition_alone_in_batches_and_one_at_a_time() -> None:
    """Every kind, shared tests, flat and nested rules: the compiled evaluation equals each
    condition evaluated alone, on a frame, on a mapping of columns and on a `ColumnBlocks`
    (the live path's), in one batch and one event at a time."""
    rng = np.random.default_rng(3)
    a_above = {"threshold": {"feature": "a", "op": ">", "value": 0.5}}  # shared by three rules
    conditions = {
        "single": a_above,
        "all_flat": {"all": [a_above, {"threshold": {"feature": "b", "op": "<=", "value": 0}}]},
        "any_flat": {
            "any": [
                a_above,
                {"threshold": {"feature": "c", "op": ">=", "value": {"mean_plus_std": 1}}},
                {"zscore": {"feature": "b", "abs_above": 1.5}},
            ]
        },
        "duplicated": {"all": [a_above, a_above]},
        "nested": {
            "any": [
                {"all": [{"zscore": {"feature": "a", "abs_above": 1}}, {"not": a_above}]},
                {"hour_of_day": {"start": 22, "end": 4}},
            ]
        },
        "negated": {"not": {"threshold": {"feature": "c", "op": "<", "value": -0.25}}},
        "extremes": {
            "count_extreme": {"features": ["a", "b", "c"], "abs_z_above": 1, "at_least": 2}
        },
    }
    rules = _rules(
        *({"name": name, "reason": name, "weight": 1.0 + i, "when": when}
          for i, (name, when) in enumerate(conditions.items()))
    )  # fmt: skip
    train = _frame(**{name: rng.normal(size=300).tolist() for name in "abc"})
    ruleset = RuleSet(rules).fit(train)
    events = _frame(**{name: rng.normal(size=400).tolist() for name in "abc"})
    events[EVENT_SECONDS] = rng.uniform(0, 4 * 86_400, size=400)
    expected = np.column_stack(
        [_oracle(when, events, ruleset.statistics_) for when in conditions.values()]
    )
    assert expected.any(axis=0).all() and not expected.all(axis=0).any()  # every rule varies
    weights = np.arange(1.0, len(conditions) + 1)
    columns = {name: events[name].to_numpy() for name in events.columns}
    blocks = ColumnBlocks({EVENT_SECONDS: columns[EVENT_SECONDS], "b": columns["b"]},
                          [(["c", "a"], events[["c", "a"]].to_numpy())])  # fmt: skip
    for form in (events, columns, blocks):
        result = ruleset.evaluate(form)
        np.testing.assert_array_equal(result.hits, expected)
        np.testing.assert_array_equal(result.score, expected @ weights)
    for row in range(0, 400, 9):
        one = ColumnBlocks(
            {
                EVENT_SECONDS: columns[EVENT_SECONDS][row : row + 1],
                "b": columns["b"][row : row + 1],
            },
            [(["c", "a"], events[["c", "a"]].to_numpy()[row : row + 1])],
        )
        np.testing.assert_array_equal(ruleset.evaluate(one).hits, expected[row : row + 1])


def test_a_missing_column_names_the_first_rule_that_reads_it() -> None:
    rules = _rules(
        {
            "name": "first",
            "reason": "r",
            "when": {"threshold": {"feature": "a", "op": ">", "value": 0}},
        },
        {"name": "second", "reason": "r", "when": {"zscore": {"feature": "b", "abs_above": 1}}},
    )
    ruleset = RuleSet(rules).fit(_frame(a=[0.0, 1.0], b=[0.0, 2.0]))
    for events in (_frame(a=[1.0]), ColumnBlocks({"a": np.ones(1), EVENT_SECONDS: np.zeros(1)})):
        with pytest.raises(InputError, match="rule 'second': no column 'b'"):
            ruleset.evaluate(events)
