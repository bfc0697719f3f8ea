"""`hybrid-ad labels import|export|stats` on both backends, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.labels import open_store

runner = CliRunner()

GOOD = """event_id,label,source,analyst,labelled_at,note
e1,0,analyst,ann,2026-01-05T10:00:00Z,looks fine
e2,1,analyst,bob,2026-01-05T11:00:00+01:00,"card testing, three probes"
e1,1,chargeback,,2026-01-12,
e3,1,analyst,ann,,
"""


def _labels(*args: str):
    return runner.invoke(app, ["labels", *args])


def test_import_stats_and_export(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "verdicts.csv").write_text(GOOD)
    result = _labels("import", str(tmp_path / "verdicts.csv"), "--store", store_url)
    assert result.exit_code == 0, result.output
    assert "imported 4 verdicts" in result.stderr

    stats = _labels("stats", "--store", store_url, "--json")
    assert stats.exit_code == 0, stats.output
    figures = json.loads(stats.stdout)
    assert (figures["verdicts"], figures["events"]) == (4, 3)
    assert figures["first_labelled_at"] == "2026-01-05T10:00:00.000000Z"
    assert figures["latest_by_label"] == {"1": 3}
    text = _labels("stats", "--store", store_url)
    assert "verdicts: 4 on 3 events" in text.stdout
    assert "chargeback      1         1" in text.stdout

    out = tmp_path / "out.csv"
    exported = _labels("export", "--store", store_url, "--out", str(out))
    assert exported.exit_code == 0, exported.output
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame.columns.tolist() == [
        "event_id",
        "label",
        "source",
        "analyst",
        "labelled_at",
        "note",
    ]
    assert frame["labelled_at"].tolist()[:3] == [
        "2026-01-05T10:00:00.000000Z",
        "2026-01-05T10:00:00.000000Z",
        "2026-01-12T00:00:00.000000Z",
    ]
    assert frame.loc[1, "note"] == "card testing, three probes"
    latest = _labels(
        "export", "--store", store_url, "--out", str(out), "--latest", "--as-of", "2026-01-06"
    )
    assert latest.exit_code == 0, latest.output
    assert pd.read_csv(out)["label"].tolist() == [0, 1]


def test_a_bad_file_is_refused_whole_with_one_line(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "good.csv").write_text(GOOD)
    assert _labels("import", str(tmp_path / "good.csv"), "--store", store_url).exit_code == 0
    bad = GOOD + "e4,yes,analyst,,,\n"
    (tmp_path / "bad.csv").write_text(bad)
    result = _labels("import", str(tmp_path / "bad.csv"), "--store", store_url)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'bad.csv'}: data row 5: label must be 0 or 1, got 'yes'"
    ]
    with open_store(store_url) as store:
        assert len(store.verdicts()) == 4


def test_reading_commands_do_not_create_stores(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    for args in (["stats"], ["export", "--out", str(tmp_path / "x.csv")]):
        result = _labels(*args, "--store", str(missing))
        assert result.exit_code == 2
        assert "none.db: no label store here (file not found)" in result.stderr
    (tmp_path / "bad.csv").write_text("event_id,label,source\n,1,analyst\n")
    result = _labels("import", str(tmp_path / "bad.csv"), "--store", str(missing))
    assert result.exit_code == 2 and "data row 1: empty event_id" in result.stderr
    assert not missing.exists()


def test_the_installed_command_imports_and_refuses(tmp_path: Path) -> None:
    (tmp_path / "good.csv").write_text(GOOD)
    (tmp_path / "unknown.csv").write_text("event_id,label,source,verdict\ne9,1,analyst,x\n")
    store = str(tmp_path / "labels.db")
    command = [sys.executable, "-m", "hybrid_ad.cli", "labels"]
    good = subprocess.run(
        [*command, "import", str(tmp_path / "good.csv"), "--store", store],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    bad = subprocess.run(
        [*command, "import", str(tmp_path / "unknown.csv"), "--store", store],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert "unknown.csv: unknown column 'verdict'" in bad.stderr
    with open_store(store) as opened:
        assert opened.stats().verdicts == 4
