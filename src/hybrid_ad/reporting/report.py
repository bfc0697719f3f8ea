"""The evaluation report: PNG plots and one self-contained HTML page that works offline.

Plots are drawn on `matplotlib.figure.Figure` objects (Agg, no pyplot global state), every
file is written atomically, and the HTML embeds the images as data URIs so the page can be
mailed or archived on its own. Unlabelled test data skips the plots that need both classes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from hybrid_ad.artifacts import atomic_write_bytes

DPI = 110
TOP_FEATURES = 25
MAX_CURVE_POINTS = 2000
"""Curves are thinned to this many points: invisible at this dpi, and keeps PNGs small."""

STAGE_COLUMNS = (
    ("ROC AUC", "roc_auc"),
    ("AP", "average_precision"),
    ("P@k", "precision_at_k"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("F1", "f1"),
    ("FPR", "false_positive_rate"),
    ("daily precision", "daily_precision"),
)
NORMAL_COLOR = "#4c72b0"
ANOMALY_COLOR = "#c44e52"
FPR_AT_RULES_RECALL = "_false_positive_rate_at_rules_recall"

PLOTS = (
    (
        "reconstruction_error.png",
        "Reconstruction error by class",
        "Autoencoder reconstruction error on the test split, normal rows against anomalies, "
        "both axes logarithmic (bins are log-spaced). The dashed line is the autoencoder "
        "threshold chosen on validation. Good separation means the anomaly bars sit to the "
        "right of the bulk of normal rows.",
    ),
    (
        "curves.png",
        "Precision-recall and ROC curves",
        "Left: precision against recall for every stage, with average precision in the legend; "
        "the dotted line is the anomaly rate, what a random score would reach. Right: true "
        "positive rate against false positive rate, with ROC AUC in the legend. With rare "
        "anomalies the PR curve is the more telling of the two.",
    ),
    (
        "confusion_matrices.png",
        "Confusion matrices",
        "Counts at each stage's threshold (chosen on validation). Rows are the true class, "
        "columns the prediction; the colour is the share of the row, so the rare anomaly row "
        "is readable next to the large normal row.",
    ),
    (
        "score_distributions.png",
        "Score distributions",
        "Each stage's score on its own axes (the stages use different scales), as the "
        "fraction of each class per bin on a log axis. The dashed line is the stage's "
        "threshold. Less overlap between the classes means an easier cut.",
    ),
    (
        "feature_importance.png",
        "Judge feature importance",
        "The judge's importance for its top features, largest at the top. Importance says "
        "what the model relies on, not whether a feature pushes a score up or down.",
    ),
)

METRIC_HELP = (
    (
        "ROC AUC",
        "The probability that a random anomaly scores above a random normal row; 0.5 is "
        "chance, 1 is perfect. It ignores thresholds and can look high even when the "
        "alerts are mostly false, because normal rows vastly outnumber anomalies.",
    ),
    (
        "AP (average precision)",
        "The area under the precision-recall curve: the mean precision over the recall "
        "levels reached as the threshold drops. Chance equals the anomaly rate, so compare "
        "it with that rather than with 0.5.",
    ),
    (
        "P@k (precision at k)",
        "The share of true anomalies among the k highest-scoring test rows: what an analyst "
        "working down the top of the alert queue would see.",
    ),
    (
        "precision, recall, F1, FPR",
        "Measured on the test split at each stage's threshold. Precision is the share of "
        "alerts that are anomalies, recall the share of anomalies alerted, F1 their harmonic "
        "mean, and FPR the share of normal rows alerted.",
    ),
    (
        "thresholds",
        "Every threshold is chosen on the validation split, never on the test split, so the "
        "test figures are an honest estimate of what the chosen cut does on unseen data.",
    ),
    (
        "operating point",
        "The judge's threshold is moved until it reaches the rules' recall on the test "
        "split; the two false positive rates are then comparable like for like.",
    ),
    (
        "n/a",
        "A metric that cannot be computed, for example when a split has no anomalies.",
    ),
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
figure { margin: 1.2em 0; }
figcaption { color: #555; font-size: 0.92em; max-width: 900px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 0.8em; }
.verdict { font-weight: 600; }
dt { font-weight: 600; margin-top: 0.6em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


# --- public API --------------------------------------------------------------------------------


def write_report(
    reports_dir: Path,
    metrics: dict,
    y_true: np.ndarray | None,
    stage_scores: dict[str, np.ndarray],
    reconstruction_error: np.ndarray | None,
    feature_importance: dict[str, float],
    top_alerts: pd.DataFrame | None = None,
    title: str = "hybrid-ad evaluation",
) -> Path:
    """Write the plots and `index.html` into `reports_dir`; return the HTML path.

    `y_true`, `stage_scores` and `reconstruction_error` are aligned with the test split.
    """
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    y = _binary_labels(y_true)
    scores = {name: _finite_1d(values) for name, values in stage_scores.items()}
    error = None if reconstruction_error is None else _finite_1d(reconstruction_error)
    for name, values in [*scores.items(), ("reconstruction_error", error)]:
        if y is not None and values is not None and len(values) != len(y):
            raise ValueError(f"{name}: {len(values)} scores for {len(y)} labels")
    stages = metrics.get("stages") or {}
    thresholds = {name: _number((stages.get(name) or {}).get("threshold")) for name in stages}

    figures = {
        "reconstruction_error.png": _reconstruction_plot(error, y, thresholds.get("autoencoder")),
        "curves.png": None if y is None else _curves_plot(scores, y),
        "confusion_matrices.png": _confusion_plot(stages),
        "score_distributions.png": _distribution_plot(scores, y, thresholds),
        "feature_importance.png": _importance_plot(feature_importance),
    }
    images = {
        filename: None if figure is None else _save_png(figure, reports_dir / filename)
        for filename, figure in figures.items()
    }
    page = _render_html(
        title, metrics, images, feature_importance, labelled=y is not None, top_alerts=top_alerts
    )
    index = reports_dir / "index.html"
    atomic_write_bytes(index, page.encode("utf-8"))
    return index


def markdown_table(metrics: dict) -> str:
    """The per-stage metrics as a Markdown table, four decimals, `n/a` for missing values."""
    header = ["stage", *(label for label, _ in STAGE_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * len(STAGE_COLUMNS)]
    for name, values in (metrics.get("stages") or {}).items():
        values = values or {}
        cells = [name.replace("|", "\\|")]
        cells += [_fmt(values.get(key)) for _, key in STAGE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- data helpers ------------------------------------------------------------------------------


def _binary_labels(y_true: np.ndarray | None) -> np.ndarray | None:
    """Boolean labels, or None when there are no labels or only one class (nothing to compare)."""
    if y_true is None:
        return None
    y = np.asarray(y_true).ravel()
    if y.size == 0 or np.unique(y).size < 2:
        return None
    return y.astype(bool)


def _finite_1d(values: np.ndarray) -> np.ndarray:
    """Scores as float64; non-finite entries become NaN so masks stay aligned with labels."""
    array = np.asarray(values, dtype=np.float64).ravel()
    return np.where(np.isfinite(array), array, np.nan)


def _number(value: Any) -> float | None:
    """A finite float, or None for null, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _fmt(value: Any, decimals: int | None = 4) -> str:
    """Integers with thousands separators, other numbers to `decimals` (None: 6 significant
    digits, for thresholds of any scale), `n/a` for missing."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = _number(value)
        if number is None:
            return "n/a"
        return f"{number:.6g}" if decimals is None else f"{number:,.{decimals}f}"
    return "n/a" if value is None else str(value)


# --- plots -------------------------------------------------------------------------------------


def _plain(text: str) -> str:
    """Escape `$` so a stage or feature name is never parsed as matplotlib mathtext."""
    return text.replace("$", r"\$")


def _stage_colors(names: list[str]) -> dict[str, str]:
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _log_bins(values: np.ndarray, count: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced bins over the positive range; zeros are clipped to the smallest positive."""
    positive = values[values > 0]
    low = positive.min() if positive.size else 1e-12
    high = max(positive.max() if positive.size else 1.0, low * 10)
    return np.clip(values, low, None), np.geomspace(low, high, count + 1)


