"""The `hybrid-ad` command line: the whole job (`run`) and each of its steps.

Errors a user can fix are printed as one line on stderr with exit code 2; nothing else
escapes as a traceback unless it is a bug.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from hybrid_ad.artifacts import (
    check_output_dir,
    check_output_file,
    check_publishable,
    published_outputs,
)
from hybrid_ad.config import Config, load_config
from hybrid_ad.data import check_table_suffix
from hybrid_ad.errors import HybridADError, InputError
from hybrid_ad.labels import cli as labels_cli
from hybrid_ad.lifecycle import cli as lifecycle_cli
from hybrid_ad.progress import ProgressReporter
from hybrid_ad.service import cli as service_cli
from hybrid_ad.spark import cli as spark_cli
from hybrid_ad.stream import cli as stream_cli

if TYPE_CHECKING:  # the pipeline loads torch and XGBoost: only the commands that use it do
    from hybrid_ad.core.detector import Detector
    from hybrid_ad.jobs import pipeline

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Hybrid anomaly detection: domain rules, an autoencoder and an XGBoost judge.",
)
stdout = Console()
stderr = Console(stderr=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="YAML config file.", dir_okay=False)
]
DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="Event file (CSV, CSV.gz, Parquet); default: data.path."),
]
OutOption = Annotated[
    Path | None, typer.Option("--out", help="Artifact directory; default: artifacts.out_dir.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config key, value read as YAML (repeatable): --set judge.max_depth=4",
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(command: F) -> F:
    """Turn the package's errors into one line on stderr and exit code 2."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except HybridADError as exc:
            # one line whatever a library put in the message
            message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def _setup(
    config_path: Path, out: Path | None, quiet: bool, overrides: list[str] | None
) -> tuple[Config, Path, ProgressReporter]:
    from hybrid_ad.jobs import pipeline

    config = load_config(config_path, overrides or ())
    out_dir = out or config.artifacts.out_dir
    check_output_dir(out_dir, "--out")
    check_publishable(out_dir, pipeline.OUTPUTS)
    return config, out_dir, ProgressReporter(enabled=not quiet)


def _trained(
    config: Path,
    data: Path | None,
    out: Path | None,
    quiet: bool,
    overrides: list[str] | None,
    needs_judge: bool = False,
) -> tuple[pipeline.LoadedData, Detector, Path, ProgressReporter]:
    """What every step after `train-ae` starts from: the data and the detector saved so far."""
    from hybrid_ad.jobs import pipeline

    settings, out_dir, progress = _setup(config, out, quiet, overrides)
    loaded = pipeline.load_data(settings, data)
    detector = pipeline.load_trained(out_dir, loaded, needs_judge=needs_judge)
    detector.progress = progress
    return loaded, detector, out_dir, progress


@app.command()
@_user_errors
def run(
    config: ConfigOption = Path("config/config.yaml"),
    data: DataOption = None,
    out: OutOption = None,
    quiet: QuietOption = False,
    set_: SetOption = None,
) -> None:
    """Fit every stage, evaluate them on the test split, write the report, save the model."""
    from hybrid_ad.jobs import pipeline

    settings, out_dir, progress = _setup(config, out, quiet, set_)
    metrics = pipeline.run(settings, data, out_dir, progress)
    if metrics is not None:
        _print_summary(metrics, out_dir, quiet)


@app.command("train-ae")
@_user_errors
def train_ae(
    config: ConfigOption = Path("config/config.yaml"),
    data: DataOption = None,
    out: OutOption = None,
    quiet: QuietOption = False,
    set_: SetOption = None,
) -> None:
    """Fit rules, scaling and the autoencoder; save them to OUT/model (no judge yet)."""
    from hybrid_ad.jobs import pipeline

    settings, out_dir, progress = _setup(config, out, quiet, set_)
    loaded = pipeline.load_data(settings, data)
    pipeline.train_autoencoder_step(settings, loaded, out_dir, progress)
    progress.log(f"saved label-free stages to {out_dir / pipeline.MODEL_DIR}")


@app.command()
@_user_errors
def embed(
    config: ConfigOption = Path("config/config.yaml"),
    data: DataOption = None,
    out: OutOption = None,
    quiet: QuietOption = False,
    set_: SetOption = None,
) -> None:
    """Write reconstruction errors and embeddings of each split to OUT/embeddings/*.parquet."""
    from hybrid_ad.jobs import pipeline

    loaded, detector, out_dir, progress = _trained(config, data, out, quiet, set_)
    for path in pipeline.embed_step(detector, loaded, out_dir):
        progress.log(f"wrote {path}")


