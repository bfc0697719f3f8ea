"""Hostile but realistic input (issue 12): the whole bad-input contract in one place.

Every case is refused with one line on stderr naming the file, column, key, row or field,
exit code 2 and no traceback, and nothing written earlier changes.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.config import EvaluationConfig, config_from_dict
from hybrid_ad.errors import ConfigError
from hybrid_ad.evaluation import undefined_metrics

from .conftest import make_events, small_config_dict

runner = CliRunner()


def fails_with(args: list[str], expected: str) -> str:
    """Run the command; assert exit 2, one line on stderr holding `expected`, no traceback."""
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def succeeds(args: list[str]) -> object:
    result = runner.invoke(app, [*args, "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained model in out/, from a small config on synthetic transactions."""
    root = tmp_path_factory.mktemp("hostile")
    make_events(3000, seed=3).to_csv(root / "events.csv", index=False)
    raw = small_config_dict(data={"path": str(root / "events.csv")})
    raw["artifacts"] = {"out_dir": str(root / "out")}
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    succeeds(["run", "--config", str(root / "config.yaml")])
    return root


def write_config(root: Path, name: str, **overrides: object) -> Path:
    raw = small_config_dict(data={"path": str(root / "events.csv")}, **overrides)
    path = root / name
    path.write_text(yaml.safe_dump(raw))
    return path


def score_args(workspace: Path, input_path: Path, output_path: Path) -> list[str]:
    model = str(workspace / "out" / "model")
    return ["score", "--model", model, "--input", str(input_path), "--output", str(output_path)]


# -- 13. a semicolon-separated CSV --------------------------------------------------------------


def test_semicolon_separated_csv_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    make_events(300).to_csv(path, index=False, sep=";")
    config = write_config(tmp_path, "config.yaml")
    fails_with(["run", "-c", str(config), "--data", str(path)], "looks ';'-separated")


# -- 4. columns are matched by name ---------------------------------------------------------------


def test_duplicate_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    text = make_events(300).to_csv(index=False)
    header, body = text.split("\n", 1)
    path.write_text(header.replace("V4", "V3") + "\n" + body)
    config = write_config(tmp_path, "config.yaml")
    fails_with(["run", "-c", str(config), "--data", str(path)], "duplicated column 'V3'")


def test_score_matches_columns_by_name_and_names_extra_and_missing(
    workspace: Path, tmp_path: Path
) -> None:
    events = make_events(200, seed=5)
    shuffled = events[list(reversed(events.columns))]
    shuffled.to_csv(tmp_path / "reordered.csv", index=False)
    events.to_csv(tmp_path / "plain.csv", index=False)
    succeeds(score_args(workspace, tmp_path / "reordered.csv", tmp_path / "a.csv"))
    succeeds(score_args(workspace, tmp_path / "plain.csv", tmp_path / "b.csv"))
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "a.csv", keep_default_na=False),
        pd.read_csv(tmp_path / "b.csv", keep_default_na=False),
    )
    events.assign(V29=1.0).to_csv(tmp_path / "extra.csv", index=False)
    fails_with(score_args(workspace, tmp_path / "extra.csv", tmp_path / "c.csv"), "extra 'V29'")
    events.drop(columns=["V2"]).to_csv(tmp_path / "missing.csv", index=False)
    fails_with(score_args(workspace, tmp_path / "missing.csv", tmp_path / "c.csv"), "missing 'V2'")
    assert not (tmp_path / "c.csv").exists()


# -- 7. a rule on a non-numeric column ------------------------------------------------------------


def test_rule_on_a_text_column_names_the_rule_and_the_column(tmp_path: Path) -> None:
    make_events(600).assign(country="FR").to_csv(tmp_path / "events.csv", index=False)
    rules = small_config_dict()["rules"]
    rules["rules"].append(
        {
            "name": "odd_country",
            "reason": "country code above a bound",
            "when": {"threshold": {"feature": "country", "op": ">", "value": 3}},
        }
    )
    config = write_config(tmp_path, "config.yaml", rules=rules)
    fails_with(
        ["run", "-c", str(config)],
        "rule 'odd_country': column 'country' has a non-numeric value 'FR'",
    )


