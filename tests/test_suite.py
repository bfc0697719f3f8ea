"""The benchmark suite's code path on a tiny ADBench-style set, so the script cannot rot.

The suite's parent process only starts one child per dataset and mode and measures it; the
child's work (`run_one`) and the summary are run here in-process to keep the test short.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from hybrid_ad.config import load_config
from hybrid_ad.jobs.pipeline import run
from hybrid_ad.progress import QUIET

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("suite", REPO / "benchmarks" / "suite.py")
assert _spec is not None and _spec.loader is not None
suite = importlib.util.module_from_spec(_spec)
sys.modules["suite"] = suite  # dataclasses look their module up while the file executes
_spec.loader.exec_module(suite)

QUICK = ["evaluation.report=false"]


def write_tiny_set(folder: Path) -> None:
    """400 shuffled rows, 5 features, about 10 % anomalies shifted far from the rest."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(400, 5))
    labels = (rng.random(400) < 0.1).astype(int)
    features[labels == 1] += rng.choice([-4.0, 4.0], size=(int(labels.sum()), 5))
    folder.mkdir()
    np.savez(folder / "99_tiny.npz", X=features, y=labels)


def test_overrides_apply_to_the_shipped_config() -> None:
    path = REPO / "config" / "tabular_zscore.yaml"
    assert suite.suite_config(path, []) == load_config(path)
    changed = suite.suite_config(path, ["judge.label_source=truth", "features.extreme_z=4"])
    assert changed.judge.label_source == "truth"
    assert changed.features.extreme_z == 4.0


def test_suite_runs_both_modes_with_peers_and_matches_the_pipeline(tmp_path: Path) -> None:
    anomaly_dir, out = tmp_path / "anomaly", tmp_path / "out"
    write_tiny_set(anomaly_dir)
    tiny = suite.suite_datasets(tmp_path / "absent.csv", anomaly_dir)["tiny"]
    data_path = suite.event_file(tiny, out / "data")
    runs = {
        "pseudo": suite.run_one(tiny, "pseudo", data_path, out, True, QUICK),
        "truth": suite.run_one(tiny, "truth", data_path, out, False, QUICK),
    }
    assert set(runs["pseudo"]["peers"]) == {"ecod", "iforest", "hbos"}
    assert set(runs["truth"]["peers"]) == {"xgboost"}
    for measured in runs.values():  # what the parent measures around each child
        measured.update(process_wall_s=1.0, peak_rss_mib=1.0)

    summary = suite.summarise("tiny", runs)
    rows = {(row["mode"], row["stage"]): row for row in summary["rows"]}
    peers = [rows[("label-free", f"peer: {n}")]["average_precision"] for n in suite.PYOD_PEERS]
    assert summary["best_pyod_ap"] == max(peers)
    # The anomalies are shifted far out: a peer ranking them near chance had broken inputs.
    assert max(peers) > 0.5
    judge = rows[("pseudo", "judge")]
    assert judge["ap_ratio_to_best_pyod"] == judge["average_precision"] / max(peers)
    assert "pseudo judge AP >= rules, autoencoder, best PyOD peer" in summary["targets"]
    table = suite.markdown({"datasets": {"tiny": {"runs": runs, "summary": summary}}})
    assert "| tiny | pseudo | judge |" in table and "| tiny | truth | peer: xgboost |" in table

    # The suite's stage figures are those `hybrid-ad run` reports for the same config.
    config = suite.suite_config(tiny.config, [f"data.path={data_path}", *QUICK])
    metrics = run(config, None, tmp_path / "run", QUIET)
    assert metrics is not None
    for stage, figures in metrics["stages"].items():
        for key in ("average_precision", "roc_auc", "precision", "recall", "threshold"):
            assert runs["pseudo"]["metrics"]["stages"][stage][key] == figures[key], (stage, key)
