"""The review queue: each strategy picks what it claims, labelled events are skipped, budgets
hold per day, the output is deterministic, and bad requests are one-line errors (exit 2)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import EVENT_SECONDS, event_ids
from hybrid_ad.jobs.review import EXPLORE_SHARE, review_file, review_queue
from hybrid_ad.labels import open_store
from hybrid_ad.stages.features import prepare_events

from .conftest import make_events, small_config_dict

runner = CliRunner()
HOSTILE_REASON = 'amount above p99 <script>alert("x")</script> & more'


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Detector]:
    raw = small_config_dict()
    raw["rules"]["rules"][0]["reason"] = HOSTILE_REASON
    detector = Detector(config_from_dict(raw)).fit(make_events(3000, seed=0))
    directory = tmp_path_factory.mktemp("review") / "model"
    detector.save(directory)
    return directory, Detector.load(directory)


@pytest.fixture(scope="module")
def new_events() -> pd.DataFrame:
    return make_events(2000, seed=11, fraud_rate=0.03)  # two days of events


@pytest.fixture(scope="module")
def scored(model: tuple[Path, Detector], new_events: pd.DataFrame) -> pd.DataFrame:
    """Everything the queue is judged against, computed without the review module."""
    _, detector = model
    prepared = prepare_events(new_events, detector.config, "new")
    frame = detector.score(prepared)
    frame["event_id"] = event_ids(new_events, detector.config.data).to_numpy()
    frame["day"] = np.floor(prepared.frame[EVENT_SECONDS].to_numpy() / 86_400).astype(int)
    assert detector.tail_scales_ is not None
    surprises = [
        detector.tail_scales_["rules"].transform(frame["rule_score"].to_numpy()),
        detector.tail_scales_["autoencoder"].transform(frame["reconstruction_error"].to_numpy()),
        detector.tail_scales_["histogram"].transform(frame["histogram_score"].to_numpy()),
    ]
    frame["rarity"] = np.mean(surprises, axis=0)
    return frame.reset_index(drop=True)


def _queue(model, new_events, budget, strategy, per_day=False, labelled=()):
    _, detector = model
    prepared = prepare_events(new_events, detector.config, "new")
    ids = event_ids(new_events, detector.config.data)
    return review_queue(detector, prepared, ids, budget, strategy, per_day, labelled)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(float), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def test_top_takes_the_highest_scores_with_reasons(model, new_events, scored) -> None:
    queue = _queue(model, new_events, 12, "top")
    expected = scored.sort_values("score", ascending=False, kind="stable").head(12)
    assert queue["event_id"].tolist() == expected["event_id"].tolist()
    assert queue["rank"].tolist() == list(range(1, 13))
    assert (queue["picked_by"] == "top").all()
    np.testing.assert_allclose(queue["score"], expected["score"])
    assert queue["alert"].tolist() == expected["alert"].tolist()
    assert queue["Time"].tolist() == new_events.loc[expected.index, "Time"].tolist()
    for text in queue["reasons"]:
        reasons = json.loads(text)
        assert set(reasons) == {"rules", "judge", "autoencoder"}
        assert len(reasons["judge"]) == 3


def test_uncertain_takes_the_scores_nearest_the_threshold(model, new_events, scored) -> None:
    _, detector = model
    queue = _queue(model, new_events, 15, "uncertain")
    distance = np.abs(_logit(scored["score"].to_numpy()) - _logit(np.array([detector.threshold_])))
    scored = scored.assign(distance=distance)
    chosen = scored["event_id"].isin(queue["event_id"])
    assert chosen.sum() == 15
    assert scored.loc[chosen, "distance"].max() <= scored.loc[~chosen, "distance"].min()
    queued = scored.set_index("event_id").loc[queue["event_id"], "distance"].to_numpy()
    assert np.all(np.diff(queued) >= 0)  # nearest first
    assert (queue["picked_by"] == "uncertain").all()


def test_mixed_spends_most_on_top_and_explores_what_the_judge_misses(
    model, new_events, scored
) -> None:
    _, detector = model
    budget = 10
    queue = _queue(model, new_events, budget, "mixed")
    explore_count = int(budget * EXPLORE_SHARE)
    assert (
        queue["picked_by"].tolist()
        == ["top"] * (budget - explore_count) + ["explore"] * explore_count
    )
    assert queue["event_id"].is_unique and len(queue) == budget
    by_score = scored.sort_values("score", ascending=False, kind="stable")
    top = queue.loc[queue["picked_by"] == "top", "event_id"].tolist()
    assert top == by_score["event_id"].head(budget - explore_count).tolist()
    explored = queue[queue["picked_by"] == "explore"]
    assert not explored["alert"].any()
    others = scored[(scored["score"] < detector.threshold_) & ~scored["event_id"].isin(top)]
    others = others[~others["event_id"].isin(explored["event_id"])]
    assert explored["rarity"].min() >= others["rarity"].max()


def test_per_day_budget_and_labelled_events_are_skipped(
    model, new_events, scored, tmp_path: Path
) -> None:
    model_dir, _ = model
    csv = tmp_path / "events.csv"
    new_events.to_csv(csv, index=False)
    by_score = scored.sort_values("score", ascending=False, kind="stable")
    labelled = by_score["event_id"].head(4).tolist()
    store = tmp_path / "labels.db"
    with open_store(store, create=True) as target:
        target.append(pd.DataFrame({"event_id": labelled, "label": 1, "source": "analyst"}))
    result = review_file(
        model_dir, csv, tmp_path / "queue.csv", 3, "top", per_day=True, store=str(store)
    )
    queue = pd.read_csv(tmp_path / "queue.csv", dtype={"event_id": str})
    assert result.skipped_labelled == 4
    assert not set(queue["event_id"]) & set(labelled)
    assert queue["day"].tolist() == ["1970-01-01"] * 3 + ["1970-01-02"] * 3
    assert queue["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    for day, part in queue.groupby("day", sort=True):
        number = int(pd.Timestamp(day).timestamp() // 86_400)
        left = by_score[(by_score["day"] == number) & ~by_score["event_id"].isin(labelled)]
        assert part["event_id"].tolist() == left["event_id"].head(3).tolist()


def test_duplicate_ids_are_queued_once(model, new_events, scored) -> None:
    best = scored["score"].idxmax()
    doubled = pd.concat([new_events, new_events.iloc[[best]]], ignore_index=True)
    queue = _queue(model, doubled.sort_values("Time", kind="stable"), 5, "top")
    assert queue["event_id"].is_unique
    assert queue["event_id"].iloc[0] == scored.loc[best, "event_id"]


def test_queue_files_are_deterministic_and_the_page_is_escaped(
    model, new_events, tmp_path: Path
) -> None:
    model_dir, _ = model
    csv = tmp_path / "events.csv"
    new_events.to_csv(csv, index=False)
    first = review_file(model_dir, csv, tmp_path / "a.csv", 20, "mixed")
    review_file(model_dir, csv, tmp_path / "b.csv", 20, "mixed")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert first.html_path == tmp_path / "a.html"
    page = first.html_path.read_text()
    assert page.count("<td><code>") == 20  # one row per queued event
    assert first.queue["rules_hit"].str.contains("very_high_amount").any()
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybrid_ad.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_review_label_review_again_in_real_processes(model, new_events, tmp_path: Path) -> None:
    """The analyst's loop: a queue, its verdicts imported, the next queue moves on."""
    model_dir, _ = model
    csv = tmp_path / "events.csv"
    new_events.to_csv(csv, index=False)
    store, verdicts = tmp_path / "labels.db", tmp_path / "verdicts.csv"
    done = runner.invoke(
        app,
        ["review", "--model", str(model_dir), "--input", str(csv), "--budget", "6",
         "--output", str(tmp_path / "queue.csv"), "--quiet"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    first = pd.read_csv(tmp_path / "queue.csv", dtype={"event_id": str})
    assert len(first) == 6 and (tmp_path / "queue.html").is_file()
    first.assign(label=1, source="analyst")[["event_id", "label", "source"]].to_csv(
        verdicts, index=False
    )
    assert _cli("labels", "import", str(verdicts), "--store", str(store), "-q").returncode == 0
    again = _cli(
        "review", "--model", str(model_dir), "--input", str(csv), "--budget", "6",
        "--strategy", "mixed", "--store", str(store), "--output", str(tmp_path / "next.csv"),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "(6 already labelled)" in again.stderr
    second = pd.read_csv(tmp_path / "next.csv", dtype={"event_id": str})
    assert len(second) == 6 and not set(second["event_id"]) & set(first["event_id"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "error: --budget: must be at least 1, got 0"),
        (["--budget", "5", "--strategy", "best"], "error: --strategy: expected one of"),
        (["--budget", "5", "--store", "{tmp}/missing.db"], "missing.db"),
        (["--budget", "5", "--input", "{tmp}/nope.csv"], "nope.csv: file not found"),
        (["--budget", "5", "--output", "{tmp}/queue.txt"], "queue.txt: the review queue is"),
    ],
)
def test_bad_review_requests_are_one_line_exit_2(
    model, new_events, tmp_path: Path, args: list[str], message: str
) -> None:
    model_dir, _ = model
    csv = tmp_path / "events.csv"
    new_events.head(300).to_csv(csv, index=False)
    base = ["review", "--model", str(model_dir), "--input", str(csv)]
    base += ["--output", str(tmp_path / "bad.csv")]
    result = runner.invoke(app, base + [arg.format(tmp=tmp_path) for arg in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "bad.csv").exists()


def test_nothing_left_to_review_is_an_empty_queue(model, new_events, tmp_path: Path) -> None:
    model_dir, detector = model
    events = new_events.head(200)
    csv = tmp_path / "events.csv"
    events.to_csv(csv, index=False)
    store = tmp_path / "labels.db"
    with open_store(store, create=True) as target:
        ids = event_ids(events, detector.config.data)
        target.append(pd.DataFrame({"event_id": ids, "label": 0, "source": "analyst"}))
    result = review_file(model_dir, csv, tmp_path / "q.csv", 5, "mixed", True, str(store))
    assert result.queue.empty and result.skipped_labelled == 200
    assert "No events left to review." in result.html_path.read_text()
    assert pd.read_csv(tmp_path / "q.csv").columns[:3].tolist() == ["rank", "event_id", "Time"]
