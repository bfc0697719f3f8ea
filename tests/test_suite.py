"""The benchmark suite's code path on a tiny ADBench-style set, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from hybrid_ad.config import load_config
from hybrid_ad.pipeline import run
from hybrid_ad.progress import QUIET

REPO = Path(__file__).resolve().parents[1]


def write_tiny_set(folder: Path) -> None:
    """400 shuffled rows, 5 features, about 10 % anomalies shifted far from the rest."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(400, 5))
    labels = (rng.random(400) < 0.1).astype(int)
    features[labels == 1] += rng.choice([-4.0, 4.0], size=(int(labels.sum()), 5))
    folder.mkdir()
    np.savez(folder / "99_tiny.npz", X=features, y=labels)


def test_suite_runs_both_modes_with_peers_and_matches_the_pipeline(tmp_path: Path) -> None:
    anomaly_dir, out = tmp_path / "anomaly", tmp_path / "out"
    write_tiny_set(anomaly_dir)
    command = [sys.executable, str(REPO / "benchmarks" / "suite.py"), "--datasets", "tiny"]
    command += ["--anomaly-dir", str(anomaly_dir), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path, timeout=300)

    results = json.loads((out / "results.json").read_text())
    tiny = results["datasets"]["tiny"]
    assert set(tiny["runs"]) == {"pseudo", "truth"}
    assert set(tiny["runs"]["pseudo"]["peers"]) == {"ecod", "iforest", "hbos"}
    assert set(tiny["runs"]["truth"]["peers"]) == {"xgboost"}
    assert tiny["runs"]["pseudo"]["peak_rss_mib"] > 0
    rows = {(row["mode"], row["stage"]): row for row in tiny["summary"]["rows"]}
    best = max(
        rows[("label-free", f"peer: {name}")]["average_precision"]
        for name in ("ecod", "iforest", "hbos")
    )
    assert tiny["summary"]["best_pyod_ap"] == best
    judge = rows[("pseudo", "judge")]
    assert judge["ap_ratio_to_best_pyod"] == judge["average_precision"] / best
    # Shifted anomalies are easy: a peer that ranks them at chance would be a broken input.
    assert best > 0.5
    assert "pseudo judge AP >= rules, autoencoder, best PyOD peer" in tiny["summary"]["targets"]
    assert "| tiny | pseudo | judge |" in (out / "results.md").read_text()

    # The suite's stage figures are those `hybrid-ad run` reports for the same config.
    raw = yaml.safe_load((REPO / "config" / "tabular_zscore.yaml").read_text())
    raw["rules"] = str(REPO / "config" / raw["rules"])
    raw["data"]["path"] = str(out / "data" / "tiny.parquet")
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    metrics = run(load_config(config_path), None, tmp_path / "run", QUIET)
    assert metrics is not None
    suite_stages = tiny["runs"]["pseudo"]["metrics"]["stages"]
    for stage, figures in metrics["stages"].items():
        for key in ("average_precision", "roc_auc", "precision", "recall", "threshold"):
            assert suite_stages[stage][key] == figures[key], (stage, key)
