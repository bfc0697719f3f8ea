"""Behavioural features inside the Detector: live equals batch, history, order, leakage, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.errors import ConfigError, InputError
from hybrid_ad.stages.features import prepare_events

from .conftest import make_events, small_config_dict

BEHAVIOURAL = {
    "entity_keys": ["customer_id", "terminal_id"],
    "windows": ["1h", "6h"],
    "last_n": [5],
    "values": ["Amount"],
    "aggregates": ["count", "sum", "mean", "std", "max", "ratio_to_mean"],
    "session_gap": "20m",
    "entity_ttl": "2d",
}
BUSY_CUSTOMER = {
    "name": "busy_customer",
    "weight": 1.0,
    "reason": "more events in the past hour than 99 % of training events saw",
    "when": {
        "threshold": {"feature": "customer_id__count_1h", "op": ">", "value": {"quantile": 0.99}}
    },
}


def entity_events(n: int = 3000, seed: int = 3) -> pd.DataFrame:
    """Card events with customers and terminals; frauds come in bursts on a few customers."""
    rng = np.random.default_rng(seed)
    frame = make_events(n, seed=seed)
    frame.insert(1, "customer_id", rng.integers(0, 40, n).astype(str))
    frame.insert(2, "terminal_id", rng.integers(0, 8, n))
    frauds = np.flatnonzero(frame["Class"].to_numpy() == 1)
    frame.loc[frauds, "customer_id"] = rng.choice(["c_x", "c_y"], len(frauds))
    return frame


def behaviour_config(label_source: str = "pseudo", **behavioural: object):
    raw = small_config_dict(
        data={"entity_keys": ["customer_id", "terminal_id"]},
        features={"behavioural": {**BEHAVIOURAL, **behavioural}},
        judge={"label_source": label_source},
    )
    raw["rules"]["rules"].append(BUSY_CUSTOMER)
    return config_from_dict(raw)


def split_parts(frame: pd.DataFrame, config) -> list[pd.DataFrame]:
    """Raw (unprepared) time-ordered train, validation and test, as a user would pass them."""
    ordered = frame.sort_values("Time", kind="stable")
    n_train = round(len(ordered) * config.data.split.train)
    n_validation = round(len(ordered) * config.data.split.validation)
    cuts = [0, n_train, n_train + n_validation, len(ordered)]
    return [ordered.iloc[a:b] for a, b in itertools.pairwise(cuts)]


@pytest.fixture(scope="module")
def fitted():
    config = behaviour_config()
    frame = entity_events()
    train, validation, test = split_parts(frame, config)
    detector = Detector(config).fit(train, validation)
    return detector, train, validation, test


def test_behavioural_features_reach_rules_autoencoder_and_judge(fitted) -> None:
    detector, *_ = fitted
    importance = detector.feature_importance()
    assert any(name.startswith("customer_id__") for name in importance)
    assert "busy_customer" in detector.rules_.describe()[-1]["name"]
    assert detector.autoencoder_ is not None


def test_live_scoring_equals_batch_scoring(fitted) -> None:
    """The Detector scores a frame, and the same events one at a time, to the same numbers."""
    detector, train, validation, test = fitted
    history = pd.concat([train, validation])
    events = test.iloc[:150]
    batch = detector.score(events, history=history)
    live = detector.live(history=history)
    rows = [live.score_event(event) for event in events.to_dict("records")]
    assert live.dead_letters == []
    streamed = pd.DataFrame(rows, index=events.index)
    for column in ("score", "rule_score", "reconstruction_error"):
        np.testing.assert_allclose(streamed[column], batch[column], rtol=1e-6, atol=1e-9)
    assert streamed["rules_hit"].tolist() == batch["rules_hit"].tolist()


def test_history_gives_the_features_of_the_whole_sequence(fitted) -> None:
    detector, train, validation, test = fitted
    with_history = detector.score(test, history=pd.concat([train, validation]))
    whole = detector.score(pd.concat([train, validation, test]))
    pd.testing.assert_frame_equal(with_history, whole.loc[test.index])
    alone = detector.score(test)
    assert not np.allclose(alone["score"], with_history["score"])  # history matters


def test_unsorted_input_is_scored_in_time_order_and_returned_in_input_order(fitted) -> None:
    detector, train, _, test = fitted
    distinct = test.drop_duplicates("Time")  # events at one time are ordered by arrival
    shuffled = distinct.sample(frac=1.0, random_state=2)
    scored = detector.score(shuffled, history=train)
    pd.testing.assert_frame_equal(
        scored.loc[distinct.index], detector.score(distinct, history=train)
    )
    assert list(scored.index) == list(shuffled.index)


def test_live_scorer_dead_letters_bad_and_late_events(fitted) -> None:
    detector, train, _, test = fitted
    live = detector.live(history=train)
    good = test.iloc[0].to_dict()
    assert live.score_event(good) is not None
    bad = {**good, "Amount": "lots"}
    assert live.score_event(bad) is None
    late = {**good, "Time": good["Time"] - 3600}
    assert live.score_event(late) is None
    reasons = [letter.reason for letter in live.dead_letters]
    assert "non-numeric value 'lots'" in reasons[0]
    assert reasons[1].startswith("late:")
    assert live.score_event(test.iloc[1].to_dict()) is not None


def test_saved_detector_scores_the_same(fitted, tmp_path: Path) -> None:
    detector, train, _, test = fitted
    detector.save(tmp_path / "model")
    restored = Detector.load(tmp_path / "model")
    pd.testing.assert_frame_equal(
        restored.score(test, history=train), detector.score(test, history=train)
    )


def original_and_permuted_labels() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = entity_events()
    permuted = frame.copy()
    permuted["Class"] = np.random.default_rng(5).permutation(permuted["Class"].to_numpy())
    assert (permuted["Class"] != frame["Class"]).any()
    return frame, permuted


def test_label_free_stages_never_read_labels_with_behaviour() -> None:
    """Even with delayed-label risk (truth mode), rules and autoencoder ignore the labels."""
    config = behaviour_config("truth", label_risk={"window": "12h", "delay": "1h"})
    outputs = []
    for events in original_and_permuted_labels():
        train, validation, test = split_parts(events, config)
        detector = Detector(config).fit_unsupervised(train, validation)
        outputs.append(detector.stage_outputs(test, history=pd.concat([train, validation])))
    np.testing.assert_array_equal(outputs[0].rules.score, outputs[1].rules.score)
    np.testing.assert_array_equal(outputs[0].reconstruction_error, outputs[1].reconstruction_error)
    assert "customer_id__label_rate_12h_delay1h" in outputs[0].features.engineered_names
    assert "customer_id__label_rate_12h_delay1h" not in outputs[0].features.scaled_names


def test_pseudo_mode_with_behaviour_never_reads_labels() -> None:
    config = behaviour_config()
    scores = []
    for events in original_and_permuted_labels():
        train, validation, test = split_parts(events, config)
        detector = Detector(config).fit(train, validation)
        scores.append(detector.score(test, history=pd.concat([train, validation])))
    pd.testing.assert_frame_equal(scores[0], scores[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"data": {"entity_keys": ["customer_id"]}},
            "'terminal_id' must also be listed in data.entity_keys",
        ),
        ({"behavioural": {"windows": ["5 parsecs"]}}, "invalid duration '5 parsecs'"),
        (
            {"behavioural": {"label_risk": {"window": "1d", "delay": "1h"}}},
            "pseudo mode never does",
        ),
        ({"behavioural": {"cadence": "1h"}}, "features.behavioural.cadence: unknown key"),
        (
            {"behavioural": {"distinct": [{"column": "merchant", "windows": ["1h"]}]}},
            "distinct\\[0\\].column: 'merchant' must also be listed in data.entity_keys",
        ),
        (
            {"behavioural": {"distinct": [{"column": "Class", "windows": ["1h"]}]}},
            "distinct\\[0\\].column: 'Class' is the data.label column",
        ),
        ({"behavioural": {"distinct": [{"windows": ["1h"]}]}}, "give column or period"),
    ],
)
def test_bad_behavioural_config_is_one_line(change: dict, message: str) -> None:
    raw = small_config_dict(
        data={"entity_keys": ["customer_id", "terminal_id"]},
        features={"behavioural": {**BEHAVIOURAL, **change.get("behavioural", {})}},
    )
    raw["data"].update(change.get("data", {}))
    with pytest.raises(ConfigError, match=message) as caught:
        config_from_dict(raw, "config.yaml")
    assert "\n" not in str(caught.value)


def test_unknown_entity_column_in_the_data_is_one_line() -> None:
    config = behaviour_config()
    frame = entity_events().drop(columns=["terminal_id"])
    with pytest.raises(InputError, match="missing column 'terminal_id'"):
        prepare_events(frame, config, "events.csv")


def test_missing_entity_value_is_one_line() -> None:
    config = behaviour_config()
    frame = entity_events()
    frame.loc[7, "customer_id"] = None
    with pytest.raises(InputError, match="entity column 'customer_id' has a missing value"):
        prepare_events(frame, config, "events.csv")


def test_a_column_named_like_a_behavioural_feature_is_refused() -> None:
    config = behaviour_config()
    frame = entity_events().assign(customer_id__count_1h=1.0)
    with pytest.raises(InputError, match="has the name of a behavioural feature"):
        prepare_events(frame, config, "events.csv")


def test_several_label_risk_windows_and_calendar_flags_score_alike_live_and_in_batch() -> None:
    """Truth mode with the terminal's label risk over two windows and calendar inputs: the
    judge sees the risk, and event-by-event scoring equals frame scoring."""
    raw = small_config_dict(
        data={"entity_keys": ["customer_id", "terminal_id"]},
        features={
            "calendar": ["weekend", "night"],
            "behavioural": {
                **BEHAVIOURAL,
                "label_risk": {"windows": ["2h", "12h"], "delay": "1h", "keys": ["terminal_id"]},
            },
        },
        judge={"label_source": "truth"},
    )
    config = config_from_dict(raw)
    train, validation, test = split_parts(entity_events(), config)
    detector = Detector(config).fit(train, validation)
    names = detector.feature_importance()
    assert "is_night" in names and "terminal_id__label_rate_12h_delay1h" in names
    assert not [name for name in names if name.startswith("customer_id__label")]
    history = pd.concat([train, validation])
    events = test.iloc[:120]
    batch = detector.score(events, history=history)
    live = detector.live(history=history)
    streamed = pd.DataFrame(
        [live.score_event(event) for event in events.to_dict("records")], index=events.index
    )
    assert live.dead_letters == []
    np.testing.assert_allclose(streamed["score"], batch["score"], rtol=1e-6, atol=1e-9)
