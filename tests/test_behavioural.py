"""Behavioural features: batch and live engines agree, and each feature means what the docs say."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hybrid_ad.behavioural.batch import (
    BehaviouralConfig,
    DistinctConfig,
    LabelRiskConfig,
    behavioural_config_from_dict,
    compute_batch,
    feature_names,
    parse_duration,
)
from hybrid_ad.behavioural.live import FeatureState
from hybrid_ad.errors import ArtifactError, ConfigError, InputError

TOL = {"rtol": 1e-9, "atol": 1e-9}
ALL_AGGREGATES = ["count", "sum", "mean", "std", "min", "max", "ratio_to_mean"]


def frame_of(times, customers=None, amounts=None, labels=None, terminals=None) -> pd.DataFrame:
    n = len(times)
    return pd.DataFrame(
        {
            "time": np.asarray(times, dtype=float),
            "customer": customers if customers is not None else ["a"] * n,
            "terminal": terminals if terminals is not None else [0] * n,
            "amount": np.asarray(amounts if amounts is not None else [1.0] * n, dtype=float),
            "label": labels if labels is not None else [0] * n,
        }
    )


def live(config: BehaviouralConfig, frame: pd.DataFrame, label: str | None = "label"):
    state = FeatureState(config, label if config.label_risk else None)
    return state, state.update_many(frame)


def row(frame: pd.DataFrame, index: int) -> dict[str, float]:
    return frame.iloc[index].to_dict()


# --- parity: property-based ---------------------------------------------------------------------

CONFIGS = [
    BehaviouralConfig(
        entity_keys=["customer", "terminal"],
        windows=["10s", "1m"],
        last_n=[1, 3],
        values=["amount"],
        aggregates=ALL_AGGREGATES,
        session_gap="30s",
        label_risk=LabelRiskConfig(windows=["15s", "1m", "40s"], delay="20s"),
        entity_ttl="5m",
    ),
    BehaviouralConfig(
        entity_keys=[],
        windows=["5s"],
        last_n=[2],
        values=["amount", "other"],
        aggregates=["count", "mean", "std", "ratio_to_mean"],
        session_gap=None,
        time_since_previous=False,
        entity_ttl=None,
    ),
    BehaviouralConfig(
        entity_keys=["customer"],
        windows=["30s", "90s"],
        last_n=[],
        values=["amount"],
        aggregates=["sum", "min", "max", "std"],
        session_gap="15s",
        label_risk=LabelRiskConfig(window="45s", delay="5s"),
        entity_ttl="2m",  # shorter than many gaps: entities are forgotten and restart
    ),
    BehaviouralConfig(
        # composite keys: the customer at a terminal, and customer x terminal x country
        entity_keys=[["customer", "terminal"], "terminal", ["country", "customer", "terminal"]],
        windows=["20s"],
        last_n=[2],
        values=["amount"],
        aggregates=ALL_AGGREGATES,
        session_gap="30s",
        # label risk for two of the three keys only; the other's slots carry none
        label_risk=LabelRiskConfig(
            windows=["30s", "1m"], delay="10s", keys=["terminal", ["terminal", "customer"]]
        ),
        entity_ttl="5m",
    ),
    BehaviouralConfig(
        # distinct counts: of a column for one key, of a composite key's part, of clock periods
        entity_keys=["customer", ["customer", "terminal"], "country"],
        windows=["20s"],
        last_n=[],
        values=["amount"],
        aggregates=["count"],
        session_gap=None,
        distinct=[
            DistinctConfig(column="terminal", windows=["5s", "1m"], keys=["customer"]),
            DistinctConfig(column="country", windows=["30s"]),
            DistinctConfig(period="10s", windows=["1m", "40s"], keys=["customer", "country"]),
        ],
        entity_ttl="2m",  # entities are forgotten and restart; the tables are pruned
    ),
]
COMPOSITE = CONFIGS[3]
DISTINCT = CONFIGS[4]

gaps = st.one_of(
    st.just(0.0),  # ties
    st.floats(0.0, 3.0, allow_nan=False),  # bursts
    st.integers(0, 40).map(float),  # within windows
    st.sampled_from([10.0, 60.0, 90.0, 300.0, 1000.0]),  # exactly on a boundary, or beyond all
)
amounts = st.one_of(
    st.integers(-5, 5).map(float),  # repeats and zeros: ratio fills, zero std
    st.floats(-1e3, 1e4, allow_nan=False).map(lambda v: round(v, 2)),
    st.sampled_from([1e6, 1e6 + 0.01, 1e6 + 0.02]),  # near-constant large values: cancellation
)


@st.composite
def streams(draw) -> pd.DataFrame:
    n = draw(st.integers(1, 60))
    n_customers = draw(st.sampled_from([1, 2, 4, 12]))
    start = draw(st.sampled_from([0.0, 1.7e9]))  # epoch-sized times round differently
    times = start + np.cumsum(draw(st.lists(gaps, min_size=n, max_size=n)))
    return pd.DataFrame(
        {
            "time": times,
            "customer": draw(st.lists(st.integers(0, n_customers - 1), min_size=n, max_size=n)),
            "terminal": draw(st.lists(st.sampled_from(["t1", "t2"]), min_size=n, max_size=n)),
            "country": draw(st.lists(st.sampled_from([7, 44]), min_size=n, max_size=n)),
            "amount": draw(st.lists(amounts, min_size=n, max_size=n)),
            "other": draw(st.lists(amounts, min_size=n, max_size=n)),
            "label": draw(
                st.lists(st.sampled_from([0.0, 0.0, 1.0, math.nan]), min_size=n, max_size=n)
            ),
        },
        index=pd.RangeIndex(100, 100 + n),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=streams(), which=st.integers(0, len(CONFIGS) - 1))
def test_batch_and_live_agree(frame: pd.DataFrame, which: int) -> None:
    config = CONFIGS[which]
    batch = compute_batch(frame, config, "time", "label")
    state, many = live(config, frame)
    assert list(batch.columns) == feature_names(config) == list(many.columns)
    assert batch.index.equals(frame.index) and many.index.equals(frame.index)
    assert not state.dead_letters
    assert np.isfinite(batch.to_numpy()).all()
    np.testing.assert_allclose(many.to_numpy(), batch.to_numpy(), **TOL)
    one_by_one = FeatureState(config, "label" if config.label_risk else None)
    rows = [one_by_one.update(event) for event in frame.to_dict("records")]
    assert np.array_equal(pd.DataFrame(rows).to_numpy(), many.to_numpy())


@settings(max_examples=80, deadline=None)
@given(
    frame=streams(),
    cut=st.floats(0.0, 1.0),
    config=st.sampled_from([CONFIGS[0], COMPOSITE, DISTINCT]),
)
def test_restored_state_continues_identically(
    frame: pd.DataFrame, cut: float, config: BehaviouralConfig
) -> None:
    split = int(len(frame) * cut)
    whole = FeatureState(config, "label").update_many(frame)
    first = FeatureState(config, "label")
    head = first.update_many(frame.iloc[:split])
    restored = FeatureState.from_dict(json.loads(json.dumps(first.to_dict(), allow_nan=False)))
    tail = restored.update_many(frame.iloc[split:])
    assert np.array_equal(pd.concat([head, tail]).to_numpy(), whole.to_numpy())


def test_distinct_counts_mean_what_the_docs_say() -> None:
    """The event itself plus the distinct values among its entity's events in [t - w, t]."""
    config = BehaviouralConfig(
        entity_keys=["customer"],
        windows=[],
        last_n=[],
        aggregates=[],
        time_since_previous=False,
        session_gap=None,
        distinct=[
            DistinctConfig(column="terminal", windows=["10s"]),
            DistinctConfig(period="1m", windows=["2m"]),
        ],
        entity_ttl="1h",
    )
    frame = frame_of(
        [0, 5, 10, 10, 21, 59, 60, 170, 171],
        customers=list("aaaaaaaab"),
        terminals=[1, 2, 1, 3, 1, 1, 1, 2, 2],
    )
    features = both(config, frame)
    # t=10 sees t=0 (exactly 10 s before: inside); t=21 sees none of 1, 2, 3 (all > 10 s ago)
    assert features["customer__distinct_terminal_10s"].tolist() == [1, 2, 2, 3, 1, 1, 1, 1, 1]
    # clock minutes 0, 0, 0, 0, 0, 0, 1, 2 (t=170 sees t=59, 60: minutes 0 and 1); b is new
    assert features["customer__active_1m_periods_2m"].tolist() == [1, 1, 1, 1, 1, 1, 2, 3, 1]
    assert feature_names(config) == [
        "customer__distinct_terminal_10s",
        "customer__active_1m_periods_2m",
    ]


