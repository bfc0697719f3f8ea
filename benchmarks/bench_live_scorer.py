"""Per-event latency of `Detector.live().score_event` on a saved model: events/s, p50, p99.

Run `make streaming` first (it writes the default model and events), then:

    .venv/bin/python benchmarks/bench_live_scorer.py [--model artifacts/streaming/model]

The first `--warm` events are scored but not timed (compilation, caches). One thread pinned.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hybrid_ad.core.detector import Detector  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "artifacts/streaming/model")
    parser.add_argument("--events", type=Path, default=REPO / "data/simulated/streaming.parquet")
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--measured", type=int, default=2000)
    args = parser.parse_args()
    detector = Detector.load(args.model)
    records = pd.read_parquet(args.events).iloc[: args.warm + args.measured].to_dict("records")
    live = detector.live()
    for record in records[: args.warm]:
        live.score_event(record)
    latencies = []
    start = time.perf_counter()
    for record in records[args.warm :]:
        before = time.perf_counter()
        live.score_event(record)
        latencies.append(time.perf_counter() - before)
    rate = len(latencies) / (time.perf_counter() - start)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    print(f"| `LiveScorer.score_event`, {len(latencies):,} events | {rate:,.0f} events/s |")
    print(f"| latency p50 / p99 | {p50:.2f} / {p99:.2f} ms |")


if __name__ == "__main__":
    main()
