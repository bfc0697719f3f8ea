"""Negative sampling for the judge: fewer rows to fit, the rate recorded, the probabilities
corrected back to the data's odds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid_ad.config import JudgeConfig
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import time_split, validate_events
from hybrid_ad.stages.judge import Judge


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two inputs; P(y=1) rises from about 1% to 30% along the first."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    p = 1.0 / (1.0 + np.exp(-(2.0 * x[:, 0] - 4.5)))
    return x, (rng.random(n) < p).astype(np.float32)


def _judge(rate: float, weight: float | str) -> Judge:
    config = JudgeConfig(
        n_estimators=60,
        max_depth=2,
        threads=1,
        scale_pos_weight=weight,
        negative_sample_rate=rate,
        subsample=1.0,
        colsample_bytree=1.0,
    )
    x, y = _data(20_000, 0)
    vx, vy = _data(5_000, 1)
    return Judge(config, seed=3).fit(x, y, vx, vy, ["a", "b"])


def test_sampled_negatives_with_a_fixed_weight_are_corrected_to_the_data_rate() -> None:
    test_x, test_y = _data(20_000, 2)
    full = _judge(1.0, 1.0)
    sampled = _judge(0.2, 1.0)
    assert full.odds_correction_ == 1.0
    assert sampled.odds_correction_ == pytest.approx(0.2)
    corrected = sampled.predict_proba(test_x)
    raw = 1.0 / (1.0 + np.exp(-(sampled.margin(test_x) - np.log(0.2))))
    base = float(test_y.mean())
    # the sample's own odds are 5x the data's; corrected, the mean probability is the rate
    assert raw.mean() > 2.5 * base
    assert corrected.mean() == pytest.approx(base, rel=0.15)
    assert corrected.mean() == pytest.approx(full.predict_proba(test_x).mean(), rel=0.15)
    # the ranking is the sample's: the correction is monotone
    assert np.array_equal(np.argsort(corrected, kind="stable"), np.argsort(raw, kind="stable"))
    contributions = sampled.contributions(test_x[:50])
    np.testing.assert_allclose(contributions.sum(axis=1), sampled.margin(test_x[:50]), rtol=1e-5)


def test_auto_weighting_needs_almost_no_correction_and_the_correction_is_saved() -> None:
    sampled = _judge(0.25, "auto")
    assert sampled.odds_correction_ == pytest.approx(1.0, rel=0.05)
    loaded = Judge.from_bytes(sampled.config, sampled.to_bytes(), seed=3)
    assert loaded.odds_correction_ == sampled.odds_correction_
    x, _ = _data(100, 4)
    np.testing.assert_array_equal(loaded.predict_proba(x), sampled.predict_proba(x))


def test_the_rate_is_recorded_in_the_saved_model(tmp_path, config, events) -> None:
    sampled = config.model_copy(
        update={"judge": config.judge.model_copy(update={"negative_sample_rate": 0.5})}
    )
    validated, _ = validate_events(events, sampled.data, "events")
    split = time_split(validated, sampled.data.split)
    detector = Detector(sampled).fit(split.train, validation=split.validation)
    detector.save(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["config"]["judge"]["negative_sample_rate"] == 0.5
    loaded = Detector.load(tmp_path / "model")
    assert loaded.judge_ is not None and loaded.judge_.odds_correction_ != 1.0
    np.testing.assert_array_equal(
        loaded.score(split.test)["score"], detector.score(split.test)["score"]
    )
