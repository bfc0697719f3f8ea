"""`hybrid-ad publish` and `hybrid-ad stream`: the Redis Streams runtime on the command line.

`build_commands` takes the main command line's error handler, so these commands print one
line and exit with code 2 on bad input exactly like the others.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hybrid_ad.artifacts import check_output_dir
from hybrid_ad.progress import ProgressReporter

F = TypeVar("F", bound=Callable[..., Any])

RedisOption = Annotated[str, typer.Option("--redis", help="Redis URL: redis://HOST:PORT/DB.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines.")]


def publish_command(
    input: Annotated[Path, typer.Option("--input", help="Event file (CSV, CSV.gz, Parquet).")],
    redis: RedisOption,
    stream: Annotated[str, typer.Option("--stream", help="Stream to append to (or its prefix).")],
    rate: Annotated[
        float | None, typer.Option("--rate", help="Events per second; default: as fast as can.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N events.")] = None,
    shards: Annotated[
        int | None, typer.Option("--shards", help="Write to NAME:0 ... NAME:N-1.")
    ] = None,
    shard_key: Annotated[
        str | None, typer.Option("--shard-key", help="Column whose stable hash picks the shard.")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Replay an event file as a live stream: one entry per event, one text field per column."""
    from hybrid_ad.stream.publish import publish_file

    progress = ProgressReporter(enabled=not quiet)
    summary = publish_file(input, redis, stream, rate, limit, shards, shard_key, progress)
    where = ", ".join(f"{name} {count:,}" for name, count in summary.per_stream.items())
    progress.log(
        f"published {summary.events:,} events in {summary.seconds:.2f} s "
        f"({summary.rate:,.0f}/s) -> {where}"
    )


def stream_command(
    model: Annotated[Path, typer.Option("--model", help="Saved model directory (OUT/model).")],
    redis: RedisOption,
    stream: Annotated[str, typer.Option("--stream", help="Stream to score (a shard: NAME:i).")],
    group: Annotated[str, typer.Option("--group", help="Consumer group.")],
    alerts: Annotated[str, typer.Option("--alerts", help="Stream for one entry per alert.")],
    dead_letters: Annotated[
        str, typer.Option("--dead-letters", help="Stream for refused entries, with the reason.")
    ],
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Directory for the state and stream position.")
    ],
    consumer: Annotated[
        str | None, typer.Option("--consumer", help="Consumer name; default: the host name.")
    ] = None,
    scores: Annotated[
        str | None, typer.Option("--scores", help="Stream for every event's score.")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Entries per micro-batch.")] = 500,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Checkpoint (and XACK) every N events.")
    ] = 100_000,
    until_idle: Annotated[
        float | None,
        typer.Option("--until-idle", help="Exit after this many seconds without new entries."),
    ] = None,
    lease: Annotated[
        float,
        typer.Option("--lease", help="Seconds another consumer waits before taking over."),
    ] = 10.0,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")
    ] = None,
    contributions: Annotated[
        str,
        typer.Option(
            "--contributions",
            help="Reasons' judge part: approximate (Saabas, microseconds) or exact (TreeSHAP).",
        ),
    ] = "approximate",
    quiet: QuietOption = False,
) -> None:
    """Score a Redis stream with a consumer group: alerts exactly once, checkpoints, recovery."""
    from hybrid_ad.core.detector import Detector
    from hybrid_ad.core.scoring import check_contributions
    from hybrid_ad.jobs.pipeline import require_judge
    from hybrid_ad.stream.connection import connect
    from hybrid_ad.stream.processor import (
        StreamOptions,
        StreamProcessor,
        model_version,
        stop_on_sigterm,
    )

    options = StreamOptions(
        stream=stream,
        group=group,
        consumer=consumer or socket.gethostname(),
        alerts=alerts,
        dead_letters=dead_letters,
        checkpoint_dir=checkpoint,
        scores=scores,
        batch=batch,
        checkpoint_every=checkpoint_every,
        until_idle=until_idle,
        lease=lease,
        contributions=check_contributions(contributions),
    )
    check_output_dir(checkpoint, "--checkpoint")
    progress = ProgressReporter(enabled=not quiet)
    if not quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("hybrid_ad.stream")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    import torch

    torch.set_num_threads(1)  # one processor, one core: XGBoost runs with one thread too
    detector = Detector.load(model)
    require_judge(detector, model)
    processor = StreamProcessor(detector, model_version(model), connect(redis), options)
    if metrics_port is not None:
        processor.serve_metrics(metrics_port)
    with stop_on_sigterm(processor):
        summary = processor.run()
    progress.log(
        f"{stream}: scored {summary.events:,} entries in {summary.seconds:.1f} s "
        f"({summary.rate:,.0f}/s; {summary.replayed:,} replayed, {summary.claimed:,} claimed): "
        f"{summary.alerts:,} alerts, {summary.dead_letters:,} dead letters; "
        f"{summary.lifetime_events:,} entries and {summary.lifetime_alerts:,} alerts in all "
        f"-> {alerts}; checkpoint {checkpoint}"
    )


def build_commands(app: typer.Typer, user_errors: Callable[[F], F]) -> None:
    """Register `publish` and `stream` on the main app, each wrapped in `user_errors`."""
    app.command("publish")(user_errors(publish_command))
    app.command("stream")(user_errors(stream_command))
