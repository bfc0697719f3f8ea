"""Targets and weights of `judge.label_source: mixed`: analysts' labels among soft targets.

A few hundred labels sit among 10^5 unlabelled events. Two things decide how they count,
both measured in BENCHMARKS.md ("Analysts in the loop"):

- weight: each label a fixed `label_weight` (default 10), or, with `label_weight: null`, the
  labels together a fixed *share* of the part's total weight (`label_share`), split evenly
  among them whatever their number;
- the target of an event no analyst has seen (`unlabelled`): `soft`, its label-free soft
  target, or `zero`, normal, as in positive-unlabelled (PU) learning. Zero drops the
  label-free prior's false alarms but also calls normal every anomaly not yet reviewed, so
  which is better depends on how many anomalies the reviews have found and on how good the
  prior is on this data: neither is right for every dataset and every stage of the loop.

So the default, `auto`, chooses at each fit from the known labels alone (`choose_unlabelled`):
each candidate's judge is fitted on the known labels of all but one fold (and a seeded sample
of the unlabelled events, with that candidate's targets) and scored on the held-out fold's
known labels; the candidate with the higher mean average precision over the folds is used.
Only labels the analysts gave are read: the unreviewed events' labels, and the test split,
take no part. With fewer than `MIN_FOLD_POSITIVES` known anomalies per fold there is nothing
to measure a ranking on, and `soft` is kept: a judge that learns "like these few events and
nothing else" is worse than the label-free one (BENCHMARKS.md, PU with random review).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb
from sklearn.metrics import average_precision_score

from hybrid_ad.config import JudgeConfig, MixedLabelConfig

CANDIDATES = ("soft", "zero")
"""What `auto` chooses between; the first wins ties (the label-free targets, no assumption)."""
FOLDS = 3
MIN_FOLD_POSITIVES = 5
"""Known anomalies (and known normal events) needed in every fold for `auto` to compare. With
2-3 anomalies a fold's AP takes a handful of values (1, 1/2, 1/3, ...), both candidates tie at
1 on most folds and one fold decides: the streaming loop's random review switched to zero
targets on 8 and 11 known anomalies that way and collapsed (BENCHMARKS.md, `auto`)."""
SAMPLE_UNLABELLED = 40_000
"""Unlabelled events each comparison fit sees (seeded sample, reweighted to the full count):
the comparison needs the candidates' difference, not the full judge."""
ROUNDS = 150
"""Boosting rounds of a comparison fit, at the judge's learning rate and tree settings."""


@dataclass(frozen=True)
class UnlabelledChoice:
    """The target given to unlabelled events at one fit, and why."""

    unlabelled: str
    """`soft` or `zero`."""
    reason: str
    known_positives: int
    known_negatives: int
    fold_ap: dict[str, list[float]] = field(default_factory=dict)
    """Per candidate: average precision on each held-out fold of known labels (`auto`)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for a manifest or a benchmark's results."""
        return {
            "unlabelled": self.unlabelled,
            "reason": self.reason,
            "known_positives": self.known_positives,
            "known_negatives": self.known_negatives,
            "fold_ap": self.fold_ap,
        }


def mixed_targets(soft: np.ndarray, known: np.ndarray, unlabelled: str) -> np.ndarray:
    """The known label (0/1) where `known` has one, else the soft target (`soft`) or 0
    (`zero`)."""
    rest = np.zeros_like(soft) if unlabelled == "zero" else soft
    return np.where(np.isnan(known), rest, known).astype(np.float32)


def labelled_weight(count: int, rest: int, config: MixedLabelConfig) -> float:
    """The sample weight of each of `count` labelled events beside `rest` unlabelled ones
    (each of which weighs 1): `label_weight` when set, else share / (1 - share) x rest /
    count, so the labels' total is `label_share` of the part's total weight."""
    if config.label_weight is not None:
        return config.label_weight
    if count == 0 or rest == 0:
        return 1.0
    return config.label_share / (1.0 - config.label_share) * rest / count


def mixed_weights(known: np.ndarray, config: MixedLabelConfig) -> np.ndarray:
    """Sample weights: 1 per unlabelled event, `labelled_weight` per labelled one. A part with
    no label (or only labels) and no fixed weight weighs every event 1."""
    labelled = ~np.isnan(known)
    weight = labelled_weight(int(labelled.sum()), int((~labelled).sum()), config)
    return np.where(labelled, weight, 1.0)


