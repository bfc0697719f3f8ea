"""`hybrid-ad features` (local or Spark) and the Spark engine of `hybrid-ad score`.

Registered on the main app by `hybrid_ad.cli`; pyspark is imported only when `--engine
spark` is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybrid_ad.config import load_config
from hybrid_ad.errors import InputError
from hybrid_ad.progress import ProgressReporter

ENGINES = ("local", "spark")
EngineOption = Annotated[str, typer.Option("--engine", help="local (one process) or spark.")]
MasterOption = Annotated[
    str, typer.Option("--master", help="Spark master URL (--engine spark): local[2], yarn, ...")
]


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")


def features_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")],
    input: Annotated[Path, typer.Option("--input", help="Event history: Parquet file or folder.")],
    output: Annotated[Path, typer.Option("--output", help="Feature table folder to write.")],
    engine: EngineOption = "local",
    master: MasterOption = "local[2]",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, value read as YAML (repeatable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress logs.")] = False,
) -> None:
    """Backfill the behavioural features of a whole history: a Parquet table of every input
    column and feature, one row per event in input order, that `run --data` trains on."""
    from hybrid_ad.jobs.features import (
        check_table_output,
        features_local,
        require_behavioural,
        staged_table,
        write_metadata,
    )

    check_engine(engine)
    progress = ProgressReporter(enabled=not quiet)
    settings = load_config(config, set_ or ())
    require_behavioural(settings)
    if engine == "local":
        rows = features_local(settings, input, output)
    else:
        from hybrid_ad.spark.features import write_backfill
        from hybrid_ad.spark.session import spark_session

        check_table_output(output, input)
        spark = spark_session(master)
        with staged_table(output) as table:
            rows = write_backfill(spark, input, settings, table)
            write_metadata(table, settings)
    progress.log(f"features of {rows:,} events ({engine}) -> {output}")


def score_spark(model: Path, input: Path, output: Path, master: str) -> int:
    """`hybrid-ad score --engine spark`: a Parquet folder of scores, one row per input row."""
    from hybrid_ad.jobs.features import check_table_output, staged_table
    from hybrid_ad.spark.scoring import write_scores
    from hybrid_ad.spark.session import spark_session

    check_table_output(output, input)
    spark = spark_session(master)
    with staged_table(output) as table:
        return write_scores(spark, model, input, table)
