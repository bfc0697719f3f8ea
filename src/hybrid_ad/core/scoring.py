"""The one path from prepared events to scores, alerts and reasons.

Batch scoring (`Detector.score`, `Detector.explain`, `hybrid-ad score`) and the live scorer
(`hybrid_ad.core.live`, and every runtime over it) call `score_prepared`, so the stages, the
judge inputs and the reasons exist once. Prepared events are validated events with
`EVENT_SECONDS` and the behavioural columns, as a frame or as a mapping of numpy columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np

from hybrid_ad.data import Columns
from hybrid_ad.errors import InputError

if TYPE_CHECKING:
    from hybrid_ad.core.detector import Detector, StageOutputs

Explain = Literal["all", "alerts", "none"]
"""Which events get their `reasons`: every one, the alerting ones, or none."""
Contributions = Literal["exact", "approximate"]
"""How the judge's part of the reasons is computed: exact TreeSHAP (what `Detector.explain`
writes by default), or approximate path attribution (Saabas, XGBoost's `approx_contribs`,
compiled in `hybrid_ad.stages.saabas`; the live path's default), some 100x cheaper per
explained event. Both sum with the bias to the margin."""
REASONS_PER_STAGE = 3


def check_contributions(value: str, flag: str = "--contributions") -> Contributions:
    """A `Contributions` from a flag's text; anything else is a one-line InputError."""
    if value not in ("exact", "approximate"):
        raise InputError(f"{flag}: expected exact or approximate, got {value!r}")
    return "exact" if value == "exact" else "approximate"


@dataclass(frozen=True)
class Scored:
    """What the one path says about a batch of prepared events, row by row in their order."""

    score: np.ndarray
    alert: np.ndarray
    threshold: float | None
    reasons: list[str | None]
    """The JSON reasons of each explained event, None for the others."""
    rule_score: np.ndarray
    reconstruction_error: np.ndarray
    histogram_score: np.ndarray
    rules_hit: list[str]
    clipped: list[str]


def score_prepared(
    detector: Detector,
    events: Columns,
    explain: Explain = "none",
    threads: int | None = None,
    contributions: Contributions = "exact",
) -> Scored:
    """Every stage, the judge and (for the events `explain` asks for) the reasons.

    `threads`: XGBoost threads (None: the judge's configured threads); the live path uses 1.
    """
    outputs = detector.label_free_outputs(events)
    inputs, names = detector.judge_inputs(outputs)
    score = detector.fitted_judge().predict_proba(inputs, threads)
    threshold = detector.threshold_
    alert = score >= threshold if threshold is not None else np.zeros(len(score), dtype=bool)
    if explain == "all":
        rows = np.arange(len(score))
    elif explain == "alerts":
        rows = np.flatnonzero(alert)
    else:
        rows = np.zeros(0, dtype=np.int64)
    reasons: list[str | None] = [None] * len(score)
    explained = explain_rows(detector, outputs, inputs, names, rows, threads, contributions)
    for row, text in zip(rows.tolist(), explained, strict=True):
        reasons[row] = text
    return Scored(
        score=score,
        alert=alert,
        threshold=threshold,
        reasons=reasons,
        rule_score=outputs.rules.score,
        reconstruction_error=outputs.reconstruction_error,
        histogram_score=outputs.histogram,
        rules_hit=outputs.rules.hit_names(),
        clipped=outputs.features.clipped_names(),
    )


def explain_rows(
    detector: Detector,
    outputs: StageOutputs,
    inputs: np.ndarray,
    names: list[str],
    rows: np.ndarray,
    threads: int | None = None,
    contributions: Contributions = "exact",
) -> list[str]:
    """The JSON reasons of the events at `rows`: the rules that fired with their reasons; the
    judge's top contributions (XGBoost `pred_contribs`: input, its value, signed contribution
    to the log-odds, which with the bias sum to the margin); the autoencoder's
    worst-reconstructed inputs. TreeSHAP is the costly part, so it runs on these rows only."""
    if len(rows) == 0:
        return []
    chosen = inputs[rows]
    judge = detector.fitted_judge()
    approximate = contributions == "approximate"
    shares = judge.contributions(chosen, threads, approximate=approximate)[:, :-1]
    autoencoder, ae_inputs = detector.autoencoder_, detector.autoencoder_inputs_
    assert autoencoder is not None and ae_inputs is not None
    input_errors = autoencoder.input_errors(outputs.features.scaled[rows][:, ae_inputs])
    scaled_names = outputs.features.scaled_names
    ae_names = readable_inputs(tuple(scaled_names[i] for i in ae_inputs))
    judge_names = readable_inputs(tuple(names))
    k = REASONS_PER_STAGE
    top_judge = np.argsort(-np.abs(shares), axis=1, kind="stable")[:, :k]
    top_ae = np.argsort(-input_errors, axis=1, kind="stable")[:, :k]
    rules = outputs.rules
    fired = [
        [{"rule": rules.names[i], "reason": rules.reasons[i]} for i, hit in enumerate(row) if hit]
        for row in rules.hits[rows].tolist()
    ]
    # the chosen values as Python floats in one step each, not a numpy scalar per value
    values = np.take_along_axis(chosen, top_judge, axis=1).tolist()
    weights = np.take_along_axis(shares, top_judge, axis=1).tolist()
    errors = np.take_along_axis(input_errors, top_ae, axis=1).tolist()
    reasons = []
    for at, (judged, worst) in enumerate(zip(top_judge.tolist(), top_ae.tolist(), strict=True)):
        payload = {
            "rules": fired[at],
            "judge": [
                {
                    "input": judge_names[i],
                    "value": round(values[at][j], 4),
                    "contribution": round(weights[at][j], 4),
                }
                for j, i in enumerate(judged)
            ],
            "autoencoder": [
                {"input": ae_names[i], "squared_error": round(errors[at][j], 4)}
                for j, i in enumerate(worst)
            ],
        }
        reasons.append(json.dumps(payload, separators=(",", ":")))
    return reasons


READABLE = {
    "n_extreme_components": "number of extreme features",
    "max_abs_z": "largest |z| of a feature",
    "rms_z": "overall distance from typical (rms z)",
    "autoencoder_surprise": "autoencoder reconstruction error (rarity)",
    "histogram_surprise": "histogram outlier score (rarity)",
    "rule_score": "rule score",
    "hour_sin": "hour of day (sine)",
    "hour_cos": "hour of day (cosine)",
}


@lru_cache(maxsize=32)
def readable_inputs(names: tuple[str, ...]) -> list[str]:
    """`readable_input` of each name, once per model's inputs (not once per batch)."""
    return [readable_input(name) for name in names]


def readable_input(name: str) -> str:
    """A judge or autoencoder input as a person would say it, for reasons and importance."""
    if name in READABLE:
        return READABLE[name]
    if name.startswith("z_"):
        return f"{name[2:]} (standardised)"
    if name.startswith("rule_"):
        return f"rule {name[5:]} fired"
    return name
