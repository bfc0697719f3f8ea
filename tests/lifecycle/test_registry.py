"""The model registry and the lifecycle commands, in real processes: retrain into the
registry, promote, list, roll back; a non-model is refused with one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import event_ids
from hybrid_ad.jobs.pipeline import load_data
from hybrid_ad.labels import open_store
from hybrid_ad.lifecycle.registry import Registry
from tests.conftest import make_events, small_config_dict


def hybrid_ad(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybrid_ad.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry")
    events = make_events(2500, seed=5)
    data = root / "events.csv"
    events.to_csv(data, index=False)
    config = config_from_dict(small_config_dict())
    loaded = load_data(config, data)
    Detector(config).fit(loaded.part("train"), loaded.part("validation")).save(root / "v1")
    rows = np.arange(0, 1800, 30)
    verdicts = pd.DataFrame(
        {
            "event_id": event_ids(events, config.data).iloc[rows].to_numpy(),
            "label": events["Class"].iloc[rows].to_numpy(),
            "source": "analyst",
            "labelled_at": "2026-01-10T00:00:00Z",
        }
    )
    verdicts.to_csv(root / "verdicts.csv", index=False)
    with open_store(root / "labels.db", create=True) as store:
        store.append(verdicts)
    return {"root": root, "data": data, "v1": root / "v1", "store": root / "labels.db"}


def test_retrain_promote_list_and_rollback(trained: dict[str, Path], tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    first = hybrid_ad("models", "promote", "--registry", registry, "--model", trained["v1"])
    assert first.returncode == 0, first.stderr
    assert os.readlink(registry / "current") == "v1"  # copied in, current points at it

    retrained = hybrid_ad(
        "retrain",
        "--model",
        registry / "current",
        "--store",
        trained["store"],
        "--data",
        trained["data"],
        "--as-of",
        "2026-02-01T00:00:00Z",
        "--out",
        registry / "v2",
        "--quiet",
    )
    assert retrained.returncode == 0, retrained.stderr
    promoted = hybrid_ad("models", "promote", "--registry", registry, "--model", "v2")
    assert promoted.returncode == 0, promoted.stderr
    assert "current is now v2" in promoted.stderr
    assert Registry(registry).current() == "v2"
    loaded = Detector.load(registry / "current")
    manifest = json.loads((registry / "v2" / "manifest.json").read_text())
    assert loaded.config.judge.label_source == "mixed"
    assert manifest["retrain"]["label_snapshot"]["events"] == 60

    listed = hybrid_ad("models", "list", "--registry", registry)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("  v1  pseudo")
    assert lines[1].startswith("* v2  mixed")
    assert "labels 60" in lines[1] and "as of 2026-02-01T00:00:00.000000Z" in lines[1]
    assert manifest["retrain"]["label_snapshot"]["sha256"][:12] in lines[1]
    as_json = json.loads(hybrid_ad("models", "list", "--registry", registry, "--json").stdout)
    assert [(v["version"], v["current"]) for v in as_json] == [("v1", False), ("v2", True)]

    rolled = hybrid_ad("models", "rollback", "--registry", registry)
    assert rolled.returncode == 0, rolled.stderr
    assert os.readlink(registry / "current") == "v1"
    assert Detector.load(registry / "current").config.judge.label_source == "pseudo"
    again = hybrid_ad("models", "rollback", "--registry", registry)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {registry}: version 'v1' was the first current one; nothing to roll back to"
    ]
    history = json.loads((registry / "history.json").read_text())["switches"]
    assert [(s["action"], s["version"], s["previous"]) for s in history] == [
        ("promote", "v1", None),
        ("promote", "v2", "v1"),
        ("rollback", "v1", "v2"),
    ]


def test_promote_refuses_what_is_not_a_model(trained: dict[str, Path], tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    Registry(registry).promote(trained["v1"])
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("not a model")
    refused = hybrid_ad("models", "promote", "--registry", registry, "--model", not_a_model)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {not_a_model}: not a saved model (no manifest.json)"
    ]
    missing = hybrid_ad("models", "promote", "--registry", registry, "--model", "v9")
    assert missing.returncode == 2
    assert "v9: neither a model directory nor a version in" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert sorted(path.name for path in registry.iterdir()) == ["current", "history.json", "v1"]
    assert Registry(registry).current() == "v1"


def test_promote_refuses_a_tampered_model_and_a_name_clash(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    registry.promote(trained["v1"])
    copy = tmp_path / "elsewhere" / "v1"
    copy.parent.mkdir()
    subprocess.run(["cp", "-r", str(trained["v1"]), str(copy)], check=True)
    clash = hybrid_ad("models", "promote", "--registry", registry.root, "--model", copy)
    assert clash.returncode == 2
    assert "a version named 'v1' is already in the registry" in clash.stderr
    tampered = tmp_path / "v3"
    subprocess.run(["cp", "-r", str(trained["v1"]), str(tampered)], check=True)
    with open(tampered / "judge.json", "ab") as stream:
        stream.write(b" ")
    refused = hybrid_ad("models", "promote", "--registry", registry.root, "--model", tampered)
    assert refused.returncode == 2
    assert "judge.json: checksum mismatch" in refused.stderr
    assert [v.name for v in registry.versions()] == ["v1"]


def test_retrain_errors_are_one_line(trained: dict[str, Path], tmp_path: Path) -> None:
    bad_time = hybrid_ad(
        "retrain",
        "--model",
        trained["v1"],
        "--store",
        trained["store"],
        "--data",
        trained["data"],
        "--as-of",
        "yesterday-ish",
        "--out",
        tmp_path / "out",
    )
    assert bad_time.returncode == 2
    assert bad_time.stderr.strip().splitlines() == [
        "error: --as-of: 'yesterday-ish' is not a timestamp (use ISO 8601, e.g. "
        "2026-01-05T10:00:00Z)"
    ]
    no_store = hybrid_ad(
        "retrain",
        "--model",
        trained["v1"],
        "--store",
        tmp_path / "missing.db",
        "--data",
        trained["data"],
        "--out",
        tmp_path / "out",
    )
    assert no_store.returncode == 2
    assert len(no_store.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