def test_distinct_tables_stay_small_and_the_vocabulary_forgets_evicted_values() -> None:
    """A long stream of ever-new values: each table holds what its window can see, and the
    vocabulary only values some table still holds."""
    config = BehaviouralConfig(
        entity_keys=["customer"],
        windows=["1m"],
        last_n=[],
        aggregates=["count"],
        session_gap=None,
        distinct=[DistinctConfig(column="terminal", windows=["1m"])],
        entity_ttl="10m",
    )
    n = 20_000
    frame = frame_of(
        np.arange(n) * 2.0, customers=np.arange(n) % 3, terminals=list(range(n))
    )  # every event on a new terminal
    state = FeatureState(config)
    features = state.update_many(frame)
    np.testing.assert_array_equal(
        features.to_numpy(), compute_batch(frame, config, "time").to_numpy()
    )
    tables = state._d_header[state._held_slots(), 0]
    assert tables[:, 1].max() <= 2 * 31  # at most twice the 31 values a window sees (pruning)
    assert len(state._d_values[0]) < 200


def test_distinct_checkpoint_keeps_values_and_refuses_damage() -> None:
    config = DISTINCT
    frame = frame_of(
        [0, 3, 6, 9, 12], customers=list("abaab"), terminals=["x", "y", "y", "z", "x"]
    ).assign(country=[1, 1, 2, 2, 1])
    state = FeatureState(config)
    state.update_many(frame.iloc[:4])
    document = json.loads(json.dumps(state.to_dict(), allow_nan=False))
    assert document["version"] == 4
    saved = dict(document["entities"][0])["a"]["distinct"]  # customer a: three counts
    assert sorted(value for value, _ in saved[0]) == ["x", "y", "z"]
    later = FeatureState.from_dict(document).update_many(frame.iloc[4:])
    pd.testing.assert_frame_equal(later, state.update_many(frame.iloc[4:]))
    saved[0].append(["x", 1.0])
    with pytest.raises(ArtifactError, match="holds a value twice") as caught:
        FeatureState.from_dict(document)
    one_line(caught.value)
    saved[0][-1] = ["w", 99.0]
    with pytest.raises(ArtifactError, match="after the entity"):
        FeatureState.from_dict(document)
    del saved[0]
    with pytest.raises(ArtifactError, match="distinct tables do not match"):
        FeatureState.from_dict(document)