def configured_unlabelled(
    config: MixedLabelConfig, any_positive: bool, known_positives: int = 0, known_negatives: int = 0
) -> UnlabelledChoice:
    """A fixed `unlabelled: soft|zero` (zero falls back to soft while no known label is
    positive: there is nothing to learn anomalies from)."""
    counts = {"known_positives": known_positives, "known_negatives": known_negatives}
    if config.unlabelled == "zero" and not any_positive:
        return UnlabelledChoice("soft", "zero configured, but no known anomaly", **counts)
    return UnlabelledChoice(config.unlabelled, "configured", **counts)


def choose_unlabelled(
    inputs: np.ndarray,
    soft: np.ndarray,
    known: np.ndarray,
    config: JudgeConfig,
    seed: int,
    any_positive: bool,
) -> UnlabelledChoice:
    """The unlabelled events' target for a fit on `inputs` (the judge's training matrix) with
    label-free targets `soft` and known labels `known` (NaN where none): the configured one,
    or with `unlabelled: auto` the one whose judge ranks held-out known labels better (module
    docstring). `any_positive`: whether the label store knows any anomaly at all (a
    configured `zero` falls back to `soft` without one)."""
    labelled = np.flatnonzero(~np.isnan(known))
    positives = int((known[labelled] == 1).sum())
    negatives = len(labelled) - positives
    counts = {"known_positives": positives, "known_negatives": negatives}
    if config.mixed.unlabelled != "auto":
        return configured_unlabelled(config.mixed, any_positive, **counts)
    least = FOLDS * MIN_FOLD_POSITIVES
    if positives < least or negatives < least:
        reason = f"auto: under {least} known anomalies or normal events in the training part"
        return UnlabelledChoice("soft", reason, **counts)
    fold_ap = _fold_ap(inputs, soft, known, labelled, config, seed)
    means = {name: float(np.mean(values)) for name, values in fold_ap.items()}
    best = max(CANDIDATES, key=lambda name: (means[name], -CANDIDATES.index(name)))
    detail = ", ".join(f"{name} {means[name]:.3f}" for name in CANDIDATES)
    reason = f"auto: mean held-out AP over {FOLDS} folds of known labels: {detail}"
    return UnlabelledChoice(best, reason, fold_ap=fold_ap, **counts)


def _fold_ap(
    inputs: np.ndarray,
    soft: np.ndarray,
    known: np.ndarray,
    labelled: np.ndarray,
    config: JudgeConfig,
    seed: int,
) -> dict[str, list[float]]:
    """Each candidate's AP on each held-out fold of the known labels (stratified, seeded)."""
    rng = np.random.default_rng([seed, 0x9C1])
    labels = known[labelled]
    fold = np.empty(len(labelled), dtype=np.int64)
    for value in (0.0, 1.0):
        members = rng.permutation(np.flatnonzero(labels == value))
        fold[members] = np.arange(len(members)) % FOLDS
    unlabelled = np.flatnonzero(np.isnan(known))
    sample = np.sort(rng.choice(unlabelled, min(SAMPLE_UNLABELLED, len(unlabelled)), False))
    scale = len(unlabelled) / max(len(sample), 1)  # the sample weighs what all of them do
    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "eta": config.learning_rate,
        "max_depth": config.max_depth,
        "min_child_weight": config.min_child_weight,
        "subsample": config.subsample,
        "colsample_bytree": config.colsample_bytree,
        "lambda": config.reg_lambda,
        "nthread": config.threads,
        "seed": seed,
    }
    result: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for held_out in range(FOLDS):
        kept = labelled[fold != held_out]
        weight = labelled_weight(len(kept), len(unlabelled), config.mixed)
        rows = np.concatenate([sample, kept])
        weights = np.concatenate([np.full(len(sample), scale), np.full(len(kept), weight)])
        test = labelled[fold == held_out]
        for name in CANDIDATES:
            rest = soft[sample] if name == "soft" else np.zeros(len(sample), dtype=np.float32)
            targets = np.concatenate([rest, known[kept]]).astype(np.float32)
            positive = float(np.dot(weights, targets))
            spw = (
                (float(weights.sum()) - positive) / positive
                if config.scale_pos_weight == "auto"
                else float(config.scale_pos_weight)
            )
            train = xgb.DMatrix(inputs[rows], label=targets, weight=weights, nthread=config.threads)
            booster = xgb.train({**params, "scale_pos_weight": spw}, train, ROUNDS)
            scores = booster.inplace_predict(np.ascontiguousarray(inputs[test], np.float32))
            result[name].append(round(float(average_precision_score(known[test], scores)), 4))
    return result
