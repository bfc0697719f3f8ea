"""The review queue: the events an analyst should look at next, with the reasons for each.

The model scores every event once; choosing is then cheap array work, and the reasons (rules
fired, judge contributions, autoencoder inputs; `Detector.explain`) are computed only for the
chosen events, so a queue over a million events costs about one `score` of them.

Strategies, each over the events not yet in the label store (by event id; of events sharing
an id only the first in the file is a candidate), ties broken by file order:

- `top`: the highest judge scores: confirm the alerts most likely to be right.
- `uncertain`: the scores closest to the alert threshold on the log-odds scale,
  |logit(score) - logit(threshold)|: the labels that move the judge's boundary most.
- `mixed` (default): `1 - EXPLORE_SHARE` of the budget (rounded up) on `top`, the rest on
  exploration: among the events below the threshold, those with the highest *rarity*, the
  mean surprise of the three label-free signals (rules, autoencoder, histogram detector;
  `hybrid_ad.stages.label_free.TailScale`), i.e. events the label-free views find unusual and the
  judge does not. If there are too few of those, `top` fills the rest of the budget.

With `per_day`, the budget applies to each calendar day (UTC) of event time separately.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.core.detector import SIGNALS, Detector
from hybrid_ad.data import EVENT_ID, EVENT_SECONDS, event_ids, read_table, write_table
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.progress import QUIET, ProgressReporter
from hybrid_ad.reporting.pages import escape, table, write_page
from hybrid_ad.stages.features import PreparedEvents, prepare_events

STRATEGIES = ("top", "uncertain", "mixed")
EXPLORE_SHARE = 0.2
"""Share of a `mixed` budget spent on exploration (rounded down; 2 of 10, 0 of 4)."""
SCORE_CHUNK = 50_000
DAY_SECONDS = 86_400
LOGIT_CLIP = 1e-12


@dataclass(frozen=True)
class ReviewResult:
    """A written queue: its rows, the events considered, and the distinct event ids skipped
    because the store has a verdict on them."""

    queue: pd.DataFrame
    events: int
    skipped_labelled: int
    csv_path: Path
    html_path: Path


def review_queue(
    detector: Detector,
    events: PreparedEvents,
    ids: pd.Series,
    budget: int,
    strategy: str = "mixed",
    per_day: bool = False,
    labelled: Collection[str] = (),
    progress: ProgressReporter = QUIET,
) -> pd.DataFrame:
    """The queue as a frame, one row per event: rank (within its day), event id, the event's
    time, day, the strategy part that picked it, the stage outputs, rarity and reasons.

    `ids` are the events' ids in the same order as `events`; `labelled` the ids to skip.
    """
    check_request(budget, strategy)
    if detector.threshold_ is None:
        raise ArtifactError("model has no alert threshold; fit its judge first (train-judge)")
    if len(ids) != len(events):
        raise ValueError("ids and events differ in length")
    scores = _stage_scores(detector, events, progress)
    rarity = _rarity(detector, scores)
    id_values = ids.to_numpy(dtype=str)
    candidate = ~pd.Series(id_values).duplicated().to_numpy()
    candidate &= ~np.isin(id_values, np.asarray(list(labelled), dtype=str))
    seconds = events.frame[EVENT_SECONDS].to_numpy(np.float64)
    days = np.floor(seconds / DAY_SECONDS).astype(np.int64)
    groups = [np.flatnonzero(candidate)]
    if per_day:
        by_day = groups[0][np.argsort(days[groups[0]], kind="stable")]  # file order within
        groups = np.split(by_day, np.flatnonzero(np.diff(days[by_day])) + 1)
    score = scores["judge"]
    chosen: list[np.ndarray] = [np.array([], dtype=np.int64)]
    ranks: list[np.ndarray] = [np.array([], dtype=np.int64)]
    picked_by: list[str] = []
    for rows in groups:
        picks, kinds = _pick(rows, score, rarity, detector.threshold_, budget, strategy)
        chosen.append(picks)
        ranks.append(np.arange(1, len(picks) + 1))
        picked_by += kinds
    positions = np.concatenate(chosen)
    subset = PreparedEvents(events.frame.iloc[positions], events.feature_columns, events.source)
    if len(positions):
        picked = detector.score(subset).join(detector.explain(subset))
    else:  # nothing left to review: the model cannot score zero events
        columns = ["score", "alert", "rule_score", "reconstruction_error", "histogram_score"]
        picked = pd.DataFrame({name: [] for name in [*columns, "rules_hit", "reasons"]})
    queue = pd.DataFrame(
        {
            "rank": np.concatenate(ranks),
            EVENT_ID: id_values[positions],
            "day": pd.to_datetime(days[positions] * DAY_SECONDS, unit="s").strftime("%Y-%m-%d"),
            "picked_by": picked_by,
            "score": picked["score"].to_numpy(),
            "alert": picked["alert"].to_numpy(),
            "rule_score": picked["rule_score"].to_numpy(),
            "reconstruction_error": picked["reconstruction_error"].to_numpy(),
            "histogram_score": picked["histogram_score"].to_numpy(),
            "rarity": rarity[positions],
            "rules_hit": picked["rules_hit"].to_numpy(),
            "reasons": picked["reasons"].to_numpy(),
        }
    )
    time_column = detector.config.data.timestamp
    queue.insert(2, time_column, events.frame[time_column].to_numpy()[positions])
    return queue


def check_request(budget: int, strategy: str) -> None:
    """Refuse a budget below one or an unknown strategy, naming the flag."""
    if budget < 1:
        raise InputError(f"--budget: must be at least 1, got {budget}")
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")


def _stage_scores(
    detector: Detector, events: PreparedEvents, progress: ProgressReporter
) -> dict[str, np.ndarray]:
    """Each stage's score of every event (`Detector.stage_scores`): what the choice needs,
    without the per-event text (`rules_hit`) that only queued events get."""
    names = [*SIGNALS, "judge"]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with progress.task("scoring", len(events)) as advance:
        for start in range(0, len(events), SCORE_CHUNK):
            chunk = events.rows(start, start + SCORE_CHUNK)
            values = detector.stage_scores(chunk)
            for name in names:
                parts[name].append(np.asarray(values[name], np.float64))
            advance(start + len(chunk), "")
    if not parts["judge"]:
        raise InputError(f"{events.source}: no events to review")
    return {name: np.concatenate(values) for name, values in parts.items()}


def _rarity(detector: Detector, scores: dict[str, np.ndarray]) -> np.ndarray:
    """Mean surprise of the label-free signals: how unusual the event is without the judge."""
    assert detector.tail_scales_ is not None
    surprises = [detector.tail_scales_[name].transform(scores[name]) for name in SIGNALS]
    return np.mean(surprises, axis=0)


def _pick(
    rows: np.ndarray,
    score: np.ndarray,
    rarity: np.ndarray,
    threshold: float,
    budget: int,
    strategy: str,
) -> tuple[np.ndarray, list[str]]:
    """Up to `budget` of `rows` (positions) in queue order, and the strategy part of each."""
    by_score = rows[np.lexsort((rows, -score[rows]))]
    if strategy == "top":
        picks = by_score[:budget]
        return picks, ["top"] * len(picks)
    if strategy == "uncertain":
        distance = np.abs(_logit(score[rows]) - _logit(np.array([threshold]))[0])
        picks = rows[np.lexsort((rows, distance))][:budget]
        return picks, ["uncertain"] * len(picks)
    explore_budget = math.floor(budget * EXPLORE_SHARE)
    top = by_score[: budget - explore_budget]
    rest = rows[~np.isin(rows, top) & (score[rows] < threshold)]
    explore = rest[np.lexsort((rest, -rarity[rest]))][:explore_budget]
    unused = by_score[~np.isin(by_score, top) & ~np.isin(by_score, explore)]
    fill = unused[: explore_budget - len(explore)]
    picks = np.concatenate([top, fill, explore])
    return picks, ["top"] * (len(top) + len(fill)) + ["explore"] * len(explore)


def _logit(probability: np.ndarray) -> np.ndarray:
    clipped = np.clip(probability.astype(np.float64), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def html_path_for(csv_path: Path) -> Path:
    """QUEUE.csv (or QUEUE.csv.gz) -> QUEUE.html beside it."""
    name = csv_path.name
    stem = name[: -len(".csv.gz")] if name.lower().endswith(".csv.gz") else csv_path.stem
    return csv_path.with_name(f"{stem}.html")


def review_file(
    model_dir: Path,
    input_path: Path,
    output_path: Path,
    budget: int,
    strategy: str = "mixed",
    per_day: bool = False,
    store: str | None = None,
    progress: ProgressReporter = QUIET,
) -> ReviewResult:
    """`hybrid-ad review`: score a file with a saved model, write the queue as CSV and HTML.

    The file is its own behavioural history, as for `hybrid-ad score`.
    """
    if not output_path.name.lower().endswith((".csv", ".csv.gz")):
        raise InputError(f"{output_path}: the review queue is written as .csv or .csv.gz")
    check_request(budget, strategy)
    labelled: set[str] = set()
    if store is not None:
        from hybrid_ad.labels import open_store

        with open_store(store) as source:
            labelled = set(source.latest()[EVENT_ID].astype(str))
    detector = Detector.load(model_dir)
    raw = read_table(input_path)
    ids = event_ids(raw, detector.config.data, str(input_path))
    events = prepare_events(raw, detector.config, str(input_path))
    ids = ids.loc[events.frame.index]
    queue = review_queue(detector, events, ids, budget, strategy, per_day, labelled, progress)
    skipped = len(labelled.intersection(ids.to_numpy(dtype=str)))
    write_table(queue, output_path)
    html_path = html_path_for(output_path)
    settings = {
        "model": str(model_dir),
        "input": str(input_path),
        "events": len(events),
        "strategy": strategy,
        "budget": f"{budget:,} per day" if per_day else f"{budget:,}",
        "label store": store or "none",
        "events skipped as already labelled (distinct ids)": skipped,
        "alert threshold": detector.threshold_,
    }
    write_review_page(queue, html_path, settings, detector.config.data.timestamp)
    return ReviewResult(queue, len(events), skipped, output_path, html_path)


def write_review_page(
    queue: pd.DataFrame, path: Path, settings: dict[str, Any], time_column: str
) -> None:
    """The queue as one HTML page an analyst can read: one row per event, reasons in words."""
    about = table(["setting", "value"], [[key, value] for key, value in settings.items()])
    header = ["#", "event_id", time_column, "day", "picked by", "score", "alert"]
    header += ["rules fired", "judge: top inputs (log-odds contribution)"]
    header += ["autoencoder: worst inputs", "rarity"]
    rows = []
    for record in queue.to_dict("records"):
        reasons = json.loads(record["reasons"])
        rules = "".join(
            f"<li>{escape(r['rule'])}: {escape(r['reason'])}</li>" for r in reasons["rules"]
        )
        judge = "".join(
            f"<li>{escape(r['input'])} = {r['value']:g} ({r['contribution']:+.2f})</li>"
            for r in reasons["judge"]
        )
        worst = "".join(f"<li>{escape(r['input'])}</li>" for r in reasons["autoencoder"])
        cells = [
            f'<td class="num">{escape(record["rank"])}</td>',
            f"<td><code>{escape(record[EVENT_ID])}</code></td>",
            f"<td>{escape(record[time_column])}</td>",
            f"<td>{escape(record['day'])}</td>",
            f"<td>{escape(record['picked_by'])}</td>",
            f'<td class="num">{record["score"]:.4f}</td>',
            f"<td>{'yes' if record['alert'] else 'no'}</td>",
            f"<td><ul>{rules}</ul></td>" if rules else "<td>none</td>",
            f"<td><ul>{judge}</ul></td>",
            f"<td><ul>{worst}</ul></td>",
            f'<td class="num">{record["rarity"]:.2f}</td>',
        ]
        marked = ' class="flag"' if record["alert"] else ""
        rows.append(f"<tr{marked}>{''.join(cells)}</tr>")
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    events = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    body = (
        f"<p>{len(queue):,} events to review, best first (per day with a per-day budget). "
        "<b>top</b>: highest judge score; <b>uncertain</b>: closest to the alert threshold; "
        "<b>explore</b>: below the threshold but unusual to the rules, the autoencoder and the "
        "histogram detector (rarity: their mean surprise, -log of the share of training events "
        "as unusual). Alerts are shaded. Verdicts go back with "
        "<code>hybrid-ad labels import</code> (columns event_id, label, source).</p>"
        f"{about}{events if len(queue) else '<p>No events left to review.</p>'}"
    )
    write_page(path, "Review queue", body)
