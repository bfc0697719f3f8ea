"""Retraining with labels from a store: mixed targets, the --as-of cut-off, the manifest."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import event_ids, validate_events
from hybrid_ad.errors import ConfigError, InputError
from hybrid_ad.jobs.pipeline import load_data
from hybrid_ad.labels import open_store
from hybrid_ad.lifecycle.retrain import label_snapshot, retrain
from tests.conftest import make_events, small_config_dict

CUT_OFF = "2026-02-01T00:00:00Z"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A label-free model on a small log, and a store with labels on 60 of its events."""
    root = tmp_path_factory.mktemp("retrain")
    events = make_events(3000, seed=3)
    data = root / "events.csv"
    events.to_csv(data, index=False)
    config = config_from_dict(small_config_dict())
    loaded = load_data(config, data)
    detector = Detector(config).fit(loaded.part("train"), loaded.part("validation"))
    detector.save(root / "model")
    ids = event_ids(events, config.data)
    chosen = np.random.default_rng(0).choice(len(events) * 4 // 5, 60, replace=False)
    verdicts = pd.DataFrame(
        {
            "event_id": ids.iloc[chosen].to_numpy(),
            "label": events["Class"].iloc[chosen].to_numpy(),
            "source": np.where(np.arange(60) % 3 == 0, "chargeback", "analyst"),
            "labelled_at": "2026-01-15T00:00:00Z",
        }
    )
    with open_store(root / "labels.db", create=True) as store:
        store.append(verdicts)
    return {"root": root, "data": data, "model": root / "model", "store": root / "labels.db"}


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_mixed_targets_are_known_labels_where_known_and_soft_elsewhere() -> None:
    mixed = {"label_weight": 7.0, "unlabelled": "soft"}
    raw = small_config_dict(judge={"label_source": "mixed", "mixed": mixed})
    config = config_from_dict(raw)
    events, _ = validate_events(make_events(2000, seed=1), config.data, "events")
    detector = Detector(config)
    train, validation = events.iloc[:1500], events.iloc[1500:]
    with pytest.raises(InputError, match="mixed takes its labels from a label store"):
        detector.fit(train, validation)
    ids = event_ids(train, config.data)
    detector.known_labels = pd.Series([1.0, 0.0, 1.0], index=ids.iloc[[5, 6, 7]].to_numpy())
    detector.fit(train, validation)
    outputs = detector.stage_outputs(train)
    reference = np.linspace(0.0, 8.0, 1000)  # any training prior: both modes cut it alike
    targets = detector.training_labels(train, outputs, reference)
    weights = detector.training_weights(train)
    assert targets[[5, 6, 7]].tolist() == [1.0, 0.0, 1.0]
    assert weights is not None and weights[[5, 6, 7]].tolist() == [7.0, 7.0, 7.0]
    assert set(np.unique(weights)) == {1.0, 7.0}  # a fixed weight, not the share
    soft = copy.copy(detector)
    soft.config = config_from_dict(small_config_dict())
    expected = soft.training_labels(train, outputs, reference)
    rest = np.setdiff1d(np.arange(len(train)), [5, 6, 7])
    np.testing.assert_array_equal(targets[rest], expected[rest])
    assert soft.training_weights(train) is None
    # positive-unlabelled: every unreviewed event is a 0, the labels stay
    pu = copy.copy(detector)
    pu_judge = {"label_source": "mixed", "mixed": {"unlabelled": "zero"}}
    pu.config = config_from_dict(small_config_dict(judge=pu_judge))
    above_all = np.zeros(1000)  # a reference every event tops: soft targets 1
    pu_targets = pu.training_labels(train, outputs, above_all)
    assert pu_targets[[5, 6, 7]].tolist() == [1.0, 0.0, 1.0]
    assert not pu_targets[rest].any()
    # ... once a label is positive: with only negatives known the soft targets stay
    pu.known_labels = pd.Series([0.0], index=ids.iloc[[6]].to_numpy())
    only_negatives = pu.training_labels(train, outputs, above_all)
    assert only_negatives[rest].tolist() == [1.0] * len(rest)


def test_auto_target_choice_never_reads_an_unreviewed_label() -> None:
    """`unlabelled: auto` compares its candidates on the known labels: permuting the label
    column among the events no analyst reviewed gives the same choice and the same judge."""
    config = config_from_dict(small_config_dict(judge={"label_source": "mixed"}))
    assert config.judge.mixed.unlabelled == "auto"
    events, _ = validate_events(make_events(3000, seed=2, fraud_rate=0.04), config.data, "events")
    train, validation = events.iloc[:2200], events.iloc[2200:]
    label = train["Class"].to_numpy()
    reviewed = np.concatenate([np.flatnonzero(label == 1)[:16], np.flatnonzero(label == 0)[:24]])
    ids = event_ids(train, config.data)
    known = pd.Series(label[reviewed].astype(float), index=ids.iloc[reviewed].to_numpy())
    judges, choices = [], []
    for shuffle in (False, True):
        part = train.copy()
        if shuffle:
            rest = np.setdiff1d(np.arange(len(part)), reviewed)
            values = part["Class"].to_numpy().copy()
            values[rest] = np.random.default_rng(4).permutation(values[rest])
            assert (values != label).any()
            part["Class"] = values
        detector = Detector(config)
        detector.known_labels = known
        detector.fit(part, validation)
        assert detector.judge_ is not None and detector.mixed_choice_ is not None
        judges.append(detector.judge_.to_bytes())
        choices.append(detector.mixed_choice_)
    assert choices[0].reason.startswith("auto: mean held-out AP")  # the comparison ran
    assert choices[0] == choices[1]
    assert judges[0] == judges[1]


def test_mixed_refuses_label_reading_configs() -> None:
    with pytest.raises(ConfigError, match="best_f1 reads validation labels, and mixed mode"):
        config_from_dict(
            small_config_dict(
                judge={"label_source": "mixed"}, evaluation={"threshold_policy": "best_f1"}
            )
        )
    behavioural = {
        "entity_keys": ["customer_id"],
        "windows": ["1d"],
        "values": ["Amount"],
        "label_risk": {"window": "1d", "delay": "1h"},
    }
    with pytest.raises(ConfigError, match="label_risk reads the label column, and mixed mode"):
        config_from_dict(
            small_config_dict(
                data={"entity_keys": ["customer_id"]},
                features={"behavioural": behavioural},
                judge={"label_source": "mixed"},
            )
        )


def test_retrain_as_of_never_sees_a_later_label(workspace: dict[str, Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.db"
    shutil.copy(workspace["store"], labels)
    first = tmp_path / "first"
    result = retrain(workspace["model"], str(labels), workspace["data"], first, CUT_OFF)
    assert result.snapshot["events"] == 60
    # Labels known only after the cut-off: a relabel of a labelled event, and a new one.
    with open_store(labels) as store:
        known = store.latest()
        events = pd.read_csv(workspace["data"])
        fresh = event_ids(events, config_from_dict(small_config_dict()).data).iloc[2]
        flipped = known.iloc[0]
        store.append(
            pd.DataFrame(
                {
                    "event_id": [flipped["event_id"], fresh],
                    "label": [1 - int(flipped["label"]), 1],
                    "source": ["analyst", "analyst"],
                    "labelled_at": ["2026-02-01T00:00:01Z", "2026-03-01T00:00:00Z"],
                }
            )
        )
    second = tmp_path / "second"
    retrain(workspace["model"], str(labels), workspace["data"], second, CUT_OFF)
    assert _files(first) == _files(second)  # byte for byte, manifest included
    later = tmp_path / "later"
    retrain(workspace["model"], str(labels), workspace["data"], later)
    manifest = json.loads((later / "manifest.json").read_text())
    assert manifest["retrain"]["label_snapshot"]["events"] == 61
    assert _files(later)["judge.json"] != _files(first)["judge.json"]


def test_manifest_records_the_label_snapshot(workspace: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model"
    retrain(workspace["model"], str(workspace["store"]), workspace["data"], out, CUT_OFF)
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["retrain"]
    with open_store(workspace["store"]) as store:
        known = store.latest(as_of=CUT_OFF)
    expected = label_snapshot(known, pd.Timestamp(CUT_OFF), str(workspace["store"]))
    snapshot = record["label_snapshot"]
    assert {key: snapshot[key] for key in expected} == expected
    assert snapshot["as_of"] == "2026-02-01T00:00:00.000000Z"
    by_source = snapshot["by_source"]
    assert sum(by_source["chargeback"].values()) == 20
    assert sum(by_source["analyst"].values()) == 40
    assert sum(snapshot["by_label"].values()) == 60
    # All 60 labelled events are in the first 80 % of the log: train or validation.
    assert sum(snapshot["matched_events"].values()) == 60
    assert record["refitted"] == ["judge", "threshold"]
    assert manifest["config"]["judge"]["label_source"] == "mixed"
    parent = json.loads((workspace["model"] / "manifest.json").read_text())
    assert manifest["data_sha256"] == parent["data_sha256"]
    retrained, original = Detector.load(out), Detector.load(workspace["model"])
    assert (
        _files(out)["autoencoder.safetensors"]
        == _files(workspace["model"])["autoencoder.safetensors"]
    )
    assert retrained.threshold_ != original.threshold_


def test_mixed_mode_never_reads_the_label_column(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    events = pd.read_csv(workspace["data"])
    events["Class"] = np.random.default_rng(1).permutation(events["Class"].to_numpy())
    shuffled = tmp_path / "shuffled.csv"
    events.to_csv(shuffled, index=False)
    outs = []
    for name, data in (("a", workspace["data"]), ("b", shuffled)):
        retrain(workspace["model"], str(workspace["store"]), data, tmp_path / name, CUT_OFF)
        outs.append(_files(tmp_path / name))
    assert outs[0]["judge.json"] == outs[1]["judge.json"]
    assert outs[0]["detector.json"] == outs[1]["detector.json"]


def test_retrain_with_no_labels_yet(workspace: dict[str, Path], tmp_path: Path) -> None:
    open_store(tmp_path / "empty.db", create=True).close()
    result = retrain(
        workspace["model"], str(tmp_path / "empty.db"), workspace["data"], tmp_path / "out"
    )
    assert result.snapshot["events"] == 0
    assert result.snapshot["by_source"] == {} and result.snapshot["by_label"] == {}
    assert result.snapshot["matched_events"] == {"train": 0, "validation": 0}
    assert Detector.load(tmp_path / "out").threshold_ == result.threshold
