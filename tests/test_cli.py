"""The command line end to end: run, the staged steps, score, and one-line errors."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.config import DataConfig
from hybrid_ad.data import event_ids

from .conftest import fails_with, make_events, small_config_dict

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    make_events(3000, seed=3).to_csv(root / "events.csv", index=False)
    raw = small_config_dict(data={"path": str(root / "events.csv")})
    raw["artifacts"] = {"out_dir": str(root / "out")}
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return root


def _invoke(*args: str) -> object:
    return runner.invoke(app, [*args, "--quiet"], catch_exceptions=False)


@pytest.fixture(scope="module")
def ran(workspace: Path) -> dict:
    result = _invoke("run", "--config", str(workspace / "config.yaml"))
    assert result.exit_code == 0, result.output
    assert "| judge |" in result.stdout
    return json.loads((workspace / "out" / "reports" / "metrics.json").read_text())


def test_run_writes_metrics_report_and_model(workspace: Path, ran: dict) -> None:
    assert set(ran["stages"]) == {
        "rules",
        "autoencoder",
        "histogram",
        "judge",
        "judge_without_autoencoder",
    }
    for stage in ran["stages"].values():
        for key in ("roc_auc", "average_precision", "precision_at_k", "precision", "recall"):
            assert key in stage
        assert set(stage["confusion_matrix"]) == {"tn", "fp", "fn", "tp"}
    assert "judge_false_positive_rate_at_rules_recall" in ran["operating_point"]
    assert ran["split"]["train"]["rows"] == 1800
    assert (workspace / "out" / "reports" / "index.html").is_file()
    manifest = json.loads((workspace / "out" / "model" / "manifest.json").read_text())
    assert manifest["metrics"]["stages"]["judge"] == ran["stages"]["judge"]
    assert len(manifest["data_sha256"]) == 64


def test_same_command_same_metrics(workspace: Path, ran: dict) -> None:
    result = _invoke(
        "run", "--config", str(workspace / "config.yaml"), "--out", str(workspace / "again")
    )
    assert result.exit_code == 0, result.output
    again = json.loads((workspace / "again" / "reports" / "metrics.json").read_text())
    for metrics in (ran, again):
        metrics.pop("timings_s")
    assert again == ran


def test_staged_steps_match_the_whole_run(workspace: Path, ran: dict) -> None:
    config, out = str(workspace / "config.yaml"), str(workspace / "staged")
    for step in ("train-ae", "embed", "train-judge", "evaluate"):
        result = _invoke(step, "--config", config, "--out", out)
        assert result.exit_code == 0, f"{step}: {result.output}"
    staged = json.loads((workspace / "staged" / "reports" / "metrics.json").read_text())
    assert staged["stages"] == ran["stages"]
    embedding = pd.read_parquet(workspace / "staged" / "embeddings" / "test.parquet")
    assert list(embedding.columns[:2]) == ["reconstruction_error", "latent_0"]


def test_score_keeps_rows_and_order(workspace: Path, ran: dict) -> None:
    events = make_events(500, seed=11).sample(frac=1.0, random_state=2)
    events.to_parquet(workspace / "new.parquet")
    result = _invoke(
        "score",
        "--model",
        str(workspace / "out" / "model"),
        "--input",
        str(workspace / "new.parquet"),
        "--output",
        str(workspace / "scored.csv"),
    )
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(workspace / "scored.csv", keep_default_na=False, dtype={"event_id": str})
    assert len(scored) == 500
    assert scored.columns[0] == "event_id"
    assert scored["event_id"].tolist() == event_ids(events, DataConfig()).tolist()
    assert {"score", "alert", "rule_score", "reconstruction_error", "rules_hit"} <= set(scored)
    from hybrid_ad.core.detector import Detector

    direct = Detector.load(workspace / "out" / "model").score(events)
    pd.testing.assert_series_equal(
        scored["score"], direct["score"].reset_index(drop=True), check_exact=False, rtol=1e-6
    )


def test_bad_inputs_are_one_line_with_exit_code_2(workspace: Path, ran: dict) -> None:
    config = str(workspace / "config.yaml")
    events = make_events(300)
    events.drop(columns=["Amount"]).to_csv(workspace / "no_amount.csv", index=False)
    fails_with(
        ["run", "-c", config, "--data", str(workspace / "no_amount.csv")],
        "no column matches 'Amount'",
    )
    data = gzip.compress(events.to_csv(index=False).encode())
    (workspace / "cut.csv.gz").write_bytes(data[: len(data) // 3])
    fails_with(
        ["run", "-c", config, "--data", str(workspace / "cut.csv.gz")],
        "cut.csv.gz: file is truncated or corrupt",
    )
    raw = yaml.safe_load((workspace / "config.yaml").read_text())
    raw["judge"]["learning_rte"] = 0.1
    (workspace / "typo.yaml").write_text(yaml.safe_dump(raw))
    fails_with(["run", "-c", str(workspace / "typo.yaml")], "judge.learning_rte: unknown key")
    fails_with(
        ["score", "--model", str(workspace), "--input", "x.csv", "--output", "y.csv"],
        "not a saved model",
    )
    # brackets are not Rich markup, and a long line is not wrapped at 80 columns
    missing = workspace / "events[v2] from the nightly export of the payments ledger.csv"
    fails_with(["run", "-c", config, "--data", str(missing)], str(missing))


def test_staged_step_refuses_other_data(workspace: Path, ran: dict) -> None:
    make_events(3000, seed=99).to_csv(workspace / "other.csv", index=False)
    fails_with(
        [
            "evaluate",
            "-c",
            str(workspace / "config.yaml"),
            "--data",
            str(workspace / "other.csv"),
        ],
        "not the data the model",
    )


def test_download_offline_says_how_to_pass_a_file(monkeypatch, tmp_path: Path) -> None:
    import hybrid_ad.jobs.download as download

    monkeypatch.setattr(download, "OPENML_API", "http://127.0.0.1:9/api")
    fails_with(["download", "--cache-dir", str(tmp_path)], "--data PATH")


def test_console_script_exit_code_and_single_line(tmp_path: Path) -> None:
    """The installed entry point, in a real process: no traceback, exit code 2."""
    (tmp_path / "bad.yaml").write_text("seed: [1\n")
    process = subprocess.run(
        [sys.executable, "-m", "hybrid_ad.cli", "run", "-c", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == 2
    assert process.stderr.count("\n") == 1
    assert "malformed YAML" in process.stderr


def test_arff_from_openml_becomes_csv() -> None:
    from hybrid_ad.jobs.download import arff_to_csv

    arff = (
        b"% comment\n@RELATION cc\n@ATTRIBUTE 'Time' REAL\n@ATTRIBUTE Class {0,1}\n"
        b"@DATA\n0,1\n5,0\n"
    )
    assert arff_to_csv(arff) == b"Time,Class\n0,1\n5,0\n"


def test_set_overrides_config_keys_on_every_config_command(workspace: Path, tmp_path: Path) -> None:
    config = str(workspace / "config.yaml")
    for step in ("run", "train-ae", "embed", "train-judge", "evaluate"):
        fails_with(
            [step, "-c", config, "--set", "seed=1", "--set", "judge.learning_rte=0.1"],
            "error: --set judge.learning_rte=0.1: unknown key",
        )
    out = tmp_path / "out"
    result = _invoke(
        "train-ae",
        "-c",
        config,
        "--out",
        str(out),
        "--set",
        "seed=3",
        "--set",
        "autoencoder.max_epochs=1",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["seed"] == 3
    assert manifest["config"]["autoencoder"]["max_epochs"] == 1
