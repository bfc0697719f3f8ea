"""Features, autoencoder and judge, each on its own."""

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import AutoencoderConfig, DataConfig, FeaturesConfig, JudgeConfig
from hybrid_ad.data import validate_events
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.stages.autoencoder import Autoencoder
from hybrid_ad.stages.features import FeatureBuilder
from hybrid_ad.stages.judge import Judge


def test_scaler_uses_training_rows_only(events: pd.DataFrame) -> None:
    validated, columns = validate_events(events, DataConfig(), "x")
    train, rest = validated.iloc[:2000], validated.iloc[2000:]
    builder = FeatureBuilder(FeaturesConfig()).fit(train, columns)
    matrix = builder.transform(train)
    z = matrix.scaled[:, : len(columns)]
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)
    amount = columns.index("Amount")
    expected = (np.log1p(rest["Amount"].to_numpy()) - builder.mean_[amount]) / builder.std_[amount]
    np.testing.assert_allclose(builder.transform(rest).scaled[:, amount], expected, rtol=1e-5)
    assert matrix.scaled_names[-2:] == ["hour_sin", "hour_cos"]
    assert matrix.engineered.shape == (2000, 3)


def test_log_scale_of_unknown_column_is_an_error(events: pd.DataFrame) -> None:
    validated, columns = validate_events(events, DataConfig(), "x")
    with pytest.raises(InputError, match="features.log_scale: 'Balance'"):
        FeatureBuilder(FeaturesConfig(log_scale=["Balance"])).fit(validated, columns)


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, 10))
    normal = rng.normal(size=(3000, 3)) @ basis + 0.05 * rng.normal(size=(3000, 10))
    odd = rng.normal(size=(50, 10)) * 2
    return normal[:2500], normal[2500:], odd


def test_autoencoder_separates_off_manifold_points_and_is_deterministic() -> None:
    train, validation, odd = _blobs()
    config = AutoencoderConfig(
        hidden_layers=[16],
        latent_dim=3,
        max_epochs=15,
        batch_size=64,
        learning_rate=0.01,
        threads=1,
    )
    first = Autoencoder(config, seed=3).fit(train, validation)
    second = Autoencoder(config, seed=3).fit(train, validation)
    normal_error, normal_latent = first.transform(validation)
    odd_error, _ = first.transform(odd)
    assert np.median(odd_error) > 10 * np.median(normal_error)
    assert normal_latent.shape == (500, 3)
    np.testing.assert_array_equal(normal_error, second.reconstruction_error(validation))
    weights, meta = first.to_bytes()
    import json

    restored = Autoencoder.from_bytes(config, weights, json.loads(meta))
    np.testing.assert_array_equal(restored.reconstruction_error(odd), odd_error)


def test_autoencoder_early_stopping_keeps_best_epoch() -> None:
    train, validation, _ = _blobs(1)
    config = AutoencoderConfig(
        hidden_layers=[8],
        latent_dim=2,
        max_epochs=200,
        patience=2,
        batch_size=64,
        learning_rate=0.02,
    )
    model = Autoencoder(config, seed=0).fit(train, validation)
    losses = [h["validation_loss"] for h in model.history_]
    assert len(losses) < 200
    assert model.reconstruction_error(validation).mean() == pytest.approx(min(losses), rel=1e-5)


def test_autoencoder_rejects_corrupt_weights() -> None:
    with pytest.raises(ArtifactError, match="autoencoder.safetensors"):
        history = [{"epoch": 1, "train_loss": 1.0, "validation_loss": 1.0}]
        metadata = {
            "n_inputs": 4,
            "seed": 0,
            "history": history,
            "input_centre": [0.0] * 4,
            "input_spread": [1.0] * 4,
            "input_clip": 5.0,
        }
        Autoencoder.from_bytes(AutoencoderConfig(), b"not tensors", metadata)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("input_centre", [0.0] * 3, "does not have n_inputs = 4"),
        ("input_spread", [1.0, 1.0, 0.0, 1.0], "must be positive"),
        ("input_clip", -1.0, "must be positive"),
        ("input_spread", [1.0, float("nan"), 1.0, 1.0], "not finite"),
    ],
)
def test_autoencoder_rejects_bad_input_scaling(key: str, value: object, message: str) -> None:
    train, validation, _ = _blobs()
    config = AutoencoderConfig(hidden_layers=[8], latent_dim=2, max_epochs=1, threads=1)
    model = Autoencoder(config, seed=0).fit(train[:, :4], validation[:, :4])
    weights, meta = model.to_bytes()
    import json

    metadata = json.loads(meta) | {key: value}
    with pytest.raises(ArtifactError, match=f"autoencoder.json: malformed .*{message}"):
        Autoencoder.from_bytes(config, weights, metadata)


