"""Shared by the stream tests: a private redis-server and a small streaming model.

Never the shared server on 6379: every test runs against its own redis-server process on a
free port, flushed between tests. A test that needs Redis fails, never skips, if it cannot
start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.stream.server import private_redis

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args: str):
    """Run a command in-process; fail the test with its output if it does not exit 0."""
    result = runner.invoke(app, [*args, "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The private server, empty at the start of each test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def stream_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated streaming log (40 accounts, 6 days, about 3,000 events) and a small model
    trained on it with the shipped streaming config, shrunk to test size: ROOT/events.parquet
    and ROOT/out/model."""
    root = tmp_path_factory.mktemp("stream_model")
    events = root / "events.parquet"
    invoke("simulate", "--out", str(events), "--accounts", "40", "--days", "6", "--seed", "3")
    raw = yaml.safe_load((REPO / "config" / "streaming_service.yaml").read_text())
    raw["rules"] = str(REPO / "config" / raw["rules"])
    raw["data"]["path"] = str(events)
    raw["autoencoder"].update(hidden_layers=[16], latent_dim=4, max_epochs=2, patience=1)
    raw["judge"].update(n_estimators=30, early_stopping_rounds=10, threads=1)
    raw["evaluation"].update(report=False, precision_at_k=20)
    raw["artifacts"]["out_dir"] = str(root / "out")
    (root / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    invoke("run", "--config", str(root / "config.yaml"))
    return root


def read_stream(client: redis.Redis, name: str) -> list[dict[str, str]]:
    """Every entry's fields, in stream order."""
    return [fields for _, fields in client.xrange(name)]
