"""Feature backfill: Spark on local[N] against the single-process engine, on the same log.

    .venv/bin/python benchmarks/bench_spark.py --accounts 20000 --days 30 --runs 1

Simulates the streaming-service log (unless it exists), then runs `hybrid-ad features
--engine local` and `--engine spark --master local[N]` with the shipped streaming config,
alternating, each in its own process. Wall time is the command's; peak memory is the largest
sum of resident memory over the command's process tree (Spark: the JVM and its Python
workers), sampled every 0.2 s. Prints a Markdown table for BENCHMARKS.md and checks that both
tables hold the same features (1e-9 relative).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("hybrid-ad"))


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def measure(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of the command's process tree."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    process = psutil.Process(child.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process))
            done.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    code = child.wait()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    return wall, peak


def same_features(local: Path, spark: Path, config: Path) -> float:
    """Largest relative difference between the two tables' feature columns."""
    sys.path.insert(0, str(REPO / "src"))
    from hybrid_ad.behavioural.batch import feature_names
    from hybrid_ad.config import load_config

    names = feature_names(load_config(config).features.behavioural)
    worst = 0.0
    for name in names:
        a = pq.read_table(local, columns=[name]).column(0).to_numpy()
        b = pq.read_table(spark, columns=[name]).column(0).to_numpy()
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1.0))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "spark")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    events = args.out / f"streaming_{args.accounts}x{args.days}.parquet"
    if not events.exists():
        subprocess.run(
            [CLI, "simulate", "--out", str(events), "--accounts", str(args.accounts),
             "--days", str(args.days), "--seed", "7", "--quiet"],
            check=True,
        )  # fmt: skip
    rows = pq.ParquetFile(events).metadata.num_rows
    config = REPO / "config" / "streaming_service.yaml"
    env = {
        **os.environ,
        "PYSPARK_SUBMIT_ARGS": f"--driver-memory {args.driver_memory} pyspark-shell",
    }
    results: dict[str, list[tuple[float, int]]] = {"local": [], "spark": []}
    for _ in range(args.runs):
        for engine in results:
            command = [CLI, "features", "--engine", engine, "--config", str(config),
                       "--input", str(events), "--output", str(args.out / f"table_{engine}"),
                       "--quiet"]  # fmt: skip
            if engine == "spark":
                command += ["--master", args.master]
            results[engine].append(measure(command, env))
            print(engine, results[engine][-1], flush=True)
    worst = same_features(args.out / "table_local", args.out / "table_spark", config)
    cores = os.cpu_count()
    print(f"\n{rows:,} events ({args.accounts:,} accounts x {args.days} days), {cores} cores, "
          f"{args.runs} run(s) each, median; features equal to {worst:.1e} relative\n")  # fmt: skip
    print("| engine | wall s | peak memory GiB | events/s |")
    print("|---|---|---|---|")
    base = statistics.median(wall for wall, _ in results["local"])
    for engine, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        peak = statistics.median(p for _, p in runs) / 2**30
        label = "local (one process)" if engine == "local" else f"spark {args.master}"
        print(
            f"| {label} | {wall:.1f} ({wall / base:.2f}x local) | {peak:.2f} | {rows / wall:,.0f} |"
        )


if __name__ == "__main__":
    main()
