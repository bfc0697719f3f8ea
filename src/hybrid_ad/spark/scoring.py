"""Scoring on Spark: the backfilled features, then the saved model inside `mapInArrow`.

The model directory's files travel as bytes with the task (no pickle of a model object);
each Python worker writes them to a private folder once and loads them with `Detector.load`,
which verifies every file against the manifest, and keeps the detector for the worker's later
tasks. Every batch goes through the scoring core (`prepare_events`, which takes the
backfilled behavioural columns as given, then `core.scoring.score_prepared` with every
event explained), the path of `hybrid-ad score`, so the scores are the local ones.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid_ad.artifacts import MANIFEST
from hybrid_ad.behavioural.batch import feature_names
from hybrid_ad.config import Config
from hybrid_ad.core.detector import Detector
from hybrid_ad.core.scoring import score_prepared
from hybrid_ad.data import EVENT_ID, event_ids
from hybrid_ad.jobs.features import check_feature_table
from hybrid_ad.jobs.pipeline import require_judge
from hybrid_ad.spark.features import ROW_ID, backfill, read_events, restored_times
from hybrid_ad.stages.features import prepare_events

if TYPE_CHECKING:
    import pyarrow
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

NUMERIC_COLUMNS = ("rule_score", "reconstruction_error", "histogram_score")
TEXT_COLUMNS = ("rules_hit", "clipped", "reasons")
_DETECTORS: dict[str, Detector] = {}
"""Per Python worker: the detectors loaded so far, by manifest sha256."""


def model_files(model_dir: Path) -> dict[str, bytes]:
    """The bytes of every file of a verified model directory."""
    return {path.name: path.read_bytes() for path in sorted(model_dir.iterdir()) if path.is_file()}


def worker_detector(files: dict[str, bytes]) -> Detector:
    """The detector of these files, loaded once per worker from a folder of its own."""
    key = hashlib.sha256(files[MANIFEST]).hexdigest()
    detector = _DETECTORS.get(key)
    if detector is None:
        import torch

        torch.set_num_threads(1)  # one task per core
        folder = Path(tempfile.mkdtemp(prefix="hybrid-ad-model-"))
        for name, data in files.items():
            (folder / name).write_bytes(data)
        detector = _DETECTORS[key] = Detector.load(folder)
    return detector


def output_schema(detector: Detector) -> StructType:
    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    fields = [StructField(ROW_ID, LongType()), StructField(EVENT_ID, StringType())]
    fields.append(StructField("score", DoubleType()))
    if detector.threshold_ is not None:
        fields.append(StructField("alert", BooleanType()))
    fields += [StructField(name, DoubleType()) for name in NUMERIC_COLUMNS]
    fields += [StructField(name, StringType()) for name in TEXT_COLUMNS]
    return StructType(fields)


def score_batches(
    files: dict[str, bytes], source: str
) -> Callable[[Iterator[pyarrow.RecordBatch]], Iterator[pyarrow.RecordBatch]]:
    """The function `mapInArrow` runs: each batch of feature rows scored by the core."""

    def run(batches: Iterator[pyarrow.RecordBatch]) -> Iterator[pyarrow.RecordBatch]:
        import pyarrow

        detector = worker_detector(files)
        arrow_schema = pyarrow.schema(
            [(ROW_ID, pyarrow.int64()), (EVENT_ID, pyarrow.string()), ("score", pyarrow.float64())]
            + ([("alert", pyarrow.bool_())] if detector.threshold_ is not None else [])
            + [(name, pyarrow.float64()) for name in NUMERIC_COLUMNS]
            + [(name, pyarrow.string()) for name in TEXT_COLUMNS]
        )
        for batch in batches:
            if batch.num_rows == 0:
                continue
            raw = batch.to_pandas()  # the backfill gave times back as timestamps
            events = prepare_events(raw.drop(columns=[ROW_ID]), detector.config, source)
            scored = score_prepared(detector, events.frame, explain="all", threads=1)
            columns = {
                ROW_ID: raw[ROW_ID].to_numpy(),
                EVENT_ID: event_ids(raw, detector.config.data, source).to_numpy(object),
                "score": scored.score,
            }
            if scored.threshold is not None:
                columns["alert"] = scored.alert
            columns.update(
                rule_score=scored.rule_score,
                reconstruction_error=scored.reconstruction_error,
                histogram_score=scored.histogram_score,
                rules_hit=scored.rules_hit,
                clipped=scored.clipped,
                reasons=scored.reasons,
            )
            yield pyarrow.RecordBatch.from_pydict(columns, schema=arrow_schema)

    return run


def write_scores(spark: SparkSession, model_dir: Path, path: Path, table: Path) -> int:
    """Features on Spark, then the model's scores: one row per input row, in input order."""
    from hybrid_ad.spark.session import user_errors

    detector = Detector.load(model_dir)
    require_judge(detector, model_dir)
    files = model_files(model_dir)
    with user_errors():
        features, rows = scoring_input(spark, path, detector.config)
        scored = features.mapInArrow(score_batches(files, str(path)), output_schema(detector))
        scored.orderBy(ROW_ID).drop(ROW_ID).write.parquet(str(table))
    return rows


def scoring_input(spark: SparkSession, path: Path, config: Config) -> tuple[DataFrame, int]:
    """The events with their behavioural features: backfilled, or taken as they are from a
    feature table (every behavioural column present, its sidecar matching the config)."""
    behavioural = config.features.behavioural
    events, columns, nanos = read_events(spark, path)
    if behavioural is not None:
        if not all(name in columns for name in feature_names(behavioural)):
            return backfill(spark, path, config)
        check_feature_table(path, config)
    return events.select(ROW_ID, *restored_times(columns, nanos)), events.count()