@app.command("train-judge")
@_user_errors
def train_judge(
    config: ConfigOption = Path("config/config.yaml"),
    data: DataOption = None,
    out: OutOption = None,
    quiet: QuietOption = False,
    set_: SetOption = None,
) -> None:
    """Fit the judge on top of the saved label-free stages and save the whole detector."""
    from hybrid_ad.jobs import pipeline

    loaded, detector, out_dir, progress = _trained(config, data, out, quiet, set_)
    pipeline.train_judge_step(detector, loaded, out_dir)
    progress.log(f"saved detector to {out_dir / pipeline.MODEL_DIR}")


@app.command()
@_user_errors
def evaluate(
    config: ConfigOption = Path("config/config.yaml"),
    data: DataOption = None,
    out: OutOption = None,
    quiet: QuietOption = False,
    set_: SetOption = None,
) -> None:
    """Compare every stage on the test split; write metrics.json and the HTML report."""
    from hybrid_ad.jobs import pipeline

    loaded, detector, out_dir, progress = _trained(config, data, out, quiet, set_, needs_judge=True)
    with published_outputs(out_dir, pipeline.OUTPUTS) as stage:
        metrics = pipeline.evaluate_step(detector, loaded, stage, pipeline.Timer(), progress)
        pipeline.save_evaluated(detector, stage, metrics)
        pipeline.write_metrics(stage, metrics)
    _print_summary(metrics, out_dir, quiet)


@app.command()
@_user_errors
def score(
    model: Annotated[Path, typer.Option("--model", help="Saved model directory (OUT/model).")],
    input: Annotated[Path, typer.Option("--input", help="Events to score.")],
    output: Annotated[Path, typer.Option("--output", help="CSV, CSV.gz or Parquet to write.")],
    quiet: QuietOption = False,
    engine: spark_cli.EngineOption = "local",
    master: spark_cli.MasterOption = "local[2]",
    contributions: Annotated[
        str,
        typer.Option(
            "--contributions",
            help="Reasons' judge part: exact (TreeSHAP) or approximate (Saabas, as live).",
        ),
    ] = "exact",
) -> None:
    """Score events with a saved model: one output row per input row, in input order
    (--engine spark: a Parquet folder, see docs/spark.md)."""
    from hybrid_ad.core.scoring import check_contributions
    from hybrid_ad.jobs import pipeline

    spark_cli.check_engine(engine)
    method = check_contributions(contributions)
    if engine == "spark" and method != "exact":
        raise InputError("--contributions approximate: only with --engine local")
    progress = ProgressReporter(enabled=not quiet)
    if engine == "spark":
        rows = spark_cli.score_spark(model, input, output, master)
    else:
        rows = pipeline.score_file(model, input, output, progress, method)
    progress.log(f"scored {rows:,} events -> {output}")