@settings(max_examples=40, deadline=None)
@given(frame=streams(), cut=st.floats(0.0, 1.0))
def test_describe_of_distinct_counts_changes_nothing(frame: pd.DataFrame, cut: float) -> None:
    split = int(len(frame) * cut)
    state = FeatureState(DISTINCT)
    state.update_many(frame.iloc[:split])
    before = state.to_dict()
    described = state.describe(frame.iloc[split:])
    assert state.to_dict() == before
    updated = [state.update(event) for event in frame.iloc[split:].to_dict("records")]
    if updated:  # each event described alone equals its update on the state before it
        first = FeatureState.from_dict(before).describe(frame.iloc[split : split + 1])
        assert first.iloc[0].tolist() == list(updated[0].values())
    assert len(described) == len(frame) - split


def test_a_version_3_state_without_distinct_counts_still_loads() -> None:
    state = FeatureState(CONFIGS[0], "label")
    frame = frame_of([0, 5, 30, 31, 80], customers=list("aabaa"))
    state.update_many(frame.iloc[:3])
    document = state.to_dict() | {"version": 3}
    pd.testing.assert_frame_equal(
        FeatureState.from_dict(document).update_many(frame.iloc[3:]),
        state.update_many(frame.iloc[3:]),
    )


def test_long_lived_entity_stays_exact_and_bounded() -> None:
    """Thousands of events of one entity: running sums stay exact and the buffer bounded."""
    config = BehaviouralConfig(
        windows=["30s"], last_n=[5], values=["amount"], aggregates=ALL_AGGREGATES,
        session_gap="10s", entity_ttl="1h",
    )  # fmt: skip
    rng = np.random.default_rng(3)
    n = 12_000
    times = np.cumsum(rng.choice([0.0, 0.5, 1.0, 3.0, 20.0], n))
    amounts = 1e3 + rng.integers(0, 100, n) / 100  # near-constant: the variance cancels
    frame = frame_of(times, amounts=amounts)
    batch = compute_batch(frame, config, "time")
    whole = FeatureState(config)
    many = whole.update_many(frame)
    np.testing.assert_allclose(many.to_numpy(), batch.to_numpy(), **TOL)
    assert whole.buffered_events < 200  # trimmed to what the windows can see
    first = FeatureState(config)
    head = first.update_many(frame.iloc[: n // 2])
    restored = FeatureState.from_dict(json.loads(json.dumps(first.to_dict())))
    tail = restored.update_many(frame.iloc[n // 2 :])
    assert np.array_equal(pd.concat([head, tail]).to_numpy(), many.to_numpy())


def test_many_entities_grow_move_and_evict_without_changing_features() -> None:
    """Thousands of entities overflow the live engine's initial heap (compactions, regions
    moving and growing), idle ones are evicted and their slots reused: still batch parity, and
    the one-by-one, chunked and restored paths give the same bits."""
    config = CONFIGS[0]
    rng = np.random.default_rng(11)
    n = 6_000
    gaps = rng.choice([0.0, 0.2, 1.0, 30.0], n, p=[0.2, 0.5, 0.29, 0.01])
    frame = pd.DataFrame(
        {
            "time": np.cumsum(gaps),
            "customer": rng.zipf(1.3, n) % 3_000,  # a few busy entities, many rare ones
            "terminal": rng.integers(0, 400, n),
            "amount": np.round(rng.lognormal(3.0, 1.0, n), 2),
            "label": (rng.random(n) < 0.05).astype(int),
        }
    )
    batch = compute_batch(frame, config, "time", "label")
    state, many = live(config, frame)
    np.testing.assert_allclose(many.to_numpy(), batch.to_numpy(), **TOL)
    assert state.evicted > 0 and state.n_entities < frame["customer"].nunique()
    one_by_one = FeatureState(config, "label")
    rows = [one_by_one.update(event) for event in frame.to_dict("records")]
    assert np.array_equal(pd.DataFrame(rows).to_numpy(), many.to_numpy())
    first = FeatureState(config, "label")
    head = first.update_many(frame.iloc[:2_500])
    restored = FeatureState.from_dict(json.loads(json.dumps(first.to_dict(), allow_nan=False)))
    tail = restored.update_many(frame.iloc[2_500:])
    assert np.array_equal(pd.concat([head, tail]).to_numpy(), many.to_numpy())
    assert restored.n_entities == state.n_entities


def test_large_frames_take_the_blocked_and_two_digit_paths_with_parity() -> None:
    """More rows than one search/sum block (16,384), and composite entity codes beyond one
    16-bit radix digit (65,536): the batch engine's large-input paths agree with the live one."""
    config = BehaviouralConfig(
        entity_keys=[["customer", "terminal"], "customer"], windows=["1m", "1h"], last_n=[4],
        values=["amount"], aggregates=ALL_AGGREGATES, session_gap="5m", entity_ttl="1d",
    )  # fmt: skip
    rng = np.random.default_rng(5)
    n = 40_000
    frame = pd.DataFrame(
        {
            "time": np.cumsum(rng.choice([0.0, 0.1, 1.0], n)),
            "customer": rng.integers(0, 300, n),
            "terminal": rng.integers(0, 300, n),  # up to 90,000 combinations
            "amount": np.round(rng.lognormal(3.0, 1.0, n), 2),
        }
    )
    # composite codes are mixed-radix: customers x terminals of them, past one 16-bit digit
    assert frame["customer"].nunique() * frame["terminal"].nunique() > 2**16
    batch = compute_batch(frame, config, "time")
    _, many = live(config, frame)
    np.testing.assert_allclose(many.to_numpy(), batch.to_numpy(), **TOL)


# --- hand-computed examples ---------------------------------------------------------------------

WINDOW = BehaviouralConfig(
    windows=["1m"], last_n=[2], values=["amount"], aggregates=ALL_AGGREGATES, session_gap=None
)


def both(config: BehaviouralConfig, frame: pd.DataFrame) -> pd.DataFrame:
    batch = compute_batch(frame, config, "time", "label")
    _, many = live(config, frame)
    np.testing.assert_allclose(many.to_numpy(), batch.to_numpy(), **TOL)
    return batch


def test_window_is_history_before_the_event_with_ties_in_arrival_order() -> None:
    out = both(WINDOW, frame_of([0, 0, 60, 60.5], amounts=[10, 20, 30, 40]))
    first, tie, edge, past = (row(out, i) for i in range(4))
    assert first["global__count_1m"] == 0  # the current event is never in its own window
    assert tie["global__count_1m"] == 1 and tie["global__amount_mean_1m"] == 10
    # t - w = 0 exactly: both events at 0 are inside [t - w, t]
    assert edge["global__count_1m"] == 2 and edge["global__amount_mean_1m"] == 15
    assert edge["global__amount_std_1m"] == 5  # population std of 10, 20
    assert edge["global__amount_ratio_to_mean_1m"] == 2  # 30 / 15
    assert (edge["global__amount_min_1m"], edge["global__amount_max_1m"]) == (10, 20)
    # at 60.5 the events at 0 have left; only the one at 60 is left
    assert past["global__count_1m"] == 1 and past["global__amount_sum_1m"] == 30
    assert past["global__amount_std_1m"] == 0  # fewer than 2 events
    assert past["global__count_last2"] == 2 and past["global__amount_mean_last2"] == 25


def test_new_entity_gets_documented_fills() -> None:
    config = WINDOW.model_copy(update={"entity_keys": ["customer"], "session_gap": "30m"})
    out = both(config, frame_of([0, 1], customers=["a", "b"], amounts=[5, 7]))
    fresh = row(out, 1)
    for name in feature_names(config):
        if "ratio_to_mean" in name:
            assert fresh[name] == 1.0, name
        elif name == "customer__seconds_since_previous":
            assert fresh[name] == parse_duration("60d")  # the entity_ttl
        else:
            assert fresh[name] == 0.0, name


def test_session_resets_after_the_inactivity_gap() -> None:
    config = BehaviouralConfig(windows=[], last_n=[], values=["amount"], session_gap="30s")
    out = both(config, frame_of([0, 10, 40, 71, 75], amounts=[1, 2, 4, 8, 16]))
    sessions = out[["global__session_events", "global__session_seconds"]].to_numpy().tolist()
    assert sessions == [[0, 0], [1, 10], [2, 40], [0, 0], [1, 4]]  # 40 -> 71 is a 31 s gap
    assert out["global__session_amount_sum"].tolist() == [0, 1, 3, 0, 8]
    assert out["global__seconds_since_previous"].tolist() == [parse_duration("60d"), 10, 30, 31, 4]


def test_label_risk_sees_only_labels_known_before_the_event() -> None:
    config = BehaviouralConfig(
        windows=[], last_n=[], session_gap=None, time_since_previous=False,
        label_risk=LabelRiskConfig(window="100s", delay="10s"),
    )  # fmt: skip
    times = [0, 5, 12, 15, 15, 111]
    labels = [1, 0, 1, None, 1, 0]
    out = both(config, frame_of(times, labels=labels))
    rate = out["global__label_rate_100s_delay10s"].tolist()
    seen = out["global__labelled_events_100s_delay10s"].tolist()
    # at 12: labels of events up to 2 s (only t=0) are known; at 15: up to 5 s (t=0, t=5);
    # the label of t=12 is never visible before 22; at 111 the window is (1, 101]: 5, 12, 15, 15
    # (the None label is unknown, not normal)
    assert seen == [0, 0, 1, 2, 2, 3]
    assert rate == [0, 0, 1, 0.5, 0.5, pytest.approx(2 / 3)]


def test_several_label_risk_windows_share_the_delay() -> None:
    config = BehaviouralConfig(
        windows=[], last_n=[], session_gap=None, time_since_previous=False,
        label_risk={"windows": ["20s", "100s"], "delay": "10s"},
    )  # fmt: skip
    times = [0, 5, 12, 15, 40, 111]
    labels = [1, 0, 1, 0, 1, 0]
    out = both(config, frame_of(times, labels=labels))
    assert list(out.columns) == [
        "global__label_rate_20s_delay10s",
        "global__labelled_events_20s_delay10s",
        "global__label_rate_100s_delay10s",
        "global__labelled_events_100s_delay10s",
    ]
    # at 40 the labels known are of events up to 30: 20 s window (10, 30] holds 12 and 15,
    # 100 s window all four; at 111: (81, 101] is empty, (1, 101] holds 5, 12, 15, 40
    assert out["global__labelled_events_20s_delay10s"].tolist() == [0, 0, 1, 2, 2, 0]
    assert out["global__label_rate_20s_delay10s"].tolist() == [0, 0, 1, 0.5, 0.5, 0]
    assert out["global__labelled_events_100s_delay10s"].tolist() == [0, 0, 1, 2, 4, 4]
    assert out["global__label_rate_100s_delay10s"].tolist() == [0, 0, 1, 0.5, 0.5, 0.5]


def test_label_risk_for_some_keys_only() -> None:
    config = BehaviouralConfig(
        entity_keys=["customer", "terminal"], windows=["1m"], last_n=[], session_gap=None,
        label_risk={"windows": ["1d", "7d"], "delay": "1d", "keys": ["terminal"]},
    )  # fmt: skip
    names = feature_names(config)
    assert not [name for name in names if name.startswith("customer__label")]
    assert [name for name in names if "label" in name] == [
        "terminal__label_rate_1d_delay1d",
        "terminal__labelled_events_1d_delay1d",
        "terminal__label_rate_7d_delay1d",
        "terminal__labelled_events_7d_delay1d",
    ]
    day = 86400.0
    frame = frame_of(
        [0, day, 2 * day, 3 * day, 3 * day + 1],
        customers=list("abcab"), terminals=[1, 1, 2, 1, 1], labels=[1, 0, 1, 1, 0],
    )  # fmt: skip
    out = both(config, frame)
    # terminal 1 at 1d: the label of t=0 is known exactly then, in both windows; at 3d the
    # labels up to 2d are known: 7d window t=0 and t=1d; 1d window (1d, 2d]: none of them
    assert out["terminal__labelled_events_7d_delay1d"].tolist() == [0, 1, 0, 2, 2]
    assert out["terminal__label_rate_7d_delay1d"].tolist() == [0, 1, 0, 0.5, 0.5]
    assert out["terminal__labelled_events_1d_delay1d"].tolist() == [0, 1, 0, 0, 0]
    assert out["terminal__label_rate_1d_delay1d"].tolist() == [0, 1, 0, 0, 0]


@settings(max_examples=60, deadline=None)
@given(frame=streams(), cut=st.floats(0.0, 1.0), config=st.sampled_from([CONFIGS[0], COMPOSITE]))
def test_labels_are_never_visible_before_their_delay(
    frame: pd.DataFrame, cut: float, config: BehaviouralConfig
) -> None:
    """Leakage: changing every label not yet known at time c (events after c - delay) leaves
    the features of every event up to c unchanged, in both engines, for every window."""
    assert config.label_risk is not None
    delay = parse_duration(config.label_risk.delay)
    c = float(frame["time"].min() + cut * (frame["time"].max() - frame["time"].min()))
    unknown = frame["time"] > c - delay
    changed = frame.assign(label=np.where(unknown, 1.0 - frame["label"].fillna(0.0), 0.0))
    changed.loc[~unknown, "label"] = frame.loc[~unknown, "label"]
    seen = (frame["time"] <= c).to_numpy()
    for engine in (
        lambda f: compute_batch(f, config, "time", "label"),
        lambda f: FeatureState(config, "label").update_many(f),
    ):
        before, after = engine(frame), engine(changed)
        pd.testing.assert_frame_equal(before[seen], after[seen])


def test_label_of_the_event_itself_is_never_used() -> None:
    config = BehaviouralConfig(
        windows=["1h"], session_gap=None, label_risk=LabelRiskConfig(window="1h", delay="1s")
    )
    frame = frame_of([0, 0, 0], labels=[1, 1, 1])
    a = compute_batch(frame, config, "time", "label")
    b = compute_batch(frame.assign(label=[0, 0, 0]), config, "time", "label")
    pd.testing.assert_frame_equal(a, b)


def test_idle_entities_are_evicted_and_restart_afresh() -> None:
    config = BehaviouralConfig(
        entity_keys=["customer"], windows=["1m"], values=["amount"], session_gap=None,
        entity_ttl="2m",
    )  # fmt: skip
    frame = frame_of([0, 10, 200, 400], customers=["a", "a", "b", "a"], amounts=[1, 2, 3, 4])
    state = FeatureState(config)
    state.update_many(frame.iloc[:3])
    assert state.n_entities == 1 and state.evicted == 1  # "a" idle for 190 s > 120 s
    out = both(config, frame)
    back = row(out, 3)
    assert back["customer__count_last10"] == 0  # forgotten: its last-10 history is gone too
    assert back["customer__seconds_since_previous"] == 120  # the documented fill: entity_ttl


def test_too_late_events_become_dead_letters_and_nothing_else_changes() -> None:
    config = BehaviouralConfig(
        windows=["1m"], values=["amount"], session_gap="30s", allowed_lateness="10s"
    )
    on_time = frame_of([100, 110, 120], amounts=[1, 2, 3])
    with_late = pd.concat([on_time.iloc[:2], frame_of([95], amounts=[99])]).iloc[[0, 1, 2]]
    with_late = pd.concat([with_late, on_time.iloc[2:]], ignore_index=True)
    state = FeatureState(config)
    out = state.update_many(with_late)
    assert [letter.event["amount"] for letter in state.dead_letters] == [99]
    assert "late" in state.dead_letters[0].reason
    assert out.index.tolist() == [0, 1, 3]
    expected = FeatureState(config).update_many(on_time)
    np.testing.assert_array_equal(out.to_numpy(), expected.to_numpy())
    assert state.update({"time": 50.0, "amount": 1.0}) is None and len(state.dead_letters) == 2


def test_late_event_within_lateness_is_accepted() -> None:
    config = BehaviouralConfig(
        entity_keys=["customer"], windows=["1m"], values=["amount"], allowed_lateness="10s"
    )
    state = FeatureState(config)
    state.update({"time": 100.0, "customer": "a", "amount": 1.0})
    late = state.update({"time": 95.0, "customer": "b", "amount": 2.0})
    older = state.update({"time": 92.0, "customer": "b", "amount": 3.0})
    assert late is not None and older is not None and not state.dead_letters
    assert older["customer__count_1m"] == 1  # kept in its entity's order, at time 95
    assert older["customer__seconds_since_previous"] == 0


def test_malformed_live_events_are_dead_letters() -> None:
    config = BehaviouralConfig(entity_keys=["customer"], values=["amount"])
    state = FeatureState(config)
    assert state.update({"time": 1.0, "amount": 2.0}) is None
    assert state.update({"time": 1.0, "customer": "a", "amount": math.inf}) is None
    assert state.update({"time": 1.0, "customer": None, "amount": 1.0}) is None
    assert [letter.reason for letter in state.dead_letters] == [
        "missing column 'customer'",
        "value column 'amount' is inf, not a finite number",
        "entity column 'customer' is missing",
    ]
    assert state.n_entities == 0


def test_save_and_load_use_json(tmp_path) -> None:
    config = CONFIGS[0]
    frame = frame_of([0, 5, 30, 31, 80, 200], customers=list("ababab"), amounts=[1, 2, 3, 4, 5, 6])
    state = FeatureState(config, "label")
    state.update_many(frame.iloc[:4])
    path = tmp_path / "state.json"
    state.save(path)
    json.loads(path.read_text())  # plain JSON: no pickle anywhere
    restored = FeatureState.load(path)
    pd.testing.assert_frame_equal(
        restored.update_many(frame.iloc[4:]), state.update_many(frame.iloc[4:])
    )


RISK_AT = 9 + 4 * 9 + 2
"""CONFIGS[0]'s header: 9 fixed columns, 4 windows of 1 + 8 columns (one value), 2 session
sums, then per label-risk window LABEL_LO, KNOWN, BAD."""


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (9, 99.0, "window start outside"),  # the first window's start, past the buffer's end
        (9, -1.0, "whole number"),
        (8, 0.0, "label-risk counters out of order"),  # LABEL_HI below the first LABEL_LO
        (RISK_AT + 3 + 2, 9.0, "label-risk counters out of order"),  # BAD above KNOWN
        (RISK_AT + 6, 99.0, "out of order"),  # the third risk window's LABEL_LO past LABEL_HI
        (1, float("nan"), "buffer length"),  # END
        (7, "inf", "non-finite"),  # SESSION_COUNT
    ],
)
def test_damaged_state_is_refused_before_the_kernel_reads_it(column, value, message) -> None:
    """The compiled kernel does not check bounds: positions from a file are checked first."""
    state = FeatureState(CONFIGS[0], "label")
    state.update_many(frame_of([0, 5, 30, 31, 80], customers=list("aabaa"), labels=[0] * 5))
    document = json.loads(json.dumps(state.to_dict(), allow_nan=False))
    header = document["entities"][0][0][1]["header"]
    header[RISK_AT] = 2.0  # LABEL_LO = 2, a valid position; the cases below break one thing each
    header[8] = max(header[8], 2.0)  # LABEL_HI
    FeatureState.from_dict(document)  # still valid
    header[column] = value
    with pytest.raises(ArtifactError, match=message) as caught:
        FeatureState.from_dict(document)
    one_line(caught.value)


# --- bad input ----------------------------------------------------------------------------------


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def test_unknown_entity_column_is_named() -> None:
    config = BehaviouralConfig(entity_keys=["card"])
    with pytest.raises(InputError) as caught:
        compute_batch(frame_of([0, 1]), config, "time")
    assert "'card'" in one_line(caught.value)
    with pytest.raises(InputError, match="'card'"):
        FeatureState(config).update_many(frame_of([0, 1]))


def test_unknown_value_column_is_named() -> None:
    with pytest.raises(InputError) as caught:
        compute_batch(frame_of([0]), BehaviouralConfig(values=["price"]), "time")
    assert "value column 'price'" in one_line(caught.value)


def test_unsorted_times_name_column_and_row() -> None:
    frame = frame_of([0, 5, 3, 1])
    with pytest.raises(InputError) as caught:
        compute_batch(frame, BehaviouralConfig(), "time")
    message = one_line(caught.value)
    assert "'time'" in message and "row 2" in message


@settings(max_examples=60, deadline=None)
@given(frame=streams(), seed=st.integers(0, 2**32 - 1), config=st.sampled_from(CONFIGS))
def test_sort_takes_rows_in_time_order_and_answers_in_row_order(
    frame: pd.DataFrame, seed: int, config: BehaviouralConfig
) -> None:
    shuffled = frame.sample(frac=1.0, random_state=np.random.RandomState(seed % 2**32))
    in_time_order = shuffled.sort_values("time", kind="stable")  # ties keep row order
    expected = compute_batch(in_time_order, config, "time", "label").loc[shuffled.index]
    got = compute_batch(shuffled, config, "time", "label", sort=True)
    assert got.index.equals(shuffled.index)
    # entity codes follow row order, so entities' prefix sums run in another order: not bitwise
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), **TOL)


