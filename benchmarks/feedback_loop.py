"""Analysts in the loop, simulated honestly: test AP against the number of reviewed labels.

    .venv/bin/python benchmarks/feedback_loop.py --dataset creditcard|streaming
        [--data PATH] [--rows N] [--schedule 50 50 100 300 500]
        [--strategies top uncertain mixed random] [--out benchmarks/out/feedback_loop] [--reuse]
        [--mixed unlabelled=zero,label_weight=10]

creditcard: `config/config.yaml` on the full ULB file (`/work/shared/data/creditcard.csv.gz`),
six-hour blocks. streaming: `config/streaming_service.yaml` on `hybrid-ad simulate --accounts
1000 --days 28 --seed 7` (the `make streaming` log), one-day blocks. `--rows` keeps the first
N events in time (for trying the script on a small part).

The label-free model (every stage and the label-free judge) is fitted once on the train part,
as `hybrid-ad run` fits it, without labels. Then, for each review strategy,
`hybrid_ad.lifecycle.loop.feedback_loop` plays the train and validation period block by block:
the analyst (an oracle holding the label column, read only for reviewed events) labels
`--schedule` events of the block's review queue (block 0 the first number, and so on; none
after), the verdicts become known one block later, and the judge is retrained
(`judge.label_source: mixed`) on what is known. The default schedule makes the known labels
pass 50, 100, 200, 500 and 1,000, one retrain each; every judge so retrained is scored on the
test split, which no label comes from: AP, and precision and recall at the alert budget (the
threshold the retrain took on validation). The label-free judge (`pseudo`) and the fully
supervised judge (`truth`, every train label) are measured in the same run.

`--mixed` sets `judge.mixed` keys for the retrains (results then in `OUT/<dataset>-<settings>`).
Writes `OUT/<dataset>/results-<strategies>.json` (after every retrain), then `table.md` and
`feedback_loop.png` from every results file there, so strategies can run as separate
processes (`--strategies mixed`, ...; `--no-truth` in all but one) and be drawn together.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score

from hybrid_ad.artifacts import read_model_dir
from hybrid_ad.config import Config, config_from_dict, config_to_dict, load_config
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import read_table, write_table
from hybrid_ad.jobs.pipeline import LoadedData, load_data
from hybrid_ad.lifecycle.loop import LOOP_STRATEGIES, BlockRecord, Oracle, feedback_loop
from hybrid_ad.stages.features import PreparedEvents

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "creditcard": {
        "config": REPO / "config/config.yaml",
        "data": REPO.parent / "shared/data/creditcard.csv.gz",
        "block_seconds": 6 * 3600,
    },
    "streaming": {
        "config": REPO / "config/streaming_service.yaml",
        "data": None,  # simulated into OUT/cache
        "block_seconds": 86_400,
    },
}
STREAMING_SIMULATION = ["--accounts", "1000", "--days", "28", "--seed", "7"]


def _data_path(args: argparse.Namespace, cache: Path) -> Path:
    if args.data is not None:
        path = args.data
    elif DATASETS[args.dataset]["data"] is not None:
        path = Path(DATASETS[args.dataset]["data"])
    else:
        path = cache / "streaming.parquet"
        if not path.is_file():
            command = [sys.executable, "-m", "hybrid_ad.cli", "simulate", "--out", str(path)]
            subprocess.run([*command, *STREAMING_SIMULATION], check=True)
    if args.rows is None:
        return path
    subset = cache / f"{args.dataset}-first{args.rows}.parquet"
    if not subset.is_file():
        raw = read_table(path)
        config = load_config(DATASETS[args.dataset]["config"])
        times = raw[config.data.timestamp]
        order = np.argsort(pd.to_datetime(times).to_numpy() if times.dtype == object else times)
        write_table(raw.iloc[np.sort(order[: args.rows], kind="stable")], subset)
    return subset


def _base(config: Config, data: LoadedData, cache: Path, reuse: bool) -> Detector:
    """The label-free model, fitted once (or reused when fitted on the same data and config)."""
    if reuse and (cache / "manifest.json").is_file():
        manifest, _ = read_model_dir(cache)
        if manifest.get("data_sha256") == data.sha256 and _label_free(manifest["config"]) == (
            _label_free(config_to_dict(config))
        ):
            cached = Detector.load(cache)
            cached.config = config  # the same but perhaps judge.mixed, which only retrains read
            return cached
    base = Detector(config).fit(data.part("train"), data.part("validation"))
    base.data_sha256_ = data.sha256
    base.save(cache)
    return base


def _label_free(raw: dict[str, Any]) -> dict[str, Any]:
    """A config without `judge.mixed`: what the label-free model's fit depends on."""
    return {**raw, "judge": {k: v for k, v in raw["judge"].items() if k != "mixed"}}