def test_autoencoder_robust_scaling_bounds_a_heavy_tailed_input() -> None:
    """Median / IQR units from the training rows, clipped at input_clip: one enormous value
    in one input adds at most (2 * clip)^2 / d to the error, and the scaling round-trips."""
    train, validation, _ = _blobs()
    train = train.copy()
    train[:, 0] = np.exp(3 * train[:, 0])  # heavy tail: z-scores would reach tens
    config = AutoencoderConfig(hidden_layers=[16], latent_dim=3, max_epochs=3, threads=1)
    model = Autoencoder(config, seed=0).fit(train, validation)
    assert model.centre_ is not None and model.spread_ is not None
    np.testing.assert_allclose(model.centre_, np.median(train, axis=0))
    q1, q3 = np.percentile(train[:, 1], [25, 75])
    assert model.spread_[1] == pytest.approx((q3 - q1) / 1.349)
    spike = train.copy()
    spike[:, 3] = (np.arange(len(spike)) % 20 == 0).astype(float)  # a rare flag: the SD
    spike[:, 4] = 7.0  # constant: 1
    spread = Autoencoder(config, seed=0).fit_scaling(spike).spread_
    assert spread is not None
    assert spread[3] == pytest.approx(spike[:, 3].std())
    assert spread[4] == 1.0
    scaled = model.scale_inputs(train)
    assert np.abs(scaled).max() == pytest.approx(5.0)
    huge = validation[:5].copy()
    huge[:, 0] = 1e12
    errors = model.input_errors(huge)
    assert np.all(errors[:, 0] <= (2 * 5.0 + 1e-3) ** 2)
    weights, meta = model.to_bytes()
    import json

    restored = Autoencoder.from_bytes(config, weights, json.loads(meta))
    np.testing.assert_array_equal(
        restored.reconstruction_error(huge), model.reconstruction_error(huge)
    )
    plain = AutoencoderConfig(input_scaling="as_features", max_epochs=1, threads=1)
    unscaled = Autoencoder(plain, seed=0).fit(train, validation)
    np.testing.assert_array_equal(unscaled.scale_inputs(train), train.astype(np.float32))


def test_autoencoder_small_data_gets_enough_steps_per_epoch() -> None:
    """With 1,024 per batch a 1,000-row set would take one step per epoch."""
    model = Autoencoder(AutoencoderConfig(), seed=0)
    assert model.batch_size(1_000) == 32
    assert model.batch_size(10_000) == 100
    assert model.batch_size(1_000_000) == 1024
    assert model.batch_size(10) == 32


def test_judge_learns_weights_imbalance_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(3000, 4)).astype(np.float32)
    labels = (inputs[:, 0] + 0.3 * rng.normal(size=3000) > 2.2).astype(np.int8)
    config = JudgeConfig(n_estimators=60, early_stopping_rounds=10, threads=1)
    judge = Judge(config, seed=1).fit(
        inputs[:2000], labels[:2000], inputs[2000:], labels[2000:], ["a", "b", "c", "d"]
    )
    assert judge.scale_pos_weight_ == pytest.approx(
        (2000 - labels[:2000].sum()) / labels[:2000].sum()
    )
    probability = judge.predict_proba(inputs[2000:])
    assert probability[labels[2000:] == 1].mean() > 0.5 > probability[labels[2000:] == 0].mean()
    importance = judge.feature_importance()
    assert max(importance, key=importance.get) == "a"
    restored = Judge.from_bytes(config, judge.to_bytes())
    np.testing.assert_array_equal(restored.predict_proba(inputs[2000:]), probability)
    assert restored.best_round == judge.best_round


def test_approximate_contributions_are_xgboosts_and_sum_to_the_margin() -> None:
    """The compiled Saabas attribution gives XGBoost's `approx_contribs` (to float32
    rounding), missing values included, and with the bias sums to the margin; exact TreeSHAP
    sums to it as well."""
    import xgboost as xgb

    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(3000, 5)).astype(np.float32)
    inputs[rng.random(inputs.shape) < 0.05] = np.nan
    signal = np.nan_to_num(inputs[:, 0]) + np.nan_to_num(inputs[:, 1]) * np.nan_to_num(inputs[:, 2])
    labels = (signal + 0.3 * rng.normal(size=3000) > 1.8).astype(np.int8)
    config = JudgeConfig(n_estimators=80, early_stopping_rounds=10, max_depth=5, threads=1)
    judge = Judge(config, seed=2).fit(
        inputs[:2000], labels[:2000], inputs[2000:], labels[2000:], list("abcde")
    )
    test = inputs[2000:]
    approximate = judge.contributions(test, 1, approximate=True)
    booster = judge.booster_
    assert booster is not None
    matrix = xgb.DMatrix(test, feature_names=list("abcde"))
    theirs = booster.predict(
        matrix, pred_contribs=True, approx_contribs=True, iteration_range=(0, judge.best_round)
    )
    np.testing.assert_allclose(approximate, theirs, rtol=0, atol=1e-5)
    assert np.abs(approximate[:, :-1]).sum() > 0
    np.testing.assert_allclose(approximate.sum(axis=1), judge.margin(test), rtol=0, atol=1e-5)
    exact = judge.contributions(test, 1)
    np.testing.assert_allclose(exact.sum(axis=1), judge.margin(test), rtol=0, atol=1e-4)
    one = np.concatenate([judge.contributions(test[i : i + 1], 1, True) for i in range(50)])
    np.testing.assert_array_equal(one, approximate[:50])  # row by row as in a batch


def test_judge_refuses_single_class_labels() -> None:
    inputs = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(InputError, match="only one class"):
        Judge(JudgeConfig()).fit(inputs, np.zeros(10), inputs, np.zeros(10), ["a", "b"])
