"""`judge.label_source: mixed`: the known labels' share of the weight, and PU-style targets."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ad.config import MixedLabelConfig
from hybrid_ad.stages.mixed_labels import mixed_targets, mixed_weights

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
    expected = pytest.approx([0.0, 0.2, 1.0, 0.6])
    assert mixed_targets(soft, known, MixedLabelConfig(), True).tolist() == expected  # default
    pu = MixedLabelConfig(unlabelled="zero")
    assert mixed_targets(soft, known, pu, True).tolist() == [0.0, 0.0, 1.0, 0.0]
    # no positive label anywhere: nothing to learn positives from, the soft targets stay
    assert mixed_targets(soft, known, pu, False).tolist() == expected
