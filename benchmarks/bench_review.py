"""`hybrid-ad review` over a million events (target: under 30 s), and where the time goes.

    .venv/bin/python benchmarks/bench_review.py [--data ../shared/data/creditcard.csv.gz]
        [--rows 1000000] [--budget 200] [--labels 10000] [--out benchmarks/out/review]
        [--repeat 3] [--baseline-python ../main/.venv/bin/python] [--strategies mixed ...]

Fits the default config (`config/config.yaml`) on the shipped 50,000-transaction demo file,
then builds the review input from the full credit-card file repeated with its times shifted by
two days per copy (so every row is a distinct event) and cut to `--rows`, as Parquet. A SQLite
label store holds verdicts on `--labels` of those events. Timed: the whole command in a new
process for each strategy (and `mixed --per-day`), and, in this process, each step of
`review_file` once (read, event ids, behavioural preparation, scoring, choosing and reasons).
With `--baseline-python` (the interpreter of another checkout, e.g. main's), each command is
also run under that code, alternating with this one, `--repeat` times each: the medians and
their ratio come from the same minutes of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from hybrid_ad.config import load_config
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import event_ids, load_events, read_table, time_split
from hybrid_ad.jobs.review import review_queue
from hybrid_ad.labels import open_store
from hybrid_ad.stages.features import prepare_events

REPO = Path(__file__).resolve().parents[1]
TWO_DAYS = 2 * 86_400
T = TypeVar("T")


def _build_input(data: Path, rows: int, path: Path) -> int:
    source = read_table(data)
    copies = []
    for copy in range(-(-rows // len(source))):
        copies.append(source.assign(Time=source["Time"] + copy * TWO_DAYS))
    frame = pd.concat(copies, ignore_index=True).iloc[:rows]
    frame.to_parquet(path, index=False)
    return len(frame)


def _timed(step: str, timings: dict[str, float], work: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = work()
    timings[step] = round(time.perf_counter() - start, 2)
    return result


def _child_cpu() -> float:
    """User + system CPU seconds of finished child processes: less noisy than wall time on
    a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/creditcard.csv.gz")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/review")
    parser.add_argument(
        "--reuse", action="store_true", help="Keep the model and events of an earlier run."
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline-python", type=Path, default=None)
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=["top", "uncertain", "mixed", "mixed --per-day"],
        default=["top", "uncertain", "mixed", "mixed --per-day"],
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    config = load_config(REPO / "config/config.yaml")
    events, _ = load_events(REPO / "data/demo/creditcard_50k.csv.gz", config.data)
    split = time_split(events, config.data.split)
    model, events_path = args.out / "model", args.out / "events.parquet"
    start = time.perf_counter()
    if not (args.reuse and model.is_dir()):
        Detector(config).fit(split.train, validation=split.validation).save(model)
    fit_s = time.perf_counter() - start
    if not (args.reuse and events_path.is_file()):
        _build_input(args.data, args.rows, events_path)
    detector = Detector.load(model)
    raw = read_table(events_path)
    rows = len(raw)
    ids = event_ids(raw, detector.config.data)
    store = args.out / "labels.db"
    store.unlink(missing_ok=True)
    chosen = np.random.default_rng(0).choice(len(ids), args.labels, replace=False)
    with open_store(store, create=True) as target:
        target.append(
            pd.DataFrame({"event_id": ids.iloc[chosen].to_numpy(), "label": 0, "source": "bench"})
        )

    steps: dict[str, float] = {}
    raw = _timed("read", steps, lambda: read_table(events_path))
    ids = _timed("event ids", steps, lambda: event_ids(raw, detector.config.data))
    prepared = _timed("prepare", steps, lambda: prepare_events(raw, detector.config, "bench"))
    with open_store(store) as source:
        labelled = _timed("store", steps, lambda: set(source.latest()["event_id"]))
    _timed(
        "score, choose, explain",
        steps,
        lambda: review_queue(detector, prepared, ids, args.budget, "mixed", False, labelled),
    )

    commands: dict[str, dict[str, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    interpreters = {"this": sys.executable}
    if args.baseline_python is not None:
        interpreters["baseline"] = str(args.baseline_python)
    variants = {
        "top": ["--strategy", "top"],
        "uncertain": ["--strategy", "uncertain"],
        "mixed": ["--strategy", "mixed"],
        "mixed --per-day": ["--strategy", "mixed", "--per-day"],
    }
    for name in args.strategies:
        walls: dict[str, list[float]] = {code: [] for code in interpreters}
        cpus: dict[str, list[float]] = {code: [] for code in interpreters}
        for _ in range(args.repeat):
            for code, python in interpreters.items():
                command = [
                    python, "-m", "hybrid_ad.cli", "review", "--model", str(model),
                    "--input", str(events_path), "--budget", str(args.budget), "--store",
                    str(store), "--output",
                    str(args.out / f"queue_{code}_{name.replace(' --', '_')}.csv"), "--quiet",
                    *variants[name],
                ]  # fmt: skip
                start, before = time.perf_counter(), _child_cpu()
                subprocess.run(command, check=True)
                walls[code].append(time.perf_counter() - start)
                cpus[code].append(_child_cpu() - before)
        commands[name] = {code: round(float(np.median(v)), 2) for code, v in walls.items()}
        cpu[name] = {code: round(float(np.median(v)), 2) for code, v in cpus.items()}
        if "baseline" in interpreters:
            commands[name]["ratio"] = round(commands[name]["this"] / commands[name]["baseline"], 3)
            cpu[name]["ratio"] = round(cpu[name]["this"] / cpu[name]["baseline"], 3)
        print(name, commands[name], cpu[name], flush=True)
    result = {
        "rows": rows,
        "budget": args.budget,
        "labelled_in_store": args.labels,
        "fit_on_demo_s": round(fit_s, 1),
        "steps_s": steps,
        "repeat": args.repeat,
        "command_s (median wall)": commands,
        "command_cpu_s (median user + sys)": cpu,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    (args.out / "bench_review.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