def _hidden(part: PreparedEvents, columns: list[str | None]) -> PreparedEvents:
    present = [column for column in columns if column is not None and column in part.frame]
    return PreparedEvents(part.frame.drop(columns=present), part.feature_columns, part.source)


def _measure(
    detector: Detector, test: PreparedEvents, labels: np.ndarray, kinds: np.ndarray | None
) -> dict[str, Any]:
    """Test AP, precision and recall at the alert budget, and (with `kinds`, the anomaly kind
    column) the recall at the budget of each kind."""
    scores = detector.score(test)["score"].to_numpy()
    assert detector.threshold_ is not None
    alerts = scores >= detector.threshold_
    caught = int((alerts & (labels == 1)).sum())
    measured: dict[str, Any] = {
        "ap": round(float(average_precision_score(labels, scores)), 4),
        "alerts": int(alerts.sum()),
        "precision_at_budget": round(caught / max(int(alerts.sum()), 1), 4),
        "recall_at_budget": round(caught / max(int(labels.sum()), 1), 4),
    }
    if kinds is not None:
        positive = labels == 1
        measured["recall_by_kind"] = {
            str(name): round(float(alerts[positive & (kinds == name)].mean()), 3)
            for name in sorted(set(kinds[positive].tolist()))
        }
    return measured


def _kind_counts(kinds: np.ndarray | None, labels: np.ndarray, positions: set[int]) -> dict:
    """Reviewed anomalies per kind (read after the fact, for the report; no judge sees it)."""
    if kinds is None or not positions:
        return {}
    chosen = np.fromiter(positions, dtype=np.int64)
    chosen = chosen[labels[chosen] == 1]
    names, counts = np.unique(kinds[chosen].astype(str), return_counts=True)
    return {str(name): int(count) for name, count in zip(names, counts, strict=True)}


