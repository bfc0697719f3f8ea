"""`hybrid-ad drift`: a saved model's inputs and scores on new events against its reference.

The model's `drift_reference.json` (`hybrid_ad.monitoring.reference`) holds the profiles; the
new file is scored once (it is its own behavioural history, as for `hybrid-ad score`), every
judge input and stage score is compared per time window (`hybrid_ad.monitoring.drift`), and
the result is written as JSON and as an HTML page beside it with a section per window and a
plot per flagged column: its share of events in each reference quantile bin, reference
against window (without drift every bar pair is level).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hybrid_ad.artifacts import atomic_write_json
from hybrid_ad.core.detector import Detector, readable_input
from hybrid_ad.data import EVENT_SECONDS, read_table
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.monitoring.drift import (
    DEFAULT_MIN_ROWS,
    DEFAULT_THRESHOLD,
    ColumnProfile,
    drift,
    window_seconds,
)
from hybrid_ad.monitoring.reference import (
    FITTED_INPUTS,
    REFERENCE_FILE,
    SCORE_PREFIX,
    DriftReference,
)
from hybrid_ad.progress import QUIET, ProgressReporter
from hybrid_ad.reporting.pages import escape, figure_uri, table, write_page
from hybrid_ad.stages.features import prepare_events

SCORE_CHUNK = 50_000
MAX_PLOTS = 60
"""Plots drawn on one page at most (a shift in everything would otherwise make it huge)."""


def drift_file(
    model_dir: Path,
    input_path: Path,
    output_path: Path,
    window: str = "1d",
    threshold: float = DEFAULT_THRESHOLD,
    min_rows: int = DEFAULT_MIN_ROWS,
    progress: ProgressReporter = QUIET,
) -> dict[str, Any]:
    """Write DRIFT.json and DRIFT.html for the events in `input_path`; returns the JSON."""
    if output_path.suffix.lower() != ".json":
        raise InputError(f"{output_path}: the drift report is written as .json")
    window_seconds(window)
    if not threshold > 0:
        raise InputError(f"--threshold: must be above 0, got {threshold}")
    if min_rows < 1:
        raise InputError(f"--min-rows: must be at least 1, got {min_rows}")
    detector = Detector.load(model_dir)
    reference = detector.drift_reference_
    if reference is None:
        raise ArtifactError(
            f"{model_dir}: the model has no {REFERENCE_FILE} (saved before drift monitoring, "
            "or without a judge); refit it to monitor drift"
        )
    events = prepare_events(read_table(input_path), detector.config, str(input_path))
    parts = []
    with progress.task("drift", len(events)) as advance:
        for start in range(0, len(events), SCORE_CHUNK):
            chunk = events.rows(start, start + SCORE_CHUNK)
            parts.append(detector.monitored(chunk))
            advance(start + len(chunk), "")
    if not parts:
        raise InputError(f"{input_path}: no events")
    values = pd.concat(parts)
    seconds = events.frame[EVENT_SECONDS].to_numpy(np.float64)
    report = drift(values, reference.profile, seconds, window, threshold, min_rows)
    report = {
        "model": str(model_dir),
        "input": str(input_path),
        "events": len(events),
        "window": window,
        "reference": {
            "inputs": "training part",
            "fitted_inputs": {"names": list(FITTED_INPUTS), "part": "validation part"},
            "scores": "validation part",
            "training_rows": reference.training_rows,
            "validation_rows": reference.validation_rows,
        },
        "inputs": reference.inputs,
        "scores": reference.scores,
        **report,
    }
    atomic_write_json(output_path, report)
    write_drift_page(output_path.with_suffix(".html"), report, reference, values, seconds)
    return report


def write_drift_page(
    path: Path,
    report: dict[str, Any],
    reference: DriftReference,
    values: pd.DataFrame,
    seconds: np.ndarray,
) -> None:
    """One section per window: PSI and KS per column (flagged rows shaded), a plot per flag."""
    summary = table(
        ["setting", "value"],
        [
            ["model", report["model"]],
            ["input", report["input"]],
            ["events", report["events"]],
            ["window", report["window"]],
            ["PSI threshold", report["threshold"]],
            ["fewest rows judged per window", report["min_rows"]],
            ["inputs (reference: training part)", len(reference.inputs)],
            ["scores (reference: validation part)", len(reference.scores)],
            ["flagged anywhere", ", ".join(report["flagged_columns"]) or "none"],
        ],
    )
    sections = [
        "<p>PSI (population stability index) over the reference's quantile bins: under 0.1 "
        "is usually read as stable, over 0.2 as drift. KS: the largest gap between the "
        "window's and the reference's distribution functions. Judge inputs are compared with "
        "the training part, stage scores (score:…) and the inputs made by fitted models "
        f"({', '.join(FITTED_INPUTS)}) with the validation part.</p>",
        summary,
    ]
    plots = 0
    for entry in report["windows"]:
        start = entry["start_seconds"]
        heading = (
            "all events" if start is None else f"{_when(start)} to {_when(entry['end_seconds'])}"
        )
        names = [*reference.inputs, *reference.scores]
        rows, flags = [], []
        for name in names:
            figures = entry["columns"][name]
            rows.append(
                [
                    name,
                    readable_input(name) if name in reference.inputs else "stage score",
                    _figure(figures["psi"]),
                    _figure(figures["ks"]),
                    _figure(figures["missing_share"]),
                ]
            )
            flags.append(name in entry["flagged"])
        order = sorted(range(len(names)), key=lambda i: (not flags[i], i))
        body = table(
            ["column", "meaning", "PSI", "KS", "missing share"],
            [rows[i] for i in order],
            [flags[i] for i in order],
        )
        judged = "" if entry["rows"] >= report["min_rows"] else " (too few to judge)"
        flagged = ", ".join(entry["flagged"]) or "none"
        sections.append(
            f"<h2>{escape(heading)}</h2><p>{entry['rows']:,} events{escape(judged)}; "
            f"flagged: <b>{escape(flagged)}</b></p>{body}"
        )
        in_window = _rows_in(seconds, start, entry["end_seconds"])
        for name in entry["flagged"]:
            plots += 1
            if plots > MAX_PLOTS:
                continue
            column = values[name].to_numpy(np.float64)[in_window]
            uri = figure_uri(_bins_plot(name, reference.profile.columns[name], column))
            sections.append(
                f'<figure><img src="{uri}" alt="{escape(name)}"><figcaption>{escape(name)}: '
                f"share of events per reference quantile bin, PSI "
                f"{entry['columns'][name]['psi']:.3f}</figcaption></figure>"
            )
    if plots > MAX_PLOTS:
        sections.append(
            f'<p class="note">{plots - MAX_PLOTS:,} more flags than the {MAX_PLOTS} plots a '
            "page shows; the JSON has every figure.</p>"
        )
    write_page(path, "Drift against the model's reference", "".join(sections))


def _rows_in(seconds: np.ndarray, start: float | None, end: float | None) -> np.ndarray:
    if start is None or end is None:
        return np.ones(len(seconds), dtype=bool)
    return (seconds >= start) & (seconds < end)


def _bins_plot(name: str, profile: ColumnProfile, values: np.ndarray) -> Figure:
    edges = np.asarray(profile.edges)
    finite = values[np.isfinite(values)]
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
    window = counts / max(len(finite), 1)
    labels = [f"<= {edges[0]:.3g}"]
    labels += [f"{low:.3g} .. {high:.3g}" for low, high in itertools.pairwise(edges)]
    labels.append(f"> {edges[-1]:.3g}")
    figure = Figure(figsize=(8, 3.2))
    ax = figure.subplots()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, profile.proportions, width=0.4, label="reference", color="#4c72b0")
    ax.bar(x + 0.2, window, width=0.4, label="window", color="#c44e52")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of events")
    title = name.removeprefix(SCORE_PREFIX) + " score" if name.startswith(SCORE_PREFIX) else name
    ax.set_title(title)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _when(seconds: float) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
