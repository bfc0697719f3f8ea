"""The model's drift reference and `hybrid-ad drift`: events from the training distribution
flag nothing; one shifted input is flagged, and no other column."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.errors import ArtifactError
from hybrid_ad.monitoring.model_drift import drift_file
from hybrid_ad.monitoring.reference import REFERENCE_FILE

from .conftest import make_events, small_config_dict

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("drift") / "model"
    Detector(config_from_dict(small_config_dict())).fit(make_events(4000, seed=0)).save(directory)
    return directory


@pytest.fixture(scope="module")
def calm_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("drift_events") / "calm.csv"
    make_events(3000, seed=1).to_csv(path, index=False)  # same distribution, two days
    return path


def test_the_reference_is_saved_with_the_model_and_checked(model: Path, tmp_path: Path) -> None:
    manifest = json.loads((model / "manifest.json").read_text())
    assert REFERENCE_FILE in manifest["files"]
    reference = Detector.load(model).drift_reference_
    assert reference is not None
    assert reference.training_rows == 3000 and reference.validation_rows == 1000
    assert reference.scores == [
        "score:rules",
        "score:autoencoder",
        "score:histogram",
        "score:judge",
    ]
    assert {"z_V1", "z_Amount", "autoencoder_surprise", "rule_score"} <= set(reference.inputs)
    assert set(reference.profile.columns) == {*reference.inputs, *reference.scores}
    rows = {name: column.rows for name, column in reference.profile.columns.items()}
    assert rows["z_V1"] == rows["rule_score"] == 3000  # training part
    assert rows["autoencoder_surprise"] == rows["histogram_surprise"] == 1000  # validation
    assert rows["score:judge"] == rows["score:autoencoder"] == 1000
    copy = tmp_path / "model"
    copy.mkdir()
    for file in model.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    (copy / REFERENCE_FILE).write_text((model / REFERENCE_FILE).read_text()[:100])
    with pytest.raises(ArtifactError, match="drift_reference.json: checksum mismatch"):
        Detector.load(copy)


def test_training_distribution_flags_nothing(model: Path, calm_events: Path, tmp_path: Path):
    report = drift_file(model, calm_events, tmp_path / "drift.json")
    assert report["flagged_columns"] == []
    assert [window["rows"] for window in report["windows"]] == [1529, 1471]
    assert json.loads((tmp_path / "drift.json").read_text()) == report
    page = (tmp_path / "drift.html").read_text()
    assert page.count("<h2>") == 2 and "<img" not in page
    assert "1970-01-01 00:00 UTC to 1970-01-02 00:00 UTC" in page


def test_one_shifted_input_is_flagged_and_no_other(model: Path, tmp_path: Path) -> None:
    events = make_events(3000, seed=1)
    events["V3"] += 1.0  # one standard deviation
    path = tmp_path / "shifted.csv"
    events.to_csv(path, index=False)
    report = drift_file(model, path, tmp_path / "drift.json", window="1d")
    assert report["flagged_columns"] == ["z_V3"]
    assert [window["flagged"] for window in report["windows"]] == [["z_V3"], ["z_V3"]]
    for window in report["windows"]:
        assert window["columns"]["z_V3"]["psi"] > 0.5 and window["columns"]["z_V3"]["ks"] > 0.3
        others = [v["psi"] for name, v in window["columns"].items() if name != "z_V3"]
        assert max(others) < 0.2
    page = (tmp_path / "drift.html").read_text()
    assert page.count("<img") == 2 and page.count('<tr class="flag">') == 2
    # the threshold is the caller's: a strict one flags more than the shifted input
    strict = drift_file(model, path, tmp_path / "strict.json", threshold=0.05)
    assert "z_V3" in strict["flagged_columns"] and len(strict["flagged_columns"]) > 1


def test_drift_command_in_a_real_process(model: Path, calm_events: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hybrid_ad.cli", "drift", "--model", str(model),
         "--input", str(calm_events), "--window", "2d", "--threshold", "0.3",
         "--output", str(tmp_path / "out" / "drift.json")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "windows: 1; flagged: nothing" in done.stderr
    report = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert report["threshold"] == 0.3 and report["window_seconds"] == 2 * 86_400
    assert (tmp_path / "out" / "drift.html").is_file()


def test_bad_drift_requests_are_one_line_exit_2(
    model: Path, calm_events: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    detector = Detector(config_from_dict(small_config_dict()))
    events = make_events(1000, seed=2)
    detector.fit_unsupervised(events.iloc[:800], events.iloc[800:]).save(partial)
    base = ["drift", "--input", str(calm_events), "--output", str(tmp_path / "d.json")]
    cases = [
        (["--model", str(model), "--window", "daily"], "drift window: invalid duration 'daily'"),
        (["--model", str(model), "--threshold", "0"], "--threshold: must be above 0"),
        (["--model", str(partial)], "the model has no drift_reference.json"),
        (["--model", str(tmp_path / "none")], "not a saved model"),
    ]
    for args, message in cases:
        result = runner.invoke(app, base + args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
    bad_output = ["drift", "--model", str(model), "--input", str(calm_events)]
    result = runner.invoke(app, [*bad_output, "--output", str(tmp_path / "d.csv")])
    assert result.exit_code == 2 and "d.csv: the drift report is written as .json" in result.stderr
    missing = pd.DataFrame({"Time": [1.0]})
    missing.to_csv(tmp_path / "thin.csv", index=False)
    result = runner.invoke(
        app, ["drift", "--model", str(model), "--input", str(tmp_path / "thin.csv"),
              "--output", str(tmp_path / "d.json")]
    )  # fmt: skip
    assert result.exit_code == 2 and "thin.csv" in result.stderr
    assert not (tmp_path / "d.json").exists()
