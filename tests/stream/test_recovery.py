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

from hybrid_ad.stream.checkpoint import load_checkpoint
from tests.stream.conftest import invoke, read_stream

EVENTS = 1500
SETTINGS = ["--batch", "50", "--checkpoint-every", "150"]


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


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    stream_workspace: Path, redis_url: str, client: redis.Redis, reference: dict, tmp_path: Path
) -> None:
    """Five lives, each SIGKILLed at a random moment while its share of the events is still
    arriving (about 150 events/s); a sixth scores the rest."""
    checkpoint = tmp_path / "ckpt"
    args = command(stream_workspace, redis_url, "ev", checkpoint)
    feeder = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = reference["entries"]
    chunks = [entries[i : i + EVENTS // 6] for i in range(0, EVENTS, EVENTS // 6)]

    def feed(part: list[dict[str, str]]) -> None:
        for start in range(0, len(part), 15):
            pipe = feeder.pipeline(transaction=False)
            for fields in part[start : start + 15]:
                pipe.xadd("ev", fields)
            pipe.execute()
            time.sleep(0.1)

    rng = random.Random(10)
    logs, mid_stream = [], 0
    for chunk in chunks[:5]:
        process = start(args)
        before = client.xlen("ev.scores")
        feed(chunk[:15])
        wait_for(lambda n=before: client.xlen("ev.scores") > n, "the processor to score")
        thread = threading.Thread(target=feed, args=(chunk[15:],))
        thread.start()
        time.sleep(rng.uniform(0.0, 0.8 * len(chunk) / 150))
        mid_stream += thread.is_alive()
        process.send_signal(signal.SIGKILL)
        logs.append(process.communicate()[1])
        thread.join()
    for rest in chunks[5:]:
        feed(rest)
    logs.append(finish(start([*args, "--until-idle", "0.5"])))
    assert mid_stream == 5, "a kill came after its events had all arrived"
    replayed = [int(n) for log in logs for n in re.findall(r"replaying (\d+) pending", log)]
    assert sum(replayed) > 0, f"no restart had pending entries to replay: {logs}"
    assert_like_reference(client, "ev", checkpoint, reference)


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