def _reconstruction_plot(
    error: np.ndarray | None, y: np.ndarray | None, threshold: float | None
) -> Figure | None:
    if error is None or not np.isfinite(error).any():
        return None
    keep = np.isfinite(error)
    clipped, bins = _log_bins(error[keep])
    figure = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    if y is None:
        ax.hist(clipped, bins=bins, histtype="stepfilled", color=NORMAL_COLOR, label="all rows")
    else:
        labels = y[keep]
        for mask, name, color in (
            (~labels, "normal", NORMAL_COLOR),
            (labels, "anomaly", ANOMALY_COLOR),
        ):
            label = f"{name} (n={mask.sum():,})"
            ax.hist(
                clipped[mask], bins=bins, histtype="stepfilled", color=color, alpha=0.6, label=label
            )
    if threshold is not None and threshold > 0:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set(xscale="log", yscale="log", xlabel="reconstruction error (log scale)")
    ax.set_ylabel("rows per bin (count, log scale)")
    ax.set_title("Autoencoder reconstruction error on the test split")
    ax.legend()
    ax.grid(alpha=0.3, which="major")
    return figure


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= MAX_CURVE_POINTS:
        return x, y
    index = np.unique(np.linspace(0, x.size - 1, MAX_CURVE_POINTS).astype(int))
    return x[index], y[index]


