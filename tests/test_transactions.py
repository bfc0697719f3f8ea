"""The card-transaction setting: the simulator, calendar inputs, and the shipped
`config/transactions.yaml` (the standard fraud feature set) end to end on a tiny log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.config import FeaturesConfig, HourOfDay, config_from_dict, load_config
from hybrid_ad.data import EVENT_SECONDS
from hybrid_ad.errors import ConfigError
from hybrid_ad.simulation.transactions import FRAUD_SCENARIOS, simulate_transactions
from hybrid_ad.stages.features import FeatureBuilder
from hybrid_ad.stages.rules import calendar_flags

from .conftest import small_config_dict

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "hybrid_ad.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


# --- simulator ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return simulate_transactions(400, 800, 60, seed=5)


def test_simulator_is_deterministic_by_seed(log: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(log, simulate_transactions(400, 800, 60, seed=5))
    assert not log.equals(simulate_transactions(400, 800, 60, seed=6))


def test_simulated_log_has_the_three_fraud_scenarios(log: pd.DataFrame) -> None:
    assert log["timestamp"].is_monotonic_increasing
    assert (log["transaction_id"] == np.arange(len(log))).all()
    assert log["timestamp"].iloc[0] >= pd.Timestamp("2018-04-01", tz="UTC")
    assert log["timestamp"].iloc[-1] < pd.Timestamp("2018-05-31", tz="UTC")
    kinds = log["fraud_scenario"].value_counts()
    assert set(kinds.index) == {"none", *FRAUD_SCENARIOS}
    assert ((log["fraud_scenario"] != "none") == (log["is_fraud"] == 1)).all()
    assert 0.003 < log["is_fraud"].mean() < 0.03  # the handbook's mix is about 0.8 %
    # amounts above 220 are fraud (a compromised customer's multiplied amounts too)
    assert (log.loc[log["amount"] > 220, "is_fraud"] == 1).all()
    # a compromised terminal's fraud lasts at most 28 days from its first day (per compromise)
    terminal = log[log["fraud_scenario"] == "compromised_terminal"]
    assert terminal.groupby("terminal_id")["day"].agg(lambda d: d.max() - d.min()).min() < 28
    # a compromised customer's fraudulent amounts are 5 times their usual ones
    customer = log[log["fraud_scenario"] == "compromised_customer"]
    usual = log[log["is_fraud"] == 0].groupby("customer_id")["amount"].median()
    ratio = customer["amount"] / customer["customer_id"].map(usual)
    assert ratio.median() > 3
    # customers use few terminals (those within the radius), terminals serve few customers
    assert log.groupby("customer_id")["terminal_id"].nunique().max() < 40


def test_simulator_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="customers must be a whole number >= 1"):
        simulate_transactions(0, 10, 5, seed=1)
    with pytest.raises(ValueError, match="start"):
        simulate_transactions(5, 10, 5, seed=1, start="someday")


# --- calendar inputs ----------------------------------------------------------------------------


def test_weekend_and_night_flags_from_epoch_seconds() -> None:
    day = 86_400.0
    # 1970-01-01 (epoch 0) was a Thursday: days 2 and 3 are the weekend
    seconds = np.array([0.0, 2 * day, 3 * day + day - 1, 4 * day, 5.99 * 3600, 6 * 3600])
    flags = calendar_flags(seconds, ["weekend", "night"], HourOfDay(start=0, end=6))
    assert flags[:, 0].tolist() == [0, 1, 1, 0, 0, 0]
    assert flags[:, 1].tolist() == [1, 1, 0, 1, 1, 0]
    wrapping = calendar_flags(seconds, ["night"], HourOfDay(start=22, end=4))
    assert wrapping[:, 0].tolist() == [1, 1, 1, 1, 0, 0]  # 23:59:59 is night, 05:59 no longer


def test_calendar_flags_are_model_inputs() -> None:
    times = pd.to_datetime(["2018-04-01 03:00", "2018-04-02 12:00", "2018-04-07 23:00"], utc=True)
    frame = pd.DataFrame(
        {EVENT_SECONDS: times.as_unit("ns").asi8 / 1e9, "amount": [1.0, 2.0, 3.0]}
    )  # Sunday night, Monday noon, Saturday late evening
    config = FeaturesConfig(log_scale=[], hour_of_day=False, calendar=["night", "weekend"])
    matrix = FeatureBuilder(config).fit(frame, ["amount"]).transform(frame)
    assert matrix.scaled_names == ["z_amount", "is_night", "is_weekend"]
    assert matrix.scaled[:, 1:].tolist() == [[1, 1], [0, 0], [0, 1]]


@pytest.mark.parametrize(
    ("calendar", "expected"),
    [(["weekend", "weekend"], "at most once"), (["holiday"], "features.calendar.0")],
)
def test_bad_calendar_config_names_the_key(calendar: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(small_config_dict(features={"calendar": calendar}))


# --- the shipped config, end to end -------------------------------------------------------------


def test_shipped_transactions_config_is_the_standard_feature_set() -> None:
    config = load_config(REPO / "config" / "transactions.yaml")
    assert config.judge.label_source == "truth"
    assert config.features.calendar == ["weekend", "night"]
    behavioural = config.features.behavioural
    assert behavioural is not None and behavioural.label_risk is not None
    assert behavioural.label_risk.windows == ["1d", "7d", "30d"]
    raw = yaml.safe_load((REPO / "config" / "transactions.yaml").read_text())
    raw["rules"] = yaml.safe_load((REPO / "config" / raw["rules"]).read_text())
    raw["judge"]["label_source"] = "pseudo"
    with pytest.raises(ConfigError, match="pseudo mode never"):
        config_from_dict(raw)


def test_simulate_and_run_the_transactions_config(tmp_path: Path) -> None:
    data = tmp_path / "tx.parquet"
    done = _cli(
        "simulate", "--kind", "transactions", "--out", str(data), "--customers", "120",
        "--terminals", "240", "--days", "45", "--seed", "2", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(data)
    assert {"timestamp", "customer_id", "terminal_id", "amount", "is_fraud"} <= set(frame.columns)
    raw = yaml.safe_load((REPO / "config" / "transactions.yaml").read_text())
    raw["rules"] = str(REPO / "config" / raw["rules"])
    raw["data"]["path"] = str(data)
    raw["artifacts"]["out_dir"] = str(tmp_path / "out")
    raw["autoencoder"].update(hidden_layers=[16], latent_dim=4, max_epochs=2, patience=1)
    raw["judge"].update(n_estimators=40, early_stopping_rounds=10)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    done = _cli("run", "--config", str(tmp_path / "config.yaml"), "--quiet")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "out/reports/metrics.json").read_text())
    assert metrics["stages"]["judge"]["average_precision"] > metrics["split"]["test"][
        "positives"
    ] / max(metrics["split"]["test"]["rows"], 1)
    assert set(metrics["recall_by_kind"]["judge"]) <= set(FRAUD_SCENARIOS)
    features = json.loads((tmp_path / "out/model/features.json").read_text())
    assert features["judge_only"] == [
        f"terminal_id__{kind}_{w}_delay7d"
        for w in ("1d", "7d", "30d")
        for kind in ("label_rate", "labelled_events")
    ]
    assert "customer_id__amount_mean_30d" in features["behavioural"]


def test_simulate_flags_belong_to_their_kind(tmp_path: Path) -> None:
    out = str(tmp_path / "x.parquet")
    cases = [
        (["--kind", "transactions", "--accounts", "5"], "--accounts is for --kind streaming"),
        (["--kind", "transactions", "--terminals", "0"], "terminals must be a whole number"),
    ]
    for args, expected in cases:  # a real process: exit code 2 and one line
        done = _cli("simulate", "--out", out, *args)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr
    cases = [
        (["--customers", "5"], "--customers is for --kind transactions"),
        (["--kind", "cards"], "--kind: expected streaming or transactions"),
    ]
    for args, expected in cases:
        result = CliRunner().invoke(app, ["simulate", "--out", out, *args])
        assert result.exit_code == 2 and expected in result.stderr, result.output
    assert not Path(out).exists()