@app.command()
@_user_errors
def review(
    model: Annotated[Path, typer.Option("--model", help="Saved model directory (OUT/model).")],
    input: Annotated[Path, typer.Option("--input", help="Events to choose from.")],
    budget: Annotated[int, typer.Option("--budget", help="Events in the queue (per day).")],
    output: Annotated[Path, typer.Option("--output", help="Queue CSV; QUEUE.html beside it.")],
    per_day: Annotated[
        bool, typer.Option("--per-day", help="The budget per calendar day (UTC) of event time.")
    ] = False,
    strategy: Annotated[str, typer.Option("--strategy", help="top, uncertain or mixed.")] = "mixed",
    store: Annotated[
        str | None, typer.Option("--store", help="Label store: its events are skipped.")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """The events an analyst should review next, with scores and reasons (CSV and HTML)."""
    from hybrid_ad.jobs.review import review_file

    progress = ProgressReporter(enabled=not quiet)
    result = review_file(model, input, output, budget, strategy, per_day, store, progress)
    progress.log(
        f"queued {len(result.queue):,} of {result.events:,} events ({result.skipped_labelled:,} "
        f"already labelled) -> {result.csv_path}, {result.html_path}"
    )


@app.command()
@_user_errors
def drift(
    model: Annotated[Path, typer.Option("--model", help="Saved model directory (OUT/model).")],
    input: Annotated[Path, typer.Option("--input", help="Events to compare.")],
    output: Annotated[Path, typer.Option("--output", help="DRIFT.json; DRIFT.html beside it.")],
    window: Annotated[str, typer.Option("--window", help="Time window: 6h, 1d, 1w.")] = "1d",
    threshold: Annotated[float, typer.Option("--threshold", help="Flag PSI above this.")] = 0.2,
    min_rows: Annotated[
        int, typer.Option("--min-rows", help="Windows with fewer events are not judged.")
    ] = 100,
    quiet: QuietOption = False,
) -> None:
    """PSI and KS of every judge input and stage score per window against the model's
    reference profile (JSON and HTML)."""
    from hybrid_ad.monitoring.model_drift import drift_file

    progress = ProgressReporter(enabled=not quiet)
    report = drift_file(model, input, output, window, threshold, min_rows, progress)
    flagged = ", ".join(report["flagged_columns"]) or "nothing"
    progress.log(f"windows: {len(report['windows']):,}; flagged: {flagged} -> {output}")


@app.command()
@_user_errors
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Event log to write: Parquet, CSV or CSV.gz.")],
    kind: Annotated[
        str, typer.Option("--kind", help="streaming (service events) or transactions (cards).")
    ] = "streaming",
    accounts: Annotated[
        int | None, typer.Option("--accounts", help="streaming: number of accounts [1000].")
    ] = None,
    customers: Annotated[
        int | None, typer.Option("--customers", help="transactions: customers [5000].")
    ] = None,
    terminals: Annotated[
        int | None, typer.Option("--terminals", help="transactions: terminals [10000].")
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Days of activity.")] = 14,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same log.")] = 42,
    start: Annotated[
        str | None,
        typer.Option(
            "--start", help="First day (UTC date) [streaming 2026-01-05, transactions 2018-04-01]."
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Simulate a labelled event log: a video-streaming service's events with four kinds of
    anomaly (--kind streaming), or card transactions with customer and terminal ids and the
    fraud handbook's three scenarios (--kind transactions)."""
    from hybrid_ad.simulation.streaming import simulate_events, write_events

    progress = ProgressReporter(enabled=not quiet)
    check_output_file(out, "--out")
    check_table_suffix(out)
    if kind not in ("streaming", "transactions"):
        raise InputError(f"--kind: expected streaming or transactions, got {kind!r}")
    owners = {
        "--accounts": "streaming",
        "--customers": "transactions",
        "--terminals": "transactions",
    }
    given = {"--accounts": accounts, "--customers": customers, "--terminals": terminals}
    for flag, value in given.items():
        if value is not None and owners[flag] != kind:
            raise InputError(f"{flag} is for --kind {owners[flag]}, not --kind {kind}")
    customers = 5000 if customers is None else customers
    terminals = 10000 if terminals is None else terminals
    accounts = 1000 if accounts is None else accounts
    try:
        if kind == "transactions":
            from hybrid_ad.simulation.transactions import simulate_transactions

            frame = simulate_transactions(customers, terminals, days, seed, start or "2018-04-01")
            labels, what = "is_fraud", "fraud_scenario"
            who = f"{customers:,} customers at {terminals:,} terminals"
        else:
            frame = simulate_events(accounts, days, seed, start or "2026-01-05")
            labels, what = "is_anomaly", "anomaly_kind"
            who = f"{accounts:,} accounts"
        write_events(frame, out)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    kinds = frame.loc[frame[labels] == 1, what].value_counts().sort_index()
    counts = ", ".join(f"{name} {count:,}" for name, count in kinds.items())
    progress.log(
        f"wrote {len(frame):,} events of {who} over {days:,} days (seed {seed}) "
        f"to {out}; anomalous rows: {counts or 'none'}"
    )


@app.command()
@_user_errors
def download(
    cache_dir: Annotated[
        Path, typer.Option("--cache-dir", help="Where to keep the downloaded file.")
    ] = Path("data/cache"),
    quiet: QuietOption = False,
) -> None:
    """Fetch OpenML `creditcard` (id 1597) into a local cache."""
    from hybrid_ad.jobs.download import download_creditcard

    path = download_creditcard(cache_dir, ProgressReporter(enabled=not quiet))
    stdout.print(str(path), markup=False, highlight=False, soft_wrap=True)


def _print_summary(metrics: dict[str, Any], out_dir: Path, quiet: bool) -> None:
    from hybrid_ad.jobs import pipeline
    from hybrid_ad.reporting.report import markdown_table

    sys.stdout.write(markdown_table(metrics) + "\n")
    if not quiet:
        report = out_dir / pipeline.REPORTS_DIR / "index.html"
        stderr.print(f"report: {report}", markup=False, highlight=False, soft_wrap=True)
        model = out_dir / pipeline.MODEL_DIR
        stderr.print(f"model:  {model}", markup=False, highlight=False, soft_wrap=True)


app.add_typer(labels_cli.build_app(_user_errors), name="labels")
app.command("retrain")(_user_errors(lifecycle_cli.retrain_command))
app.add_typer(lifecycle_cli.build_models_app(_user_errors), name="models")
app.command("features")(_user_errors(spark_cli.features_command))
service_cli.register(app, _user_errors)
stream_cli.build_commands(app, _user_errors)


def main() -> None:
    """Console entry point."""
    app(prog_name="hybrid-ad")


if __name__ == "__main__":
    sys.exit(main())
