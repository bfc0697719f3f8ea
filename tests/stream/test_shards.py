"""Sharded processing is exact when every behavioural entity key contains the shard key: one
processor per shard gives the scores of one processor on the whole stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
import yaml

from tests.stream.conftest import invoke, read_stream


def test_shards_keyed_by_account_score_like_one_stream(
    stream_workspace: Path, redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    # every entity key contains account_id: "this account's device", "this account's network"
    config = yaml.safe_load((stream_workspace / "config.yaml").read_text())
    keys = ["account_id", ["account_id", "device_id"], ["account_id", "country"]]
    config["features"]["behavioural"]["entity_keys"] = [*keys, ["account_id", "ip_prefix"]]
    per_account = {
        "device_id": ["account_id", "device_id"],
        "ip_prefix": ["account_id", "ip_prefix"],
    }
    for item in config["features"]["behavioural"]["distinct"]:  # counted per account's key too
        item["keys"] = [
            per_account.get(key, key) if isinstance(key, str) else key for key in item["keys"]
        ]
    rules = _rekeyed(yaml.safe_load(Path(config["rules"]).read_text()))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    config["rules"] = str(tmp_path / "rules.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    invoke("run", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "out"))
    model, events = str(tmp_path / "out" / "model"), str(stream_workspace / "events.parquet")
    invoke("publish", "--input", events, "--redis", redis_url, "--stream", "all")
    invoke(
        "publish", "--input", events, "--redis", redis_url, "--stream", "ev",
        "--shards", "3", "--shard-key", "account_id",
    )  # fmt: skip
    for name in ("all", "ev:0", "ev:1", "ev:2"):
        invoke(
            "stream", "--model", model, "--redis", redis_url, "--stream", name, "--group", "g",
            "--alerts", f"{name}.alerts", "--scores", f"{name}.scores",
            "--dead-letters", f"{name}.dead", "--checkpoint", str(tmp_path / name),
            "--until-idle", "0.2",
        )  # fmt: skip
    whole = pd.DataFrame(read_stream(client, "all.scores")).set_index("event_id")
    parts = pd.concat(pd.DataFrame(read_stream(client, f"ev:{i}.scores")) for i in range(3))
    parts = parts.set_index("event_id").loc[whole.index]
    assert len(parts) == len(whole) > 0
    assert all(client.xlen(f"ev:{i}.scores") > 0 for i in range(3))
    np.testing.assert_allclose(
        parts["score"].astype(float), whole["score"].astype(float), rtol=1e-9
    )
    assert (parts["alert"] == whole["alert"]).all()
    shard_alerts = sum(client.xlen(f"ev:{i}.alerts") for i in range(3))
    assert shard_alerts == client.xlen("all.alerts")


def _rekeyed(node: Any) -> Any:
    """The rules with device and network features read per account's device and network."""
    if isinstance(node, dict):
        return {key: _rekeyed(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_rekeyed(value) for value in node]
    if isinstance(node, str) and node.startswith(("device_id__", "ip_prefix__")):
        return f"account_id+{node}"
    return node
