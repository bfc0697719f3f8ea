"""Label store semantics, the same on SQLite and PostgreSQL: latest wins, the audit trail stays,
`as_of` never sees a later label, bad batches change nothing, two writers at once lose nothing."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pandas as pd
import pytest

from hybrid_ad.errors import InputError, StoreError
from hybrid_ad.labels import (
    VERDICT_COLUMNS,
    Verdicts,
    open_store,
    read_verdicts,
    validate_verdicts,
)

from .conftest import execute_raw


def _verdicts(*rows: tuple) -> pd.DataFrame:
    """(event_id, label, source, labelled_at[, analyst, note]) tuples, as a file would hold."""
    frame = pd.DataFrame(
        [(*row, *[""] * (6 - len(row))) for row in rows],
        columns=["event_id", "label", "source", "labelled_at", "analyst", "note"],
    )
    return frame.astype(str)


def _latest_labels(store, as_of=None) -> dict[str, int]:
    latest = store.latest(as_of)
    return dict(zip(latest["event_id"], latest["label"].astype(int), strict=True))


def test_latest_verdict_wins_and_relabels_keep_the_audit_trail(store_url: str) -> None:
    with open_store(store_url, create=True) as store:
        store.append(
            _verdicts(
                ("e1", "0", "analyst", "2026-01-05T10:00:00Z", "ann", "looks fine"),
                ("e2", "1", "analyst", "2026-01-05T11:00:00Z", "bob"),
                ("e1", "1", "chargeback", "2026-01-09T00:00:00Z"),
            )
        )
        # An older verdict arriving later does not override a newer one ...
        store.append(_verdicts(("e1", "0", "analyst", "2026-01-06T00:00:00Z", "cy")))
        assert _latest_labels(store) == {"e1": 1, "e2": 1}
        # ... and at the same labelled_at, the later insertion wins.
        store.append(_verdicts(("e2", "0", "analyst", "2026-01-05T11:00:00Z", "dee")))
        assert _latest_labels(store) == {"e1": 1, "e2": 0}

        history = store.history("e1")
        assert history["source"].tolist() == ["analyst", "analyst", "chargeback"]
        assert history["label"].tolist() == [0, 0, 1]
        assert history["analyst"].tolist() == ["ann", "cy", None]
        assert history.loc[0, "note"] == "looks fine"
        assert store.history("nobody").empty
        everything = store.verdicts()
        assert everything["event_id"].tolist() == ["e1", "e2", "e1", "e1", "e2"]
        assert everything["recorded_at"].is_monotonic_increasing
        latest = store.latest()
        assert list(latest.columns) == list(VERDICT_COLUMNS)
        assert latest.loc[latest["event_id"] == "e2", "analyst"].item() == "dee"
        assert str(latest["labelled_at"].dtype) == "datetime64[us, UTC]"


def test_as_of_never_sees_a_label_known_later(store_url: str) -> None:
    with open_store(store_url, create=True) as store:
        store.append(
            _verdicts(
                ("fraud", "0", "analyst", "2026-01-05T10:00:00Z"),
                ("fraud", "1", "chargeback", "2026-01-20T00:00:00Z"),
                ("late", "1", "chargeback", "2026-01-20T00:00:00.000001Z"),
                ("early", "1", "analyst", "2026-01-01T00:00:00Z"),
            )
        )
        assert _latest_labels(store, as_of="2026-01-10") == {"fraud": 0, "early": 1}
        # The cut-off is inclusive, to the microsecond, in any time zone.
        at_cut = _latest_labels(store, as_of="2026-01-20T01:00:00+01:00")
        assert at_cut == {"fraud": 1, "early": 1}
        assert _latest_labels(store, as_of=pd.Timestamp("2026-01-20 00:00:00.000001")) == {
            "fraud": 1,
            "late": 1,
            "early": 1,
        }
        assert store.latest(as_of="2025-12-31").empty
        with pytest.raises(InputError, match="as_of: 'soon' is not a timestamp"):
            store.latest(as_of="soon")


def test_stats_count_sources_labels_events_and_time_range(store_url: str) -> None:
    with open_store(store_url, create=True) as store:
        empty = store.stats()
        assert (empty.verdicts, empty.events, empty.first_labelled_at) == (0, 0, None)
        store.append(
            _verdicts(
                ("a", "1", "analyst", "2026-01-05T10:00:00Z"),
                ("a", "0", "analyst", "2026-01-06T10:00:00Z"),
                ("b", "1", "chargeback", "2026-01-07T10:00:00Z"),
                ("c", "1", "analyst", "2026-01-04T10:00:00Z"),
            )
        )
        stats = store.stats().to_dict()
    assert stats["verdicts"] == 4 and stats["events"] == 3
    assert stats["first_labelled_at"] == "2026-01-04T10:00:00.000000Z"
    assert stats["last_labelled_at"] == "2026-01-07T10:00:00.000000Z"
    assert stats["by_source"] == [
        {"source": "analyst", "label": 0, "verdicts": 1},
        {"source": "analyst", "label": 1, "verdicts": 2},
        {"source": "chargeback", "label": 1, "verdicts": 1},
    ]
    assert stats["latest_by_label"] == {"0": 1, "1": 2}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            {"event_id": ["a", "b"], "label": ["1", "0"], "source": ["x", "x"], "lable": ["", ""]},
            "batch: unknown column 'lable' (columns: event_id, label, source, analyst, "
            "labelled_at, note)",
        ),
        ({"event_id": ["a"], "label": ["1"]}, "batch: missing column 'source'"),
        (
            {"event_id": ["a", "b"], "label": ["1", "2"], "source": ["x", "x"]},
            "batch: data row 2: label must be 0 or 1, got '2'",
        ),
        (
            {"event_id": ["a", "b"], "label": [1, 2], "source": ["x", "x"]},
            "batch: data row 2: label must be 0 or 1, got 2",
        ),
        (
            {"event_id": ["a", ""], "label": ["1", "0"], "source": ["x", "x"]},
            "batch: data row 2: empty event_id",
        ),
        (
            {"event_id": ["a", "b"], "label": ["1", "0"], "source": ["x", " "]},
            "batch: data row 2: empty source",
        ),
        (
            {
                "event_id": ["a", "b", "c"],
                "label": ["1", "0", "1"],
                "source": ["x", "x", "x"],
                "labelled_at": ["2026-01-05", "", "2026-02-30T00:00:00Z"],
            },
            "batch: data row 3: labelled_at '2026-02-30T00:00:00Z' is not a timestamp",
        ),
        (
            {
                "event_id": ["a", "b", "a"],
                "label": ["1", "0", "0"],
                "source": ["analyst", "x", "chargeback"],
                "labelled_at": ["2026-01-05T00:00:00Z", "", "2026-01-05T01:00:00+01:00"],
            },
            "batch: data row 3: event 'a' has label 0 here and 1 at data row 1, both labelled "
            "at 2026-01-05T00:00:00.000000Z: conflicting verdicts in one file",
        ),
    ],
)
def test_a_bad_batch_is_refused_whole(store_url: str, rows: dict, message: str) -> None:
    with open_store(store_url, create=True) as store:
        store.append(_verdicts(("kept", "1", "analyst", "2026-01-01T00:00:00Z")))
        with pytest.raises(InputError) as error:
            store.append(pd.DataFrame(rows), source="batch")
        assert str(error.value).startswith(message)
        assert "\n" not in str(error.value)
        assert store.verdicts()["event_id"].tolist() == ["kept"]


def test_a_write_that_fails_part_way_keeps_nothing(store_url: str) -> None:
    with open_store(store_url, create=True) as store:
        valid = validate_verdicts(_verdicts(("a", "1", "x", ""), ("b", "0", "x", "")))
        # Past validation, so the table's CHECK refuses the second row mid-write.
        broken = Verdicts(valid.frame.assign(event_id=["a", ""]))
        with pytest.raises(StoreError, match="cannot write"):
            store.append(broken)
        assert store.verdicts().empty
        store.append(valid)
        assert len(store.verdicts()) == 2


def test_the_table_refuses_updates_and_deletes(store_url: str) -> None:
    with open_store(store_url, create=True) as store:
        store.append(_verdicts(("a", "1", "analyst", "2026-01-01T00:00:00Z")))
    for sql in ("UPDATE label_verdicts SET label = 0", "DELETE FROM label_verdicts"):
        with pytest.raises(Exception, match="append-only"):
            execute_raw(store_url, sql)
    with open_store(store_url) as store:
        assert _latest_labels(store) == {"a": 1}


def test_exact_duplicates_identical_verdicts_and_defaults(store_url: str) -> None:
    before = pd.Timestamp.now("UTC")
    with open_store(store_url, create=True) as store:
        count = store.append(
            pd.DataFrame({"event_id": [7, 7, 8], "label": [1, 1, 0], "source": ["analyst"] * 3})
        )
        stored = store.verdicts()
    after = pd.Timestamp.now("UTC")
    assert count == 3 and stored["event_id"].tolist() == ["7", "7", "8"]
    assert stored["labelled_at"].between(before.floor("us"), after).all()
    assert stored["analyst"].isna().all() and stored["note"].isna().all()


def test_export_imports_back_as_the_same_verdicts(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url, create=True) as store:
        store.append(
            _verdicts(
                ("e1", "0", "analyst", "2026-01-05T10:00:00.123456Z", "ann", 'says "fine", ok'),
                ("e2", "1", "chargeback", "2026-01-06T00:00:00Z"),
                ("e1", "1", "chargeback", "2026-01-08T00:00:00Z", "", "ünïcode"),
            )
        )
        assert store.export(tmp_path / "all.csv") == 3
        assert store.export(tmp_path / "latest.csv", latest=True, as_of="2026-01-07") == 2
        original = store.verdicts()
    with open_store(tmp_path / "copy.db", create=True) as copy:
        copy.append(read_verdicts(tmp_path / "all.csv"), source="all.csv")
        again = copy.verdicts()
    columns = list(VERDICT_COLUMNS)
    pd.testing.assert_frame_equal(again[columns], original[columns])
    latest = read_verdicts(tmp_path / "latest.csv")
    assert latest[["event_id", "label"]].values.tolist() == [["e1", "0"], ["e2", "1"]]


def test_opening_what_is_not_a_store_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="absent.db: no label store here"):
        open_store(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()
    (tmp_path / "text.db").write_text("event_id,label\n")
    with pytest.raises(StoreError, match="text.db: cannot open as a label store"):
        open_store(tmp_path / "text.db", create=True)
    with pytest.raises(StoreError, match="unknown store scheme 'mysql'"):
        open_store("mysql://localhost/labels")
    with pytest.raises(StoreError) as error:
        open_store("postgresql://someone:secret@127.0.0.1:1/test")
    assert "cannot connect" in str(error.value) and "secret" not in str(error.value)


def test_an_existing_database_without_the_table_is_not_a_store(store_url: str) -> None:
    execute_raw(store_url, "CREATE TABLE unrelated (x INTEGER)")
    with pytest.raises(StoreError, match="not a label store"):
        open_store(store_url)


def _writer(url: str, writer: int, barrier, batches: int, batch_size: int) -> None:
    """One of two processes appending at once: small batches, so their transactions interleave."""
    with open_store(url, create=True) as store:
        barrier.wait()
        for batch in range(batches):
            rows = [
                (
                    f"e{(batch * batch_size + i) % 150}",  # both writers label the same events
                    str((writer + batch + i) % 2),
                    f"writer{writer}",
                    f"2026-01-05T10:00:0{i % 3}Z",  # many ties: insertion order decides
                    "",
                    f"{writer}/{batch}/{i}",
                )
                for i in range(batch_size)
            ]
            store.append(_verdicts(*rows))
            time.sleep(0.002)  # let the other writer in between, as analysts would


def test_two_writers_at_once_lose_nothing_and_agree_on_the_latest(store_url: str) -> None:
    batches, batch_size = 25, 40
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    writers = [
        context.Process(target=_writer, args=(store_url, writer, barrier, batches, batch_size))
        for writer in (0, 1)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    with open_store(store_url) as store:
        stored = store.verdicts()
        latest = store.latest()
    assert len(stored) == 2 * batches * batch_size
    expected_notes = {
        f"{w}/{b}/{i}" for w in (0, 1) for b in range(batches) for i in range(batch_size)
    }
    assert set(stored["note"]) == expected_notes
    # Each append is one transaction: its rows are contiguous, and the writers did interleave.
    batch_of = stored["note"].str.rsplit("/", n=1).str[0]
    runs = (batch_of != batch_of.shift()).sum()
    assert runs == 2 * batches
    assert stored["source"].ne(stored["source"].shift()).sum() > 2
    # Latest = the last verdict by labelled_at, then insertion order, as the audit trail says.
    expected = stored.sort_values("labelled_at", kind="stable").groupby("event_id").tail(1)
    expected = expected.sort_values("event_id")
    assert latest["note"].tolist() == expected["note"].tolist()
