"""`hybrid-ad publish`: replay an event file as a live Redis stream, one entry per event.

Each entry has one field per column and every value as text: numbers as Python writes them
(floats with `repr`, so they read back bit for bit), date-time timestamps as ISO 8601 with
their full precision, text as it is, and a missing value as the empty string (the processor
sends such an event to its dead letters). With shards, an event goes to `NAME:i` where i is a
stable hash of its shard key's text (see `shard_of`), so the same key always lands on the
same shard, on any machine and in any Python process.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hybrid_ad.data import read_table
from hybrid_ad.errors import InputError
from hybrid_ad.progress import ProgressReporter
from hybrid_ad.stream.connection import StreamError, connect, first_line, redis_errors

PIPELINE_ENTRIES = 1000
"""Entries sent to Redis per round trip (a non-transactional pipeline)."""


@dataclass(frozen=True)
class PublishSummary:
    events: int
    seconds: float
    per_stream: dict[str, int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def shard_of(key: str, shards: int) -> int:
    """The shard of a key's text: the first 8 bytes of its sha256, big-endian, modulo `shards`.

    Python's `hash()` of a string changes from process to process; this does not.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_names(stream: str, shards: int | None) -> list[str]:
    """The stream names publish writes to: NAME, or NAME:0 ... NAME:N-1."""
    return [stream] if shards is None else [f"{stream}:{i}" for i in range(shards)]


def text_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Every column's values as text, as the stream carries them (see the module docstring)."""
    return {str(name): _column_text(frame[name]) for name in frame.columns}


def _column_text(values: pd.Series) -> list[str]:
    missing = values.isna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(values):
        pairs = zip(values, missing, strict=True)
        items = ["" if gap else value.isoformat() for value, gap in pairs]
    elif pd.api.types.is_bool_dtype(values):
        items = [str(bool(value)) for value in values.tolist()]
    elif pd.api.types.is_integer_dtype(values):
        items = [str(value) for value in values.to_numpy(np.int64, na_value=0).tolist()]
    elif pd.api.types.is_float_dtype(values):
        items = [repr(value) for value in values.to_numpy(np.float64).tolist()]
    else:
        items = [str(value) for value in values.tolist()]
    if missing.any():
        items = ["" if gap else item for item, gap in zip(items, missing.tolist(), strict=True)]
    return items


def publish_file(
    input_path: Path,
    url: str,
    stream: str,
    rate: float | None = None,
    limit: int | None = None,
    shards: int | None = None,
    shard_key: str | None = None,
    progress: ProgressReporter | None = None,
) -> PublishSummary:
    """Append the file's events, in file order, to the stream (or its shards)."""
    if rate is not None and not rate > 0:
        raise InputError(f"--rate: expected a positive number of events per second, got {rate}")
    if limit is not None and limit < 0:
        raise InputError(f"--limit: expected a number of events >= 0, got {limit}")
    if (shards is None) != (shard_key is None):
        raise InputError("--shards and --shard-key go together: give both or neither")
    if shards is not None and not 1 <= shards <= 4096:
        raise InputError(f"--shards: expected 1 to 4096 shards, got {shards}")
    frame = read_table(input_path)
    if limit is not None:
        frame = frame.iloc[:limit]
    if shard_key is not None and shard_key not in frame.columns:
        raise InputError(f"{input_path}: --shard-key: no column '{shard_key}'")
    columns = text_columns(frame)
    names = list(columns)
    rows = list(zip(*columns.values(), strict=True)) if names else []
    targets = shard_names(stream, shards)
    if shards is None:
        destination = [0] * len(rows)
    else:
        assert shard_key is not None
        destination = [shard_of(key, shards) for key in columns[shard_key]]
    client = connect(url)
    counts = dict.fromkeys(targets, 0)
    started = time.perf_counter()
    step = PIPELINE_ENTRIES if rate is None else max(1, min(PIPELINE_ENTRIES, int(rate / 20)))
    reporter = progress or ProgressReporter(enabled=False)
    try:
        with reporter.task("publishing", len(rows)) as advance:
            for start in range(0, len(rows), step):
                pipe = client.pipeline(transaction=False)
                for row, shard in zip(
                    rows[start : start + step], destination[start : start + step], strict=True
                ):
                    pipe.xadd(targets[shard], dict(zip(names, row, strict=True)))
                    counts[targets[shard]] += 1
                pipe.execute()
                done = min(start + step, len(rows))
                advance(done, "")
                if rate is not None:
                    ahead = done / rate - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
    except redis_errors() as exc:
        raise StreamError(
            f"--redis {url}: publishing to {stream} failed ({first_line(exc)})"
        ) from None
    return PublishSummary(len(rows), time.perf_counter() - started, counts)
