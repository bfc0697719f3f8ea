"""The streaming-service simulator: reproducible, well-formed, realistic, labelled sensibly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from hybrid_ad.evaluation import recall_by_kind
from hybrid_ad.simulation.streaming import (
    ANOMALY_KINDS,
    COLUMNS,
    COUNTRIES,
    DEVICE_TYPES,
    DISTANT_KM,
    EVENT_TYPES,
    NORMAL_KIND,
    PLANS,
    country_distance_km,
    simulate_events,
    write_events,
)

STRING_COLUMNS = (
    "account_id",
    "device_id",
    "device_type",
    "country",
    "ip_prefix",
    "event_type",
    "plan",
    "anomaly_kind",
)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_events(50, 3, seed=1)


@pytest.fixture(scope="module")
def moderate() -> pd.DataFrame:
    """2,800 account-days: large enough that every anomaly kind is injected."""
    return simulate_events(400, 7, seed=11)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _local_time(frame: pd.DataFrame) -> pd.Series:
    offsets = frame["country"].map({code: c.utc_offset for code, c in COUNTRIES.items()})
    return frame["timestamp"] + pd.to_timedelta(offsets.astype(float), unit="h")


# --- determinism and shape ----------------------------------------------------------------------


def test_same_arguments_give_identical_frames_and_files(small: pd.DataFrame, tmp_path: Path):
    again = simulate_events(50, 3, seed=1)
    pd.testing.assert_frame_equal(small, again)
    for name in ("a.parquet", "a.csv.gz", "a.csv"):
        first = write_events(small, tmp_path / "one" / name)
        second = write_events(again, tmp_path / "two" / name)
        assert _sha256(first) == _sha256(second), name


def test_other_seed_or_start_gives_other_frame(small: pd.DataFrame):
    assert not small.equals(simulate_events(50, 3, seed=2))
    moved = simulate_events(50, 3, seed=1, start="2026-03-02")
    assert moved["timestamp"].min() >= pd.Timestamp("2026-03-02", tz="UTC")


def test_columns_and_dtypes(small: pd.DataFrame):
    assert tuple(small.columns) == COLUMNS
    assert small["timestamp"].dtype == "datetime64[ns, UTC]"
    for column in STRING_COLUMNS:
        assert pd.api.types.is_string_dtype(small[column]), column
        assert small[column].notna().all(), column
    for column in ("session_id", "failed_login", "is_anomaly"):
        assert small[column].dtype == np.int64, column
    for column in ("watch_seconds", "bytes_mb", "amount"):
        assert small[column].dtype == np.float64, column
    assert set(small["event_type"]) == set(EVENT_TYPES)
    assert set(small["device_type"]) <= {*DEVICE_TYPES, "server"}
    assert set(small["plan"]) <= set(PLANS)
    assert set(small["country"]) <= set(COUNTRIES)


def test_rows_sorted_by_time_and_inside_the_window(small: pd.DataFrame):
    assert small["timestamp"].is_monotonic_increasing
    start = pd.Timestamp("2026-01-05", tz="UTC")
    assert small["timestamp"].min() >= start
    assert small["timestamp"].max() < start + pd.Timedelta(days=3)
    assert (small["timestamp"].dt.microsecond % 1000 == 0).all()  # millisecond resolution


def test_values_are_consistent_with_event_types(moderate: pd.DataFrame):
    event = moderate["event_type"]
    assert (moderate["failed_login"] == (event == "login_failed")).all()
    assert (moderate.loc[event != "payment", "amount"] == 0).all()
    assert (moderate.loc[event == "payment", "amount"] >= 0).all()
    assert (moderate.loc[event == "payment", "session_id"] == -1).all()
    playback = event.isin(["play_start", "heartbeat", "play_stop"])
    assert (moderate.loc[playback, "session_id"] > 0).all()
    assert (moderate.loc[~event.isin(["heartbeat", "play_stop"]), "watch_seconds"] == 0).all()
    assert (moderate["watch_seconds"] >= 0).all()
    assert (moderate["bytes_mb"] >= 0).all()
    heartbeat_gap = moderate.loc[event == "heartbeat", "watch_seconds"]
    assert heartbeat_gap.between(290, 310).all()


def test_tiny_simulation_works():
    frame = simulate_events(1, 1, seed=0)
    assert tuple(frame.columns) == COLUMNS
    assert frame["timestamp"].is_monotonic_increasing


# --- labels -------------------------------------------------------------------------------------


def test_every_kind_present_and_fraction_sane(moderate: pd.DataFrame):
    counts = moderate["anomaly_kind"].value_counts()
    for kind in ANOMALY_KINDS:
        assert counts.get(kind, 0) > 0, kind
    assert set(counts.index) == {NORMAL_KIND, *ANOMALY_KINDS}
    assert 0.003 < moderate["is_anomaly"].mean() < 0.04


def test_labels_are_consistent(moderate: pd.DataFrame, small: pd.DataFrame):
    for frame in (moderate, small):
        assert set(frame["is_anomaly"]) <= {0, 1}
        assert (frame["is_anomaly"] == (frame["anomaly_kind"] != NORMAL_KIND)).all()


def test_account_sharing_is_concurrent_from_a_distant_country(moderate: pd.DataFrame):
    shared = moderate[moderate["anomaly_kind"] == "account_sharing"]
    normal = moderate[moderate["anomaly_kind"] == NORMAL_KIND]
    episodes = shared.groupby(["account_id", "session_id"], sort=False).first()
    assert len(episodes) > 0
    for (account, _), row in episodes.iterrows():
        own = normal[normal["account_id"] == account]
        near = own[(own["timestamp"] - row["timestamp"]).abs() <= pd.Timedelta(hours=1)]
        far = [country_distance_km(row["country"], c) >= DISTANT_KM for c in near["country"]]
        assert any(far), (account, row["timestamp"])


def test_credential_stuffing_is_a_burst_from_many_networks(moderate: pd.DataFrame):
    stuffing = moderate[moderate["anomaly_kind"] == "credential_stuffing"]
    for _, burst in stuffing.groupby("account_id"):
        failed = burst[burst["event_type"] == "login_failed"]
        assert len(failed) >= 15
        assert failed["ip_prefix"].nunique() >= 0.8 * len(failed)
    # Normal users mistype too, but rarely more than a few times in a row.
    normal_failed = moderate[
        (moderate["anomaly_kind"] == NORMAL_KIND) & (moderate["failed_login"] == 1)
    ]
    assert 0 < normal_failed.groupby("account_id").size().max() < 15


def test_bot_playback_is_round_the_clock_and_regular(moderate: pd.DataFrame):
    bots = moderate[moderate["anomaly_kind"] == "bot_playback"].groupby("device_id")
    assert len(bots) > 0
    for _, bot in bots:
        assert bot["account_id"].nunique() == 1
        starts = bot.loc[bot["event_type"] == "play_start", "timestamp"]
        assert len(starts) >= 10
        assert starts.diff().dropna().dt.total_seconds().std() < 2.0
        assert bot["timestamp"].max() - bot["timestamp"].min() >= pd.Timedelta(hours=24)
        assert _local_time(bot).dt.hour.nunique() == 24  # no sleep


def test_payment_fraud_is_a_burst_of_payments(moderate: pd.DataFrame):
    fraud = moderate[moderate["anomaly_kind"] == "payment_fraud"]
    assert (fraud["event_type"] == "payment").all()
    for _, payments in fraud.groupby("account_id"):
        episode = (payments["timestamp"].diff() > pd.Timedelta(hours=1)).cumsum()
        for _, burst in payments.groupby(episode):
            assert len(burst) >= 3
            assert burst["amount"].nunique() >= 2


def test_daily_and_weekly_rhythm(moderate: pd.DataFrame):
    normal = moderate[moderate["anomaly_kind"] == NORMAL_KIND]
    local = _local_time(normal)
    started = normal["event_type"] == "play_start"
    hour = local[started].dt.hour
    assert (hour.between(19, 21)).sum() > 5 * (hour.between(3, 5)).sum()
    # 2026-01-05 is a Monday: the 7 simulated local days are 5 weekdays and 2 weekend days.
    day = local[started].dt.normalize()
    per_day = day.value_counts()
    days = pd.DatetimeIndex(per_day.index)
    inside = (days >= pd.Timestamp("2026-01-06", tz="UTC")) & (
        days < pd.Timestamp("2026-01-11", tz="UTC")
    )
    weekend = days.day_of_week >= 5
    assert per_day[inside & weekend].mean() > 1.15 * per_day[inside & ~weekend].mean()


# --- files --------------------------------------------------------------------------------------


def test_parquet_round_trip(small: pd.DataFrame, tmp_path: Path):
    path = write_events(small, tmp_path / "events.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), small)
    assert [p.name for p in tmp_path.iterdir()] == ["events.parquet"]  # no temporary left


def test_csv_gz_round_trip(small: pd.DataFrame, tmp_path: Path):
    path = write_events(small, tmp_path / "events.csv.gz")
    text = pd.read_csv(path, nrows=1, dtype=str)
    assert text.loc[0, "timestamp"].endswith("Z") and "T" in text.loc[0, "timestamp"]
    back = pd.read_csv(path)
    back["timestamp"] = pd.to_datetime(back["timestamp"], utc=True, format="ISO8601").astype(
        "datetime64[ns, UTC]"
    )
    pd.testing.assert_frame_equal(back, small, check_exact=False)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "events.parquet"
    path.write_bytes(b"old")
    unwritable = pd.DataFrame({"mixed": [1, "a"]})
    with pytest.raises(pa.ArrowException):
        write_events(unwritable, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["events.parquet"]


def test_write_rejects_unknown_suffix(small: pd.DataFrame, tmp_path: Path):
    with pytest.raises(ValueError, match="unsupported file type"):
        write_events(small, tmp_path / "events.json")
    assert list(tmp_path.iterdir()) == []


# --- recall helper ------------------------------------------------------------------------------


def test_recall_by_kind():
    frame = pd.DataFrame(
        {
            "anomaly_kind": [
                "none",
                "bot_playback",
                "account_sharing",
                "bot_playback",
                "none",
                "account_sharing",
                "account_sharing",
            ]
        }
    )
    flagged = np.array([1, 1, 0, 0, 1, 1, 1], dtype=bool)
    result = recall_by_kind(frame["anomaly_kind"], flagged)
    assert list(result) == ["account_sharing", "bot_playback"]
    assert result["account_sharing"] == {"rows": 3, "flagged": 2, "recall": pytest.approx(2 / 3)}
    assert result["bot_playback"] == {"rows": 2, "flagged": 1, "recall": 0.5}
    assert recall_by_kind(frame["anomaly_kind"], flagged.astype(int)) == result
    with pytest.raises(ValueError, match="one per row"):
        recall_by_kind(frame["anomaly_kind"], flagged[:-1])


def test_recall_on_simulated_labels(moderate: pd.DataFrame):
    truth = moderate["is_anomaly"].to_numpy() == 1
    perfect = recall_by_kind(moderate["anomaly_kind"], truth)
    assert set(perfect) == set(ANOMALY_KINDS)
    assert all(entry["recall"] == 1.0 for entry in perfect.values())
    assert sum(entry["rows"] for entry in perfect.values()) == truth.sum()
    nothing = recall_by_kind(moderate["anomaly_kind"], np.zeros(len(moderate), dtype=bool))
    assert all(entry["flagged"] == 0 and entry["recall"] == 0.0 for entry in nothing.values())


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accounts": 0}, "accounts must be an integer >= 1"),
        ({"accounts": -3}, "accounts must be an integer >= 1"),
        ({"accounts": 2.5}, "accounts must be an integer >= 1"),
        ({"accounts": True}, "accounts must be an integer >= 1"),
        ({"days": 0}, "days must be an integer >= 1"),
        ({"days": "3"}, "days must be an integer >= 1"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"start": "not a date"}, "start must be a date"),
        ({"start": "2026-01-05T12:00"}, "start must be a date"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str):
    arguments = {"accounts": 5, "days": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        simulate_events(**arguments)
    assert "\n" not in str(info.value)
