"""The batch job: load, split, fit, evaluate every stage, report, save.

Each step of the command line (`train-ae`, `embed`, `train-judge`, `evaluate`) is one function
here reading and writing the same artifact directory, and `run` calls them in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.artifacts import (
    atomic_write_json,
    atomic_write_with,
    check_output_file,
    published_outputs,
)
from hybrid_ad.config import Config
from hybrid_ad.core.detector import Detector, require_judge
from hybrid_ad.core.scoring import Contributions
from hybrid_ad.data import (
    EVENT_ID,
    EVENT_SECONDS,
    Split,
    check_table_suffix,
    event_ids,
    file_sha256,
    read_table,
    time_split,
    write_table,
)
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.evaluation import (
    choose_threshold,
    daily_precision,
    operating_point,
    recall_by_kind,
    stage_metrics,
    undefined_metrics,
)
from hybrid_ad.jobs.features import check_feature_table
from hybrid_ad.progress import ProgressReporter
from hybrid_ad.reporting.report import write_report
from hybrid_ad.stages.features import PreparedEvents, compact_behaviour, prepare_events

MODEL_DIR = "model"
REPORTS_DIR = "reports"
EMBEDDINGS_DIR = "embeddings"
OUTPUTS = (MODEL_DIR, REPORTS_DIR)
"""What a run or a step publishes together (`artifacts.published_outputs`)."""
SCORE_CHUNK = 50_000
TOP_ALERTS = 20
ABLATION_NEGATIVE_SHARE = 4
"""Where its negatives exceed `judge.max_negatives`, the ablation judge fits on 1 / this of
the budget (`Judge.negative_rate`). The ablation is an evaluation aid, never saved or served,
and its fit was a third of a large run's time; its negatives are a subset of the same seeded
draws at a lower rate, prior corrected as the judge's are. Below the budget it fits on every
event, as the judge does: a smaller file's figures do not change."""