def test_bad_window_spec_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        behavioural_config_from_dict({"windows": ["1h", "5 parsecs"]})
    assert "5 parsecs" in one_line(caught.value) and "windows" in str(caught.value)
    with pytest.raises(ValidationError, match="5 parsecs"):
        BehaviouralConfig(windows=["5 parsecs"])


@pytest.mark.parametrize(
    "raw",
    [
        {"colour": "blue"},
        {"last_n": [0]},
        {"windows": ["1h", "60m"]},
        {"entity_ttl": "1h", "windows": ["1d"]},
        {"label_risk": {"window": "1d", "delay": "0s"}},
        {"label_risk": {"window": "1d", "windows": ["2d"]}},
        {"label_risk": {"windows": []}},
        {"label_risk": {"windows": ["1d", "24h"]}},
        {"label_risk": {"windows": ["1d"], "keys": ["terminal"]}, "entity_keys": ["customer"]},
        {"label_risk": {"windows": ["70d"]}},  # 70d + 7d is beyond the 60d entity_ttl
        {"session_gap": "-5m"},
        {"distinct": [{"windows": ["1h"]}]},  # neither column nor period
        {"distinct": [{"column": "country", "period": "1h"}]},
        {"distinct": [{"column": "country", "windows": []}]},
        {"distinct": [{"period": "0s"}]},
        {"distinct": [{"column": "country", "windows": ["90d"]}]},  # beyond the 60d entity_ttl
        {"distinct": [{"column": "country", "keys": ["card"]}], "entity_keys": ["customer"]},
        {"distinct": [{"column": "country"}, {"column": "country", "windows": ["1h"]}]},
    ],
)
def test_other_bad_configs_are_one_line_errors(raw) -> None:
    with pytest.raises(ConfigError) as caught:
        behavioural_config_from_dict(raw)
    one_line(caught.value)


