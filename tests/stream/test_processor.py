"""`hybrid-ad stream` on a private Redis: the same scores as batch `score`, whatever the
micro-batch size; dead letters with their reason and fields, acknowledged; one-line errors."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from hybrid_ad.data import read_table
from tests.conftest import fails_with
from tests.stream.conftest import invoke, read_stream


def publish(workspace: Path, url: str, stream: str, limit: int | None = None) -> None:
    extra = [] if limit is None else ["--limit", str(limit)]
    invoke(
        "publish",
        "--input",
        str(workspace / "events.parquet"),
        "--redis",
        url,
        "--stream",
        stream,
        *extra,
    )


def stream(workspace: Path, url: str, name: str, checkpoint: Path, *extra: str) -> None:
    invoke(
        "stream", "--model", str(workspace / "out" / "model"), "--redis", url,
        "--stream", name, "--group", "g", "--alerts", f"{name}.alerts",
        "--scores", f"{name}.scores", "--dead-letters", f"{name}.dead",
        "--checkpoint", str(checkpoint), "--until-idle", "0.2", *extra,
    )  # fmt: skip


def test_stream_scores_equal_batch_score(
    stream_workspace: Path, redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    publish(stream_workspace, redis_url, "ev")
    stream(stream_workspace, redis_url, "ev", tmp_path / "ckpt")
    model, events = stream_workspace / "out" / "model", stream_workspace / "events.parquet"
    invoke(
        "score",
        "--model",
        str(model),
        "--input",
        str(events),
        "--output",
        str(tmp_path / "s.parquet"),
        "--contributions",
        "approximate",  # the stream's default
    )
    batch = pd.read_parquet(tmp_path / "s.parquet")
    scores = pd.DataFrame(read_stream(client, "ev.scores"))
    assert len(scores) == len(batch) == len(read_table(events))
    assert scores["event_id"].tolist() == batch["event_id"].tolist()
    np.testing.assert_allclose(scores["score"].astype(float), batch["score"], rtol=1e-9)
    assert (scores["alert"] == "1").tolist() == batch["alert"].tolist()
    assert scores["rules_hit"].tolist() == batch["rules_hit"].fillna("").tolist()
    alerting = batch["alert"].to_numpy()
    # reasons for the alerts (the others are not explained, to save the time)
    assert scores["reasons"][alerting].tolist() == batch["reasons"][alerting].tolist()
    assert (scores["reasons"][~alerting] == "").all()
    alerts = pd.DataFrame(read_stream(client, "ev.alerts"))
    assert batch["alert"].sum() > 0
    assert alerts["event_id"].tolist() == batch.loc[batch["alert"], "event_id"].tolist()
    assert set(alerts.columns) >= {"event_id", "score", "threshold", "reasons", "model_version"}
    assert json.loads(alerts["reasons"].iloc[0])["judge"]
    assert client.xpending("ev", "g")["pending"] == 0  # all acknowledged
    assert client.xlen("ev.dead") == 0


def test_micro_batch_size_does_not_change_scores(
    stream_workspace: Path, redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    runs = {}
    for size in (1, 7, 500):
        name = f"ev{size}"
        publish(stream_workspace, redis_url, name, limit=120 if size == 1 else 600)
        stream(stream_workspace, redis_url, name, tmp_path / name, "--batch", str(size))
        runs[size] = pd.DataFrame(read_stream(client, f"{name}.scores"))
    assert len(runs[500]) == 600 and len(runs[1]) == 120
    for size in (1, 7):
        part = runs[500].iloc[: len(runs[size])]
        assert runs[size]["event_id"].tolist() == part["event_id"].tolist()
        np.testing.assert_allclose(
            runs[size]["score"].astype(float), part["score"].astype(float), rtol=1e-9
        )


def test_bad_entries_are_dead_letters_and_acknowledged(
    stream_workspace: Path, redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    publish(stream_workspace, redis_url, "ev", limit=200)
    good = client.xrange("ev")[-1][1]
    bad = {
        "non-numeric": {**good, "amount": "lots"},
        "missing": {k: v for k, v in good.items() if k != "watch_seconds"},
        "unknown": {**good, "colour": "red"},
        "no time": {**good, "timestamp": ""},
        "late": {**good, "timestamp": "2026-01-01T00:00:00+00:00"},
    }
    for fields in bad.values():
        client.xadd("ev", fields)
    later = {**good, "timestamp": "2026-01-20T00:00:00+00:00"}
    client.xadd("ev", later)
    stream(stream_workspace, redis_url, "ev", tmp_path / "ckpt", "--batch", "50")
    letters = read_stream(client, "ev.dead")
    assert len(letters) == len(bad)
    reasons = [letter["reason"] for letter in letters]
    assert "'amount'" in reasons[0] and "non-numeric" in reasons[0]
    assert "watch_seconds" in reasons[1]
    assert "unknown field 'colour'" in reasons[2]
    assert "timestamp" in reasons[3]
    assert reasons[4].startswith("late")
    assert [json.loads(letter["fields"]) for letter in letters] == list(bad.values())
    assert all(letter["stream"] == "ev" and letter["entry_id"] for letter in letters)
    assert client.xlen("ev.scores") == 201  # the others, and the event after the bad ones
    assert client.xpending("ev", "g")["pending"] == 0


def test_checkpoint_and_flags_are_checked(
    stream_workspace: Path, redis_url: str, tmp_path: Path
) -> None:
    publish(stream_workspace, redis_url, "ev", limit=20)
    stream(stream_workspace, redis_url, "ev", tmp_path / "ckpt")
    model = str(stream_workspace / "out" / "model")
    base = ["stream", "--model", model, "--redis", redis_url, "--group", "g", "--alerts", "a"]
    base += ["--dead-letters", "d", "--until-idle", "0"]
    ckpt = ["--checkpoint", str(tmp_path / "ckpt")]
    fails_with([*base, "--stream", "other", *ckpt], "holds stream 'ev' group 'g'")
    fails_with([*base, "--stream", "a", *ckpt], "--alerts a: is the input stream")
    fails_with([*base, "--stream", "ev", *ckpt, "--batch", "0"], "--batch")
    (tmp_path / "file").write_text("x")
    fails_with([*base, "--stream", "ev", "--checkpoint", str(tmp_path / "file")], "not a directory")
    (tmp_path / "ckpt" / "stream.checkpoint").write_text("{}")
    fails_with([*base, "--stream", "ev", *ckpt], "damaged checkpoint")


def test_metrics_are_served_for_prometheus(
    stream_workspace: Path, redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    from hybrid_ad.core.detector import Detector
    from hybrid_ad.stream.connection import connect
    from hybrid_ad.stream.processor import StreamOptions, StreamProcessor, model_version
    from hybrid_ad.stream.server import free_port

    publish(stream_workspace, redis_url, "ev", limit=300)
    client.xadd("ev", {"timestamp": "soon"})
    model = stream_workspace / "out" / "model"
    options = StreamOptions(
        stream="ev", group="g", consumer="c", alerts="a", dead_letters="d",
        checkpoint_dir=tmp_path / "ckpt", until_idle=0.2,
    )  # fmt: skip
    processor = StreamProcessor(
        Detector.load(model), model_version(model), connect(redis_url), options
    )
    port = free_port()
    processor.serve_metrics(port)
    summary = processor.run()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'hybrid_ad_stream_events_total{stream="ev"} 301.0' in text
    assert f'hybrid_ad_stream_alerts_total{{stream="ev"}} {float(summary.alerts)}' in text
    assert 'hybrid_ad_stream_dead_letters_total{stream="ev"} 1.0' in text
    assert 'hybrid_ad_stream_lag{stream="ev"} 0.0' in text
    assert summary.alerts == client.xlen("a") > 0
