"""Event identity: configured id columns, and derived ids that do not depend on the file format."""

import hashlib
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import DataConfig, config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import event_ids, feature_columns, read_table
from hybrid_ad.errors import InputError
from hybrid_ad.jobs.pipeline import score_file
from hybrid_ad.progress import ProgressReporter

from .conftest import make_events, small_config_dict

STREAM = DataConfig(
    timestamp="ts",
    timestamp_unit="datetime",
    label="is_anomaly",
    features=["amount", "failed_login"],
    entity_keys=["account_id", "country"],
)


def _stream_events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(
                ["2026-01-05T10:00:00Z", "2026-01-05T10:00:00Z", "2026-01-05T10:00:01.5Z"],
                format="ISO8601",
            ),
            "account_id": [7, 8, 7],
            "country": ["DE", "DE", "FR"],
            "amount": [9.99, 9.99, 0.0],
            "failed_login": [0, 0, 3],
            "is_anomaly": [0, 1, 0],
        }
    )


def test_derived_ids_match_across_csv_parquet_and_dicts(tmp_path: Path) -> None:
    events = make_events(300, seed=4)
    config = DataConfig()
    expected = event_ids(events, config)
    assert expected.is_unique and expected.str.fullmatch("[0-9a-f]{16}").all()
    events.to_csv(tmp_path / "e.csv", index=False)
    events.to_parquet(tmp_path / "e.parquet")
    from_csv = event_ids(read_table(tmp_path / "e.csv"), config)
    from_parquet = event_ids(read_table(tmp_path / "e.parquet"), config)
    assert from_csv.tolist() == expected.tolist() == from_parquet.tolist()
    one_by_one = [
        event_ids(pd.DataFrame([row]), config).iloc[0] for row in events.to_dict("records")
    ]
    assert one_by_one == expected.tolist()
    # Column order, extra columns and the label play no part; the index is kept.
    shuffled = events[list(reversed(events.columns))].assign(Class=1, note="x")
    shuffled.index = shuffled.index + 1000
    again = event_ids(shuffled, config)
    assert again.tolist() == expected.tolist()
    assert again.index.tolist() == shuffled.index.tolist()


def test_derived_ids_follow_the_documented_recipe() -> None:
    events = _stream_events()
    seconds = pd.Timestamp("2026-01-05T10:00:01.5Z").value / 1e9
    # Features in order of name (amount, failed_login), then keys in config order.
    message = struct.pack("<ddd", seconds, 0.0, 3.0) + b"1:7,2:FR,"
    assert event_ids(events, STREAM).iloc[2] == hashlib.sha256(message).hexdigest()[:16]


def test_every_identifying_field_changes_the_id() -> None:
    events = _stream_events()
    base = event_ids(events, STREAM).iloc[0]
    changes = {
        "ts": pd.Timestamp("2026-01-05T10:00:00.001Z"),
        "account_id": 9,
        "country": "D",
        "amount": 9.98,
        "failed_login": 1,
    }
    for column, value in changes.items():
        changed = events.copy()
        changed[column] = changed[column].astype(object)
        changed.loc[0, column] = value
        assert event_ids(changed, STREAM).iloc[0] != base, column
    # Keys are netstrings: ("DE", "7") cannot collide with ("D", "E7")-style splits.
    split = events.assign(account_id=["7D", "8", "7"], country=["E", "DE", "FR"])
    assert event_ids(split, STREAM).iloc[0] != base
    # The label is not part of it: rows 0 and 1 differ only in account and label.
    assert event_ids(events.assign(account_id=7), STREAM).nunique() == 2


def test_datetime_and_key_spellings_read_alike(tmp_path: Path) -> None:
    events = _stream_events()
    expected = event_ids(events, STREAM).tolist()
    spelled = events.assign(
        ts=["2026-01-05 10:00:00+00:00", "2026-01-05T11:00:00+01:00", "2026-01-05T10:00:01.500Z"],
        account_id=[7.0, 8.0, 7.0],
        failed_login=["0", "0", "3"],
    )
    assert event_ids(spelled, STREAM).tolist() == expected
    events.to_csv(tmp_path / "s.csv", index=False)
    events.to_parquet(tmp_path / "s.parquet")
    for path in (tmp_path / "s.csv", tmp_path / "s.parquet"):
        assert event_ids(read_table(path), STREAM).tolist() == expected, path.name


def test_configured_id_column_is_used_as_text() -> None:
    config = DataConfig(event_id="txn", features=["*"])
    events = make_events(5, seed=1).assign(txn=[10, 11, 12, 13, 14])
    assert event_ids(events, config).tolist() == ["10", "11", "12", "13", "14"]
    assert event_ids(events.assign(txn=events["txn"] * 1.0), config).tolist()[0] == "10"
    assert "txn" not in feature_columns(events, config, "events")
    named = events.assign(txn=["a", "b", "c", "d", "e"])
    assert event_ids(named, config).tolist() == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(
    ("txn", "message"),
    [
        (
            ["a", "b", "c", "b", "a"],
            "events: column 'txn' has the duplicate event id 'b' at data rows 2 and 4",
        ),
        (["a", "b", " ", "d", "e"], "events: column 'txn' has an empty event id at data row 3"),
        (["a", None, "c", "d", "e"], "events: column 'txn' has a missing event id at data row 2"),
    ],
)
def test_bad_configured_ids_are_one_line_errors(txn: list, message: str) -> None:
    events = make_events(5, seed=1).assign(txn=txn)
    with pytest.raises(InputError) as error:
        event_ids(events, DataConfig(event_id="txn"))
    assert str(error.value) == message


def test_bad_derived_id_inputs_name_the_column() -> None:
    events = _stream_events()
    with pytest.raises(InputError, match="missing column 'country'"):
        event_ids(events.drop(columns="country"), STREAM)
    with pytest.raises(InputError, match="column 'country' has a missing value at data row 2"):
        event_ids(events.assign(country=["DE", None, "FR"]), STREAM)
    with pytest.raises(InputError, match="missing event id column 'txn'"):
        event_ids(events, DataConfig(event_id="txn"))


def test_event_id_cannot_take_another_role() -> None:
    raw = small_config_dict(data={"event_id": "Time"})
    with pytest.raises(Exception, match="event_id: 'Time' already has another role"):
        config_from_dict(raw)


def test_score_output_starts_with_the_configured_event_id(tmp_path: Path) -> None:
    config = config_from_dict(small_config_dict(data={"event_id": "txn", "features": ["*"]}))
    events = make_events(1500, seed=5)
    events.insert(3, "txn", [f"t{i:05d}" for i in range(len(events))])
    detector = Detector(config).fit(events)
    assert "txn" not in detector.feature_columns_
    detector.save(tmp_path / "model")
    fresh = events.iloc[::-1].head(200)
    fresh.to_csv(tmp_path / "fresh.csv", index=False)
    quiet = ProgressReporter(enabled=False)
    score_file(tmp_path / "model", tmp_path / "fresh.csv", tmp_path / "scored.csv", quiet)
    scored = pd.read_csv(tmp_path / "scored.csv", dtype={"event_id": str})
    assert scored.columns[0] == "event_id"
    assert scored["event_id"].tolist() == fresh["txn"].tolist()
    np.testing.assert_allclose(scored["score"], detector.score(fresh)["score"], rtol=1e-6)
    fresh.assign(txn="same").to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(InputError, match="dup.csv: column 'txn' has the duplicate event id 'same'"):
        score_file(tmp_path / "model", tmp_path / "dup.csv", tmp_path / "out.csv", quiet)
