"""Crash safety: SIGKILL at random moments, SIGTERM, and a dead consumer's pending entries
claimed by another. Each run ends with the alerts, the scores and the behavioural state of an
uninterrupted run: every event scored once, every alert written once."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from hybrid_ad.core.detector import Detector
from hybrid_ad.data import read_table
from hybrid_ad.stream.checkpoint import load_checkpoint
from hybrid_ad.stream.publish import text_columns
from tests.stream.conftest import invoke, read_stream

EVENTS = 1500
SETTINGS = ["--batch", "50", "--checkpoint-every", "150"]
LONG_EVENTS = 100_000
LONG_SETTINGS = ["--batch", "500", "--checkpoint-every", "5000"]
"""The crash test's run: later flags win, so these replace SETTINGS."""


def command(workspace: Path, url: str, name: str, checkpoint: Path, *extra: str) -> list[str]:
    return [
        "stream", "--model", str(workspace / "out" / "model"), "--redis", url,
        "--stream", name, "--group", "g", "--alerts", f"{name}.alerts",
        "--scores", f"{name}.scores", "--dead-letters", f"{name}.dead",
        "--checkpoint", str(checkpoint), *SETTINGS, *extra,
    ]  # fmt: skip


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hybrid_ad.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return err


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(stream_workspace: Path, redis_server: str, tmp_path_factory) -> Iterator[dict]:
    """An uninterrupted run over the first EVENTS events: its alerts, scores and final state."""
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushall()
    events = str(stream_workspace / "events.parquet")
    invoke(
        "publish",
        "--input",
        events,
        "--redis",
        redis_server,
        "--stream",
        "ref",
        "--limit",
        str(EVENTS),
    )
    checkpoint = tmp_path_factory.mktemp("reference")
    invoke(*command(stream_workspace, redis_server, "ref", checkpoint, "--until-idle", "0.2"))
    saved = load_checkpoint(checkpoint)
    assert saved is not None
    result = {
        "entries": [fields for _, fields in client.xrange("ref")],
        "alerts": read_stream(client, "ref.alerts"),
        "scores": read_stream(client, "ref.scores"),
        "state": saved.state,
        "events": saved.events,
    }
    assert result["alerts"] and len(result["scores"]) == EVENTS
    client.flushall()
    client.close()
    yield result


def assert_like_reference(
    client: redis.Redis, name: str, checkpoint: Path, reference: dict
) -> None:
    alerts, scores = read_stream(client, f"{name}.alerts"), read_stream(client, f"{name}.scores")
    ids = [alert["event_id"] for alert in alerts]
    assert len(ids) == len(set(ids)), "an alert was written twice"
    assert ids == [alert["event_id"] for alert in reference["alerts"]]
    np.testing.assert_allclose(
        [float(a["score"]) for a in alerts],
        [float(a["score"]) for a in reference["alerts"]],
        rtol=1e-12,
    )
    assert [s["event_id"] for s in scores] == [s["event_id"] for s in reference["scores"]]
    saved = load_checkpoint(checkpoint)
    assert saved is not None and saved.events == reference["events"] == EVENTS
    assert saved.state == reference["state"]  # every event counted once: the same bytes
    assert client.xpending(name, "g")["pending"] == 0


