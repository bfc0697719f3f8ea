import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import RulesConfig
from hybrid_ad.data import EVENT_SECONDS
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
