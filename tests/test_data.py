import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import DataConfig
from hybrid_ad.data import EVENT_SECONDS, ColumnBlocks, load_events, read_table, time_split
from hybrid_ad.errors import InputError


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "events.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_reads_csv_gzip_and_parquet_alike(tmp_path: Path, events: pd.DataFrame) -> None:
    csv = _write(tmp_path, events)
    gz = tmp_path / "events.csv.gz"
    gz.write_bytes(gzip.compress(csv.read_bytes()))
    parquet = tmp_path / "events.parquet"
    events.to_parquet(parquet)
    frames = [read_table(path) for path in (csv, gz, parquet)]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], frame, check_dtype=False)


def test_glob_features_resolve_in_order(events_csv: Path) -> None:
    frame, columns = load_events(events_csv, DataConfig(features=["V*", "Amount"]))
    assert columns == [f"V{i}" for i in range(1, 7)] + ["Amount"]
    assert frame[EVENT_SECONDS].dtype == np.float64


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["Time"]), "missing column 'Time'"),
        (
            lambda f: f.assign(V3=f["V3"].astype(object).where(f.index != 5, "abc")),
            "column 'V3' has a non-numeric value 'abc' at data row 6",
        ),
        (
            lambda f: f.assign(V2=f["V2"].where(f.index != 3, np.nan)),
            "column 'V2' has 1 missing or infinite value",
        ),
        (
            lambda f: f.assign(Amount=f["Amount"].where(f.index != 0, np.inf)),
            "column 'Amount' has 1 missing or infinite value",
        ),
        (lambda f: f.assign(Class=2), "label column 'Class' must be 0 or 1"),
        (
            lambda f: f.rename(columns={f"V{i}": f"W{i}" for i in range(1, 7)}),
            "no column matches 'V\\*'",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_column(
    tmp_path: Path, events: pd.DataFrame, mutate, message: str
) -> None:
    path = _write(tmp_path, mutate(events.copy()))
    with pytest.raises(InputError, match=message) as info:
        load_events(path, DataConfig(features=["V*", "Amount"]))
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_empty_and_truncated_files(tmp_path: Path, events: pd.DataFrame) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.csv: file is empty"):
        read_table(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("Time,V1,Amount,Class\n")
    with pytest.raises(InputError, match="no data rows"):
        read_table(header_only)
    data = gzip.compress(events.to_csv(index=False).encode())
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.csv.gz: file is truncated or corrupt"):
        read_table(truncated)
    with pytest.raises(InputError, match="file not found"):
        read_table(tmp_path / "absent.csv")
    with pytest.raises(InputError, match="unsupported file type"):
        read_table(tmp_path / "events.xlsx")


def test_datetime_timestamps_and_unparseable_ones(tmp_path: Path) -> None:
    frame = pd.DataFrame({"ts": ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"], "x": [1.0, 2.0]})
    config = DataConfig(timestamp="ts", timestamp_unit="datetime", label=None, features=["x"])
    events, _ = load_events(_write(tmp_path, frame), config)
    assert np.diff(events[EVENT_SECONDS].to_numpy()).tolist() == [3600.0]
    frame.loc[1, "ts"] = "yesterday-ish"
    with pytest.raises(InputError, match="column 'ts' has timestamps that cannot be parsed"):
        load_events(_write(tmp_path, frame, "bad.csv"), config)


def test_time_split_is_ordered_and_disjoint(events: pd.DataFrame) -> None:
    shuffled = events.sample(frac=1.0, random_state=0)
    from hybrid_ad.data import validate_events

    validated, _ = validate_events(shuffled, DataConfig(), "x")
    split = time_split(validated, DataConfig().split)
    assert (len(split.train), len(split.validation), len(split.test)) == (2400, 800, 800)
    assert split.train[EVENT_SECONDS].max() <= split.validation[EVENT_SECONDS].min()
    assert split.validation[EVENT_SECONDS].max() <= split.test[EVENT_SECONDS].min()
    all_rows = set(split.train.index) | set(split.validation.index) | set(split.test.index)
    assert len(all_rows) == len(events)


def test_column_blocks_gather_columns_and_blocks_in_any_order() -> None:
    """`ColumnBlocks.matrix` takes names from plain columns and from blocks, in runs and out
    of order, the same for every batch of one layout; a missing name is reported."""
    rng = np.random.default_rng(5)
    for n in (1, 7):
        plain = {"t": rng.normal(size=n), "a": rng.normal(size=n)}
        block = rng.normal(size=(n, 5))
        other = rng.normal(size=(n, 2))
        columns = ColumnBlocks(
            plain, [(["b0", "b1", "b2", "b3", "b4"], block), (["c0", "a"], other)]
        )
        names = ["b1", "b2", "b3", "a", "t", "b4", "b0", "c0"]
        expected = np.column_stack(
            [block[:, 1], block[:, 2], block[:, 3], plain["a"], plain["t"], block[:, 4],
             block[:, 0], other[:, 0]]
        )  # fmt: skip
        for _ in range(2):  # the second time from the kept plan
            np.testing.assert_array_equal(columns.matrix(names), expected)
        assert columns["a"] is plain["a"]  # a plain column wins over a block's of that name
        assert list(columns) == ["t", "a", "b0", "b1", "b2", "b3", "b4", "c0"]
        assert columns.missing(["b0", "zz", "a", "yy"]) == ["zz", "yy"]
        with pytest.raises(KeyError, match="zz"):
            columns.matrix(["b0", "zz"])