def _plot(results: dict[str, Any], path: Path) -> None:
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2)
    baselines = results["baselines"]
    for ax, key, title in (
        (axes[0], "ap", "test AP"),
        (axes[1], "recall_at_budget", "test recall at the alert budget"),
    ):
        for strategy, rows in results["loops"].items():
            budgets = [0, *(row["known"] for row in rows)]
            values = [baselines["pseudo"][key], *(row[key] for row in rows)]
            ax.plot(budgets, values, marker="o", label=strategy)
        ax.axhline(baselines["truth"][key], color="black", linestyle="--", label="supervised")
        ax.axhline(baselines["pseudo"][key], color="grey", linestyle=":", label="label-free")
        ax.set_xscale("symlog", linthresh=50)
        ax.set_xlabel("labels known to the judge (reviewed one block earlier or before)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"feedback loop: {results['dataset']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _merged(out: Path) -> dict[str, Any]:
    """Every results file of one dataset as one: baselines and loops side by side."""
    merged: dict[str, Any] = {}
    for path in sorted(out.glob("results-*.json")):
        part = json.loads(path.read_text())
        if not merged:
            merged = {**part, "baselines": {}, "loops": {}}
        merged["baselines"].update(part["baselines"])
        merged["loops"].update(part["loops"])
    return merged


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| judge | review | labels known (positive) | unlabelled target | test AP "
        "| precision at budget | recall at budget |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, row in results["baselines"].items():
        labels = "0" if name == "pseudo" else f"{row['labels']:,} (every train label)"
        lines.append(
            f"| {name} | | {labels} | | {row['ap']:.3f} | {row['precision_at_budget']:.3f} "
            f"| {row['recall_at_budget']:.3f} |"
        )
    for strategy, rows in results["loops"].items():
        for row in rows:
            choice = row.get("unlabelled") or {}
            lines.append(
                f"| mixed | {strategy} | {row['known']:,} ({row['known_positives']}) "
                f"| {choice.get('unlabelled', '')} | {row['ap']:.3f} "
                f"| {row['precision_at_budget']:.3f} | {row['recall_at_budget']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="creditcard")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--schedule", type=int, nargs="+", default=[50, 50, 100, 300, 500])
    parser.add_argument("--strategies", nargs="+", choices=LOOP_STRATEGIES, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/feedback_loop")
    parser.add_argument("--reuse", action="store_true", help="reuse a fitted label-free model")
    parser.add_argument("--no-truth", action="store_true", help="skip the supervised judge")
    parser.add_argument(
        "--mixed",
        default=None,
        help="judge.mixed settings for the retrains, e.g. unlabelled=zero,label_weight=10; "
        "results then go to OUT/<dataset>-<settings>",
    )
    args = parser.parse_args()
    strategies = args.strategies or ["top", "uncertain", "mixed", "random"]
    spec = DATASETS[args.dataset]
    cache = args.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    name = args.dataset if args.rows is None else f"{args.dataset}-first{args.rows}"
    out = args.out / (name if args.mixed is None else f"{name}-{args.mixed.replace(',', '-')}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    data_path = _data_path(args, cache)
    config = load_config(spec["config"])
    if args.mixed is not None:
        raw = config_to_dict(config)
        for item in args.mixed.split(","):
            key, value = item.split("=")
            raw["judge"]["mixed"][key] = None if value == "null" else value
        config = config_from_dict(raw, f"--mixed {args.mixed}")
    data = load_data(config, data_path)
    label, kind = config.data.label, config.evaluation.kind_column
    assert label is not None
    base = _base(config, data, cache / name, args.reuse)
    print(f"label-free model ready, {time.perf_counter() - started:.0f} s", flush=True)
    test = data.part("test")
    test_labels = data.split.test[label].to_numpy(np.int8)
    has_kinds = kind is not None and kind in data.split.test
    test_kinds = data.split.test[kind].to_numpy(dtype=str) if has_kinds else None
    seen_kinds = (
        np.concatenate(
            [data.split.train[kind].to_numpy(dtype=str), data.split.validation[kind].to_numpy(str)]
        )
        if has_kinds
        else None
    )
    results: dict[str, Any] = {
        "dataset": args.dataset,
        "data": str(data_path),
        "data_sha256": data.sha256,
        "block_seconds": spec["block_seconds"],
        "delay_blocks": 1,
        "split_events": {p: len(getattr(data.split, p)) for p in ("train", "validation", "test")},
        "split_positives": {
            p: int(getattr(data.split, p)[label].sum()) for p in ("train", "validation", "test")
        },
        "judge_mixed": config_to_dict(config)["judge"]["mixed"],
        "baselines": {"pseudo": {"labels": 0, **_measure(base, test, test_labels, test_kinds)}},
        "loops": {},
    }
    raw = config_to_dict(config)
    raw["judge"]["label_source"] = "truth"
    if not args.no_truth:
        supervised = copy.copy(base)
        supervised.config = config_from_dict(raw, "truth")
        supervised.fit_judge(data.part("train"), data.part("validation"))
        results["baselines"]["truth"] = {
            "labels": len(data.split.train),
            **_measure(supervised, test, test_labels, test_kinds),
        }
    print(json.dumps(results["baselines"]), flush=True)

    train = _hidden(data.part("train"), [label, kind])
    validation = _hidden(data.part("validation"), [label, kind])
    seen_labels = np.concatenate(
        [data.split.train[label].to_numpy(np.int8), data.split.validation[label].to_numpy(np.int8)]
    )
    results["schedule"] = args.schedule
    for strategy in strategies:
        rows: list[dict[str, Any]] = results["loops"].setdefault(strategy, [])
        loop_started = time.perf_counter()
        tally = {"reviewed": 0, "positives": 0}
        by_block: dict[int, BlockRecord] = {}
        oracle = Oracle(seen_labels)

        def checkpoint(
            record: BlockRecord,
            detector: Detector,
            strategy: str = strategy,
            rows: list[dict[str, Any]] = rows,
            loop_started: float = loop_started,
            tally: dict[str, int] = tally,
            by_block: dict[int, BlockRecord] = by_block,
            oracle: Oracle = oracle,
        ) -> None:
            by_block[record.block] = record
            tally["reviewed"] += record.reviewed
            tally["positives"] += record.reviewed_positives
            seconds = time.perf_counter() - loop_started
            print(
                f"  {strategy}: block {record.block} ({record.events:,} events) known "
                f"{record.known_labels}, reviewed {record.reviewed} "
                f"({record.reviewed_positives} positive), {seconds:.0f} s",
                flush=True,
            )
            if not record.retrained:
                return
            arrived = by_block[record.block - 1]  # the delay is one block
            row = {
                "known": record.known_labels,
                "known_positives": tally["positives"] - record.reviewed_positives,
                "arrived_positives": arrived.reviewed_positives,
                **_measure(detector, test, test_labels, test_kinds),
                "reviewed_by_kind": _kind_counts(seen_kinds, seen_labels, oracle.reviewed),
                "unlabelled": record.unlabelled,
                "judge_rounds": detector.judge_.best_round if detector.judge_ else None,
                "seconds": round(seconds, 1),
            }
            rows.append(row)
            print(f"{strategy} {json.dumps(row)}", flush=True)
            results["total_seconds"] = round(time.perf_counter() - started, 1)
            results["load_average_1min"] = round(os.getloadavg()[0], 2)
            (out / f"results-{'-'.join(strategies)}.json").write_text(
                json.dumps(results, indent=2) + "\n"
            )

        result = feedback_loop(
            base, train, validation, oracle, spec["block_seconds"], args.schedule, strategy,
            on_block=checkpoint,
        )  # fmt: skip
        assert len(oracle.reviewed) == result.reviewed == tally["reviewed"]
    merged = _merged(out)
    (out / "table.md").write_text(_table(merged))
    if "truth" in merged["baselines"]:
        _plot(merged, out / "feedback_loop.png")
    print(_table(merged))
    print(f"total {time.perf_counter() - started:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