def test_label_risk_needs_a_label_column() -> None:
    config = BehaviouralConfig(label_risk=LabelRiskConfig())
    with pytest.raises(InputError, match="label"):
        compute_batch(frame_of([0]), config, "time")
    with pytest.raises(ConfigError, match="label"):
        FeatureState(config)
    with pytest.raises(InputError) as caught:
        compute_batch(frame_of([0], labels=[2]), config, "time", "label")
    assert "'label'" in one_line(caught.value)


def test_durations() -> None:
    assert [parse_duration(s) for s in ["90s", "30m", "1h", "1d", "7d", "2w", "1.5h"]] == [
        90,
        1800,
        3600,
        86400,
        604800,
        1209600,
        5400,
    ]
    with pytest.raises(ValueError, match="5 parsecs"):
        parse_duration("5 parsecs")


def test_feature_names_are_stable_and_prefixed_per_key() -> None:
    config = BehaviouralConfig(
        entity_keys=["customer", "terminal"],
        windows=["1h"],
        last_n=[5],
        values=["amount"],
        aggregates=["ratio_to_mean", "count", "mean"],  # order in the config does not matter
        label_risk=LabelRiskConfig(window="30d", delay="7d"),
        entity_ttl="60d",
    )
    assert feature_names(config)[:9] == [
        "customer__count_1h",
        "customer__amount_mean_1h",
        "customer__amount_ratio_to_mean_1h",
        "customer__count_last5",
        "customer__amount_mean_last5",
        "customer__amount_ratio_to_mean_last5",
        "customer__seconds_since_previous",
        "customer__session_events",
        "customer__session_seconds",
    ]
    assert feature_names(config)[9:12] == [
        "customer__session_amount_sum",
        "customer__label_rate_30d_delay7d",
        "customer__labelled_events_30d_delay7d",
    ]
    assert len(feature_names(config)) == 24
    assert feature_names(BehaviouralConfig())[0] == "global__count_1h"


