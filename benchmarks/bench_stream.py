"""Throughput through Redis: `hybrid-ad stream`'s processor, end to end, next to the core alone.

Run `make streaming` first (it writes the model and the events), then:

    .venv/bin/python benchmarks/bench_stream.py [--model artifacts/streaming/model]
        [--events data/simulated/streaming.parquet] [--limit 100000] [--runs 3]

Per run, on a private redis-server (started here, on a free port): publish the first
`--limit` events (timed apart), then one processor, one thread, micro-batches of `--batch`
from XREADGROUP to XACK (alerts and dead letters written, checkpoints every 100,000 events,
the default); the processor's time runs from its start to the end of its last batch (the
idle wait that ends it is not counted). The baseline, in the same run: the core alone,
`live.score_many` over the same events as text columns in the same batches. Medians over the
runs, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402

from hybrid_ad.core.detector import Detector  # noqa: E402
from hybrid_ad.data import read_table  # noqa: E402
from hybrid_ad.stream.connection import connect  # noqa: E402
from hybrid_ad.stream.processor import (  # noqa: E402
    StreamOptions,
    StreamProcessor,
    StreamSummary,
    model_version,
)
from hybrid_ad.stream.publish import publish_file, text_columns  # noqa: E402
from hybrid_ad.stream.server import private_redis  # noqa: E402
from machine_context import machine  # noqa: E402  (benchmarks/, the script's own folder)

REPO = Path(__file__).resolve().parents[1]


def core_rate(detector: Detector, columns: dict[str, list[str]], batch: int) -> float:
    live = detector.live()
    n = len(next(iter(columns.values())))
    start = time.perf_counter()
    for at in range(0, n, batch):
        live.score_many({name: values[at : at + batch] for name, values in columns.items()})
    return n / (time.perf_counter() - start)


def stream_rate(
    detector: Detector, version: str, url: str, work: Path, batch: int
) -> tuple[float, StreamSummary]:
    client = connect(url)
    options = StreamOptions(
        stream="events",
        group="bench",
        consumer="bench-1",
        alerts="alerts",
        dead_letters="dead-letters",
        checkpoint_dir=work / "checkpoint",
        batch=batch,
        checkpoint_every=100_000,
        until_idle=0.5,
    )  # reasons for the alerts with approximate contributions, the stream's default
    last = [0.0]

    def on_batch(_: StreamSummary) -> None:
        last[0] = time.perf_counter()

    processor = StreamProcessor(detector, version, client, options, on_batch=on_batch)
    start = time.perf_counter()
    summary = processor.run()
    return summary.events / (last[0] - start), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "artifacts/streaming/model")
    parser.add_argument("--events", type=Path, default=REPO / "data/simulated/streaming.parquet")
    parser.add_argument("--limit", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"start: {machine()}", flush=True)
    detector = Detector.load(args.model)
    version = model_version(args.model)
    frame = read_table(args.events).iloc[: args.limit]
    columns = text_columns(frame)
    subset = Path(tempfile.mkdtemp(prefix="bench_stream_")) / "events.parquet"
    frame.to_parquet(subset)
    rows: list[tuple[float, float, float, float, float]] = []
    with private_redis(subset.parent / "redis") as url:
        for run in range(args.runs):
            client = connect(url)
            client.flushall()
            published = publish_file(subset, url, "events")
            work = subset.parent / f"run{run}"
            rate, summary = stream_rate(detector, version, url, work, args.batch)
            core = core_rate(detector, columns, args.batch)
            share = summary.checkpoint_seconds / (summary.events / rate)
            rows.append((published.rate, rate, core, rate / core, share))
            print(
                f"run {run + 1}: publish {published.rate:,.0f}/s, stream {rate:,.0f}/s, "
                f"core {core:,.0f}/s, ratio {rate / core:.2f}; {summary.alerts:,} alerts "
                f"of {summary.events:,} events; {summary.checkpoints} checkpoints took "
                f"{summary.checkpoint_seconds:.2f} s ({share:.0%} of the stream's time)",
                flush=True,
            )
    publish, stream, core, ratio, share = (
        statistics.median(row[i] for row in rows) for i in range(5)
    )
    print(f"\nend: {machine()}")
    print(f"{len(frame):,} events, batches of {args.batch}, one thread, medians of {args.runs}:")
    print("| measure | value |")
    print("| --- | ---: |")
    print(f"| publish (`publish_file`, pipelines of 1,000 XADD) | {publish:,.0f} events/s |")
    print(f"| stream, end to end (XREADGROUP to XACK) | {stream:,.0f} events/s |")
    print(f"| core alone (`live.score_many`, same text batches) | {core:,.0f} events/s |")
    print(f"| ratio stream / core (median of the runs' ratios) | {ratio:.2f} |")
    print(f"| share of the stream's time in checkpoints | {share:.0%} |")


if __name__ == "__main__":
    main()
