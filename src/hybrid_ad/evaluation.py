"""Metrics against real labels, with thresholds chosen on validation and applied to test.

Every stage is judged the same way on the same time-ordered test split, so "the hybrid beats
rules alone" is a measured statement, not a hope.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from hybrid_ad.config import EvaluationConfig

SECONDS_PER_DAY = 86_400.0


def budget_alerts(event_seconds: np.ndarray, config: EvaluationConfig) -> int:
    """How many alerts the budget allows on these events: `alerts_per_day` times the days
    they span, or `alert_rate` of them; at least one."""
    n = len(event_seconds)
    if config.alerts_per_day is not None and n:
        days = float(np.max(event_seconds) - np.min(event_seconds)) / SECONDS_PER_DAY
        wanted = config.alerts_per_day * days
    else:
        wanted = config.alert_rate * n
    return int(min(max(round(wanted), 1), max(n, 1)))


def choose_threshold(
    scores: np.ndarray,
    event_seconds: np.ndarray,
    config: EvaluationConfig,
    labels: np.ndarray | None = None,
) -> tuple[float, str]:
    """Threshold from validation: the alert budget (ranks only), or best F1 on labels.

    `alert_budget` never reads labels: the threshold is the score of the last alert the
    budget allows. `best_f1` (truth mode) falls back to the budget when validation lacks a
    positive, and says so in the returned policy name.
    """
    if config.threshold_policy == "best_f1":
        if labels is not None and 0 < labels.sum() < len(labels):
            precision, recall, thresholds = precision_recall_curve(labels, scores)
            f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
            best = int(np.argmax(f1[:-1]))
            return float(thresholds[best]), "best_f1"
        policy = "alert_budget_fallback"
    else:
        policy = "alert_budget"
    alerts = budget_alerts(event_seconds, config)
    values = np.asarray(scores, dtype=np.float64)
    ordered = np.sort(values)[::-1]
    threshold = ordered[alerts - 1]
    with_ties, without_ties = (values >= threshold).sum(), (values > threshold).sum()
    if without_ties and abs(without_ties - alerts) < abs(with_ties - alerts):
        # Tied scores (a rule score is a sum of weights) at the budget's edge: leave the tied
        # group out when that comes closer to the budget than alerting on all of it.
        threshold = ordered[ordered > threshold][-1]
    return float(threshold), policy


def daily_precision(
    labels: np.ndarray, alerts: np.ndarray, event_seconds: np.ndarray
) -> tuple[float | None, int]:
    """Mean over days with alerts of the share of true anomalies among that day's alerts,
    and the number of such days: what an analyst team sees day by day."""
    days = np.floor(np.asarray(event_seconds, dtype=np.float64) / SECONDS_PER_DAY)
    shares = [float(labels[(days == day) & alerts].mean()) for day in np.unique(days[alerts])]
    return (float(np.mean(shares)) if shares else None), len(shares)


def undefined_metrics(
    validation_labels: np.ndarray, test_labels: np.ndarray, config: EvaluationConfig
) -> list[str]:
    """One sentence per part whose labels leave metrics undefined (a tiny or one-class file)."""
    messages = []
    if config.threshold_policy == "best_f1" and not 0 < validation_labels.sum() < len(
        validation_labels
    ):
        messages.append(
            f"validation part ({len(validation_labels)} rows) has no positive label or no "
            "negative one: best-F1 thresholds are undefined, so every stage falls back to "
            f"evaluation.alert_rate ({config.alert_rate:g})"
        )
    positives = int(test_labels.sum())
    if positives == 0:
        messages.append(
            f"test part ({len(test_labels)} rows) has no positive label: ROC AUC, average "
            "precision, recall and the operating point are undefined (n/a)"
        )
    elif positives == len(test_labels):
        messages.append(
            f"test part ({len(test_labels)} rows) has no negative label: ROC AUC, average "
            "precision and the false-positive rate are undefined (n/a)"
        )
    return messages


def precision_at_k(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of true anomalies among the k highest scores (ties broken by position)."""
    k = min(k, len(scores))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(labels[top].mean())


def stage_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, k: int
) -> dict[str, Any]:
    """Ranking metrics and thresholded metrics for one stage on labelled data."""
    both_classes = 0 < labels.sum() < len(labels)
    predicted = scores >= threshold
    tp = int((predicted & (labels == 1)).sum())
    fp = int((predicted & (labels == 0)).sum())
    fn = int((~predicted & (labels == 1)).sum())
    tn = int((~predicted & (labels == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return _finite_or_none(
        {
            "roc_auc": roc_auc_score(labels, scores) if both_classes else math.nan,
            "average_precision": average_precision_score(labels, scores)
            if both_classes
            else math.nan,
            "precision_at_k": precision_at_k(labels, scores, k),
            "k": min(k, len(scores)),
            "threshold": threshold,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "false_positive_rate": fp / (fp + tn) if fp + tn else math.nan,
            "alerts": tp + fp,
            "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        }
    )


def false_positive_rate_at_recall(
    labels: np.ndarray, scores: np.ndarray, recall: float
) -> float | None:
    """Lowest false-positive rate at which `scores` reach at least `recall` on these labels."""
    if not 0 < labels.sum() < len(labels) or not math.isfinite(recall):
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    reaching = tpr >= recall - 1e-12
    return float(fpr[reaching].min())


def operating_point(
    labels: np.ndarray, rule_alerts: np.ndarray, stage_scores: dict[str, np.ndarray]
) -> dict[str, float | None]:
    """The rules' own alert decision (their pseudo-label) against each scored stage.

    Reports the rules' recall and false-positive rate, and for each stage the lowest
    false-positive rate it needs to reach the same recall on the same events.
    """
    positives = labels == 1
    negatives = ~positives
    recall = float(rule_alerts[positives].mean()) if positives.any() else math.nan
    rules_fpr = float(rule_alerts[negatives].mean()) if negatives.any() else math.nan
    result: dict[str, float | None] = {
        "rules_recall": recall if math.isfinite(recall) else None,
        "rules_false_positive_rate": rules_fpr if math.isfinite(rules_fpr) else None,
        "rules_alerts": int(rule_alerts.sum()),
    }
    for name, scores in stage_scores.items():
        key = f"{name}_false_positive_rate_at_rules_recall"
        result[key] = false_positive_rate_at_recall(labels, scores, recall)
    return result


def recall_by_kind(
    kinds: np.ndarray, flagged: np.ndarray, normal: tuple[str, ...] = ("", "none")
) -> dict[str, dict[str, float | int]]:
    """Rows, flagged rows and recall for each anomaly kind present (normal kinds skipped).

    One number per kind shows which kinds of anomaly a stage catches and which it misses,
    which the overall recall hides when one kind dominates the labelled rows.
    """
    names = np.asarray(kinds).astype(str)
    flags = np.asarray(flagged).astype(bool)
    if flags.shape != names.shape:
        raise ValueError(f"flagged has shape {flags.shape}; expected {names.shape}, one per row")
    result: dict[str, dict[str, float | int]] = {}
    for kind in sorted(set(names.tolist()) - set(normal)):
        rows = names == kind
        n_rows, n_flagged = int(rows.sum()), int(flags[rows].sum())
        result[kind] = {"rows": n_rows, "flagged": n_flagged, "recall": n_flagged / n_rows}
    return result


def _finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: undefined metrics become null."""
    return {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value)
        for key, value in values.items()
    }
