"""`hybrid-ad retrain` and `hybrid-ad models list|promote|rollback` on the command line.

Like `hybrid_ad.labels.cli`, the commands take the main command line's error handler, so
bad input is one line on stderr and exit code 2. Only `retrain` loads the pipeline.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hybrid_ad.lifecycle.registry import Registry, Version
from hybrid_ad.progress import ProgressReporter

F = TypeVar("F", bound=Callable[..., Any])

RegistryOption = Annotated[
    Path, typer.Option("--registry", help="Registry directory: versions side by side + current.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs.")]


def retrain_command(
    model: Annotated[Path, typer.Option("--model", help="Saved model directory to start from.")],
    store: Annotated[
        str, typer.Option("--store", help="Label store: a SQLite file, or a postgresql://… URL.")
    ],
    data: Annotated[Path, typer.Option("--data", help="Events to retrain the judge on.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the new model.")],
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Use only labels known (labelled_at) by this time; default: now."
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Refit the judge and its threshold on the store's labels known by --as-of, keeping the
    label-free stages; write a new model whose manifest records the label snapshot."""
    from hybrid_ad.lifecycle.retrain import retrain

    progress = ProgressReporter(enabled=not quiet)
    result = retrain(model, store, data, out, as_of, progress)
    snapshot = result.snapshot
    matched = snapshot["matched_events"]
    progress.log(
        f"retrained the judge on {snapshot['events']:,} labels known by {snapshot['as_of']} "
        f"({matched['train']:,} in the train part, {matched['validation']:,} in validation); "
        f"threshold {result.threshold:.6g}; saved {result.out_dir}"
    )


def list_models(
    registry: RegistryOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions as JSON.")] = False,
) -> None:
    """The registry's versions, oldest first, with their manifest summary; * marks current."""
    versions = Registry(registry).versions()
    if as_json:
        payload = [{"version": v.name, "current": v.current, **v.summary} for v in versions]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    sys.stdout.write(_versions_text(registry, versions))


def promote_model(
    registry: RegistryOption,
    model: Annotated[
        str, typer.Option("--model", help="A model directory, or a version in the registry.")
    ],
    quiet: QuietOption = False,
) -> None:
    """Make a model the registry's current version (copied in first if it is outside)."""
    name = Registry(registry).promote(model)
    ProgressReporter(enabled=not quiet).log(f"{registry}: current is now {name}")


def rollback_model(registry: RegistryOption, quiet: QuietOption = False) -> None:
    """Undo the promotion of the current version: the one before it is current again."""
    name = Registry(registry).rollback()
    ProgressReporter(enabled=not quiet).log(f"{registry}: rolled back; current is now {name}")


def _versions_text(registry: Path, versions: list[Version]) -> str:
    if not versions:
        return f"{registry}: no versions\n"
    lines = []
    for version in versions:
        summary = version.summary
        labels = summary.get("labels")
        by_label = summary.get("labels_by_label") or {}
        trained = (
            f"labels {labels:,} (1: {by_label.get('1', 0):,}, 0: {by_label.get('0', 0):,}) "
            f"as of {summary.get('labels_as_of')} sha256 {summary.get('labels_sha256')}"
            if labels is not None
            else "no label snapshot"
        )
        ap = summary.get("test_average_precision")
        measured = f"test AP {ap:.3f}" if isinstance(ap, float) else "test AP n/a"
        mark = "*" if version.current else " "
        lines.append(f"{mark} {version.name}  {summary.get('label_source')}  {measured}  {trained}")
    return "\n".join(lines) + "\n"


def build_models_app(user_errors: Callable[[F], F]) -> typer.Typer:
    """The `models` sub-command group, each command wrapped in `user_errors`."""
    app = typer.Typer(
        no_args_is_help=True, help="A registry of model versions with a switchable current."
    )
    app.command("list")(user_errors(list_models))
    app.command("promote")(user_errors(promote_model))
    app.command("rollback")(user_errors(rollback_model))
    return app