def test_update_many_dead_letters_match_update() -> None:
    config = BehaviouralConfig(
        entity_keys=["customer"],
        values=["amount"],
        label_risk=LabelRiskConfig(window="1d", delay="1h"),
        entity_ttl="2d",
    )
    frame = frame_of(
        [0, 1, 2, 3, 4],
        customers=["a", None, "a", "a", "a"],
        amounts=[1.0, 2.0, math.nan, 4.0, 5.0],
        labels=[0, 1, 0, "yes", 1],
    )
    many_state = FeatureState(config, "label")
    many = many_state.update_many(frame)
    one_state = FeatureState(config, "label")
    ones = [one_state.update(event) for event in frame.to_dict("records")]
    assert many.index.tolist() == [0, 4] and [r is not None for r in ones] == [1, 0, 0, 0, 1]
    np.testing.assert_array_equal(many.to_numpy(), pd.DataFrame([ones[0], ones[4]]).to_numpy())
    reasons = [letter.reason for letter in many_state.dead_letters]
    assert reasons == [letter.reason for letter in one_state.dead_letters]
    assert reasons[0] == "entity column 'customer' is missing"
    assert "amount" in reasons[1] and "label must be 0, 1 or missing" in reasons[2]


# --- composite entity keys ----------------------------------------------------------------------

