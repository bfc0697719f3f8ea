"""Spark engines on local[2]: the feature backfill equals the local batch engine, Spark scores
equal `hybrid-ad score`, and `run` trains on the backfilled table as on the raw log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hybrid_ad.behavioural.batch import feature_names
from hybrid_ad.cli import app
from hybrid_ad.config import load_config

from .conftest import fails_with

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _invoke(*args: str) -> None:
    result = runner.invoke(app, [*args, "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module; the commands reuse the active session."""
    from hybrid_ad.spark.session import spark_session

    session = spark_session(
        "local[2]", {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"}
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, spark) -> Path:
    """A small simulated streaming log, the shipped config shrunk to test size, and the
    feature table of each engine."""
    root = tmp_path_factory.mktemp("spark")
    _invoke(
        "simulate", "--out", str(root / "events.parquet"), "--accounts", "80", "--days", "10",
        "--seed", "5",
    )  # fmt: skip
    raw = yaml.safe_load((REPO / "config" / "streaming_service.yaml").read_text())
    raw["rules"] = str(REPO / "config" / raw["rules"])
    raw["data"]["path"] = str(root / "events.parquet")
    raw["autoencoder"].update(hidden_layers=[16], latent_dim=4, max_epochs=2, patience=1)
    raw["judge"].update(n_estimators=30, early_stopping_rounds=10, threads=1)
    raw["evaluation"]["report"] = False
    raw["artifacts"]["out_dir"] = str(root / "out")
    (root / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for engine in ("local", "spark"):
        _invoke(
            "features", "--engine", engine, "--config", str(root / "config.yaml"),
            "--input", str(root / "events.parquet"), "--output", str(root / f"table_{engine}"),
        )  # fmt: skip
    return root


def test_spark_features_equal_the_local_batch_engine_on_every_key(workspace: Path) -> None:
    config = load_config(workspace / "config.yaml")
    behavioural = config.features.behavioural
    assert behavioural is not None and len(behavioural.entity_keys) == 4
    events = pd.read_parquet(workspace / "events.parquet")
    local = pd.read_parquet(workspace / "table_local")
    spark = pd.read_parquet(workspace / "table_spark")
    names = feature_names(behavioural)
    assert list(spark.columns) == [*events.columns, *names] == list(local.columns)
    assert len(spark) == len(events)
    # the same events in the same order (times to the microsecond Spark keeps)
    pd.testing.assert_series_equal(
        spark["timestamp"].astype("datetime64[us, UTC]"),
        events["timestamp"].astype("datetime64[us, UTC]"),
    )
    for column in ("account_id", "device_id", "ip_prefix", "amount"):
        assert spark[column].tolist() == events[column].tolist()
    np.testing.assert_allclose(spark[names], local[names], rtol=1e-9, atol=1e-9)
    for prefix in ("account_id", "device_id", "account_id+country", "ip_prefix"):
        assert spark[f"{prefix}__count_1d"].max() > 0  # every key got real history
    assert spark["account_id__distinct_country_1d"].max() > 1  # distinct counts, too
    assert spark["device_id__active_1h_periods_1d"].max() > 1
    meta = json.loads((workspace / "table_spark" / "_hybrid_ad_features.json").read_text())
    assert meta["features"] == names


def test_label_risk_last_n_and_every_aggregate_equal_the_local_engine(workspace: Path) -> None:
    """Label delays, last-N windows, std/min/max/ratio and a short TTL, on two of the keys."""
    behavioural = {
        "entity_keys": ["device_id", ["account_id", "country"]],
        "windows": ["1h", "1d"],
        "last_n": [5],
        "values": ["amount", "watch_seconds"],
        "aggregates": ["count", "sum", "mean", "std", "min", "max", "ratio_to_mean"],
        "session_gap": "30m",
        "label_risk": {"windows": ["1d", "3d"], "delay": "1d", "keys": ["device_id"]},
        "distinct": [
            {"column": "ip_prefix", "windows": ["1h", "1d"], "keys": ["device_id"]},
            {"period": "1h", "windows": ["1d"]},
        ],
        "entity_ttl": "4d",
    }
    tables = {}
    for engine in ("local", "spark"):
        tables[engine] = workspace / f"risk_{engine}"
        _invoke(
            "features", "--engine", engine, "--config", str(workspace / "config.yaml"),
            "--input", str(workspace / "events.parquet"), "--output", str(tables[engine]),
            "--set", f"features.behavioural={json.dumps(behavioural)}",
            "--set", "judge.label_source=truth",
        )  # fmt: skip
    local, spark = (pd.read_parquet(tables[engine]) for engine in ("local", "spark"))
    names = [name for name in local.columns if "__" in name]
    assert "device_id__label_rate_3d_delay1d" in names
    assert "account_id+country__amount_std_last5" in names
    assert "device_id__distinct_ip_prefix_1d" in names
    assert "account_id+country__distinct_ip_prefix_1h" not in names
    assert "account_id+country__active_1h_periods_1d" in names
    assert list(spark.columns) == list(local.columns)
    np.testing.assert_allclose(spark[names], local[names], rtol=1e-9, atol=1e-9)
    assert local["device_id__labelled_events_3d_delay1d"].max() > 0


def test_run_trains_on_the_feature_table_as_on_the_raw_log(workspace: Path) -> None:
    config = str(workspace / "config.yaml")
    _invoke("run", "--config", config, "--out", str(workspace / "raw_run"))
    _invoke(
        "run", "--config", config, "--data", str(workspace / "table_spark"),
        "--out", str(workspace / "table_run"),
    )  # fmt: skip
    metrics = [
        json.loads((workspace / run / "reports" / "metrics.json").read_text())
        for run in ("raw_run", "table_run")
    ]
    assert metrics[0]["stages"] == metrics[1]["stages"]
    assert metrics[0]["operating_point"] == metrics[1]["operating_point"]


def test_a_feature_table_of_another_config_is_refused(workspace: Path) -> None:
    fails_with(
        [
            "run", "--config", str(workspace / "config.yaml"),
            "--data", str(workspace / "table_local"), "--out", str(workspace / "other"),
            "--set", "features.behavioural.session_gap=1h",
        ],
        "made with another behavioural config (differs in session_gap)",
    )  # fmt: skip


def test_spark_scores_equal_local_score(workspace: Path) -> None:
    model = workspace / "raw_run" / "model"
    if not model.exists():
        _invoke(
            "run", "--config", str(workspace / "config.yaml"), "--out", str(workspace / "raw_run")
        )
    events = str(workspace / "events.parquet")
    _invoke(
        "score", "--model", str(model), "--input", events, "--output", str(workspace / "s.parquet")
    )
    _invoke(
        "score", "--engine", "spark", "--master", "local[2]", "--model", str(model),
        "--input", events, "--output", str(workspace / "scores_spark"),
    )  # fmt: skip
    local = pd.read_parquet(workspace / "s.parquet")
    spark = pd.read_parquet(workspace / "scores_spark")
    assert list(spark.columns) == list(local.columns)
    assert len(spark) == len(local)
    assert spark["event_id"].tolist() == local["event_id"].tolist()
    numeric = ["score", "rule_score", "reconstruction_error", "histogram_score"]
    np.testing.assert_allclose(spark[numeric], local[numeric], rtol=1e-9, atol=1e-12)
    assert spark["alert"].tolist() == local["alert"].tolist()
    assert spark["alert"].any()
    for column in ("rules_hit", "clipped"):
        assert spark[column].tolist() == local[column].tolist()
    for ours, theirs in zip(spark["reasons"], local["reasons"], strict=True):
        assert json.loads(ours).keys() == json.loads(theirs).keys()
    # a feature table scores the same, its features taken as they are
    _invoke(
        "score", "--engine", "spark", "--model", str(model),
        "--input", str(workspace / "table_spark"), "--output", str(workspace / "scores_table"),
    )  # fmt: skip
    from_table = pd.read_parquet(workspace / "scores_table")
    assert from_table["event_id"].tolist() == local["event_id"].tolist()
    np.testing.assert_allclose(from_table[numeric], local[numeric], rtol=1e-9, atol=1e-12)


def test_spark_inputs_a_user_gets_wrong_are_one_line(workspace: Path, tmp_path: Path) -> None:
    config = str(workspace / "config.yaml")
    broken = tmp_path / "broken.parquet"
    pd.read_parquet(workspace / "events.parquet").drop(columns=["ip_prefix"]).to_parquet(broken)
    base = ["features", "--config", config, "--output", str(tmp_path / "t")]
    fails_with([*base, "--engine", "spark", "--input", str(broken)], "missing column 'ip_prefix'")
    fails_with([*base, "--engine", "dask", "--input", str(broken)], "--engine: expected one of")
    events = pd.read_parquet(workspace / "events.parquet")
    events.loc[5, "device_id"] = None
    events.to_parquet(broken)
    fails_with(
        [*base, "--engine", "spark", "--input", str(broken)],
        "entity column 'device_id' has a missing value",
    )
    assert not (tmp_path / "t").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    fails_with(
        [*base[:-1], str(tmp_path / "mine"), "--engine", "spark", "--input", str(broken)],
        "is not an earlier table output",
    )
