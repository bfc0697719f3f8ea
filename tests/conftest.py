"""Shared fixtures: a small synthetic card-transaction log and a fast config."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import Config, config_from_dict

RULES = {
    "pseudo_label_threshold": 2.0,
    "rules": [
        {
            "name": "very_high_amount",
            "weight": 1.0,
            "reason": "amount above the training p99",
            "when": {"threshold": {"feature": "Amount", "op": ">", "value": {"quantile": 0.99}}},
        },
        {
            "name": "many_extreme_components",
            "weight": 2.0,
            "reason": "at least 2 components beyond |z| 3",
            "when": {"count_extreme": {"features": ["V*"], "abs_z_above": 3, "at_least": 2}},
        },
        {
            "name": "night_and_odd",
            "weight": 1.0,
            "reason": "unusual at night",
            "when": {
                "all": [
                    {"hour_of_day": {"start": 0, "end": 6}},
                    {"zscore": {"feature": "V1", "abs_above": 2.5}},
                ]
            },
        },
    ],
}


def make_events(n: int = 4000, seed: int = 0, fraud_rate: float = 0.02) -> pd.DataFrame:
    """Time-ordered transactions: Gaussian components, log-normal amounts, shifted frauds."""
    rng = np.random.default_rng(seed)
    time = np.sort(rng.uniform(0, 2 * 86_400, n)).round()
    components = rng.normal(size=(n, 6))
    amount = rng.lognormal(3.0, 1.0, n)
    label = (rng.random(n) < fraud_rate).astype(int)
    fraud = label == 1
    components[fraud] += rng.normal(3.0, 1.0, size=(fraud.sum(), 6)) * rng.choice(
        [-1, 1], size=(fraud.sum(), 6)
    )
    amount[fraud] *= rng.uniform(1, 6, fraud.sum())
    frame = pd.DataFrame(components, columns=[f"V{i}" for i in range(1, 7)])
    frame.insert(0, "Time", time)
    frame["Amount"] = amount.round(2)
    frame["Class"] = label
    return frame


def small_config_dict(**overrides: object) -> dict:
    raw = {
        "seed": 7,
        "data": {"timestamp": "Time", "label": "Class", "features": ["V*", "Amount"]},
        "rules": copy.deepcopy(RULES),
        "autoencoder": {"hidden_layers": [16], "latent_dim": 4, "max_epochs": 4, "patience": 2},
        "judge": {"n_estimators": 40, "early_stopping_rounds": 10, "threads": 1},
        "evaluation": {"precision_at_k": 20},
    }
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return raw


@pytest.fixture
def events() -> pd.DataFrame:
    return make_events()


@pytest.fixture
def config() -> Config:
    return config_from_dict(small_config_dict())


@pytest.fixture
def events_csv(tmp_path: Path, events: pd.DataFrame) -> Path:
    path = tmp_path / "events.csv"
    events.to_csv(path, index=False)
    return path


def fails_with(args: list[str], expected: str) -> None:
    """The command exits 2 with one line on stderr that holds `expected`, and no traceback."""
    from typer.testing import CliRunner

    from hybrid_ad.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
