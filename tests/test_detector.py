"""The fitted whole: scoring, save/load, refusal of altered artifacts, leakage, reproducibility."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import Config, config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import DataConfig, time_split, validate_events
from hybrid_ad.errors import ArtifactError

from .conftest import small_config_dict


def _split(events: pd.DataFrame, config: Config):
    validated, _ = validate_events(events, config.data, "test")
    return time_split(validated, config.data.split)


@pytest.fixture(scope="module")
def fitted() -> tuple[Detector, object]:
    from .conftest import make_events

    config = config_from_dict(small_config_dict())
    split = _split(make_events(), config)
    return Detector(config).fit(split.train, split.validation), split


def test_score_has_one_row_per_event_in_input_order(fitted) -> None:
    detector, split = fitted
    shuffled = split.test.sample(frac=1.0, random_state=1)
    scored = detector.score(shuffled)
    assert list(scored.index) == list(shuffled.index)
    assert list(scored.columns) == [
        "score",
        "alert",
        "rule_score",
        "reconstruction_error",
        "histogram_score",
        "rules_hit",
        "clipped",
    ]
    assert scored["score"].between(0, 1).all()
    in_order = detector.score(split.test)
    pd.testing.assert_frame_equal(scored.loc[in_order.index], in_order)
    assert detector.predict_proba(split.test).shape == (len(split.test), 2)


def test_judge_ranks_the_synthetic_frauds_well(fitted) -> None:
    from sklearn.metrics import roc_auc_score

    detector, split = fitted
    assert roc_auc_score(split.test["Class"], detector.decision_function(split.test)) > 0.9


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path: Path) -> None:
    detector, split = fitted
    detector.threshold_ = 0.5
    detector.save(tmp_path / "model")
    restored = Detector.load(tmp_path / "model")
    pd.testing.assert_frame_equal(restored.score(split.test), detector.score(split.test))
    manifest = (tmp_path / "model" / "manifest.json").read_text()
    for needle in ('"torch"', '"xgboost"', '"config"', '"seed": 7', '"files"'):
        assert needle in manifest
    detector.threshold_ = None


@pytest.mark.parametrize(
    ("victim", "damage", "message"),
    [
        ("judge.json", lambda b: b[: len(b) // 2], "checksum mismatch"),
        ("autoencoder.safetensors", lambda b: b[:-1] + b"\x00", "checksum mismatch"),
        ("rules.json", lambda b: b.replace(b"statistics", b"statisticz"), "checksum mismatch"),
        ("manifest.json", lambda b: b[:40], "manifest is truncated or corrupt"),
    ],
)
def test_tampered_or_truncated_artifacts_are_refused(
    fitted, tmp_path: Path, victim: str, damage, message: str
) -> None:
    detector, _ = fitted
    detector.save(tmp_path / "model")
    path = tmp_path / "model" / victim
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ArtifactError, match=message):
        Detector.load(tmp_path / "model")


def test_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a saved model"):
        Detector.load(tmp_path / "nothing")


def test_saving_over_a_model_replaces_it_whole(fitted, tmp_path: Path) -> None:
    detector, _ = fitted
    detector.save(tmp_path / "model")
    (tmp_path / "model" / "stray.txt").write_text("left over")
    detector.save(tmp_path / "model")
    assert not (tmp_path / "model" / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_pseudo_mode_never_reads_labels(events: pd.DataFrame) -> None:
    """Permuting the label column leaves every label-free score unchanged."""
    config = config_from_dict(small_config_dict())
    permuted = events.copy()
    permuted["Class"] = np.random.default_rng(5).permutation(permuted["Class"].to_numpy())
    assert (permuted["Class"] != events["Class"]).any()
    scores = []
    for frame in (events, permuted):
        split = _split(frame, config)
        detector = Detector(config).fit(split.train, split.validation)
        scores.append(detector.score(split.test))
    pd.testing.assert_frame_equal(scores[0], scores[1])


def test_truth_mode_does_learn_from_labels(events: pd.DataFrame) -> None:
    config = config_from_dict(small_config_dict(judge={"label_source": "truth"}))
    permuted = events.copy()
    permuted["Class"] = np.random.default_rng(5).permutation(permuted["Class"].to_numpy())
    results = []
    for frame in (events, permuted):
        split = _split(frame, config)
        results.append(Detector(config).fit(split.train, split.validation).score(split.test))
    assert not np.allclose(results[0]["score"], results[1]["score"])
    pd.testing.assert_series_equal(results[0]["rule_score"], results[1]["rule_score"])


def test_same_seed_same_scores_and_fit_without_validation(events: pd.DataFrame) -> None:
    config = config_from_dict(small_config_dict())
    first = Detector(config).fit(events)
    second = Detector(config).fit(events)
    pd.testing.assert_frame_equal(first.score(events), second.score(events))


def test_scoring_other_columns_than_fitted_is_an_error(fitted) -> None:
    detector, split = fitted
    from hybrid_ad.errors import InputError

    with pytest.raises(InputError, match="missing column 'Time'"):
        detector.score(split.test.drop(columns=["Time"]))
    assert DataConfig().label == "Class"


def test_live_checkpoint_of_a_model_without_behavioural_features(fitted) -> None:
    """No behavioural state: the checkpoint still holds the remembered ids and restores."""
    detector, split = fitted
    live = detector.live()
    first = live.score_many(split.test.iloc[:30]).scores
    restored = detector.live(state=live.checkpoint())
    again = restored.score_many(split.test.iloc[:30]).scores  # redelivered: same answers
    pd.testing.assert_frame_equal(again, first)
    assert restored.checkpoint() == live.checkpoint()
