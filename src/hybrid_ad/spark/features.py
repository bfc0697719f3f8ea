"""Behavioural feature backfill on Spark: the local batch engine, run per entity-key bucket.

For each entity key the events (only the columns that key needs) are shuffled into buckets by
a hash of the key, so every entity's whole history lands in one bucket; `applyInPandas` runs
`compute_batch` (the same engine as `hybrid-ad features --engine local`) on the bucket in
arrival order, and the keys' features are joined back on the row id. An entity's features
depend only on its own events, so a bucket of many entities gives exactly what the whole file
gives: ties, windows, sessions, label delays and TTL are the batch engine's own.

Arrival order is the order of the input: files in name order, rows in file order (Spark's
`_metadata.row_index`), which is `ROW_ID`. Times are converted by `data.event_seconds`, the
local engine's function, on the worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hybrid_ad.behavioural.batch import (
    BehaviouralConfig,
    behavioural_config_from_dict,
    compute_batch,
    feature_names,
)
from hybrid_ad.config import Config, DataConfig
from hybrid_ad.data import EVENT_SECONDS, event_seconds
from hybrid_ad.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

ROW_ID = "_hybrid_ad_row"
"""Arrival position: file index (in name order) * 2**40 + row index in the file."""
FILE_BITS = 40
ROWS_PER_BUCKET = 250_000
"""Target events per bucket: a bucket is one pandas frame on one worker."""


def key_config(behavioural: BehaviouralConfig, index: int) -> BehaviouralConfig:
    """The config of one entity key alone: its features are exactly that key's columns of the
    full config (label risk and distinct counts only if the full config gives them to this
    key)."""
    key = behavioural.entity_keys[index]
    raw = behavioural.model_dump(mode="json")
    raw["entity_keys"] = [key]
    raw["distinct"] = [
        item | {"keys": None}
        for item, spec in zip(raw["distinct"], behavioural.distinct, strict=True)
        if behavioural.has_distinct(spec, key)
    ]
    if raw.get("label_risk") is not None:
        if behavioural.has_label_risk(key):
            raw["label_risk"]["keys"] = [key]
        else:
            raw["label_risk"] = None
    return behavioural_config_from_dict(raw, "features.behavioural")


def key_columns(key: str | list[str]) -> list[str]:
    return [key] if isinstance(key, str) else list(key)


def read_events(spark: SparkSession, path: Path) -> tuple[DataFrame, list[str], set[str]]:
    """The input with `ROW_ID`, its own columns, and which of them hold nanosecond times."""
    import pyarrow
    import pyarrow.dataset as ds
    from pyspark.sql import functions as F

    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        schema = ds.dataset(str(path), format="parquet").schema
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as Parquet ({exc})") from None
    nanos = {
        field.name
        for field in schema
        if pyarrow.types.is_timestamp(field.type) and field.type.unit == "ns"
    }
    frame = spark.read.parquet(str(path))
    columns = list(frame.columns)
    files = sorted(row[0] for row in frame.select("_metadata.file_path").distinct().collect())
    index = F.create_map(*[F.lit(value) for pair in enumerate(files) for value in pair[::-1]])
    row_id = index[F.col("_metadata.file_path")].cast("long") * F.lit(2**FILE_BITS) + F.col(
        "_metadata.row_index"
    )
    return frame.withColumn(ROW_ID, row_id), columns, nanos


def quoted(name: str) -> str:
    return name.replace("`", "``")


def with_times(frame: pd.DataFrame, nanos: set[str]) -> pd.DataFrame:
    """Nanosecond timestamps back from int64 (see session.SETTINGS), as pandas reads them."""
    for column in nanos & set(frame.columns):
        frame[column] = pd.to_datetime(frame[column].to_numpy(np.int64), unit="ns", utc=True)
    return frame


def check_columns(columns: list[str], config: Config, source: str) -> None:
    behavioural = config.features.behavioural
    assert behavioural is not None
    needed = [config.data.timestamp, *behavioural.entity_columns, *behavioural.values]
    if behavioural.label_risk is not None:
        if config.data.label is None:
            raise InputError("behavioural features: label_risk is configured but no label column")
        needed.append(config.data.label)
    missing = [column for column in needed if column not in columns]
    if missing:
        raise InputError(f"{source}: missing column '{missing[0]}'")
    clash = [name for name in feature_names(behavioural) if name in columns]
    if clash:
        raise InputError(f"{source}: column '{clash[0]}' has the name of a behavioural feature")


def bucket_features(
    data: DataConfig,
    config: BehaviouralConfig,
    nanos: set[str],
    source: str,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The function `applyInPandas` runs on one bucket: `compute_batch` in arrival order."""
    label = data.label if config.label_risk is not None else None
    entity = config.entity_columns

    def run(bucket: pd.DataFrame) -> pd.DataFrame:
        bucket = with_times(bucket.sort_values(ROW_ID, kind="stable"), nanos)
        bucket = bucket.reset_index(drop=True)
        work = bucket[[*entity, *config.values]].copy()
        work[EVENT_SECONDS] = event_seconds(bucket, data, source)
        if label is not None:
            work[label] = pd.to_numeric(bucket[label], errors="coerce").astype(np.float64)
        features = compute_batch(work, config, EVENT_SECONDS, label, sort=True)
        features.insert(0, ROW_ID, bucket[ROW_ID].to_numpy(np.int64))
        return features

    return run


