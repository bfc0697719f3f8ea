"""Targets and weights of `judge.label_source: mixed`: analysts' labels among soft targets.

A few hundred labels sit among 10^5 label-free soft targets. Two ways to let them count,
both measured in BENCHMARKS.md ("Analysts in the loop"):

- weight: each label a fixed `label_weight` (default 10), or, with `label_weight: null`, the
  labels together a fixed *share* of the part's total weight (`label_share`), split evenly
  among them whatever their number;
- PU-style targets (`unlabelled: zero`, opt-in): every unreviewed event a normal one (0)
  instead of its soft target, as in positive-unlabelled learning. That drops the label-free
  prior's false alarms, but also calls normal every anomaly no analyst has seen yet, so it
  pays only once the reviews have found a good part of them (on validation it lost at 100
  labels and won at 500). With no known positive at all there is nothing to learn from and
  the soft targets stay.
"""

from __future__ import annotations

import numpy as np

from hybrid_ad.config import MixedLabelConfig


def mixed_targets(
    soft: np.ndarray, known: np.ndarray, config: MixedLabelConfig, any_positive: bool
) -> np.ndarray:
    """The known label (0/1) where `known` has one, else the soft target (`unlabelled:
    soft`, or `zero` while no label anywhere is positive: `any_positive`) or 0 (`zero`)."""
    pu = config.unlabelled == "zero" and any_positive
    rest = np.zeros_like(soft) if pu else soft
    return np.where(np.isnan(known), rest, known).astype(np.float32)


def mixed_weights(known: np.ndarray, config: MixedLabelConfig) -> np.ndarray:
    """Sample weights: 1 per unlabelled event; per labelled event `label_weight` when set,
    else share / (1 - share) x unlabelled / labelled, so the labels' total is `label_share`
    of the part's total weight. A part with no label (or only labels) weighs every event 1."""
    labelled = ~np.isnan(known)
    count, rest = int(labelled.sum()), int((~labelled).sum())
    if config.label_weight is not None:
        weight = config.label_weight
    elif count == 0 or rest == 0:
        weight = 1.0
    else:
        weight = config.label_share / (1.0 - config.label_share) * rest / count
    return np.where(labelled, weight, 1.0)
