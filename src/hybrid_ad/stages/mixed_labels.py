"""Targets and weights of `judge.label_source: mixed`: analysts' labels among soft targets.

A few hundred labels sit among 10^5 label-free soft targets. Weighted like any event (or ten
times one) they are a rounding error in the trees' loss, and the judge stays the label-free
one: the known labels are therefore given a fixed *share* of the part's total weight
(`judge.mixed.label_share`), split evenly among them, whatever their number. Fifty labels
then count as much as five hundred would in total, each more; the label-free targets keep
the rest and still shape the events no analyst has seen.
"""

from __future__ import annotations

import numpy as np

from hybrid_ad.config import MixedLabelConfig


def mixed_targets(soft: np.ndarray, known: np.ndarray, config: MixedLabelConfig) -> np.ndarray:
    """The known label (0/1) where `known` has one, else the soft target (`unlabelled:
    soft`) or 0 (`unlabelled: zero`: every unreviewed event taken as normal, PU-style)."""
    rest = soft if config.unlabelled == "soft" else np.zeros_like(soft)
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
