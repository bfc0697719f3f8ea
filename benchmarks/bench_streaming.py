"""Behavioural features on the simulated streaming-service log, with the shipped config.

Batch: `prepare_events` (validation + behavioural features) over the whole log. Live: the
`FeatureState` of the same config, fed the first `--live-events` events (default: all) through
`update_many`, and the first `--single-events` one at a time through `update(dict)`. One thread
pinned; medians of `--repeats` runs. Prints a Markdown table.

    .venv/bin/python benchmarks/bench_streaming.py [--accounts 5000 --days 30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

from hybrid_ad.behavioural.batch import feature_names  # noqa: E402
from hybrid_ad.behavioural.live import FeatureState  # noqa: E402
from hybrid_ad.config import load_config  # noqa: E402
from hybrid_ad.data import EVENT_SECONDS, validate_events  # noqa: E402
from hybrid_ad.simulation.streaming import simulate_events  # noqa: E402
from hybrid_ad.stages.features import prepare_events  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=5000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--live-events", type=int, default=None)
    parser.add_argument("--single-events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = load_config(REPO / "config" / "streaming_service.yaml")
    behavioural = config.features.behavioural
    assert behavioural is not None
    start = time.perf_counter()
    log = simulate_events(args.accounts, args.days, seed=7)
    simulate_s = time.perf_counter() - start
    batch_s = _median_seconds(lambda: prepare_events(log, config, "simulated"), args.repeats)
    events, _ = validate_events(log.iloc[: args.live_events], config.data, "simulated")

    def live() -> FeatureState:
        state = FeatureState(behavioural, time_column=EVENT_SECONDS)
        state.update_many(events)
        return state

    live_s = _median_seconds(live, args.repeats)
    records = events.iloc[: args.single_events].to_dict("records")

    def one_by_one() -> None:
        state = FeatureState(behavioural, time_column=EVENT_SECONDS)
        for record in records:
            state.update(record)

    single_s = _median_seconds(one_by_one, args.repeats)
    state = live()
    state_bytes = len(json.dumps(state.to_dict()))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = f"{len(log):,} events, {args.accounts:,} accounts, {args.days} days"
    print(f"| measure ({size}) | value |")
    print("| --- | --- |")
    print(f"| simulate | {simulate_s:.1f} s |")
    print(f"| behavioural features | {len(feature_names(behavioural))} |")
    print(f"| batch `prepare_events`, median of {args.repeats} | {batch_s:.1f} s |")
    print(
        f"| live `FeatureState.update_many`, first {len(events):,} events, median of "
        f"{args.repeats} | {len(events) / live_s:,.0f} events/s |"
    )
    print(
        f"| live `FeatureState.update(dict)`, first {len(records):,} events, median of "
        f"{args.repeats} | {len(records) / single_s:,.0f} events/s |"
    )
    print(
        f"| live state: {state.n_entities:,} entities over all keys | "
        f"{state_bytes / max(state.n_entities, 1):,.0f} bytes per entity as JSON |"
    )
    print(f"| peak RSS | {rss:,.0f} MiB |")


if __name__ == "__main__":
    main()
