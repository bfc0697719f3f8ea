"""`judge.label_source: mixed`: the known labels' weight, and the unlabelled events' target."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ad.config import JudgeConfig, MixedLabelConfig
from hybrid_ad.stages.mixed_labels import (
    FOLDS,
    MIN_FOLD_POSITIVES,
    choose_unlabelled,
    configured_unlabelled,
    mixed_targets,
    mixed_weights,
)

NAN = np.nan


def test_labels_take_their_share_of_the_weight_whatever_their_number() -> None:
    config = MixedLabelConfig(label_weight=None, label_share=0.25)
    for labelled in (1, 10, 300):
        known = np.full(1000, NAN)
        known[:labelled] = np.arange(labelled) % 2
        weights = mixed_weights(known, config)
        assert weights[labelled:].tolist() == [1.0] * (1000 - labelled)
        assert len(set(weights[:labelled])) == 1
        assert weights[:labelled].sum() / weights.sum() == pytest.approx(0.25)


def test_a_part_without_labels_or_only_labels_weighs_every_event_alike() -> None:
    config = MixedLabelConfig(label_weight=None)
    assert mixed_weights(np.full(5, NAN), config).tolist() == [1.0] * 5
    assert mixed_weights(np.array([0.0, 1.0, 1.0]), config).tolist() == [1.0] * 3


def test_a_fixed_label_weight_overrides_the_share() -> None:
    weights = mixed_weights(np.array([1.0, NAN, NAN, 0.0]), MixedLabelConfig(label_weight=7.0))
    assert weights.tolist() == [7.0, 1.0, 1.0, 7.0]
    assert MixedLabelConfig().label_weight == 10.0  # the default


def test_targets_are_the_label_where_known_else_soft_or_zero() -> None:
    soft = np.array([0.9, 0.2, 0.0, 0.6], dtype=np.float32)
    known = np.array([0.0, NAN, 1.0, NAN])
    assert mixed_targets(soft, known, "soft").tolist() == pytest.approx([0.0, 0.2, 1.0, 0.6])
    assert mixed_targets(soft, known, "zero").tolist() == [0.0, 0.0, 1.0, 0.0]


def test_a_configured_target_is_kept_and_zero_needs_a_known_anomaly() -> None:
    judge = JudgeConfig(mixed={"unlabelled": "zero"})
    inputs, soft, known = np.zeros((4, 2), np.float32), np.zeros(4, np.float32), np.full(4, NAN)
    assert choose_unlabelled(inputs, soft, known, judge, 0, True).unlabelled == "zero"
    # no positive label anywhere: nothing to learn positives from, the soft targets stay
    assert choose_unlabelled(inputs, soft, known, judge, 0, False).unlabelled == "soft"
    assert configured_unlabelled(MixedLabelConfig(unlabelled="soft"), True).unlabelled == "soft"
    assert MixedLabelConfig().unlabelled == "auto"  # the default


def _two_signals(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Anomalies shifted on input 0; a second input 1 with its own unusual tail, unrelated."""
    rng = np.random.default_rng(seed)
    label = rng.random(n) < 0.03
    inputs = rng.normal(size=(n, 3)).astype(np.float32)
    inputs[label, 0] += 3.0
    return inputs, label.astype(np.float64)


def _known(label: np.ndarray, positives: int, negatives: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    known = np.full(len(label), NAN)
    for value, count in ((1.0, positives), (0.0, negatives)):
        chosen = rng.choice(np.flatnonzero(label == value), count, replace=False)
        known[chosen] = value
    return known


def test_auto_takes_zero_when_the_soft_targets_point_elsewhere() -> None:
    inputs, label = _two_signals()
    # a label-free prior that finds input 1's tail, not the anomalies: its soft targets mislead
    soft = (inputs[:, 1] > 1.3).astype(np.float32)
    known = _known(label, 30, 60)
    choice = choose_unlabelled(inputs, soft, known, JudgeConfig(threads=1), 7, True)
    assert choice.unlabelled == "zero"
    assert (choice.known_positives, choice.known_negatives) == (30, 60)
    assert all(len(aps) == FOLDS for aps in choice.fold_ap.values())
    assert np.mean(choice.fold_ap["zero"]) > np.mean(choice.fold_ap["soft"])
    assert choice.reason.startswith("auto: mean held-out AP")


def test_auto_keeps_soft_with_too_few_known_anomalies_to_compare() -> None:
    inputs, label = _two_signals()
    soft = (inputs[:, 1] > 1.3).astype(np.float32)
    known = _known(label, FOLDS * MIN_FOLD_POSITIVES - 1, 200)
    choice = choose_unlabelled(inputs, soft, known, JudgeConfig(threads=1), 7, True)
    assert choice.unlabelled == "soft" and choice.fold_ap == {}
    assert f"under {FOLDS * MIN_FOLD_POSITIVES} known anomalies" in choice.reason