# -- 5. every numeric config key has a range ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": -1}, "seed"),
        ({"judge": {"max_depth": 10**12}}, "judge.max_depth"),
        ({"autoencoder": {"hidden_layers": [10**12]}}, "autoencoder.hidden_layers.0"),
        ({"autoencoder": {"hidden_layers": [10**8]}}, "autoencoder.hidden_layers.0"),
        ({"autoencoder": {"hidden_layers": [8] * 100}}, "autoencoder.hidden_layers"),
        ({"autoencoder": {"batch_size": 10**12}}, "autoencoder.batch_size"),
        ({"autoencoder": {"max_epochs": 10**9}}, "autoencoder.max_epochs"),
        ({"judge": {"n_estimators": 10**9}}, "judge.n_estimators"),
        ({"judge": {"threads": 10**6}}, "judge.threads"),
        ({"judge": {"scale_pos_weight": float("inf")}}, "judge.scale_pos_weight"),
        ({"evaluation": {"precision_at_k": 10**12}}, "evaluation.precision_at_k"),
        ({"features": {"extreme_z": float("nan")}}, "features.extreme_z"),
        ({"features": {"behavioural": {"last_n": [10**9]}}}, "features.behavioural.last_n"),
        ({"features": {"behavioural": {"windows": ["99999999w"]}}}, "features.behavioural"),
    ],
)
def test_numeric_config_keys_are_bounded(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^cfg\.yaml: {re.escape(key)}") as info:
        config_from_dict(small_config_dict(**overrides), "cfg.yaml")
    assert "\n" not in str(info.value)


def test_a_rule_threshold_must_be_finite() -> None:
    raw = small_config_dict()
    raw["rules"]["rules"][0]["when"] = {
        "threshold": {"feature": "Amount", "op": ">", "value": float("inf")}
    }
    with pytest.raises(ConfigError, match=r"rules\.rules\.0\.when\.threshold\.value"):
        config_from_dict(raw, "cfg.yaml")


# -- 2. score never overwrites its input ----------------------------------------------------------


def test_score_refuses_output_equal_to_input(workspace: Path, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    path = tmp_path / "d" / "same.csv"
    make_events(100, seed=8).to_csv(path, index=False)
    before = path.read_bytes()
    for output in (path, tmp_path / "d" / ".." / "d" / "." / "same.csv"):
        fails_with(score_args(workspace, path, output), "is the input file")
    (tmp_path / "link.csv").symlink_to(path)
    fails_with(score_args(workspace, path, tmp_path / "link.csv"), "is the input file")
    assert path.read_bytes() == before


# -- 3. a model without its judge -----------------------------------------------------------------


def test_score_and_evaluate_on_a_model_without_judge_name_the_missing_step(
    workspace: Path, tmp_path: Path
) -> None:
    config, out = str(workspace / "config.yaml"), str(tmp_path / "out")
    succeeds(["train-ae", "--config", config, "--out", out])
    fails_with(
        [
            "score",
            "--model",
            f"{out}/model",
            "--input",
            str(workspace / "events.csv"),
            "--output",
            str(tmp_path / "scored.csv"),
        ],
        "has no judge yet: run train-judge",
    )
    fails_with(["evaluate", "--config", config, "--out", out], "has no judge yet: run train-judge")
    assert not (tmp_path / "scored.csv").exists()
    assert not (tmp_path / "out" / "reports" / "index.html").exists()


# -- 6. output paths are checked before the work starts -------------------------------------------


def test_bad_output_paths_are_refused_before_any_work(workspace: Path, tmp_path: Path) -> None:
    events = workspace / "events.csv"
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    fails_with(score_args(workspace, events, tmp_path / "a_dir"), "is a directory")
    fails_with(score_args(workspace, events, tmp_path / "a_file" / "x.csv"), "is not a directory")
    fails_with(score_args(workspace, events, tmp_path / "scores.txt"), "unsupported output type")
    fails_with(["simulate", "--out", str(tmp_path / "a_dir")], "is a directory")
    fails_with(
        ["simulate", "--out", str(tmp_path / "a_file" / "log.parquet")], "is not a directory"
    )
    config = str(workspace / "config.yaml")
    for step in ("run", "train-ae", "embed", "train-judge", "evaluate"):
        fails_with(
            [step, "--config", config, "--out", str(tmp_path / "a_file")],
            "exists and is not a directory",
        )
    assert (tmp_path / "a_file").read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_dir", "a_file"]


# -- 10. the step commands record what run records ------------------------------------------------


def test_steps_record_the_same_metrics_json_as_run(workspace: Path, tmp_path: Path) -> None:
    config, out = str(workspace / "config.yaml"), str(tmp_path / "staged")
    for step in ("train-ae", "train-judge", "evaluate"):
        succeeds([step, "--config", config, "--out", out])
    ran = json.loads((workspace / "out" / "reports" / "metrics.json").read_text())
    staged = json.loads((tmp_path / "staged" / "reports" / "metrics.json").read_text())
    assert staged["training"]["judge_scale_pos_weight"] is not None
    for metrics in (ran, staged):
        metrics.pop("timings_s")
    assert staged == ran


# -- 9. every malformed model file is one ArtifactError -------------------------------------------


def rehash(model: Path) -> None:
    """What a careful tamperer does: recompute every checksum the manifest holds."""
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"] = {
        name: hashlib.sha256((model / name).read_bytes()).hexdigest()
        for name in manifest["files"]
        if (model / name).exists()
    }
    manifest.pop("manifest_sha256", None)
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest["manifest_sha256"] = hashlib.sha256(canonical).hexdigest()
    (model / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture()
def model_copy(workspace: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(workspace / "out" / "model", copy)
    return copy


def score_model(model: Path, workspace: Path, tmp_path: Path, expected: str) -> None:
    fails_with(
        [
            "score",
            "--model",
            str(model),
            "--input",
            str(workspace / "events.csv"),
            "--output",
            str(tmp_path / "scored.csv"),
        ],
        expected,
    )
    assert not (tmp_path / "scored.csv").exists()


@pytest.mark.parametrize("field", ["metrics", "data_sha256", "seed"])
def test_an_edited_manifest_is_refused(
    field: str, model_copy: Path, workspace: Path, tmp_path: Path
) -> None:
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest[field] = {"metrics": {"stages": {}}, "data_sha256": "0" * 64, "seed": 1}[field]
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    score_model(model_copy, workspace, tmp_path, "manifest.json: checksum mismatch")


def test_a_file_left_out_of_the_manifest_is_refused(
    model_copy: Path, workspace: Path, tmp_path: Path
) -> None:
    manifest = json.loads((model_copy / "manifest.json").read_text())
    del manifest["files"]["judge.json"]
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    rehash(model_copy)
    score_model(model_copy, workspace, tmp_path, "judge.json: not listed in the manifest")


MODEL_FILES = (
    "config.json",
    "detector.json",
    "features.json",
    "rules.json",
    "autoencoder.json",
    "autoencoder.safetensors",
    "judge.json",
)


@pytest.mark.parametrize("name", MODEL_FILES)
@pytest.mark.parametrize("payload", [b"[]", b"{}", b"null", b"\x00\xff garbage", b"half"])
def test_every_malformed_model_file_is_one_artifact_error(
    name: str, payload: bytes, model_copy: Path, workspace: Path, tmp_path: Path
) -> None:
    path = model_copy / name
    path.write_bytes(
        path.read_bytes()[: path.stat().st_size // 2] if payload == b"half" else payload
    )
    rehash(model_copy)
    line = fails_with(
        [
            "score",
            "--model",
            str(model_copy),
            "--input",
            str(workspace / "events.csv"),
            "--output",
            str(tmp_path / "scored.csv"),
        ],
        "",
    )
    assert name in line or "config.json" in line, line


def _edit_json(path: Path, edit: object) -> None:
    payload = json.loads(path.read_text())
    edit(payload)  # type: ignore[operator]
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize(
    ("name", "edit", "expected"),
    [
        ("rules.json", lambda p: p.update(statistics={}), "rules.json"),
        ("rules.json", lambda p: p["statistics"].update({"mean:V1": "x"}), "rules.json"),
        ("autoencoder.json", lambda p: p.update(n_inputs=10**12), "autoencoder"),
        ("autoencoder.json", lambda p: p.update(history=[{}]), "autoencoder.json"),
        ("detector.json", lambda p: p["feature_columns"].reverse(), "detector.json"),
        ("detector.json", lambda p: p.update(threshold="high"), "detector.json"),
        ("detector.json", lambda p: p.update(autoencoder_inputs=[10**6]), "detector.json"),
        ("label_free.json", lambda p: p["tail_scales"].pop("rules"), "label_free.json"),
        ("label_free.json", lambda p: p["histogram"]["hist"].pop(), "label_free.json"),
        ("features.json", lambda p: p["mean"].__setitem__(0, None), "features.json"),
        ("features.json", lambda p: p["columns"].reverse(), "features.json"),
    ],
)
def test_consistent_looking_but_wrong_model_files_are_refused(
    name: str, edit: object, expected: str, model_copy: Path, workspace: Path, tmp_path: Path
) -> None:
    _edit_json(model_copy / name, edit)
    rehash(model_copy)
    score_model(model_copy, workspace, tmp_path, expected)


# -- 1. huge values: refused in training, clipped and flagged in scoring --------------------------


def test_a_huge_training_value_is_refused_with_its_row(tmp_path: Path) -> None:
    events = make_events(600)
    events.loc[9, "V3"] = 1e308
    events.to_csv(tmp_path / "events.csv", index=False)
    config = write_config(tmp_path, "config.yaml")
    fails_with(["run", "-c", str(config)], "column 'V3' has 1e+308 at data row 10")
    assert not (tmp_path / "artifacts").exists()


def test_a_huge_value_in_a_column_only_a_rule_reads_is_refused(tmp_path: Path) -> None:
    events = make_events(600).assign(balance=1.0)
    events.loc[[9, 10], "balance"] = [1e308, -1e308]
    events.to_csv(tmp_path / "events.csv", index=False)
    rules = small_config_dict()["rules"]
    rules["rules"].append(
        {
            "name": "odd_balance",
            "reason": "balance far from usual",
            "when": {"zscore": {"feature": "balance", "abs_above": 4}},
        }
    )
    config = write_config(tmp_path, "config.yaml", rules=rules)
    fails_with(["run", "-c", str(config)], "rule 'odd_balance': column 'balance' has values too")


def test_large_training_values_within_range_save_standard_json(tmp_path: Path) -> None:
    events = make_events(600)
    events.loc[9, "V3"] = 1e14
    events.to_csv(tmp_path / "events.csv", index=False)
    config = write_config(tmp_path, "config.yaml")
    succeeds(["train-ae", "-c", str(config), "--out", str(tmp_path / "out")])

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    for path in (tmp_path / "out" / "model").glob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse)


def test_one_huge_value_is_clipped_and_flagged_without_touching_other_rows(
    workspace: Path, tmp_path: Path
) -> None:
    events = make_events(300, seed=12)
    events.to_csv(tmp_path / "plain.csv", index=False)
    events.loc[5, "V3"] = 1e20
    events.loc[7, "Amount"] = 1e308
    events.loc[8, "V1"] = -1e308
    events.to_csv(tmp_path / "huge.csv", index=False)
    succeeds(score_args(workspace, tmp_path / "plain.csv", tmp_path / "plain_scored.csv"))
    succeeds(score_args(workspace, tmp_path / "huge.csv", tmp_path / "huge_scored.csv"))
    plain = pd.read_csv(tmp_path / "plain_scored.csv", keep_default_na=False)
    huge = pd.read_csv(tmp_path / "huge_scored.csv", keep_default_na=False)
    assert huge["clipped"].iloc[[5, 7, 8]].tolist() == ["V3", "Amount", "V1"]
    assert (plain["clipped"] == "").all()
    others = huge.index.difference([5, 7, 8])
    assert (huge.loc[others, "clipped"] == "").all()
    pd.testing.assert_series_equal(huge.loc[others, "score"], plain.loc[others, "score"])
    assert huge["score"].between(0, 1).all()
    assert np.isfinite(huge["reconstruction_error"]).all()


# -- 8. a run's outputs appear together or not at all ---------------------------------------------


def snapshot(out: Path) -> dict[str, bytes]:
    """Every byte a reader of OUT/model and OUT/reports sees (through the links)."""
    return {
        str(path.relative_to(out)): path.read_bytes()
        for name in ("model", "reports")
        for path in sorted((out / name).rglob("*"))
        if path.is_file()
    }


@pytest.fixture()
def trained_copy(workspace: Path, tmp_path: Path) -> Path:
    """A copy of the trained workspace's OUT, links and all, with its own config."""
    shutil.copytree(workspace / "out", tmp_path / "out", symlinks=True)
    raw = yaml.safe_load((workspace / "config.yaml").read_text())
    raw["artifacts"] = {"out_dir": str(tmp_path / "out")}
    raw["seed"] = 8  # a different model, so a mix of old and new outputs would show
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "out"


def test_a_failure_after_the_report_leaves_the_previous_outputs(
    trained_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybrid_ad.jobs import pipeline

    before = snapshot(trained_copy)
    assert "reports/index.html" in before and "model/manifest.json" in before

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "save_evaluated", fail)
    result = runner.invoke(app, ["run", "-c", str(trained_copy.parent / "config.yaml"), "-q"])
    assert isinstance(result.exception, OSError)
    assert snapshot(trained_copy) == before
    assert len(list((trained_copy / ".runs").iterdir())) == 1


KILL_AFTER_REPORT = """
import os, signal, sys
from hybrid_ad import cli
from hybrid_ad.jobs import pipeline

def write_then_die(out_dir, metrics):
    assert (out_dir / "reports" / "index.html").is_file()
    assert (out_dir / "model" / "manifest.json").is_file()
    os.kill(os.getpid(), signal.SIGKILL)

pipeline.write_metrics = write_then_die
sys.argv = ["hybrid-ad", "run", "-c", sys.argv[1], "--quiet"]
cli.main()
"""


def test_sigkill_after_report_and_model_leaves_the_previous_outputs(trained_copy: Path) -> None:
    before = snapshot(trained_copy)
    config = trained_copy.parent / "config.yaml"
    process = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_REPORT, str(config)], capture_output=True, check=False
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert snapshot(trained_copy) == before
    assert len(list((trained_copy / ".runs").iterdir())) == 2  # the abandoned stage
    succeeds(["run", "-c", str(config)])
    after = snapshot(trained_copy)
    assert after != before
    assert len(list((trained_copy / ".runs").iterdir())) == 1  # cleaned up
    manifest = json.loads(after["model/manifest.json"])
    metrics = json.loads(after["reports/metrics.json"])
    assert manifest["metrics"]["stages"] == metrics["stages"]
    assert manifest["seed"] == metrics["seed"] == 8


# -- 11. no clutter, the umask is respected, only models are replaced -----------------------------

KILL_WHILE_STAGING_MODEL = """
import os, signal, sys
from hybrid_ad import artifacts

artifacts.manifest_checksum = lambda manifest: os.kill(os.getpid(), signal.SIGKILL)
artifacts.write_model_dir(sys.argv[1], {"weights.json": b"{}"}, {})
"""

KILL_WHILE_WRITING_SCORES = """
import os, signal, sys
from pathlib import Path
from hybrid_ad import artifacts

def half_then_die(temp: Path) -> None:
    temp.write_text("score,alert\\n0.1,")
    os.kill(os.getpid(), signal.SIGKILL)

artifacts.atomic_write_with(Path(sys.argv[1]), half_then_die)
"""


def _killed(script: str, *args: str) -> None:
    process = subprocess.run([sys.executable, "-c", script, *args], capture_output=True)
    assert process.returncode == -signal.SIGKILL, process.stderr


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(
    workspace: Path, tmp_path: Path
) -> None:
    from hybrid_ad.artifacts import write_model_dir

    _killed(KILL_WHILE_STAGING_MODEL, str(tmp_path / "model"))
    assert [path.name[:7] for path in tmp_path.iterdir()] == [".model."]
    write_model_dir(tmp_path / "model", {"weights.json": b"{}"}, {})
    assert [path.name for path in tmp_path.iterdir()] == ["model"]

    output = tmp_path / "scores" / "x.csv"
    output.parent.mkdir()
    _killed(KILL_WHILE_WRITING_SCORES, str(output))
    assert [path.name[:7] for path in output.parent.iterdir()] == [".x.csv."]
    succeeds(score_args(workspace, workspace / "events.csv", output))
    assert [path.name for path in output.parent.iterdir()] == ["x.csv"]


def test_what_is_not_a_model_or_a_report_is_never_replaced(workspace: Path, tmp_path: Path) -> None:
    from hybrid_ad.artifacts import write_model_dir
    from hybrid_ad.errors import ArtifactError

    config = str(workspace / "config.yaml")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model").write_text("my notes")
    fails_with(["run", "-c", config, "--out", str(tmp_path / "a")], "is not a saved model")
    (tmp_path / "b" / "reports").mkdir(parents=True)
    (tmp_path / "b" / "reports" / "thesis.docx").write_text("draft")
    fails_with(["train-ae", "-c", config, "--out", str(tmp_path / "b")], "not a report folder")
    with pytest.raises(ArtifactError, match="is not a saved model"):
        write_model_dir(tmp_path / "a" / "model", {"x.json": b"{}"}, {})
    (tmp_path / "c" / "model").mkdir(parents=True)
    (tmp_path / "c" / "model" / "data.csv").write_text("mine")
    with pytest.raises(ArtifactError, match="is not a saved model"):
        write_model_dir(tmp_path / "c" / "model", {"x.json": b"{}"}, {})
    (tmp_path / "c" / "model" / "data.csv").unlink()
    write_model_dir(tmp_path / "c" / "model", {"x.json": b"{}"}, {})  # an empty folder is fine
    assert (tmp_path / "a" / "model").read_text() == "my notes"
    assert (tmp_path / "b" / "reports" / "thesis.docx").read_text() == "draft"
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["model"]


def test_outputs_respect_the_umask(workspace: Path, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        out = tmp_path / "out"
        succeeds(["train-ae", "-c", str(workspace / "config.yaml"), "--out", str(out)])
        succeeds(score_args(workspace, workspace / "events.csv", tmp_path / "shared.csv"))
        os.umask(0o077)
        succeeds(score_args(workspace, workspace / "events.csv", tmp_path / "private.csv"))
    finally:
        os.umask(previous)
    model = (out / "model").resolve()
    assert stat.S_IMODE(model.stat().st_mode) == 0o755
    assert stat.S_IMODE(model.parent.stat().st_mode) == 0o755
    assert {stat.S_IMODE(path.stat().st_mode) for path in model.iterdir()} == {0o644}
    assert stat.S_IMODE((tmp_path / "shared.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.csv").stat().st_mode) == 0o600


# -- 12. tiny inputs say what is undefined ---------------------------------------------------------


def test_a_tiny_input_warns_what_is_undefined(tmp_path: Path) -> None:
    make_events(50, seed=4).assign(Class=0).to_csv(tmp_path / "events.csv", index=False)
    config = write_config(tmp_path, "config.yaml")
    result = succeeds(["run", "-c", str(config), "--out", str(tmp_path / "out")])
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    # the alert budget reads no validation labels, so only the test part is undefined
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("warning: test part (10 rows) has no positive label")
    assert "average precision" in warnings[0]
    metrics = json.loads((tmp_path / "out" / "reports" / "metrics.json").read_text())
    assert metrics["warnings"] == [line.removeprefix("warning: ") for line in warnings]


def test_best_f1_without_validation_positives_warns_of_the_fallback() -> None:
    [message] = undefined_metrics(
        np.zeros(10), np.r_[np.zeros(9), 1], EvaluationConfig(threshold_policy="best_f1")
    )
    assert message.startswith("validation part (10 rows) has no positive label")
    assert "alert_rate" in message


# -- the whole contract at once: every bad file, one line, exit 2, nothing earlier changes ---------


def tree(root: Path) -> dict[str, bytes]:
    """Every file and link under `root`, byte for byte (links by their target)."""
    result = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            result[key] = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
    return result


YAML_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True)
)


def bad_data_files(root: Path) -> dict[str, tuple[str, str]]:
    """File name -> (contents written, what the one-line error must say)."""
    good = make_events(300, seed=21)
    text = good.to_csv(index=False)
    header, body = text.split("\n", 1)
    gz = gzip.compress(text.encode())
    files: dict[str, tuple[bytes, str]] = {
        "empty.csv": (b"", "file is empty"),
        "random.csv": (bytes(range(256)) * 40, "random.csv"),
        "cut.csv.gz": (gz[: len(gz) // 2], "truncated or corrupt"),
        "garbage.parquet": (b"PAR1 not really", "garbage.parquet"),
        "semicolon.csv": (good.to_csv(index=False, sep=";").encode(), "looks ';'-separated"),
        "dup_header.csv": ((header.replace("V5", "V2") + "\n" + body).encode(), "'V2'"),
        "text_value.csv": (good.assign(V4="x").to_csv(index=False).encode(), "column 'V4'"),
        "nan.csv": (good.assign(V1=np.nan).to_csv(index=False).encode(), "column 'V1'"),
        "inf.csv": (good.assign(V6=np.inf).to_csv(index=False).encode(), "column 'V6'"),
        "label.csv": (good.assign(Class=2).to_csv(index=False).encode(), "must be 0 or 1"),
        "no_time.csv": (good.drop(columns="Time").to_csv(index=False).encode(), "'Time'"),
        "header_only.csv": ((header + "\n").encode(), "no data rows"),
        "events.txt": (text.encode(), "unsupported file type"),
    }
    huge = good.copy()
    huge.loc[3, "V2"] = 1e300
    files["huge_for_training.csv"] = (huge.to_csv(index=False).encode(), "data row 4")
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    return {name: (str(root / name), expected) for name, (_, expected) in files.items()}


def bad_config_files(root: Path) -> dict[str, tuple[str, str]]:
    base = small_config_dict(data={"path": str(root / "events.csv")})
    typo = copy.deepcopy(base)
    typo["judge"]["learning_rte"] = 0.1
    seed = {**copy.deepcopy(base), "seed": 2**63}
    wide = copy.deepcopy(base)
    wide["autoencoder"]["hidden_layers"] = [10**8]
    texts = {
        "typo.yaml": (yaml.safe_dump(typo), "judge.learning_rte: unknown key"),
        "seed.yaml": (yaml.safe_dump(seed), "seed"),
        "wide.yaml": (yaml.safe_dump(wide), "autoencoder.hidden_layers.0"),
        "bomb.yaml": (YAML_BOMB + "seed: *h\n", "bomb.yaml"),
        "broken.yaml": ("seed: [1\n", "malformed YAML"),
        "list.yaml": ("- 1\n- 2\n", "expected a mapping"),
        "binary.yaml": ("\x00\x01", "binary.yaml"),
    }
    for name, (text, _) in texts.items():
        (root / name).write_text(text)
    return {name: (str(root / name), expected) for name, (_, expected) in texts.items()}


def test_fuzz_every_bad_file_is_one_line_exit_2_and_changes_nothing(
    trained_copy: Path, workspace: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    config = str(trained_copy.parent / "config.yaml")
    model = str(trained_copy / "model")
    before = tree(tmp_path)
    before = {key: value for key, value in before.items() if not key.startswith("bad/")}
    cases: list[tuple[list[str], str]] = []
    for name, (path, expected) in bad_data_files(bad).items():
        cases.append((["run", "-c", config, "--data", path], expected))
        if name != "huge_for_training.csv":  # scoring clips a huge value instead
            output = str(tmp_path / "bad" / f"{name}.scored.csv")
            cases.append(
                (["score", "--model", model, "--input", path, "--output", output], expected)
            )
    for path, expected in bad_config_files(bad).values():
        for step in ("run", "train-ae", "evaluate"):
            cases.append(([step, "-c", path, "--out", str(trained_copy)], expected))
    events = str(workspace / "events.csv")
    cases += [
        (["score", "--model", model, "--input", events, "--output", events], "is the input"),
        (["score", "--model", model, "--input", events, "--output", str(bad)], "is a directory"),
        (["score", "--model", str(bad), "--input", events, "--output", "x.csv"], "not a saved"),
        (["run", "-c", config, "--out", str(bad / "empty.csv")], "is not a directory"),
        (["run", "-c", config, "--set", "judge.max_depth=99"], "--set judge.max_depth=99"),
    ]
    for args, expected in cases:
        fails_with(args, expected)
        after = {key: value for key, value in tree(tmp_path).items() if not key.startswith("bad/")}
        assert after == before, args
    assert not list(bad.glob("*.scored.csv"))


def test_fuzz_through_the_installed_entry_point(workspace: Path, tmp_path: Path) -> None:
    """The same contract in a real process: exit status 2 and one line, no traceback."""
    path = tmp_path / "semicolon.csv"
    make_events(100).to_csv(path, index=False, sep=";")
    before = tree(workspace / "out")
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybrid_ad.cli",
            "score",
            "--model",
            str(workspace / "out" / "model"),
            "--input",
            str(path),
            "--output",
            str(tmp_path / "scored.csv"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == 2
    assert process.stderr.count("\n") == 1, process.stderr
    assert "looks ';'-separated" in process.stderr
    assert "Traceback" not in process.stderr
    assert tree(workspace / "out") == before