PAIR = BehaviouralConfig(
    entity_keys=[["customer", "terminal"], "customer"],
    windows=["1m"],
    last_n=[],
    values=["amount"],
    aggregates=["count", "sum"],
    session_gap=None,
    time_since_previous=False,
)


def test_composite_key_is_the_combination_of_its_columns() -> None:
    frame = frame_of(
        [0, 1, 2, 3, 4],
        customers=["a", "a", "b", "a", "a"],
        terminals=[1, 2, 1, 1, 2],
        amounts=[1, 2, 4, 8, 16],
    )
    out = both(PAIR, frame)
    assert list(out.columns) == [
        "customer+terminal__count_1m",
        "customer+terminal__amount_sum_1m",
        "customer__count_1m",
        "customer__amount_sum_1m",
    ]
    assert out["customer+terminal__count_1m"].tolist() == [0, 0, 0, 1, 1]  # (a,1) / (a,2) apart
    assert out["customer+terminal__amount_sum_1m"].tolist() == [0, 0, 0, 1, 2]
    assert out["customer__count_1m"].tolist() == [0, 1, 0, 2, 3]
    # the same features as a single key column holding the combination
    joined = frame.assign(pair=frame["customer"] + "|" + frame["terminal"].astype(str))
    single = compute_batch(joined, PAIR.model_copy(update={"entity_keys": ["pair"]}), "time")
    np.testing.assert_array_equal(single.to_numpy(), out.iloc[:, :2].to_numpy())


