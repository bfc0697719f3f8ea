"""The request schema's columns for the scorer, the warm-up event and the score histogram,
in process (the served behaviour is in test_server.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.core.detector import Detector
from hybrid_ad.service.metrics import ScoreHistogram
from hybrid_ad.service.schema import EventSchema, RequestError

from .conftest import Trained, as_json


@pytest.fixture(scope="module")
def detector(trained: Trained) -> Detector:
    return Detector.load(trained.model)


def test_columns_are_typed_and_times_are_utc(trained: Trained, detector: Detector) -> None:
    schema = EventSchema(detector)
    event = as_json(trained.events.iloc[:1])[0]
    given = pd.Timestamp(event["timestamp"])
    utc = given.tz_convert("UTC").tz_localize(None) if given.tzinfo else given  # naive is UTC
    shifted = {**event, "timestamp": "2026-03-01T14:30:00.5+02:00"}
    events, _ = schema.parse(json.dumps([event, shifted]).encode())
    columns = schema.columns_of(events)
    times = columns["timestamp"]
    assert times.dtype == np.dtype("datetime64[us]")
    assert times[0] == utc.to_datetime64()
    assert times[1] == np.datetime64("2026-03-01T12:30:00.500000")
    assert columns["amount"].dtype == np.float64
    far = schema.columns_of([{**events[0], "timestamp": events[0]["timestamp"].replace(year=3000)}])
    assert np.isnat(far["timestamp"][0])  # beyond the scorer's clock: refused, not wrapped
    refused = detector.live().score_many(far, remember=False).dead_letters
    assert [letter.reason for letter in refused] == ["column 'timestamp' has a missing timestamp"]
    assert columns["account_id"] == [event["account_id"], event["account_id"]]
    live = detector.live()
    scored = live.score_many(schema.columns_of(events[:1]), remember=False, explain="none")
    expected = detector.live().score_many(
        {name: [value] for name, value in event.items()}, remember=False, explain="none"
    )
    assert scored.columns["score"].tolist() == expected.columns["score"].tolist()


def test_warm_up_event_scores_and_leaves_the_state(detector: Detector) -> None:
    schema = EventSchema(detector)
    live = detector.live()
    before = live.checkpoint()
    scored = live.score_many(schema.example(), remember=False, explain="all")
    assert not scored.dead_letters and len(scored.positions) == 1
    assert json.loads(scored.columns["reasons"][0]).keys() == {"rules", "judge", "autoencoder"}
    assert live.checkpoint() == before


def test_a_bad_time_is_a_422_naming_the_field(trained: Trained, detector: Detector) -> None:
    event = as_json(trained.events.iloc[:1])[0]
    with pytest.raises(RequestError, match="^field 'timestamp': Input should be a valid"):
        EventSchema(detector).parse(json.dumps({**event, "timestamp": "soon"}).encode())


def test_score_histogram_counts_like_prometheus_buckets() -> None:
    histogram = ScoreHistogram((0.1, 0.5, 1.0))
    histogram.add(np.array([0.05, 0.1, 0.3, 0.5, 0.7, 1.0]))
    histogram.add(np.array([0.2]))
    (family,) = histogram.collect()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 2, "0.5": 5, "1.0": 7, "+Inf": 7}
    totals = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert totals["hybrid_ad_score_count"] == 7
    assert totals["hybrid_ad_score_sum"] == pytest.approx(2.85)
