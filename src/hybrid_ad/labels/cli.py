"""`hybrid-ad labels import|export|stats`: the label store from the command line.

`build_app` takes the main command line's error handler, so these commands print one line
and exit with code 2 on bad input exactly like the others.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hybrid_ad.labels.store import (
    TIME_FORMAT,
    LabelStats,
    open_store,
    read_verdicts,
    utc_timestamp,
    validate_verdicts,
)
from hybrid_ad.progress import ProgressReporter

F = TypeVar("F", bound=Callable[..., Any])

StoreOption = Annotated[
    str,
    typer.Option("--store", help="Label store: a SQLite file, or a postgresql://… URL."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No log line.")]


def import_labels(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV: event_id, label (0/1), source; optional analyst, labelled_at, note.",
            dir_okay=False,
        ),
    ],
    store: StoreOption,
    quiet: QuietOption = False,
) -> None:
    """Append a file of verdicts to the store: all of them, or none if any row is bad."""
    verdicts = validate_verdicts(read_verdicts(file), str(file))
    with open_store(store, create=True) as target:
        count = target.append(verdicts, str(file))
        ProgressReporter(enabled=not quiet).log(
            f"imported {count:,} verdicts from {file} into {target.location}"
        )


def export_labels(
    store: StoreOption,
    out: Annotated[Path, typer.Option("--out", help="CSV (or CSV.gz, Parquet) to write.")],
    latest: Annotated[
        bool, typer.Option("--latest", help="Only the verdict that counts for each event.")
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Only verdicts labelled at or before this time (ISO 8601)."),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Write the store's verdicts in the import format, in insertion order."""
    cut_off = None if as_of is None else utc_timestamp(as_of, "--as-of")
    with open_store(store) as source:
        count = source.export(out, latest=latest, as_of=cut_off)
        ProgressReporter(enabled=not quiet).log(
            f"exported {count:,} verdicts from {source.location} to {out}"
        )


def labels_stats(
    store: StoreOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Verdicts per source and label, distinct events, time range, latest labels."""
    with open_store(store) as source:
        stats = source.stats()
        location = source.location
    if as_json:
        sys.stdout.write(json.dumps(stats.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(_stats_text(location, stats))


def _stats_text(location: str, stats: LabelStats) -> str:
    lines = [f"label store: {location}", f"verdicts: {stats.verdicts:,} on {stats.events:,} events"]
    if stats.first_labelled_at is not None and stats.last_labelled_at is not None:
        first = stats.first_labelled_at.strftime(TIME_FORMAT)
        last = stats.last_labelled_at.strftime(TIME_FORMAT)
        lines.append(f"labelled_at: {first} .. {last}")
    width = max([len("source"), *(len(source) for source, _, _ in stats.by_source)])
    lines.append(f"{'source':<{width}}  label  verdicts")
    lines += [f"{s:<{width}}  {label:>5}  {n:>8,}" for s, label, n in stats.by_source]
    latest = ", ".join(f"{label}: {n:,}" for label, n in stats.latest_by_label.items())
    lines.append(f"latest verdict per event: {latest or 'none'}")
    return "\n".join(lines) + "\n"


def build_app(user_errors: Callable[[F], F]) -> typer.Typer:
    """The `labels` sub-command group, each command wrapped in `user_errors`."""
    app = typer.Typer(
        no_args_is_help=True,
        help="Analysts' and chargebacks' verdicts: an append-only label store.",
    )
    app.command("import")(user_errors(import_labels))
    app.command("export")(user_errors(export_labels))
    app.command("stats")(user_errors(labels_stats))
    return app
