"""A small behavioural model trained once per session, and real `hybrid-ad serve` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import time_split, validate_events
from hybrid_ad.simulation.streaming import simulate_events, write_events

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123"
SCORED_TAIL = 240
"""The last events of the simulated log, scored by the tests (the rest trains the model)."""


@dataclass(frozen=True)
class Trained:
    model: Path
    events: pd.DataFrame
    """The scored tail, as the file `events_path` holds it (time-ordered)."""
    events_path: Path
    token_file: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The shipped streaming config shrunk to a few seconds of training on a small log."""
    root = tmp_path_factory.mktemp("service")
    log = simulate_events(40, 8, 5).sort_values("timestamp", kind="stable")
    log = log.reset_index(drop=True)
    raw = yaml.safe_load((REPO / "config" / "streaming_service.yaml").read_text())
    raw["rules"] = yaml.safe_load((REPO / "config" / raw["rules"]).read_text())
    raw["autoencoder"].update(hidden_layers=[16], latent_dim=4, max_epochs=2, patience=1)
    raw["judge"].update(n_estimators=30, early_stopping_rounds=10, threads=1)
    raw["evaluation"]["report"] = False
    config = config_from_dict(raw)
    train, _ = validate_events(log.iloc[:-SCORED_TAIL], config.data, "training log")
    split = time_split(train, config.data.split)
    detector = Detector(config).fit(split.train, validation=split.validation)
    detector.save(root / "model")
    tail = log.iloc[-SCORED_TAIL:].drop(columns=["is_anomaly", "anomaly_kind"])
    tail = tail.reset_index(drop=True)
    write_events(tail, root / "tail.parquet")
    (root / "token").write_text(TOKEN + "\n")
    return Trained(root / "model", tail, root / "tail.parquet", root / "token")


def as_json(events: pd.DataFrame) -> list[dict]:
    """Events as a client sends them: ISO-8601 times, plain numbers and strings."""
    frame = events.copy()
    frame["timestamp"] = frame["timestamp"].map(lambda value: value.isoformat())
    return frame.to_dict("records")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    """A `hybrid-ad serve` process on a free local port."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "hybrid_ad.cli", "serve", "--port", str(self.port)]
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (kept open while it runs); a pipe could fill up and block the server
        self.process = subprocess.Popen(
            [*command, *args], stdout=self._log, stderr=subprocess.STDOUT, text=True, env=env
        )

    def wait_ready(self, timeout: float = 120.0) -> Served:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}: {self.finish()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready in time")

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.finish()
        return self.process.returncode

    def finish(self) -> str:
        """Wait for the exit; everything the process wrote."""
        self.process.wait(timeout=60)
        self._log.seek(0)
        return self._log.read()


@pytest.fixture
def serve() -> Iterator[type[Served]]:
    """Start servers with `serve(*args).wait_ready()`; every one is stopped at the end."""
    started: list[Served] = []

    def start(*args: str) -> Served:
        server = Served(*args)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)
