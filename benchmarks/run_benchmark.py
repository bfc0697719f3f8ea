"""Full-data benchmark: `hybrid-ad run` in both label modes, with wall time and peak memory.

Each mode runs in its own process (as a user would run it), so peak RSS is that of one run.
A plain XGBoost on the raw columns, on the same time-ordered split, is measured alongside as
the baseline the `truth` judge has to beat. Modes ending in `-behavioural` add the behavioural
features below (one global entity: the credit-card data has no customer or terminal ids).

    .venv/bin/python benchmarks/run_benchmark.py [--data ../shared/data/creditcard.csv.gz]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "creditcard.csv.gz"


MODES = ("pseudo", "truth", "pseudo-behavioural", "truth-behavioural")
CREDITCARD_BEHAVIOURAL = {
    "entity_keys": [],
    "windows": ["10m", "1h", "6h"],
    "last_n": [10],
    "values": ["Amount"],
    "aggregates": ["count", "sum", "mean", "std", "max", "ratio_to_mean"],
    "time_since_previous": True,
    "session_gap": None,
    "entity_ttl": "1d",
}


def _mode_config(mode: str, out_root: Path) -> Path:
    """The shipped config with judge.label_source set and, for `-behavioural`, the features."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["rules"] = str(REPO / "config" / raw["rules"])
    label_source, _, extra = mode.partition("-")
    raw["judge"]["label_source"] = label_source
    if extra == "behavioural":
        raw["features"]["behavioural"] = CREDITCARD_BEHAVIOURAL
    path = out_root / f"config_{mode}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _measured_run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "wall = time.perf_counter() - start\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(f'{wall} {peak}', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=False
    )
    if process.returncode != 0:
        sys.stderr.write(process.stdout + process.stderr)
        raise SystemExit(f"benchmark run failed: {' '.join(command)}")
    wall, peak = process.stderr.strip().splitlines()[-1].split()
    return float(wall), float(peak)


def _plain_xgboost(data: Path) -> dict[str, float]:
    """Baseline: XGBoost on the raw columns, same split, same early stopping, no extras."""
    import numpy as np
    import xgboost as xgb
    from sklearn.metrics import average_precision_score, roc_auc_score

    from hybrid_ad.config import load_config
    from hybrid_ad.data import load_events, time_split

    config = load_config(REPO / "config" / "config.yaml")
    events, columns = load_events(data, config.data)
    split = time_split(events, config.data.split)
    columns = ["Time", *columns]

    def matrix(part):
        return xgb.DMatrix(part[columns].to_numpy(np.float32), label=part["Class"].to_numpy())

    train, validation, test = (matrix(p) for p in (split.train, split.validation, split.test))
    positives = float(split.train["Class"].sum())
    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "eta": 0.05,
        "max_depth": 6,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "scale_pos_weight": (len(split.train) - positives) / positives,
        "eval_metric": "logloss",
        "nthread": 2,
        "seed": config.seed,
    }
    start = time.perf_counter()
    booster = xgb.train(
        params, train, 600, evals=[(validation, "v")], early_stopping_rounds=50, verbose_eval=False
    )
    scores = booster.predict(test, iteration_range=(0, booster.best_iteration + 1))
    labels = split.test["Class"].to_numpy()
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "fit_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: not found; pass the full creditcard file with --data")
    args.out.mkdir(parents=True, exist_ok=True)
    cli = str(Path(sys.executable).with_name("hybrid-ad"))
    results: dict[str, dict] = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
            "python": platform.python_version(),
        },
        "data": str(args.data),
    }
    for mode in args.modes:
        out = args.out / mode
        command = [cli, "run", "-c", str(_mode_config(mode, args.out)), "--data", str(args.data)]
        wall, peak = _measured_run([*command, "--out", str(out), "--quiet"])
        metrics = json.loads((out / "reports" / "metrics.json").read_text())
        results[mode] = {"wall_s": wall, "peak_rss_mib": peak, "metrics": metrics}
        print(f"{mode}: {wall:.1f} s wall, {peak:.0f} MiB peak RSS", file=sys.stderr)
    results["plain_xgboost_raw_columns"] = _plain_xgboost(args.data)
    results["benchmark_peak_rss_mib_self"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