@pytest.fixture(scope="module")
def long_run(
    stream_workspace: Path, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """An uninterrupted run over LONG_EVENTS events of a larger simulation (1,000 accounts,
    8 days) scored by the test model, in batches of 500: its entries, its alerts, the event
    ids of its scores and its final checkpoint."""
    root = tmp_path_factory.mktemp("long_run")
    events = root / "events.parquet"
    invoke("simulate", "--out", str(events), "--accounts", "1000", "--days", "8", "--seed", "4")
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushall()
    invoke("publish", "--input", str(events), "--redis", redis_server, "--stream", "ref",
           "--limit", str(LONG_EVENTS))  # fmt: skip
    checkpoint = root / "checkpoint"
    args = command(stream_workspace, redis_server, "ref", checkpoint, *LONG_SETTINGS)
    invoke(*args, "--until-idle", "0.2")
    saved = load_checkpoint(checkpoint)
    assert saved is not None
    result = {
        "entries": [fields for _, fields in client.xrange("ref")],
        "alerts": read_stream(client, "ref.alerts"),
        "scored": [s["event_id"] for s in read_stream(client, "ref.scores")],
        "state": saved.state,
        "events": saved.events,
    }
    assert result["alerts"] and len(result["scored"]) == saved.events == LONG_EVENTS
    # what the states are asked after the run: its last 500 events again, and the later ones
    later = text_columns(read_table(events).iloc[LONG_EVENTS:])
    again = result["entries"][-500:]
    result["probe"] = {name: [e[name] for e in again] + later[name] for name in later}
    client.flushall()
    client.close()
    yield result


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    stream_workspace: Path, redis_url: str, client: redis.Redis, long_run: dict, tmp_path: Path
) -> None:
    """A 100,000-event run with five SIGKILLs at random moments, each while the events are
    still arriving (the feeder has sent a random share of that life's events) and the
    processor has entries read but not yet checkpointed; a sixth life scores the rest. The
    alerts, the scores and the final state are those of the uninterrupted run."""
    checkpoint = tmp_path / "ckpt"
    args = command(stream_workspace, redis_url, "ev", checkpoint, *LONG_SETTINGS)
    feeder = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = long_run["entries"]
    size = LONG_EVENTS // 6
    chunks = [entries[i : i + size] for i in range(0, LONG_EVENTS, size)]

    def feed(part: list[dict[str, str]], fed: list[int]) -> None:
        for start in range(0, len(part), 250):
            pipe = feeder.pipeline(transaction=False)
            for fields in part[start : start + 250]:
                pipe.xadd("ev", fields)
            pipe.execute()
            fed[0] = start + 250
            time.sleep(0.01)

    rng = random.Random(10)
    logs, mid_stream = [], 0
    for chunk in chunks[:5]:
        process = start(args)
        before = client.xlen("ev.scores")
        feed(chunk[:250], [0])
        wait_for(lambda n=before: client.xlen("ev.scores") > n, "the processor to score")
        fed = [0]
        thread = threading.Thread(target=feed, args=(chunk[250:], fed))
        thread.start()
        kill_at = rng.randrange(250, len(chunk) - 1000)
        wait_for(lambda at=kill_at, fed=fed: fed[0] >= at, "the feeder", timeout=120)
        time.sleep(rng.uniform(0.0, 0.05))
        mid_stream += thread.is_alive()
        process.send_signal(signal.SIGKILL)
        logs.append(process.communicate()[1])
        thread.join()
    for rest in chunks[5:]:
        feed(rest, [0])
    logs.append(finish(start([*args, "--until-idle", "0.5"]), timeout=300))
    assert mid_stream == 5, "a kill came after its events had all arrived"
    replayed = [int(n) for log in logs for n in re.findall(r"replaying (\d+) pending", log)]
    assert sum(replayed) > 0, f"no restart had pending entries to replay: {logs}"
    alerts = read_stream(client, "ev.alerts")
    ids = [alert["event_id"] for alert in alerts]
    assert len(ids) == len(set(ids)), "an alert was written twice"
    assert ids == [alert["event_id"] for alert in long_run["alerts"]]
    np.testing.assert_allclose(
        [float(a["score"]) for a in alerts],
        [float(a["score"]) for a in long_run["alerts"]],
        rtol=1e-12,
    )
    assert [s["event_id"] for s in read_stream(client, "ev.scores")] == long_run["scored"]
    saved = load_checkpoint(checkpoint)
    assert saved is not None and saved.events == LONG_EVENTS
    assert client.xpending("ev", "g")["pending"] == 0
    assert_same_state(stream_workspace, saved.state, long_run)


def assert_same_state(workspace: Path, state: bytes, run: dict) -> None:
    """The state answers as the uninterrupted run's does: the run's last events are known
    (redelivered, not counted again) and later events get the same scores, bit for bit.
    The bytes may differ: when idle entities are swept, and so the eviction counter, depends
    on where the micro-batches began, never what any event's features are."""
    detector = Detector.load(workspace / "out" / "model")
    ours = detector.live(state=state).score_many(run["probe"], explain="all")
    theirs = detector.live(state=run["state"]).score_many(run["probe"], explain="all")
    assert ours.dead_letters == theirs.dead_letters
    assert len(ours.positions) > 5000
    for name, values in theirs.columns.items():
        np.testing.assert_array_equal(ours.columns[name], values, err_msg=name)


def test_sigterm_finishes_the_batch_checkpoints_and_exits_0(
    stream_workspace: Path, redis_url: str, client: redis.Redis, reference: dict, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt"
    entries = reference["entries"]
    for fields in entries[:100]:
        client.xadd("ev", fields)
    args = command(stream_workspace, redis_url, "ev", checkpoint, "--checkpoint-every", "100000")
    process = start(args)
    wait_for(lambda: client.xlen("ev.scores") == 100, "the processor to score")
    process.send_signal(signal.SIGTERM)
    finish(process)
    saved = load_checkpoint(checkpoint)
    assert saved is not None and saved.events == 100
    assert client.xpending("ev", "g")["pending"] == 0  # acknowledged at exit
    assert client.xlen("ev.scores") == saved.events
    pipe = client.pipeline(transaction=False)
    for fields in entries[100:]:
        pipe.xadd("ev", fields)
    pipe.execute()
    finish(start([*args, "--until-idle", "0.3"]))
    assert_like_reference(client, "ev", checkpoint, reference)


def test_a_dead_consumers_pending_entries_are_claimed(
    stream_workspace: Path, redis_url: str, client: redis.Redis, reference: dict, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt"
    pipe = client.pipeline(transaction=False)
    for fields in reference["entries"]:
        pipe.xadd("ev", fields)
    pipe.execute()
    args = command(stream_workspace, redis_url, "ev", checkpoint, "--checkpoint-every", "100000")
    first = start([*args, "--consumer", "a", "--lease", "1"])
    wait_for(lambda: client.xlen("ev.scores") > 0, "consumer a to score")
    first.send_signal(signal.SIGKILL)
    first.communicate()
    pending_a = {c["name"]: c["pending"] for c in client.xinfo_consumers("ev", "g")}["a"]
    assert pending_a > 0
    log = finish(start([*args, "--consumer", "b", "--lease", "1", "--until-idle", "0.3"]))
    claimed = int(re.search(r"(\d+) claimed", log).group(1))
    assert claimed == pending_a
    assert {c["name"]: c["pending"] for c in client.xinfo_consumers("ev", "g")}["a"] == 0
    assert_like_reference(client, "ev", checkpoint, reference)
