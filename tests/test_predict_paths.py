"""The scoring paths of the judge and the autoencoder: XGBoost's C function called directly
(`DensePredictor`) and the network's functional forward give the library's numbers bit for
bit, and a prediction leaves no cyclic garbage (the one-event path's p99, BENCHMARKS.md)."""

import gc
from collections.abc import Callable

import numpy as np
import pytest
import torch
import xgboost as xgb

from hybrid_ad.config import AutoencoderConfig, JudgeConfig
from hybrid_ad.errors import ArtifactError
from hybrid_ad.stages.autoencoder import Autoencoder
from hybrid_ad.stages.dense_predict import DensePredictor
from hybrid_ad.stages.judge import Judge


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(3000, 5)).astype(np.float32)
    inputs[rng.random(inputs.shape) < 0.05] = np.nan
    signal = np.nan_to_num(inputs[:, 0]) - np.nan_to_num(inputs[:, 1]) * np.nan_to_num(inputs[:, 2])
    return inputs, (signal + 0.3 * rng.normal(size=3000) > 1.5).astype(np.int8)


def _judge(seed: int) -> Judge:
    inputs, labels = _data(seed)
    config = JudgeConfig(n_estimators=60, early_stopping_rounds=10, threads=1)
    return Judge(config, seed=seed).fit(
        inputs[:2000], labels[:2000], inputs[2000:], labels[2000:], list("abcde")
    )


def _cyclic_garbage(call: Callable[[], object], times: int = 50) -> list[object]:
    """What `times` calls leave that only the garbage collector frees."""
    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(times):
            call()
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


def test_dense_predictor_is_inplace_predict_bit_for_bit() -> None:
    judge = _judge(0)
    booster = judge.booster_
    assert booster is not None
    inputs = _data(1)[0]
    for rounds in [(0, judge.best_round), (0, 5), (2, 9)]:
        for margin in (False, True):
            kind = "margin" if margin else "value"
            theirs = booster.inplace_predict(inputs, iteration_range=rounds, predict_type=kind)
            ours = DensePredictor(booster, rounds, margin=margin)
            assert ours(inputs).dtype == np.float32
            np.testing.assert_array_equal(ours(inputs).view(np.uint32), theirs.view(np.uint32))
            rows = np.concatenate([ours(inputs[i : i + 1]) for i in range(40)])
            np.testing.assert_array_equal(rows, theirs[:40])
    assert ours(inputs[:0]).shape == (0,)


def test_judge_predictions_leave_no_cyclic_garbage_and_follow_a_refit() -> None:
    judge = _judge(0)
    row = _data(1)[0][:1]
    booster = judge.booster_
    assert booster is not None
    # XGBoost's wrapper leaves a class per call; the judge's path leaves nothing
    assert _cyclic_garbage(lambda: booster.inplace_predict(row))
    assert _cyclic_garbage(lambda: judge.predict_proba(row, threads=1)) == []
    inputs, labels = _data(2)
    judge.fit(inputs[:2000], labels[:2000], inputs[2000:], labels[2000:], list("abcde"))
    assert judge.booster_ is not booster
    expected = judge.booster_.inplace_predict(inputs, iteration_range=(0, judge.best_round))
    np.testing.assert_array_equal(judge.predict_proba(inputs), expected.astype(np.float64))


def test_inputs_the_booster_cannot_take_are_one_line_errors() -> None:
    judge = _judge(0)
    with pytest.raises(ArtifactError, match="cannot score these inputs .*expected: 5, got 4"):
        judge.predict_proba(np.zeros((3, 4), np.float32))
    assert judge.booster_ is not None
    predictor = DensePredictor(judge.booster_, (0, 0))
    with pytest.raises(ValueError, match="C-ordered float32"):
        predictor(np.zeros((3, 5)))
    with pytest.raises(xgb.core.XGBoostError):  # XGBoost's own refusal, through its C API
        DensePredictor(judge.booster_, (5, 2))(np.zeros((3, 5), np.float32))


@pytest.mark.parametrize(("activation", "dropout"), [("relu", 0.0), ("tanh", 0.1), ("gelu", 0.0)])
def test_the_functional_forward_is_the_networks_bit_for_bit(
    activation: str, dropout: float
) -> None:
    rng = np.random.default_rng(4)
    train, validation = rng.normal(size=(600, 7)), rng.normal(size=(200, 7))
    config = AutoencoderConfig(
        hidden_layers=[12, 6],
        latent_dim=3,
        max_epochs=2,
        activation=activation,
        dropout=dropout,
        threads=1,
    )
    model = Autoencoder(config, seed=0).fit(train, validation)
    network = model.network_
    assert network is not None and not network.training
    for rows in (validation[:1], validation):
        scaled = torch.from_numpy(model.scale_inputs(rows))
        with torch.inference_mode():
            reconstruction, latent = network(scaled)
            expected_error = ((reconstruction - scaled) ** 2).mean(dim=1).double().numpy()
            expected_inputs = ((reconstruction - scaled) ** 2).numpy()
        error, embedding = model.transform(rows)
        np.testing.assert_array_equal(error, expected_error)
        np.testing.assert_array_equal(embedding, latent.numpy())
        np.testing.assert_array_equal(model.input_errors(rows), expected_inputs)
    assert _cyclic_garbage(lambda: model.transform(validation[:1])) == []
