"""Benchmark of the behavioural features: batch time, live throughput, state size, peak RSS.

Run: .venv/bin/python benchmarks/bench_behavioural.py [--events 1500000 --entities 5000]

The event log is synthetic (seeded numpy): customers with skewed activity, bursts, terminals,
amounts and rare delayed labels. It exercises the engines, it does not model real fraud.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import time
import tracemalloc

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # one core: pin before numpy starts its thread pools

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hybrid_ad.behavioural.batch import (  # noqa: E402
    BehaviouralConfig,
    DistinctConfig,
    LabelRiskConfig,
    compute_batch,
    feature_names,
)
from hybrid_ad.behavioural.live import FeatureState  # noqa: E402

DAY = 86400.0


def synthetic_events(n_events: int, n_entities: int, seed: int = 7, days: float = 90.0):
    """Arrival-ordered events: skewed customer activity, 2% of events in bursts, integer-second
    timestamps (so ties happen), lognormal amounts, labels on 0.2% (more inside bursts)."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_entities)
    customer = rng.choice(n_entities, size=n_events, p=activity / activity.sum())
    times = rng.uniform(0.0, days * DAY, n_events)
    burst = rng.random(n_events) < 0.02
    anchor = rng.integers(0, n_events, burst.sum())
    customer[burst] = customer[anchor]
    times[burst] = times[anchor] + rng.exponential(60.0, burst.sum())
    times = np.floor(times)
    order = np.argsort(times, kind="stable")
    amount = np.round(rng.lognormal(3.5, 1.2, n_events) * np.where(burst, 3.0, 1.0), 2)
    label = (rng.random(n_events) < np.where(burst, 0.05, 0.001)).astype(np.int8)
    return pd.DataFrame(
        {
            "time": times[order],
            "customer_id": customer[order],
            "terminal_id": rng.integers(0, max(1, n_entities // 5), n_events),
            "amount": amount[order],
            "label": label[order],
        }
    )


BATCH_CONFIG = BehaviouralConfig(
    entity_keys=["customer_id", "terminal_id"],
    windows=["1h", "1d", "7d"],
    last_n=[20],
    values=["amount"],
    aggregates=["count", "sum", "mean", "std", "min", "max", "ratio_to_mean"],
    session_gap="30m",
    label_risk=LabelRiskConfig(window="30d", delay="7d"),
    entity_ttl="60d",
)
"""Batch: 2 keys x (3 time windows + 1 last-N) x all aggregates, sessions, label risk."""

LIVE_CONFIG = BehaviouralConfig(
    entity_keys=["customer_id"],
    windows=["1h", "1d"],
    last_n=[20],
    values=["amount"],
    aggregates=["count", "sum", "mean", "std", "max", "ratio_to_mean"],
    session_gap="30m",
    entity_ttl="30d",
)
"""Live, the 'realistic' config: 1 key, 2 time windows + 1 last-N, 1 value, session, gap."""

DISTINCT_CONFIG = LIVE_CONFIG.model_copy(
    update={
        "distinct": [
            DistinctConfig(column="terminal_id", windows=["1h", "1d"]),
            DistinctConfig(period="1h", windows=["1d"]),
        ]
    }
)
"""The live config plus distinct counts: terminals per customer in 1h and 1d, active hours in
1d (3 more features); timed in the same run as a ratio to the live config."""


def median_time(fn, repeats: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        result = None  # free the previous result first: peak memory is one result, not two
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def live_throughput(frame: pd.DataFrame, config: BehaviouralConfig, warm: int, measured: int):
    """Events/s of update_many and of update(dict) on `measured` events after `warm` events."""
    warm_part = frame.iloc[:warm]
    part = frame.iloc[warm : warm + measured]
    records = part.to_dict("records")

    def fresh() -> FeatureState:
        state = FeatureState(config, "label")
        state.update_many(warm_part)
        return state

    many, single, many_cpu = [], [], []
    for _ in range(3):
        state = fresh()
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        state.update_many(part)
        many.append(len(part) / (time.perf_counter() - start))
        many_cpu.append(len(part) / (time.process_time() - start_cpu))
        state = fresh()
        gc.collect()
        start = time.perf_counter()
        for record in records:
            state.update(record)
        single.append(len(part) / (time.perf_counter() - start))
    return statistics.median(many), statistics.median(single), statistics.median(many_cpu)


def state_size(frame: pd.DataFrame, config: BehaviouralConfig) -> tuple[int, float, float]:
    """Entities held, traced Python bytes per entity, JSON bytes per entity."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    state = FeatureState(config, "label")
    features = state.update_many(frame)
    del features
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    entities = state.n_entities
    json_bytes = len(json.dumps(state.to_dict()))
    return entities, held / entities, json_bytes / entities


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--live-events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    frame = synthetic_events(args.events, args.entities, args.seed)
    batch_s, batch = median_time(lambda: compute_batch(frame, BATCH_CONFIG, "time", "label"))
    assert isinstance(batch, pd.DataFrame)
    live_s, _ = median_time(lambda: compute_batch(frame, LIVE_CONFIG, "time", "label"))
    del batch
    warm = min(100_000, args.events // 4)
    measured = min(args.live_events, args.events - warm)
    many_rate, single_rate, cpu_rate = live_throughput(frame, LIVE_CONFIG, warm, measured)
    d_many, d_single, _ = live_throughput(frame, DISTINCT_CONFIG, warm, measured)
    d_batch_s, _ = median_time(lambda: compute_batch(frame, DISTINCT_CONFIG, "time", "label"))
    _, d_traced, d_json = state_size(frame.iloc[: min(args.events, 300_000)], DISTINCT_CONFIG)
    size_events = min(args.events, 300_000)
    entities, traced, json_size = state_size(frame.iloc[:size_events], LIVE_CONFIG)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    n_batch = len(feature_names(BATCH_CONFIG))
    n_live = len(feature_names(LIVE_CONFIG))
    print(
        f"## Behavioural features: {args.events:,} events, {args.entities:,} customers "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__})\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| batch, {n_batch} features (2 keys), median of 3 | {batch_s:.2f} s |")
    print(f"| batch, live config ({n_live} features), median of 3 | {live_s:.2f} s |")
    print(f"| live `update_many`, {measured:,} events, median of 3 | {many_rate:,.0f} events/s |")
    print(f"| live `update_many`, per CPU second (process time) | {cpu_rate:,.0f} events/s |")
    print(
        f"| live `update(dict)`, {measured:,} events, median of 3 | {single_rate:,.0f} events/s |"
    )
    print(f"| live state after {size_events:,} events | {entities:,} entities |")
    print(f"| live state, traced Python memory | {traced:,.0f} bytes/entity |")
    print(f"| live state as JSON | {json_size:,.0f} bytes/entity |")
    print(
        f"| + distinct counts: batch | {d_batch_s:.2f} s ({d_batch_s / live_s:.2f}x the live "
        "config) |"
    )
    print(
        f"| + distinct counts: live `update_many` | {d_many:,.0f} events/s "
        f"({many_rate / d_many:.2f}x the time per event) |"
    )
    print(
        f"| + distinct counts: live `update(dict)` | {d_single:,.0f} events/s "
        f"({single_rate / d_single:.2f}x the time per event) |"
    )
    print(
        f"| + distinct counts: state | {d_traced:,.0f} bytes/entity traced, {d_json:,.0f} as JSON |"
    )
    print(f"| peak RSS of this process | {peak_mib:,.0f} MiB |")
    print(
        f"\nLoad average at the end: {os.getloadavg()[0]:.2f} (wall-clock rates share the cores)."
    )


if __name__ == "__main__":
    main()
