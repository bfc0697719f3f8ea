"""The one path from prepared events to scores, alerts and reasons.

Batch scoring (`Detector.score`, `Detector.explain`, `hybrid-ad score`) and the live scorer
(`hybrid_ad.core.live`, and every runtime over it) call `score_prepared`, so the stages, the
judge inputs and the reasons exist once. Prepared events are validated events with
`EVENT_SECONDS` and the behavioural columns, as a frame or as a mapping of numpy columns.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
from numba import njit

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
BESIDE_ROWS = 32
"""Batches of at least this many events explained on every event, approximately, are
explained on a second thread while the judge scores them: XGBoost, the compiled walk of the
trees and torch release the GIL, so on two cores the reasons take about the judge's time off
the batch; for a few events the hand-over would cost more than it saves."""


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
    beside = None
    if explain == "all" and contributions == "approximate" and len(inputs) >= BESIDE_ROWS:
        every = np.arange(len(inputs))
        beside = explainer().submit(
            explain_rows, detector, outputs, inputs, names, every, threads, contributions
        )
    score = detector.fitted_judge().predict_proba(inputs, threads)
    threshold = detector.threshold_
    alert = score >= threshold if threshold is not None else np.zeros(len(score), dtype=bool)
    if explain == "all":
        rows = np.arange(len(score))
    elif explain == "alerts":
        rows = np.flatnonzero(alert)
    else:
        rows = np.zeros(0, dtype=np.int64)
    if beside is not None:
        explained = beside.result()
    else:
        explained = explain_rows(detector, outputs, inputs, names, rows, threads, contributions)
    reasons: list[str | None] = [None] * len(score)
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


@lru_cache(maxsize=1)
def explainer() -> ThreadPoolExecutor:
    """The one thread that explains a batch beside the judge's scoring (`BESIDE_ROWS`)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")


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
    worst-reconstructed inputs. TreeSHAP is the costly part, so it runs on these rows only.

    Built for the whole batch at once (the top inputs by a compiled loop, the values rounded
    and written in bulk, the names' JSON made once per model, one f-string per event): the
    same bytes `json.dumps` writes of each event's dict, at a fraction of the cost, since
    every answer of the service carries them."""
    if len(rows) == 0:
        return []
    chosen = inputs[rows]
    judge = detector.fitted_judge()
    approximate = contributions == "approximate"
    shares = judge.contributions(chosen, threads, approximate=approximate)[:, :-1]
    autoencoder, ae_inputs = detector.autoencoder_, detector.autoencoder_inputs_
    assert autoencoder is not None and ae_inputs is not None
    input_errors = autoencoder.input_errors(outputs.features.scaled[rows][:, ae_inputs])
    rules = outputs.rules
    texts = reason_texts(
        tuple(rules.names),
        tuple(rules.reasons),
        tuple(names),
        tuple(outputs.features.scaled_names),
        tuple(np.asarray(ae_inputs).tolist()),
    )
    top_judge = top_indices(np.abs(shares), REASONS_PER_STAGE)
    top_ae = top_indices(input_errors, REASONS_PER_STAGE)
    at = np.arange(len(rows))[:, None]
    judged = _joined(
        texts.judge[top_judge]
        + json_numbers(chosen[at, top_judge])
        + ',"contribution":'
        + json_numbers(shares[at, top_judge])
        + "}"
    )
    worst = _joined(texts.autoencoder[top_ae] + json_numbers(input_errors[at, top_ae]) + "}")
    return [
        f'{{"rules":[{fired}],"judge":[{judge_part}],"autoencoder":[{ae_part}]}}'
        for fired, judge_part, ae_part in zip(
            texts.fired(rules.hits[rows]), judged, worst, strict=True
        )
    ]


@dataclass(frozen=True)
class ReasonTexts:
    """A model's names as the JSON fragments of its reasons, made once (`reason_texts`)."""

    rules: list[str]
    """Each rule's `{"rule":..., "reason":...}`."""
    judge: np.ndarray
    """Per judge input, `{"input":...,"value":` (an object array, indexed by the top inputs)."""
    autoencoder: np.ndarray
    """Per autoencoder input, `{"input":...,"squared_error":`."""

    def fired(self, hits: np.ndarray) -> list[str]:
        """The fired rules' fragments of each row of `hits`, joined (most events fire none)."""
        fired = [""] * len(hits)
        for row in np.flatnonzero(hits.any(axis=1)).tolist():
            fired[row] = ",".join(self.rules[i] for i in np.flatnonzero(hits[row]).tolist())
        return fired


@lru_cache(maxsize=32)
def reason_texts(
    rule_names: tuple[str, ...],
    rule_reasons: tuple[str, ...],
    judge_names: tuple[str, ...],
    scaled_names: tuple[str, ...],
    autoencoder_inputs: tuple[int, ...],
) -> ReasonTexts:
    """The JSON fragments of a model's reasons (names as `readable_input` says them); the
    autoencoder's inputs are columns of the scaled features."""

    def text(value: str) -> str:
        return json.dumps(value)

    def starts(names: tuple[str, ...], field: str) -> np.ndarray:
        return np.array(
            [f'{{"input":{text(name)},"{field}":' for name in readable_inputs(names)], dtype=object
        )

    return ReasonTexts(
        rules=[
            f'{{"rule":{text(name)},"reason":{text(reason)}}}'
            for name, reason in zip(rule_names, rule_reasons, strict=True)
        ],
        judge=starts(judge_names, "value"),
        autoencoder=starts(tuple(scaled_names[i] for i in autoencoder_inputs), "squared_error"),
    )


def _joined(items: np.ndarray) -> list[str]:
    """Each row's items (an object array of str) joined with commas."""
    return [",".join(row) for row in items.tolist()]


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """The columns of each row's `k` largest values, largest first, ties to the lower column
    and NaN last: `np.argsort(-values, axis=1, kind="stable")[:, :k]`, in one pass per row
    instead of a sort."""
    matrix = np.ascontiguousarray(values, dtype=np.float64)
    out = np.zeros((matrix.shape[0], min(k, matrix.shape[1])), dtype=np.int64)
    _top(matrix, out)
    return out


@njit(cache=True, nogil=True)
def _top(values, out):  # pragma: no cover - compiled
    k = out.shape[1]
    for row in range(values.shape[0]):
        count = 0
        for column in range(values.shape[1]):
            value = values[row, column]
            if np.isnan(value) or (count == k and not value > values[row, out[row, k - 1]]):
                continue
            at = count if count < k else k - 1
            while at > 0 and value > values[row, out[row, at - 1]]:
                out[row, at] = out[row, at - 1]
                at -= 1
            out[row, at] = column
            count = min(count + 1, k)
        for column in range(values.shape[1]):  # fewer than k numbers: the NaNs, in order
            if count == k:
                break
            if np.isnan(values[row, column]):
                out[row, count] = column
                count += 1


DIGITS = 4
"""Decimals of the numbers in the reasons."""
FEW_VALUES = 32


def json_numbers(values: np.ndarray) -> np.ndarray:
    """`json.dumps(round(value, DIGITS))` of every value, as an object array of str."""
    rounded = python_round(values, DIGITS)
    text = np.array(list(map(float.__repr__, rounded.ravel().tolist())), dtype=object)
    text = text.reshape(rounded.shape)
    odd = ~np.isfinite(rounded)
    if odd.any():  # json's NaN and Infinity, not repr's nan and inf
        text[odd] = [json.dumps(value) for value in rounded[odd].tolist()]
    return text


def python_round(values: np.ndarray, digits: int) -> np.ndarray:
    """Python's `round(value, digits)` of every value, as numpy: `rint(value * 10**digits) /
    10**digits` is the same double unless the product lies within its rounding error of a
    half (or is huge, or not finite); those few take Python's correctly rounded `round`, and
    so do a few values (one event's), for which numpy's calls cost more than `round`."""
    if values.size <= FEW_VALUES:
        rounded = [round(value, digits) for value in values.ravel().tolist()]
        return np.array(rounded, dtype=np.float64).reshape(values.shape)
    scale = 10.0**digits
    scaled = np.asarray(values, dtype=np.float64) * scale
    out = np.rint(scaled) / scale
    with np.errstate(invalid="ignore"):
        margin = np.abs(scaled - np.floor(scaled) - 0.5)
        doubtful = ~(margin > np.abs(scaled) * 2.0**-50)
    if doubtful.any():
        out[doubtful] = [round(value, digits) for value in values[doubtful].tolist()]
    return out


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
