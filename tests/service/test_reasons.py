"""The reasons every answer carries, built for the whole batch at once (`core.scoring`): the
same numbers and the same bytes as `round` and `json.dumps` of each event's dict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid_ad.core import scoring
from hybrid_ad.core.detector import Detector
from hybrid_ad.core.scoring import REASONS_PER_STAGE, json_numbers, python_round, top_indices
from hybrid_ad.service.schema import EventSchema

from .conftest import Trained, as_json


def test_python_round_is_round_to_the_last_bit() -> None:
    rng = np.random.default_rng(3)
    halves = (rng.integers(-(10**7), 10**7, 50_000) + 0.5) / 1e4  # at or next to a tie
    values = np.concatenate(
        [
            rng.normal(0, 1, 50_000),
            rng.normal(0, 1e-3, 20_000),
            rng.normal(0, 1e5, 20_000),
            halves,
            np.nextafter(halves, np.inf),
            [2.675, 0.00005, -0.00005, 1.00005, 0.0, -0.0, -0.00001, 1e300, 2.0**53, 0.12345],
            [np.nan, np.inf, -np.inf],
        ]
    )
    expected = np.array([round(value, 4) for value in values.tolist()])
    got = python_round(values, 4)
    assert np.array_equal(got, expected, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(expected))  # -0.0 stays -0.0
    single = rng.normal(0, 1, 20_000).astype(np.float32)  # the autoencoder's errors
    assert np.array_equal(python_round(single, 4), [round(v, 4) for v in single.tolist()])
    numbers = np.array([[np.nan, np.inf, -np.inf, 1.23456, -0.00001, 5e-5]])
    texts = [json.dumps(round(value, 4)) for value in numbers[0].tolist()]
    assert json_numbers(numbers).tolist() == [texts]


def test_top_indices_is_a_stable_descending_sort() -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(size=(400, 40))
    values[:, 5] = values[:, 9]  # ties go to the lower column
    values[::3, 2:12] = 0.0
    values[::7] = np.nan  # NaN last, in column order
    values[::11, 2:] = np.nan
    for k, width in ((3, 40), (3, 2), (1, 40), (5, 5)):
        part = values[:, :width]
        expected = np.argsort(-part, axis=1, kind="stable")[:, :k]
        assert np.array_equal(top_indices(part, k), expected)


@pytest.fixture(scope="module")
def explained(trained: Trained) -> list[dict]:
    detector = Detector.load(trained.model)
    schema = EventSchema(detector)
    events, _ = schema.parse(json.dumps(as_json(trained.events)).encode())
    scored = detector.live().score_many(schema.columns_of(events), explain="all")
    texts = scored.columns["reasons"].tolist()
    assert len(texts) == len(events) and all(isinstance(text, str) for text in texts)
    return texts


def test_reasons_are_the_bytes_json_dumps_writes(explained: list[str]) -> None:
    fired = 0
    for text in explained:
        payload = json.loads(text)
        assert json.dumps(payload, separators=(",", ":")) == text
        assert list(payload) == ["rules", "judge", "autoencoder"]
        fired += bool(payload["rules"])
        assert all(list(rule) == ["rule", "reason"] for rule in payload["rules"])
        judged, worst = payload["judge"], payload["autoencoder"]
        assert len(judged) == len(worst) == REASONS_PER_STAGE
        assert all(list(item) == ["input", "value", "contribution"] for item in judged)
        weights = [abs(item["contribution"]) for item in judged]
        errors = [item["squared_error"] for item in worst]
        assert weights == sorted(weights, reverse=True) and errors == sorted(errors, reverse=True)
        numbers = [*weights, *errors, *(item["value"] for item in judged)]
        assert all(round(number, 4) == number for number in numbers)
    assert fired  # some events fire rules: their part is covered too


def test_reasons_explained_beside_the_judge_equal_the_sequential_ones(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = Detector.load(trained.model)
    schema = EventSchema(detector)
    events, _ = schema.parse(json.dumps(as_json(trained.events.iloc[:100])).encode())
    columns = schema.columns_of(events)
    live = detector.live()
    assert len(events) >= scoring.BESIDE_ROWS
    beside = live.score_many(columns, remember=False, explain="all").columns
    monkeypatch.setattr(scoring, "BESIDE_ROWS", len(events) + 1)
    alone = live.score_many(columns, remember=False, explain="all").columns
    assert beside["reasons"].tolist() == alone["reasons"].tolist()
    assert np.array_equal(beside["score"], alone["score"])