def test_composite_keys_from_yaml_and_entity_columns() -> None:
    raw = yaml.safe_load("entity_keys: [[account_id, country], device_id, account_id]")
    config = behavioural_config_from_dict(raw)
    assert config.entity_keys == [["account_id", "country"], "device_id", "account_id"]
    assert config.entity_columns == ["account_id", "country", "device_id"]
    assert feature_names(config)[0] == "account_id+country__count_1h"
    assert BehaviouralConfig().entity_columns == []


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([["customer"]], "at least 2 distinct columns"),
        ([["customer", "customer"]], "at least 2 distinct columns"),
        ([["customer", "terminal", "customer"]], "at least 2 distinct columns"),
        ([["customer", "terminal"], ["terminal", "customer"]], "duplicate entity key"),
        (["customer", "customer"], "duplicate entity key"),
        (["customer+terminal", ["customer", "terminal"]], "same feature prefix"),
        ([[]], "at least 2 distinct columns"),
    ],
)
def test_bad_composite_keys_are_one_line_errors(keys, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        behavioural_config_from_dict({"entity_keys": keys})
    one_line(caught.value)


def test_missing_part_of_a_composite_key_names_the_column() -> None:
    frame = frame_of([0, 1], customers=["a", "a"], terminals=[1, None])
    with pytest.raises(InputError) as caught:
        compute_batch(frame, PAIR, "time")
    assert "entity column 'terminal'" in one_line(caught.value) and "row 1" in str(caught.value)
    state = FeatureState(PAIR)
    out = state.update_many(frame)
    assert out.index.tolist() == [0]
    assert [letter.reason for letter in state.dead_letters] == [
        "entity column 'terminal' is missing"
    ]
    assert state.update({"time": 2.0, "customer": "a", "amount": 1.0}) is None
    assert state.dead_letters[-1].reason == "missing column 'terminal'"
    with pytest.raises(InputError, match="'terminal'"):
        compute_batch(frame.drop(columns="terminal"), PAIR, "time")


def test_composite_keys_round_trip_through_json_as_tuples() -> None:
    frame = frame_of([0, 1, 2], customers=["a", "b", "a"], terminals=[1, 1, 2])
    state = FeatureState(PAIR)
    state.update_many(frame)
    document = json.loads(json.dumps(state.to_dict(), allow_nan=False))
    assert [key for key, _ in document["entities"][0]] == [["a", 1], ["b", 1], ["a", 2]]
    restored = FeatureState.from_dict(document)
    assert list(restored._tables[0]) == [("a", 1), ("b", 1), ("a", 2)]
    assert list(restored._tables[1]) == ["a", "b"]
    later = frame_of([3], customers=["a"], terminals=[1])
    pd.testing.assert_frame_equal(restored.update_many(later), state.update_many(later))
    document["entities"][0][0][0] = ["a", 1, "extra"]
    with pytest.raises(ArtifactError, match="2 parts"):
        FeatureState.from_dict(document)
    document["entities"][0][0][0] = ["a", 1]
    document["entities"][1][0][0] = ["a"]
    with pytest.raises(ArtifactError, match="one column"):
        FeatureState.from_dict(document)


@pytest.mark.parametrize("config", [COMPOSITE.model_copy(update={"label_risk": None}), DISTINCT])
def test_one_event_steps_equal_the_batch_step(config: BehaviouralConfig) -> None:
    """`step` of one event as the live path gives it (float64 columns, text keys) takes the
    one-event kernel calls; event by event it equals `step` of the whole batch: new entities,
    composite keys, distinct counts, late events (the same reason), an event described only,
    and events it does not take (a NaN value, an integer key) alike."""
    rng = np.random.default_rng(11)
    n = 400
    times = np.cumsum(rng.choice([0.0, 0.5, 3.0, 25.0, 200.0], n))
    times[[50, 51, 300]] = times[[50, 51, 300]] - 400.0  # late: beyond allowed_lateness
    columns = {
        "time": times,
        "customer": np.array([f"c{i}" for i in rng.integers(0, 60, n)], dtype=object),
        "terminal": np.array([f"t{i}" for i in rng.integers(0, 9, n)], dtype=object),
        "country": np.array(rng.choice(["FR", "DE", "NL"], n), dtype=object),
        "amount": rng.normal(20, 5, n).round(2),
    }
    columns["amount"][120] = np.nan  # refused: the batch path finds the reason
    learn = np.ones(n, dtype=bool)
    learn[[7, 200]] = False  # described only
    batched = FeatureState(config)
    batch = batched.step(columns, learn=learn)
    assert not batch.accepted[[50, 51, 120, 300]].any() and batch.accepted.sum() == n - 4
    state = FeatureState(config)
    for i in range(n):
        event = {name: values[i : i + 1] for name, values in columns.items()}
        if i == 99:  # an integer key: not the live path's text, the batch path takes it
            described = state.step({**event, "terminal": np.array([9])}, learn=False)
            assert described.accepted[0]
        one = state.step(event, learn=bool(learn[i]))
        assert bool(one.accepted[0]) == bool(batch.accepted[i])
        if batch.accepted[i]:
            np.testing.assert_array_equal(one.features[0], batch.features[i])
        else:
            assert one.refused == {0: batch.refused[i]}
    # the two states then describe the same: every entity's history is the same
    after = {name: values[:40] for name, values in columns.items()}
    after["time"] = times.max() + 1.0 + np.arange(40.0)
    np.testing.assert_array_equal(
        state.step(after, learn=False).features, batched.step(after, learn=False).features
    )