class Timer:
    """Wall time per named step, for `timings_s` in metrics.json."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


@dataclass(frozen=True)
class LoadedData:
    split: Split
    feature_columns: list[str]
    sha256: str
    path: Path

    def part(self, name: str) -> PreparedEvents:
        """One part of the split, ready for the detector."""
        frame = getattr(self.split, name)
        return PreparedEvents(frame, self.feature_columns, f"{self.path} ({name})")


def load_data(config: Config, data_path: Path | None) -> LoadedData:
    """Read and validate the event file once, then cut the time-ordered split.

    Behavioural features are computed once over the whole file: each event's features come
    from the events before it, so a part's features are those it would get with every
    earlier part as its history.
    """
    path = Path(data_path or config.data.path)
    check_feature_table(path, config)  # a backfilled table: its features are taken as given
    events = compact_behaviour(prepare_events(read_table(path), config, str(path)), config)
    split = time_split(events.frame, config.data.split)
    return LoadedData(split, events.feature_columns, file_sha256(path), path)


def train_autoencoder_step(
    config: Config, data: LoadedData, out_dir: Path, progress: ProgressReporter
) -> Detector:
    """Fit rules, scaler and autoencoder; save the partial detector (no judge yet)."""
    detector = Detector(config, progress)
    detector.fit_unsupervised(data.part("train"), data.part("validation"))
    detector.data_sha256_ = data.sha256
    with published_outputs(out_dir, OUTPUTS) as stage:
        detector.save(stage / MODEL_DIR)
    return detector


def embed_step(detector: Detector, data: LoadedData, out_dir: Path) -> list[Path]:
    """Write reconstruction error and latent coordinates of every split part as Parquet."""
    written = []
    for part in ("train", "validation", "test"):
        embedding = detector.embed(data.part(part))
        path = out_dir / EMBEDDINGS_DIR / f"{part}.parquet"
        atomic_write_with(path, lambda temp, table=embedding: table.to_parquet(temp))
        written.append(path)
    return written


def train_judge_step(detector: Detector, data: LoadedData, out_dir: Path) -> Detector:
    """Fit the judge on top of the saved label-free stages and save the whole detector."""
    detector.fit_judge(data.part("train"), data.part("validation"))
    with published_outputs(out_dir, OUTPUTS) as stage:
        detector.save(stage / MODEL_DIR)
    return detector


def evaluate_step(
    detector: Detector,
    data: LoadedData,
    out_dir: Path,
    timer: Timer,
    progress: ProgressReporter,
    ablation: Detector | None = None,
) -> dict[str, Any]:
    """Compare every stage on the test split, write metrics.json and the report.
    `ablation`: the judge without the autoencoder (`fit_ablation`), if already fitted."""
    config = detector.config
    label = config.data.label
    if label is None or label not in data.split.test.columns:
        raise InputError(f"{data.path}: evaluation needs the label column (data.label)")
    with detector.reusing_outputs():  # the ablation's label-free stages are the detector's
        if ablation is None:
            with timer.step("fit_ablation"):
                ablation = fit_ablation(detector, data)
        detector.release_outputs(data.part("train"))  # the training part is done with
        with timer.step("score"):
            validation_scores = _stage_scores(detector, ablation, data.part("validation"))
            test_scores = _stage_scores(detector, ablation, data.part("test"))
    ablation_rate = ablation.fitted_judge().sample_rate_
    del ablation
    truth = config.judge.label_source == "truth"
    validation_labels = data.split.validation[label].to_numpy(np.int8) if truth else None
    validation_seconds = data.split.validation[EVENT_SECONDS].to_numpy()
    test_labels = data.split.test[label].to_numpy(np.int8)
    test_seconds = data.split.test[EVENT_SECONDS].to_numpy()
    stages: dict[str, Any] = {}
    for name, scores in test_scores.items():
        # Label-free in pseudo mode: validation labels reach only a truth-mode best_f1 policy.
        threshold, policy = choose_threshold(
            validation_scores[name], validation_seconds, config.evaluation, validation_labels
        )
        if name == "judge":
            assert detector.threshold_ is not None
            threshold = detector.threshold_
        per_day, days = daily_precision(test_labels, scores >= threshold, test_seconds)
        stages[name] = {
            **stage_metrics(test_labels, scores, threshold, config.evaluation.precision_at_k),
            "threshold_policy": policy,
            "daily_precision": per_day,
            "days_with_alerts": days,
        }
    warnings = undefined_metrics(validation_labels, test_labels, config.evaluation)
    for message in warnings:
        progress.warn(message)
    learned = {"autoencoder", "histogram", "judge", "judge_without_autoencoder"}
    metrics = {
        "stages": stages,
        "operating_point": operating_point(
            test_labels,
            detector.rule_alerts(test_scores["rules"]),
            {name: scores for name, scores in test_scores.items() if name in learned},
        ),
        "recall_by_kind": _recall_by_kind(config.evaluation.kind_column, data, stages, test_scores),
        "split": data.split.summary(label),
        "label_source": config.judge.label_source,
        "data": {"path": str(data.path), "sha256": data.sha256},
        "training": {
            **detector.training_summary(),
            "ablation_judge_negative_rate": ablation_rate,
        },
        "seed": config.seed,
        "timings_s": timer.timings,
        "warnings": warnings,
    }
    reports = out_dir / REPORTS_DIR
    if config.evaluation.report:
        with timer.step("report"):
            write_report(
                reports,
                metrics,
                test_labels,
                test_scores,
                test_scores["autoencoder"],
                detector.feature_importance(),
                top_alerts(detector, data.part("test"), test_scores["judge"], test_labels),
            )
    return metrics


def fit_ablation(detector: Detector, data: LoadedData) -> Detector:
    """The judge without the autoencoder, on the training and validation parts."""
    train, validation = data.part("train"), data.part("validation")
    return detector.without_autoencoder_inputs(train, validation, ABLATION_NEGATIVE_SHARE)


def top_alerts(
    detector: Detector, test: PreparedEvents, scores: np.ndarray, labels: np.ndarray
) -> pd.DataFrame:
    """The highest-scoring test events with their label and reasons, for the report."""
    top = np.argsort(-scores, kind="stable")[:TOP_ALERTS]
    chosen = PreparedEvents(test.frame.iloc[top], test.feature_columns, test.source)
    reasons = detector.explain(chosen)
    return pd.DataFrame(
        {"score": scores[top], "label": labels[top], "reasons": reasons["reasons"].to_numpy()}
    )


def _recall_by_kind(
    column: str | None,
    data: LoadedData,
    stages: dict[str, Any],
    test_scores: dict[str, np.ndarray],
) -> dict[str, Any] | None:
    """Per stage, at its validation threshold: how many rows of each anomaly kind it flags."""
    if column is None:
        return None
    if column not in data.split.test.columns:
        raise InputError(f"{data.path}: missing column '{column}' (evaluation.kind_column)")
    kinds = data.split.test[column].to_numpy()
    return {
        name: recall_by_kind(kinds, scores >= stages[name]["threshold"])
        for name, scores in test_scores.items()
    }


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> Path:
    path = out_dir / REPORTS_DIR / "metrics.json"
    atomic_write_json(path, metrics)
    return path


def _stage_scores(
    detector: Detector, ablation: Detector, frame: PreparedEvents
) -> dict[str, np.ndarray]:
    """Each stage's score: `stage_scores`, not `score`, whose per-event texts (rules hit,
    inputs clipped) evaluation never reads. The ablation's inputs come from the detector's
    label-free outputs (reused), which are its own."""
    scores = detector.stage_scores(frame)
    inputs, _ = ablation.judge_inputs(detector.stage_outputs(frame))
    return {**scores, "judge_without_autoencoder": ablation.fitted_judge().predict_proba(inputs)}


def run(
    config: Config, data_path: Path | None, out_dir: Path, progress: ProgressReporter
) -> dict[str, Any] | None:
    """Everything: fit all stages, evaluate them, write the report, save the detector.

    Without a label column the detector is fitted and saved, and evaluation is skipped
    (returns None)."""
    timer = Timer()
    with timer.step("load"):
        data = load_data(config, data_path)
    split = data.split
    progress.log(
        f"loaded {data.path}: train {len(split.train):,}, validation {len(split.validation):,}, "
        f"test {len(split.test):,} events"
    )
    detector = Detector(config, progress)
    with detector.reusing_outputs():  # each part's label-free outputs computed once
        return _fit_and_evaluate(detector, data, out_dir, timer, progress)


def _fit_and_evaluate(
    detector: Detector,
    data: LoadedData,
    out_dir: Path,
    timer: Timer,
    progress: ProgressReporter,
) -> dict[str, Any] | None:
    label = detector.config.data.label
    split = data.split
    evaluated = label is not None and label in split.test.columns
    # the ablation judge reads no autoencoder output: fitted on the second core meanwhile
    ablation: list[Detector] = []
    alongside = None
    if evaluated and not detector.reads_autoencoder(use_autoencoder=False):
        alongside = _fitting_ablation(data, ablation, timer)
    with timer.step("fit_unsupervised"):
        detector.fit_unsupervised(data.part("train"), data.part("validation"), alongside)
    with timer.step("fit_judge"):
        # with the ablation fitted, nothing reads the training part's outputs after this
        release = bool(ablation)
        detector.fit_judge(data.part("train"), data.part("validation"), release_training=release)
    detector.data_sha256_ = data.sha256
    with published_outputs(out_dir, OUTPUTS) as stage:
        if not evaluated:
            progress.log(f"{data.path}: no label column, so evaluation is skipped; model saved")
            with timer.step("save"):
                detector.save(stage / MODEL_DIR)
            return None
        metrics = evaluate_step(detector, data, stage, timer, progress, *ablation)
        with timer.step("save"):
            save_evaluated(detector, stage, metrics)
        write_metrics(stage, metrics)
    return metrics


def _fitting_ablation(
    data: LoadedData, fitted: list[Detector], timer: Timer
) -> Callable[[Detector], None]:
    """`fit_unsupervised`'s `alongside`: the ablation fitted on the label-free stages, put in
    `fitted`; its wall time is timed as `fit_ablation` (overlapping `fit_unsupervised`)."""

    def fit(partial: Detector) -> None:
        start = time.perf_counter()
        fitted.append(fit_ablation(partial, data))
        timer.timings["fit_ablation"] = round(time.perf_counter() - start, 3)

    return fit


def load_trained(
    out_dir: Path, data: LoadedData | None = None, needs_judge: bool = False
) -> Detector:
    """Load the detector saved by an earlier step, checking it was trained on this data."""
    detector = Detector.load(out_dir / MODEL_DIR)
    if needs_judge:
        require_judge(detector, out_dir / MODEL_DIR)
    if data is not None and detector.data_sha256_ not in (None, data.sha256):
        raise ArtifactError(
            f"{data.path}: not the data the model in {out_dir / MODEL_DIR} was trained on "
            "(sha256 differs); pass the same --data"
        )
    return detector


def save_evaluated(detector: Detector, out_dir: Path, metrics: dict[str, Any]) -> None:
    """Record the chosen threshold and the metrics in the saved model."""
    detector.save(out_dir / MODEL_DIR, metrics=_manifest_metrics(metrics))


def _manifest_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: metrics[key] for key in ("stages", "operating_point", "split", "label_source")}


def score_file(
    model_dir: Path,
    input_path: Path,
    output_path: Path,
    progress: ProgressReporter,
    contributions: Contributions = "exact",
) -> int:
    """Batch-score a file with a saved model; returns the number of events scored.
    `contributions`: how the reasons' judge part is computed (`hybrid_ad.core.scoring`).

    The file is its own behavioural history: features are computed over all of it once, then
    the models score it in chunks.
    """
    check_output_file(output_path, "--output")
    check_table_suffix(output_path)
    if output_path.resolve() == input_path.resolve() or (
        output_path.exists() and input_path.exists() and output_path.samefile(input_path)
    ):
        raise InputError(f"--output {output_path}: is the input file; write the scores elsewhere")
    detector = Detector.load(model_dir)
    require_judge(detector, model_dir)
    raw = read_table(input_path)
    ids = event_ids(raw, detector.config.data, str(input_path))
    events = prepare_events(raw, detector.config, str(input_path))
    parts = []
    with progress.task("scoring", len(events)) as advance:
        for start in range(0, len(events), SCORE_CHUNK):
            chunk = events.rows(start, start + SCORE_CHUNK)
            reasons = detector.explain(chunk, contributions=contributions)
            parts.append(detector.score(chunk).join(reasons))
            advance(start + len(chunk), "")
    scored = pd.concat(parts)
    scored.insert(0, EVENT_ID, ids.to_numpy())
    write_table(scored, output_path)
    return len(events)
