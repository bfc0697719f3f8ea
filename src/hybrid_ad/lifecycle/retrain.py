"""`hybrid-ad retrain`: refit the judge of a saved model on the labels known by a cut-off.

What is refitted, and why only that: the label-free stages (scaler, rules' learned
thresholds, autoencoder, histogram detector, tail scales) never read labels, so refitting
them would learn nothing from the new labels; it would only move every judge input and the
prior under the judge, making the change from one version to the next about more than the
labels. They are kept as saved. The judge is refitted with `judge.label_source: mixed`
(labels from the store where known; elsewhere the label-free soft targets or, where
`judge.mixed.unlabelled: auto` finds that it ranks the known labels better, 0; the manifest
records the choice as `retrain.unlabelled`), and its alert
threshold is chosen again on validation by the alert budget, since a new judge has a new
score scale.

Only verdicts with `labelled_at` at or before the cut-off count, so a retrain "as of" a past
time reproduces the model that could have been trained then: the same model directory,
byte for byte, whatever was labelled later. The manifest records the label snapshot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hybrid_ad.artifacts import MANIFEST, read_model_dir, sha256_bytes
from hybrid_ad.config import Config, config_from_dict, config_to_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.errors import ArtifactError
from hybrid_ad.jobs.pipeline import LoadedData, load_data
from hybrid_ad.labels.store import TIME_FORMAT, TimeLike, open_store, safe_location, utc_timestamp
from hybrid_ad.progress import QUIET, ProgressReporter
from hybrid_ad.stages.features import PreparedEvents

SNAPSHOT_COLUMNS = ("event_id", "label", "source", "labelled_at")
"""What identifies a label snapshot: its sha256 is over these columns, one row per event."""


@dataclass(frozen=True)
class RetrainResult:
    """What a retrain wrote and learned from."""

    out_dir: Path
    snapshot: dict[str, Any]
    threshold: float


def label_snapshot(labels: pd.DataFrame, cut_off: pd.Timestamp, store: str) -> dict[str, Any]:
    """The manifest's record of the labels a retrain could use: counts per source and label,
    the cut-off, and the sha256 of the snapshot as CSV (`SNAPSHOT_COLUMNS`, by event id)."""
    ordered = labels.sort_values("event_id", kind="stable").loc[:, list(SNAPSHOT_COLUMNS)]
    # to_datetime: an empty snapshot's column comes back untyped
    times = pd.to_datetime(ordered["labelled_at"], utc=True)
    ordered = ordered.assign(labelled_at=times.dt.strftime(TIME_FORMAT))
    canonical = ordered.to_csv(index=False, lineterminator="\n").encode("utf-8")
    by_source = {
        str(source): {str(label): int(count) for label, count in group.value_counts().items()}
        for source, group in labels.groupby("source", sort=True)["label"]
    }
    by_label = labels["label"].value_counts().sort_index()
    return {
        "store": safe_location(store),
        "as_of": cut_off.strftime(TIME_FORMAT),
        "events": len(labels),
        "by_source": by_source,
        "by_label": {str(label): int(count) for label, count in by_label.items()},
        "sha256": hashlib.sha256(canonical).hexdigest(),
    }


def retrain(
    model_dir: Path,
    store: str,
    data_path: Path,
    out_dir: Path,
    as_of: TimeLike | None = None,
    progress: ProgressReporter = QUIET,
) -> RetrainResult:
    """Refit the judge (and its threshold) of the model in `model_dir` on `data_path`, with
    the store's labels known by `as_of` (default: now), and save the result to `out_dir`.

    The data is cut like `run` cuts it (`data.split`): the judge learns on the train part and
    early-stops and picks its threshold on the validation part; the test part is not used.
    The data's label column is dropped before anything sees it: labels come from the store.
    """
    cut_off = utc_timestamp(pd.Timestamp.now(tz="UTC") if as_of is None else as_of, "--as-of")
    manifest, _ = read_model_dir(model_dir)
    detector = Detector.load(model_dir, progress)
    if detector.judge_ is None:
        raise ArtifactError(f"{model_dir}: has no judge to retrain (train it with run first)")
    raw = config_to_dict(detector.config)
    raw["judge"]["label_source"] = "mixed"
    config = config_from_dict(raw, f"{model_dir}/config.json (with judge.label_source: mixed)")
    with open_store(store) as source:
        labels = source.latest(as_of=cut_off)
        location = source.location
    snapshot = label_snapshot(labels, cut_off, location)
    data = load_data(config, data_path)
    train, validation = (_without_labels(data, part, config) for part in ("train", "validation"))
    detector.config = config
    detector.known_labels = labels.set_index("event_id")["label"].astype("float64")
    detector.fit_judge(train, validation)
    matched = {
        name: int((~pd.isna(detector.known_labels_for(part.frame))).sum())
        for name, part in (("train", train), ("validation", validation))
    }
    assert detector.threshold_ is not None
    lineage = {
        "parent": {
            "path": str(model_dir),
            "manifest_sha256": sha256_bytes((Path(model_dir) / MANIFEST).read_bytes()),
            "data_sha256": manifest.get("data_sha256"),
        },
        "data": {"path": str(data_path), "sha256": data.sha256},
        "refitted": ["judge", "threshold"],
        "label_snapshot": {**snapshot, "matched_events": matched},
        "unlabelled": detector.mixed_choice_.to_dict() if detector.mixed_choice_ else None,
    }
    detector.save(out_dir, lineage=lineage)
    return RetrainResult(Path(out_dir), lineage["label_snapshot"], float(detector.threshold_))


def _without_labels(data: LoadedData, part: str, config: Config) -> PreparedEvents:
    """One part of the split without the label and kind columns: mixed mode never reads them."""
    prepared = data.part(part)
    hidden = [config.data.label, config.evaluation.kind_column]
    present = [column for column in hidden if column is not None and column in prepared.frame]
    return PreparedEvents(
        prepared.frame.drop(columns=present), prepared.feature_columns, prepared.source
    )
