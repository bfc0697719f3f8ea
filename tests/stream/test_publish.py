"""`hybrid-ad publish`: one entry per event, values as text that reads back exactly, shards
by a stable hash, and one-line errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import redis

from hybrid_ad.data import event_ids, read_table
from hybrid_ad.stream.publish import shard_of
from tests.conftest import fails_with
from tests.stream.conftest import invoke, read_stream


def test_entries_read_back_as_the_file(
    stream_workspace: Path, redis_url: str, client: redis.Redis
) -> None:
    events = stream_workspace / "events.parquet"
    invoke(
        "publish", "--input", str(events), "--redis", redis_url, "--stream", "ev", "--limit", "500"
    )
    frame = read_table(events).iloc[:500]
    entries = pd.DataFrame(read_stream(client, "ev"))
    assert len(entries) == 500
    assert list(entries.columns) == list(frame.columns)  # one field per column, in order
    assert (entries["account_id"] == frame["account_id"]).all()
    # floats as repr: bit for bit; timestamps as ISO 8601 with their full precision
    assert (entries["amount"].astype(float).to_numpy() == frame["amount"].to_numpy()).all()
    parsed = pd.to_datetime(entries["timestamp"], utc=True, format="ISO8601")
    assert (parsed.to_numpy() == frame["timestamp"].to_numpy()).all()
    # so the derived event id of a text entry is the file's
    from hybrid_ad.core.detector import Detector

    config = Detector.load(stream_workspace / "out" / "model").config
    assert event_ids(entries, config.data).tolist() == event_ids(frame, config.data).tolist()


def test_shards_by_a_stable_hash(
    stream_workspace: Path, redis_url: str, client: redis.Redis
) -> None:
    events = stream_workspace / "events.parquet"
    invoke(
        "publish", "--input", str(events), "--redis", redis_url, "--stream", "ev",
        "--limit", "400", "--shards", "3", "--shard-key", "account_id",
    )  # fmt: skip
    frame = read_table(events).iloc[:400]
    total = 0
    for shard in range(3):
        entries = read_stream(client, f"ev:{shard}")
        total += len(entries)
        assert entries, f"shard {shard} is empty"
        assert {shard_of(entry["account_id"], 3) for entry in entries} == {shard}
    assert total == 400 and client.exists("ev") == 0
    # the documented hash, and the same in another Python process (hash() would differ)
    key = frame["account_id"].iloc[0]
    expected = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 3
    code = f"from hybrid_ad.stream.publish import shard_of; print(shard_of({key!r}, 3))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shard_of(key, 3) == expected == int(other.stdout)


def test_rate_limits_the_pace(stream_workspace: Path, redis_url: str, client: redis.Redis) -> None:
    events = stream_workspace / "events.parquet"
    result = invoke(
        "publish", "--input", str(events), "--redis", redis_url, "--stream", "ev",
        "--limit", "60", "--rate", "200",
    )  # fmt: skip
    assert result.exit_code == 0
    ids = [entry_id for entry_id, _ in client.xrange("ev")]
    first, last = (int(entry_id.split("-")[0]) for entry_id in (ids[0], ids[-1]))
    assert len(ids) == 60 and last - first >= 200  # 60 events at 200/s span at least 0.2 s


def test_bad_arguments_are_one_line(stream_workspace: Path, redis_url: str) -> None:
    events = str(stream_workspace / "events.parquet")
    base = ["publish", "--input", events, "--redis", redis_url, "--stream", "ev"]
    fails_with([*base, "--shards", "2"], "--shards and --shard-key go together")
    fails_with([*base, "--shards", "2", "--shard-key", "colour"], "--shard-key: no column 'colour'")
    fails_with([*base, "--rate", "0"], "--rate")
    fails_with([*base[:-4], "--redis", "redis://127.0.0.1:1/0", "--stream", "ev"], "cannot connect")
    fails_with([*base[:-4], "--redis", "http://x", "--stream", "ev"], "not a Redis URL")
    fails_with(
        ["publish", "--input", "nope.csv", "--redis", redis_url, "--stream", "ev"], "nope.csv"
    )