def n_buckets(spark: SparkSession, rows: int) -> int:
    parallelism = spark.sparkContext.defaultParallelism
    return max(2 * parallelism, math.ceil(rows / ROWS_PER_BUCKET))


def backfill(spark: SparkSession, path: Path, config: Config) -> tuple[DataFrame, int]:
    """The input's columns then its behavioural features, with `ROW_ID` (not yet sorted),
    and the number of events."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    behavioural = config.features.behavioural
    if behavioural is None:
        raise InputError("features.behavioural: not set, so there are no features to compute")
    events, columns, nanos = read_events(spark, path)
    check_columns(columns, config, str(path))
    rows = events.count()
    buckets = n_buckets(spark, rows)
    spark.conf.set("spark.sql.shuffle.partitions", str(buckets))
    result = events
    for index, key in enumerate(behavioural.entity_keys or [[]]):
        single = key_config(behavioural, index) if behavioural.entity_keys else behavioural
        names = feature_names(single)
        needed = [config.data.timestamp, *single.entity_columns, *single.values]
        if single.label_risk is not None and config.data.label is not None:
            needed.append(config.data.label)
        keys = [F.col(column) for column in key_columns(key)] or [F.lit(0)]
        schema = StructType(
            [StructField(ROW_ID, LongType(), False)]
            + [StructField(name, DoubleType(), False) for name in names]
        )
        bucket = F.pmod(F.xxhash64(*keys), F.lit(buckets))
        part = (
            events.select(ROW_ID, *dict.fromkeys(needed))
            .withColumn("_hybrid_ad_bucket", bucket)
            .groupBy("_hybrid_ad_bucket")
            .applyInPandas(bucket_features(config.data, single, nanos, str(path)), schema)
        )
        result = result.join(part, ROW_ID)
    restored = restored_times(columns, nanos)
    return result.select(ROW_ID, *restored, *feature_names(behavioural)), rows


def restored_times(columns: list[str], nanos: set[str]) -> list[Column]:
    """The input columns, nanosecond times as Spark timestamps (to the microsecond)."""
    from pyspark.sql import functions as F

    micros = "timestamp_micros((`{0}` - pmod(`{0}`, 1000)) div 1000)"
    return [
        F.expr(micros.format(quoted(name))).alias(name) if name in nanos else F.col(name)
        for name in columns
    ]


def write_backfill(spark: SparkSession, path: Path, config: Config, table: Path) -> int:
    """Compute and write the feature table (Parquet parts in arrival order) into `table`."""
    from hybrid_ad.spark.session import user_errors

    with user_errors():
        frame, rows = backfill(spark, path, config)
        frame.orderBy(ROW_ID).drop(ROW_ID).write.parquet(str(table))
    return rows
