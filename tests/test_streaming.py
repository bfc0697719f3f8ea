"""The streaming-service setting end to end: simulate, run the shipped config, read per-kind
recall, and one-line errors for the behavioural inputs a user gets wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hybrid_ad.cli import app

from .conftest import fails_with

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [*args, "--quiet"], catch_exceptions=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated log and the shipped streaming config, shrunk to test size."""
    root = tmp_path_factory.mktemp("streaming")
    result = _invoke(
        "simulate", "--out", str(root / "events.parquet"), "--accounts", "150", "--days", "21",
        "--seed", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load((REPO / "config" / "streaming_service.yaml").read_text())
    raw["rules"] = str(REPO / "config" / raw["rules"])
    raw["data"]["path"] = str(root / "events.parquet")
    raw["autoencoder"].update(hidden_layers=[32], latent_dim=8, max_epochs=3, patience=2)
    raw["judge"].update(n_estimators=60, early_stopping_rounds=15)
    raw["artifacts"]["out_dir"] = str(root / "out")
    (root / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def test_simulate_is_deterministic_and_checks_its_arguments(tmp_path: Path) -> None:
    paths = [tmp_path / "a.csv.gz", tmp_path / "b.csv.gz"]
    for path in paths:
        result = _invoke("simulate", "--out", str(path), "--accounts", "20", "--days", "3")
        assert result.exit_code == 0, result.output
    assert paths[0].read_bytes() == paths[1].read_bytes()
    frame = pd.read_csv(paths[0])
    assert {"timestamp", "account_id", "is_anomaly", "anomaly_kind"} <= set(frame.columns)
    fails_with(["simulate", "--out", str(tmp_path / "c.parquet"), "--accounts", "0"], "accounts")
    fails_with(["simulate", "--out", str(tmp_path / "c.json")], "unsupported output type")
    assert not (tmp_path / "c.parquet").exists()


def test_shipped_streaming_config_runs_and_reports_recall_per_kind(workspace: Path) -> None:
    result = _invoke("run", "--config", str(workspace / "config.yaml"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((workspace / "out" / "reports" / "metrics.json").read_text())
    by_kind = metrics["recall_by_kind"]
    assert set(by_kind) == set(metrics["stages"])
    test = pd.read_parquet(workspace / "events.parquet").iloc[-metrics["split"]["test"]["rows"] :]
    expected_rows = test.loc[test["is_anomaly"] == 1, "anomaly_kind"].value_counts().to_dict()
    for per_kind in by_kind.values():
        assert {kind: entry["rows"] for kind, entry in per_kind.items()} == expected_rows
        assert all(0 <= entry["recall"] <= 1 for entry in per_kind.values())
    html = (workspace / "out" / "reports" / "index.html").read_text()
    assert "Recall per anomaly kind" in html
    model = json.loads((workspace / "out" / "model" / "features.json").read_text())
    assert "account_id+country__seconds_since_previous" in model["behavioural"]

    scored = workspace / "scored.parquet"
    result = _invoke(
        "score", "--model", str(workspace / "out" / "model"),
        "--input", str(workspace / "events.parquet"), "--output", str(scored),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(scored)) == len(pd.read_parquet(workspace / "events.parquet"))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda raw: raw["features"]["behavioural"].update(windows=["5 parsecs"]), "5 parsecs"),
        (
            lambda raw: raw["features"]["behavioural"].update(
                entity_keys=["account_id", "tenant"], distinct=[]
            ),
            "'tenant' must also be listed in data.entity_keys",
        ),
        (lambda raw: raw["data"]["entity_keys"].append("tenant"), "missing column 'tenant'"),
        (lambda raw: raw["data"].update(timestamp="event_type"), "cannot be parsed"),
    ],
)
def test_bad_behavioural_inputs_are_one_line(workspace: Path, edit, expected: str) -> None:
    raw = yaml.safe_load((workspace / "config.yaml").read_text())
    edit(raw)
    path = workspace / "edited.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    fails_with(["run", "--config", str(path)], expected)