def _curves_plot(scores: Mapping[str, np.ndarray], y: np.ndarray) -> Figure:
    colors = _stage_colors(list(scores))
    figure = Figure(figsize=(12, 5), dpi=DPI, layout="constrained")
    pr_ax, roc_ax = figure.subplots(1, 2)
    for name, values in scores.items():
        keep = np.isfinite(values)
        labels, kept = y[keep], values[keep]
        if np.unique(labels).size < 2:
            continue
        precision, recall, _ = precision_recall_curve(labels, kept)
        fpr, tpr, _ = roc_curve(labels, kept)
        ap = average_precision_score(labels, kept)
        auc = roc_auc_score(labels, kept)
        pr_ax.step(
            *_thin(recall, precision),
            where="post",
            color=colors[name],
            label=f"{_plain(name)} (AP {ap:.3f})",
        )
        roc_ax.plot(*_thin(fpr, tpr), color=colors[name], label=f"{_plain(name)} (AUC {auc:.3f})")
    rate = float(y.mean())
    pr_ax.axhline(rate, color="grey", ls=":", lw=1, label=f"anomaly rate {rate:.4f}")
    roc_ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    pr_ax.set(
        xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02)
    )
    roc_ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    for ax in (pr_ax, roc_ax):
        # Below the axes: the curves of good stages fill every corner inside them.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9)
        ax.grid(alpha=0.3)
    return figure


