"""Drift: PSI and KS against a stored reference profile flag the shifted input and no other."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.monitoring.drift import PSI_FLOOR, ColumnProfile, ReferenceProfile, drift

DAY = 86_400.0


def _events(n: int, seed: int, start: float = 0.0, days: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.0, 1.0, n),
            "v1": rng.normal(0.0, 1.0, n),
            "v2": rng.normal(5.0, 2.0, n),
            "failed_login": rng.poisson(0.3, n).astype(float),
            "seconds": np.sort(rng.uniform(start, start + days * DAY, n)),
        }
    )


COLUMNS = ["amount", "v1", "v2", "failed_login"]


def test_training_distribution_is_not_flagged_and_a_shifted_input_is() -> None:
    profile = ReferenceProfile.fit(_events(20_000, seed=1), COLUMNS)
    new = _events(15_000, seed=2, days=5)
    on_day_3 = (new["seconds"] >= 3 * DAY) & (new["seconds"] < 4 * DAY)
    shifted = new.assign(v2=new["v2"].where(~on_day_3, new["v2"] + 1.5))  # 0.75 sd on day 3

    calm = drift(new, profile, new["seconds"].to_numpy(), window="1d")
    assert calm["flagged_columns"] == []
    assert len(calm["windows"]) == 5
    for window in calm["windows"]:
        for figures in window["columns"].values():
            assert figures["psi"] < 0.05 and figures["ks"] < 0.06

    report = drift(shifted, profile, shifted["seconds"].to_numpy(), window="1d")
    assert report["flagged_columns"] == ["v2"]
    assert [window["flagged"] for window in report["windows"]] == [[], [], [], ["v2"], []]
    day_3 = report["windows"][3]
    assert (day_3["start_seconds"], day_3["end_seconds"]) == (3 * DAY, 4 * DAY)
    assert day_3["rows"] == int(on_day_3.sum())
    assert day_3["columns"]["v2"]["ks"] > 0.2
    assert day_3["columns"]["v1"]["psi"] < 0.05


def test_psi_follows_its_definition() -> None:
    reference = ColumnProfile(
        rows=4, edges=[1.0, 2.0], proportions=[0.25, 0.75, 0.0], percentiles=[1.0, 2.0]
    )
    window = np.array([1.0, 3.0, 3.0, 3.0])  # bins: <=1, (1, 2], > 2
    shares = np.array([0.25, PSI_FLOOR, 0.75])
    expected_reference = np.array([0.25, 0.75, PSI_FLOOR])
    expected = np.sum((shares - expected_reference) * np.log(shares / expected_reference))
    assert reference.psi(window) == pytest.approx(expected)
    assert reference.psi(np.array([1.0, 2.0, 2.0, 2.0])) == pytest.approx(0.0, abs=1e-12)


def test_ks_agrees_with_the_two_sample_statistic() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=50_000)
    profile = ColumnProfile.of(reference, bins=10)
    for window in (rng.normal(size=3000), rng.normal(0.3, 1.2, 3000), rng.uniform(-1, 1, 3000)):
        expected = ks_2samp(window, reference).statistic
        assert profile.ks(window) == pytest.approx(expected, abs=0.01)
    counts = rng.poisson(0.5, 50_000).astype(float)
    discrete = ColumnProfile.of(counts, bins=10)
    for window in (rng.poisson(0.5, 3000), rng.poisson(1.0, 3000)):
        expected = ks_2samp(window.astype(float), counts).statistic
        assert discrete.ks(window.astype(float)) == pytest.approx(expected, abs=0.01)
    assert discrete.edges == sorted(set(np.quantile(counts, np.linspace(0, 1, 11))))


def test_a_constant_reference_column_flags_any_other_value() -> None:
    profile = ReferenceProfile.fit(pd.DataFrame({"flag": np.zeros(500)}), ["flag"])
    same = drift(pd.DataFrame({"flag": np.zeros(200)}), profile)
    assert same["flagged_columns"] == [] and same["windows"][0]["columns"]["flag"]["ks"] == 0.0
    other = drift(pd.DataFrame({"flag": np.r_[np.zeros(150), np.ones(50)]}), profile)
    assert other["flagged_columns"] == ["flag"]
    assert other["windows"][0]["columns"]["flag"]["ks"] == pytest.approx(0.25)


def test_small_windows_and_missing_values() -> None:
    profile = ReferenceProfile.fit(_events(5000, seed=3), COLUMNS)
    new = _events(300, seed=4, days=3)
    new.loc[:9, "v1"] = np.nan
    report = drift(new, profile, new["seconds"].to_numpy(), window="12h", min_rows=60)
    assert sum(window["rows"] for window in report["windows"]) == 300
    starts = [window["start_seconds"] for window in report["windows"]]
    assert starts == [i * DAY / 2 for i in range(6)]
    for window in report["windows"]:
        judged = window["rows"] >= 60
        assert (window["columns"]["v1"]["psi"] is not None) == judged
    assert report["windows"][0]["columns"]["v1"]["missing_share"] == pytest.approx(
        10 / report["windows"][0]["rows"]
    )


def test_profile_round_trips_as_json_and_refuses_edits(tmp_path: Path) -> None:
    profile = ReferenceProfile.fit(_events(2000, seed=6), COLUMNS, bins=8)
    path = tmp_path / "profile.json"
    profile.save(path)
    assert ReferenceProfile.load(path) == profile
    raw = path.read_text()
    path.write_text(raw.replace('"bins": 8', '"bins": 8, "bims": 1'))
    with pytest.raises(ArtifactError, match="profile.json: bims: unknown key"):
        ReferenceProfile.load(path)
    path.write_text(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="profile.json: reference profile is truncated"):
        ReferenceProfile.load(path)
    broken = profile.model_dump()
    broken["columns"]["v1"]["proportions"].append(0.0)
    path.write_text(pd.Series([broken]).to_json(orient="records")[1:-1])
    with pytest.raises(ArtifactError, match="columns.v1: Value error, proportions must have"):
        ReferenceProfile.load(path)


def test_bad_inputs_are_one_line_errors() -> None:
    profile = ReferenceProfile.fit(_events(500, seed=7), COLUMNS)
    new = _events(200, seed=8)
    with pytest.raises(InputError, match="drift window: invalid duration 'daily'"):
        drift(new, profile, new["seconds"].to_numpy(), window="daily")
    with pytest.raises(InputError, match="drift input: missing column 'v2'"):
        drift(new.drop(columns="v2"), profile)
    with pytest.raises(InputError, match="drift input: column 'v1' is not numeric"):
        drift(new.assign(v1="x"), profile)
    with pytest.raises(InputError, match="reference data: column 'v1' has no finite values"):
        ReferenceProfile.fit(new.assign(v1=np.nan), ["v1"])
