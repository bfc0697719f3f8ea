"""The scoring core: score_many equals batch score, text input, dead letters, redelivery,
checkpoints, and the behavioural state's separable describe / remember."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow
import pytest

from hybrid_ad.artifacts import pack_arrays, unpack_arrays
from hybrid_ad.behavioural.live import FeatureState
from hybrid_ad.core import ScoredBatch
from hybrid_ad.core.detector import Detector
from hybrid_ad.core.live import SCORE_COLUMNS
from hybrid_ad.data import event_ids
from hybrid_ad.errors import ArtifactError

from .test_detector_behaviour import behaviour_config, entity_events, split_parts


@pytest.fixture(scope="module")
def fitted():
    config = behaviour_config()
    train, validation, test = split_parts(entity_events(), config)
    detector = Detector(config).fit(train, validation)
    return detector, pd.concat([train, validation]), test.iloc[:200]


def in_chunks(live, events: pd.DataFrame, size: int, **options) -> pd.DataFrame:
    parts = []
    for start in range(0, len(events), size):
        chunk = events.iloc[start : start + size]
        result = live.score_many(chunk, **options)
        assert result.dead_letters == []
        parts.append(result.scores.set_axis(chunk.index[result.scores.index]))
    return pd.concat(parts)


def same_reasons(left: list[str], right: list[str]) -> bool:
    """Equal reasons, the autoencoder's squared errors to float32 rounding: its inputs are in
    robust units, so errors of 10 and more, where a batch of one and a batch of 200 can round
    to different last printed digits (see the reconstruction-error check below)."""
    assert len(left) == len(right)
    for one, other in zip(left, right, strict=True):
        a, b = json.loads(one), json.loads(other)
        errors_a = [item.pop("squared_error") for item in a["autoencoder"]]
        errors_b = [item.pop("squared_error") for item in b["autoencoder"]]
        assert a == b
        np.testing.assert_allclose(errors_a, errors_b, rtol=1e-5, atol=1e-4)
    return True


@pytest.mark.parametrize(
    ("size", "contributions"),
    [(1, "approximate"), (7, "approximate"), (500, "approximate"), (7, "exact")],
)
def test_score_many_in_micro_batches_equals_batch_score(
    fitted, size: int, contributions: str
) -> None:
    detector, history, events = fitted
    reasons = detector.explain(events, history=history, contributions=contributions)
    batch = detector.score(events, history=history).join(reasons)
    live = detector.live(history=history)
    streamed = in_chunks(live, events, size, explain="all", contributions=contributions)
    assert list(streamed.columns) == list(SCORE_COLUMNS)
    np.testing.assert_allclose(streamed["score"], batch["score"], rtol=0, atol=1e-9)
    assert streamed["alert"].tolist() == batch["alert"].tolist()
    assert same_reasons(streamed["reasons"].tolist(), batch["reasons"].tolist())
    np.testing.assert_array_equal(streamed["rule_score"], batch["rule_score"])
    np.testing.assert_allclose(streamed["histogram_score"], batch["histogram_score"], rtol=1e-12)
    # float32 network: a batch of one and a batch of 200 round differently in the last bit
    np.testing.assert_allclose(
        streamed["reconstruction_error"], batch["reconstruction_error"], rtol=1e-6
    )
    assert streamed["rules_hit"].tolist() == batch["rules_hit"].tolist()
    assert streamed["clipped"].tolist() == batch["clipped"].tolist()
    ids = event_ids(events, detector.config.data)
    assert streamed["event_id"].tolist() == ids.tolist()
    assert (streamed["threshold"] == detector.threshold_).all()


def test_reasons_only_for_alerts_by_default(fitted) -> None:
    detector, history, events = fitted
    scores = detector.live(history=history).score_many(events).scores
    assert scores["alert"].any() and not scores["alert"].all()
    assert scores["reasons"].notna().tolist() == scores["alert"].tolist()
    first = json.loads(scores["reasons"][scores["alert"]].iloc[0])
    assert set(first) == {"rules", "judge", "autoencoder"}


def test_text_values_columns_and_arrow_batches_score_alike(fitted) -> None:
    """Values as text (as Redis delivers them), a dict of numpy columns and an Arrow record
    batch give the numbers a frame gives."""
    detector, history, events = fitted
    expected = detector.live(history=history).score_many(events).scores
    as_text = {name: [repr(v) if isinstance(v, float) else str(v) for v in events[name]]
               for name in events.columns}  # fmt: skip
    columns = {name: events[name].to_numpy() for name in events.columns}
    arrow = pyarrow.RecordBatch.from_pandas(events, preserve_index=False)
    for batch in (as_text, columns, arrow):
        scores = detector.live(history=history).score_many(batch).scores
        pd.testing.assert_frame_equal(scores, expected)


def test_malformed_events_are_dead_letters_with_their_position(fitted) -> None:
    detector, history, events = fitted
    chunk = events.iloc[:20].reset_index(drop=True).astype({"Amount": object, "Time": object})
    chunk.loc[3, "Amount"] = "lots"
    chunk.loc[11, "customer_id"] = None
    chunk.loc[15, "Time"] = "yesterday"
    result = detector.live(history=history).score_many(chunk)
    assert [letter.position for letter in result.dead_letters] == [3, 11, 15]
    reasons = [letter.reason for letter in result.dead_letters]
    assert "non-numeric value 'lots'" in reasons[0]
    assert "customer_id" in reasons[1] and "missing" in reasons[1]
    assert "'Time'" in reasons[2]
    assert result.dead_letters[0].event["Amount"] == "lots"
    assert list(result.scores.index) == [i for i in range(20) if i not in (3, 11, 15)]
    good = chunk.drop(index=[3, 11, 15])
    alone = detector.live(history=history).score_many(good).scores
    np.testing.assert_array_equal(result.scores["score"], alone["score"])


def test_a_missing_column_makes_every_event_a_dead_letter(fitted) -> None:
    detector, history, events = fitted
    result = detector.live(history=history).score_many(events.iloc[:5].drop(columns="V2"))
    assert len(result.scores) == 0 and list(result.scores.columns) == list(SCORE_COLUMNS)
    assert {letter.reason for letter in result.dead_letters} == {"missing column 'V2'"}


def test_late_events_are_dead_letters(fitted) -> None:
    detector, history, events = fitted
    live = detector.live(history=history)
    live.score_many(events.iloc[:10])
    late = events.iloc[[10]].assign(Time=events["Time"].iloc[0] - 3600)
    result = live.score_many(late)
    assert result.dead_letters[0].reason.startswith("late:")


def test_a_redelivered_event_scores_the_same_and_is_not_counted_twice(fitted) -> None:
    detector, history, events = fitted
    first, second = events.iloc[:60], events.iloc[60:120]
    once = detector.live(history=history)
    once.score_many(first, explain="all")
    expected = once.score_many(second, explain="all").scores

    again = detector.live(history=history)
    original = again.score_many(first, explain="all").scores
    redelivered = pd.concat([first.iloc[40:], first.iloc[50:]])  # repeats inside the batch too
    replay = again.score_many(redelivered, explain="all").scores
    assert (
        replay["event_id"].tolist()
        == original["event_id"].iloc[list(range(40, 60)) + list(range(50, 60))].tolist()
    )
    for column in ("score", "reasons", "rules_hit"):
        assert (
            replay[column].tolist()
            == original[column].iloc[list(range(40, 60)) + list(range(50, 60))].tolist()
        )
    after = again.score_many(second, explain="all").scores
    pd.testing.assert_frame_equal(after, expected)  # the state did not count them twice


def test_remember_false_changes_nothing(fitted) -> None:
    detector, history, events = fitted
    live = detector.live(history=history)
    looked = live.score_many(events.iloc[:50], remember=False).scores
    scored = live.score_many(events.iloc[:50]).scores
    pd.testing.assert_frame_equal(looked.iloc[:1], scored.iloc[:1])
    fresh = detector.live(history=history).score_many(events.iloc[:50]).scores
    pd.testing.assert_frame_equal(scored, fresh)


def test_checkpoint_restore_continues_as_without_interruption(fitted) -> None:
    detector, history, events = fitted
    whole = detector.live(history=history)
    expected = [whole.score_many(events.iloc[a : a + 40]).scores for a in range(0, 200, 40)]
    first = detector.live(history=history)
    for start in (0, 40):
        first.score_many(events.iloc[start : start + 40])
    saved = first.checkpoint()
    document, arrays = unpack_arrays(saved)
    assert document["format"] == "hybrid-ad.live-scorer" and document["state"]["keys"]
    assert len(arrays["state_headers"]) == first._state.n_entities
    restored = detector.live(state=saved)
    replay = restored.score_many(events.iloc[40:80]).scores  # redelivered: same answers
    pd.testing.assert_frame_equal(replay, expected[1])
    for index, start in enumerate(range(80, 200, 40), start=2):
        pd.testing.assert_frame_equal(
            restored.score_many(events.iloc[start : start + 40]).scores, expected[index]
        )
    assert restored.checkpoint() == detector.live(state=restored.checkpoint()).checkpoint()


def test_a_damaged_checkpoint_is_one_line(fitted) -> None:
    detector, history, events = fitted
    with pytest.raises(ArtifactError, match="live checkpoint: a JSON checkpoint of version 1"):
        detector.live(state=b"{not json")
    live = detector.live(history=history)
    live.score_many(events.iloc[:20])
    saved = live.checkpoint()
    with pytest.raises(ArtifactError, match="live checkpoint: damaged .*cut short"):
        detector.live(state=saved[:-9])
    with pytest.raises(ArtifactError, match="live checkpoint: damaged .*not a hybrid-ad arrays"):
        detector.live(state=b"garbage" + saved)
    document, arrays = unpack_arrays(saved)
    with pytest.raises(ArtifactError, match="remembered ids"):
        shorter = {**arrays, "seen_times": arrays["seen_times"][:-1]}
        detector.live(state=pack_arrays(document, shorter))
    headers = arrays["state_headers"].copy()
    headers[0, :] = np.nan
    with pytest.raises(ArtifactError, match="damaged behavioural state"):
        detector.live(state=pack_arrays(document, {**arrays, "state_headers": headers}))
    events = arrays["state_events"][:-1]
    with pytest.raises(ArtifactError, match="damaged behavioural state"):
        detector.live(state=pack_arrays(document, {**arrays, "state_events": events}))


def test_score_event_is_score_many_of_one(fitted) -> None:
    detector, history, events = fitted
    live = detector.live(history=history)
    row = live.score_event(events.iloc[0].to_dict())
    many = detector.live(history=history).score_many(events.iloc[:1]).scores.iloc[0]
    assert set(row) == {
        "score", "alert", "rule_score", "reconstruction_error", "histogram_score",
        "rules_hit", "clipped",
    }  # fmt: skip
    assert row["score"] == many["score"] and row["rules_hit"] == many["rules_hit"]
    assert isinstance(live.score_many(events.iloc[1:3]), ScoredBatch)


def test_describe_does_not_change_the_state_and_remember_learns() -> None:
    config = behaviour_config().features.behavioural
    frame = entity_events(400).assign(time=lambda f: f["Time"].astype(float))
    head, tail = frame.iloc[:300], frame.iloc[300:]
    state = FeatureState(config, time_column="time")
    state.update_many(head)
    before = state.to_dict()
    described = state.describe(tail)
    assert state.to_dict() == before
    expected = FeatureState.from_dict(before)
    for _, event in tail.iloc[:20].iterrows():  # one at a time, describe equals update
        looked = state.describe(event.to_frame().T.infer_objects())
        state.remember(event.to_frame().T.infer_objects())
        np.testing.assert_array_equal(
            looked.to_numpy()[0], list(expected.update(event.to_dict()).values())
        )
    rest = tail.iloc[20:]
    pd.testing.assert_frame_equal(state.describe(rest), expected.describe(rest))
    assert len(described) == len(tail)


def test_distinct_counts_score_live_as_in_batch_and_survive_a_checkpoint() -> None:
    """A detector with distinct counts (terminals per customer, active hours): micro-batches,
    one event at a time and a restored checkpoint all score as the batch path."""
    config = behaviour_config(
        distinct=[
            {"column": "terminal_id", "windows": ["1h", "6h"], "keys": ["customer_id"]},
            {"period": "10m", "windows": ["1h"]},
        ]
    )
    train, validation, test = split_parts(entity_events(), config)
    detector = Detector(config).fit(train, validation)
    importance = detector.feature_importance()
    assert "customer_id__distinct_terminal_id_6h" in importance
    assert "terminal_id__active_10m_periods_1h" in importance
    history, events = pd.concat([train, validation]), test.iloc[:120]
    batch = detector.score(events, history=history)
    for size in (1, 50):
        streamed = in_chunks(detector.live(history=history), events, size)
        np.testing.assert_allclose(streamed["score"], batch["score"], rtol=0, atol=1e-9)
        assert streamed["rules_hit"].tolist() == batch["rules_hit"].tolist()
    first = detector.live(history=history)
    head = first.score_many(events.iloc[:60]).scores
    document, _ = unpack_arrays(first.checkpoint())
    tables = document["state"]["distinct"][0]  # the customers' terminal and period tables
    assert len(tables) == len(document["state"]["keys"][0]) and any(t[0] for t in tables)
    tail = detector.live(state=first.checkpoint()).score_many(events.iloc[60:]).scores
    np.testing.assert_allclose(
        pd.concat([head, tail])["score"].to_numpy(), batch["score"].to_numpy(), rtol=0, atol=1e-9
    )