def _confusion_plot(stages: Mapping[str, Any]) -> Figure | None:
    matrices = {
        name: np.array([[cm.get("tn", 0), cm.get("fp", 0)], [cm.get("fn", 0), cm.get("tp", 0)]])
        for name, values in stages.items()
        if isinstance(cm := (values or {}).get("confusion_matrix"), dict)
    }
    if not matrices:
        return None
    figure = Figure(figsize=(3.3 * len(matrices), 3.6), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(matrices)))
    for ax, (name, counts) in zip(axes, matrices.items(), strict=True):
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (row, col), count in np.ndenumerate(counts):
            color = "white" if share[row, col] > 0.6 else "black"
            text = f"{int(count):,}\n({share[row, col]:.1%} of row)"
            ax.text(col, row, text, ha="center", va="center", color=color, fontsize=9)
        threshold = _number((stages[name] or {}).get("threshold"))
        subtitle = f"threshold {threshold:.4g}" if threshold is not None else "threshold n/a"
        ax.set_title(f"{_plain(name)}\n{subtitle}", fontsize=10)
        ax.set_xticks([0, 1], ["normal", "anomaly"])
        ax.set_yticks([0, 1], ["normal", "anomaly"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
    return figure


def _score_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Bins suited to the score: one per integer (rule counts), log-spaced for heavy tails."""
    low, high = float(values.min()), float(values.max())
    if np.all(values == np.round(values)) and high - low <= 60:
        return values, np.arange(low - 0.5, high + 1.5), False
    positive = values[values > 0]
    if low >= 0 and positive.size and positive.max() / positive.min() > 1e3:
        clipped, bins = _log_bins(values)
        return clipped, bins, True
    return values, np.linspace(low, high if high > low else low + 1, 61), False


def _distribution_plot(
    scores: Mapping[str, np.ndarray], y: np.ndarray | None, thresholds: Mapping[str, float | None]
) -> Figure | None:
    panels = {name: values for name, values in scores.items() if np.isfinite(values).any()}
    if not panels:
        return None
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(6 * columns, 3.4 * rows), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax, (name, values) in zip(axes, panels.items(), strict=False):
        keep = np.isfinite(values)
        kept, bins, log_x = _score_bins(values[keep])
        if log_x:
            ax.set_xscale("log")
        groups = (
            [("all rows (unlabelled)", kept, NORMAL_COLOR)]
            if y is None
            else [
                ("normal", kept[~y[keep]], NORMAL_COLOR),
                ("anomaly", kept[y[keep]], ANOMALY_COLOR),
            ]
        )
        for label, group, color in groups:
            if group.size:
                weights = np.full(group.size, 1.0 / group.size)
                style = {"histtype": "stepfilled", "color": color, "alpha": 0.6}
                ax.hist(group, bins=bins, weights=weights, label=label, **style)
        threshold = thresholds.get(name)
        if threshold is not None and (threshold > 0 or not log_x):
            ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.4g}")
        ax.set_yscale("log")
        ax.set_title(_plain(name))
        ax.set_xlabel("score" + (" (log scale)" if log_x else ""))
        ax.set_ylabel(f"fraction of {'rows' if y is None else 'class'} per bin (log)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return figure


def _importance_plot(importance: Mapping[str, float]) -> Figure | None:
    items = [
        (name, float(value)) for name, value in importance.items() if _number(value) is not None
    ]
    if not items:
        return None
    top = sorted(items, key=lambda item: item[1], reverse=True)[:TOP_FEATURES][::-1]
    names = [_plain(name if len(name) <= 40 else name[:39] + "…") for name, _ in top]
    figure = Figure(figsize=(8, 1.2 + 0.28 * len(top)), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    ax.barh(range(len(top)), [value for _, value in top], color=NORMAL_COLOR)
    ax.set_yticks(range(len(top)), names, fontsize=9)
    ax.set_xlabel("importance")
    ax.set_title(f"Judge feature importance (top {len(top)} of {len(items)})")
    ax.grid(alpha=0.3, axis="x")
    return figure


# --- files -------------------------------------------------------------------------------------


def _save_png(figure: Figure, path: Path) -> bytes:
    """Render once, keep the bytes for embedding, and write them atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return data


# --- HTML --------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; every cell is escaped, and all but the first column are right-aligned."""
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join(
        f"<tr><td>{_e(row[0])}</td>"
        + "".join(f'<td class="num">{_e(cell)}</td>' for cell in row[1:])
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _stages_section(stages: Mapping[str, Any]) -> str:
    if not stages:
        return "<p>No stage metrics were recorded.</p>"
    header = ["stage", *(label for label, _ in STAGE_COLUMNS), "k", "threshold"]
    keys = [key for _, key in STAGE_COLUMNS] + ["k"]
    rows = []
    for name, values in stages.items():
        values = values or {}
        threshold = _fmt(values.get("threshold"), None)
        rows.append([name, *(_fmt(values.get(key)) for key in keys), threshold])
    return _table(header, rows)


def _operating_point_section(point: Mapping[str, Any]) -> str:
    """Rules against every model at the rules' recall, then all recorded values."""
    if not point:
        return "<p>No operating-point comparison was recorded.</p>"
    rules_fpr = _number(point.get("rules_false_positive_rate"))
    recall = _number(point.get("rules_recall"))
    rows = [["rules (own threshold)", _fmt(point.get("rules_false_positive_rate"), 6), ""]]
    verdicts = []
    for key, value in point.items():
        if not key.endswith(FPR_AT_RULES_RECALL):
            continue
        stage = key.removesuffix(FPR_AT_RULES_RECALL)
        fpr = _number(value)
        if fpr is None or rules_fpr is None:
            change = "n/a"
        elif rules_fpr == 0:
            change = "same" if fpr == 0 else "more (rules have none)"
        else:
            change = f"{(fpr - rules_fpr) / rules_fpr:+.1%}"
        rows.append([f"{stage} at the rules' recall", _fmt(value, 6), change])
        if stage == "judge":
            verdicts.append(_judge_verdict(rules_fpr, fpr, recall))
    table = _table(["detector", "false positive rate", "change against rules"], rows)
    everything = _table(["key", "value"], [[key, _fmt(value, 6)] for key, value in point.items()])
    verdict = "".join(f'<p class="verdict">{_e(text)}</p>' for text in verdicts)
    return f"{verdict}{table}<details><summary>All recorded values</summary>{everything}</details>"


def _judge_verdict(rules_fpr: float | None, judge_fpr: float | None, recall: float | None) -> str:
    if rules_fpr is None or judge_fpr is None:
        return "The judge could not be compared with the rules at the rules' recall (n/a)."
    at = f"At the rules' recall of {_fmt(recall)}, the judge's false positive rate is "
    at += f"{_fmt(judge_fpr, 6)} against the rules' {_fmt(rules_fpr, 6)}: "
    if judge_fpr < rules_fpr:
        return at + f"the judge cuts false positives by {1 - judge_fpr / rules_fpr:.1%}."
    if judge_fpr == rules_fpr:
        return at + "no change."
    return at + "the judge does not cut false positives here."


def _kinds_section(by_stage: Mapping[str, Any]) -> str:
    """Recall of each anomaly kind, one column per stage, at each stage's threshold."""
    stages = list(by_stage)
    kinds = sorted({kind for per_kind in by_stage.values() for kind in per_kind})
    rows = []
    for kind in kinds:
        entries = [by_stage[stage].get(kind) or {} for stage in stages]
        n_rows = next((entry["rows"] for entry in entries if "rows" in entry), None)
        rows.append([kind, _fmt(n_rows, 0), *(_fmt(entry.get("recall")) for entry in entries)])
    return _table(["anomaly kind", "rows", *stages], rows)


def _alerts_section(alerts: pd.DataFrame) -> str:
    """The judge's highest test scores, each with the rules, judge inputs and autoencoder
    inputs behind it (the `reasons` JSON of `score`, spelled out)."""
    rows = []
    for rank, (score, label, text) in enumerate(
        alerts[["score", "label", "reasons"]].itertuples(index=False), start=1
    ):
        reasons = json.loads(text)
        rules = "; ".join(f"{r['rule']}: {r['reason']}" for r in reasons["rules"]) or "none"
        judge = "; ".join(
            f"{r['input']} = {r['value']:g} ({r['contribution']:+.2f})" for r in reasons["judge"]
        )
        worst = ", ".join(r["input"] for r in reasons["autoencoder"])
        rows.append(
            f'<tr><td>{rank}</td><td class="num">{_e(_fmt(score))}</td>'
            f'<td class="num">{_e(label)}</td><td>{_e(rules)}</td><td>{_e(judge)}</td>'
            f"<td>{_e(worst)}</td></tr>"
        )
    header = "".join(
        f"<th>{_e(h)}</th>"
        for h in (
            "#",
            "score",
            "label",
            "rules fired",
            "judge: top inputs (log-odds contribution)",
            "autoencoder: worst inputs",
        )
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _split_section(split: Mapping[str, Any]) -> str:
    if not split:
        return "<p>No split summary was recorded.</p>"
    known = ["rows", "positives", "start_seconds", "end_seconds"]
    extra = sorted({key for part in split.values() for key in (part or {})} - set(known))
    header = ["split", "rows", "positives", "positive rate", "start (s)", "end (s)", *extra]
    rows = []
    for name, part in split.items():
        part = part or {}
        count, positives = _number(part.get("rows")), _number(part.get("positives"))
        rate = positives / count if count and positives is not None else None
        rows.append(
            [name, _fmt(part.get("rows")), _fmt(part.get("positives")), _fmt(rate)]
            + [_fmt(part.get("start_seconds"), 0), _fmt(part.get("end_seconds"), 0)]
            + [_fmt(part.get(key)) for key in extra]
        )
    return _table(header, rows)


def _timings_section(timings: Mapping[str, Any]) -> str:
    if not timings:
        return "<p>No timings were recorded.</p>"
    rows = [[step, _fmt(seconds, 2)] for step, seconds in timings.items()]
    total = sum(value for value in map(_number, timings.values()) if value is not None)
    rows.append(["total", _fmt(total, 2)])
    return _table(["step", "seconds"], rows)


def _features_section(importance: Mapping[str, Any]) -> str:
    ranked = sorted(
        ((name, value) for name, value in importance.items() if _number(value) is not None),
        key=lambda item: item[1],
        reverse=True,
    )
    if not ranked:
        return "<p>No feature importance was recorded.</p>"
    return _table(["feature", "importance"], [[name, _fmt(value)] for name, value in ranked[:10]])


def _plots_section(images: Mapping[str, bytes | None], labelled: bool) -> str:
    """Each image as a data URI, or a note saying why it is missing."""
    parts = []
    for filename, caption, _ in PLOTS:
        data = images.get(filename)
        if data is None:
            needs_labels = filename == "curves.png" and not labelled
            why = "the test split has no labels or one class" if needs_labels else "no data for it"
            parts.append(f'<p class="note">{_e(caption)}: not drawn ({_e(why)}).</p>')
            continue
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img src="{uri}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)} ({_e(filename)})</figcaption></figure>"
        )
    return "".join(parts)


def _render_html(
    title: str,
    metrics: Mapping[str, Any],
    images: Mapping[str, bytes | None],
    importance: Mapping[str, Any],
    labelled: bool,
    top_alerts: pd.DataFrame | None = None,
) -> str:
    label_source = metrics.get("label_source")
    unlabelled = (
        ""
        if labelled
        else '<p class="note">The test split has no labels or only one class, so the '
        "precision-recall and ROC curves are skipped, the histograms show all rows without a "
        "class split, and metrics that need both classes show n/a.</p>"
    )
    glossary = "".join(f"<dt>{_e(term)}</dt><dd>{_e(text)}</dd>" for term, text in METRIC_HELP)
    glossary += "".join(f"<dt>{_e(caption)}</dt><dd>{_e(text)}</dd>" for _, caption, text in PLOTS)
    config = json.dumps(metrics.get("config") or {}, indent=2, sort_keys=True, default=str)
    sections = [
        ("Metrics per stage (test split)", _stages_section(metrics.get("stages") or {})),
        (
            "Does the judge cut false positives at the rules' recall?",
            _operating_point_section(metrics.get("operating_point") or {}),
        ),
        *(
            [("Recall per anomaly kind (test split)", _kinds_section(metrics["recall_by_kind"]))]
            if metrics.get("recall_by_kind")
            else []
        ),
        *(
            [("Top test alerts and their reasons", _alerts_section(top_alerts))]
            if top_alerts is not None
            else []
        ),
        ("Time-ordered split", _split_section(metrics.get("split") or {})),
        ("How to read this report", f"<dl>{glossary}</dl>"),
        ("Plots", _plots_section(images, labelled)),
        ("Top 10 judge features", _features_section(importance)),
        ("Timings", _timings_section(metrics.get("timings_s") or {})),
        ("Configuration", f"<details><summary>Show</summary><pre>{_e(config)}</pre></details>"),
    ]
    body = "".join(f"<h2>{_e(heading)}</h2>{content}" for heading, content in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p>Label source: <b>{_e(label_source or 'n/a')}</b>. "
        "Stages: rule score, autoencoder reconstruction error, histogram detector (HBOS), "
        "judge probability, and the judge trained without the autoencoder."
        f"</p>{unlabelled}{body}</body></html>\n"
    )
