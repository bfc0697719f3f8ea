"""The label-free contract (issue 8): pseudo mode never reads labels, alert budgets come from
ranks alone, and every scored event carries its reasons."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hybrid_ad.cli import app
from hybrid_ad.config import EvaluationConfig, config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import EVENT_SECONDS, time_split, validate_events
from hybrid_ad.errors import ConfigError
from hybrid_ad.evaluation import budget_alerts, choose_threshold, daily_precision
from hybrid_ad.stages.label_free import (
    HistogramDetector,
    TailScale,
    average_ranks,
    combine_harmonic,
    decorrelated_weights,
    neighbour_purity,
    prior,
    purity_weights,
    soft_targets,
    top_membership,
)
from tests.conftest import make_events, small_config_dict

runner = CliRunner()


def _run(tmp_path: Path, frame: pd.DataFrame, name: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(small_config_dict()))
    data = tmp_path / f"{name}.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / name
    result = runner.invoke(
        app, ["run", "--config", str(config), "--data", str(data), "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    return out / "model"


def test_deleting_or_permuting_the_label_changes_nothing_but_the_manifest(tmp_path) -> None:
    events = make_events()
    permuted = events.assign(Class=np.random.default_rng(5).permutation(events["Class"]))
    assert (permuted["Class"] != events["Class"]).any()
    models = [
        _run(tmp_path, events, "original"),
        _run(tmp_path, permuted, "permuted"),
        _run(tmp_path, events.drop(columns="Class"), "unlabelled"),
    ]
    files = [{p.name: p.read_bytes() for p in model.iterdir()} for model in models]
    for other in files[1:]:
        assert set(other) == set(files[0])
        for name in files[0]:
            if name != "manifest.json":
                assert other[name] == files[0][name], f"{name} differs"
    thresholds = [json.loads(f["detector.json"])["threshold"] for f in files]
    assert thresholds[0] is not None and len(set(thresholds)) == 1
    scores = []
    for model in models:
        scored = tmp_path / f"{model.parent.name}-scores.csv"
        result = runner.invoke(
            app,
            ["score", "--model", str(model), "--input", str(tmp_path / "original.csv"),
             "--output", str(scored), "-q"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        scores.append(pd.read_csv(scored))
    for other in scores[1:]:
        pd.testing.assert_frame_equal(other, scores[0])
    # evaluation only where there is a label
    assert (models[0].parent / "reports" / "metrics.json").exists()
    assert not (models[2].parent / "reports" / "metrics.json").exists()


@pytest.mark.parametrize(
    "override, where",
    [
        ({"data": {"features": ["V*", "Amount", "Class"]}}, "data.features"),
        ({"features": {"log_scale": ["Class"]}}, "features.log_scale"),
        (
            {"rules": {"rules": [{"name": "leak", "reason": "x", "when": {"threshold": {
                "feature": "Class", "op": ">", "value": 0.5}}}]}},
            "rules.leak",
        ),
        ({"evaluation": {"threshold_policy": "best_f1"}}, "best_f1"),
    ],
)  # fmt: skip
def test_configs_that_would_read_the_label_are_refused(override, where) -> None:
    with pytest.raises(ConfigError, match=where):
        config_from_dict(small_config_dict(**override))


def test_best_f1_is_allowed_in_truth_mode() -> None:
    raw = small_config_dict(
        judge={"label_source": "truth"}, evaluation={"threshold_policy": "best_f1"}
    )
    assert config_from_dict(raw).evaluation.threshold_policy == "best_f1"


def test_alert_budget_per_day_and_share_use_ranks_only() -> None:
    seconds = np.linspace(0, 4 * 86_400, 4001)  # four days
    scores = np.random.default_rng(0).random(4001)
    per_day = EvaluationConfig(alerts_per_day=25)
    assert budget_alerts(seconds, per_day) == 100
    threshold, policy = choose_threshold(scores, seconds, per_day)
    assert policy == "alert_budget" and (scores >= threshold).sum() == 100
    share = EvaluationConfig(alert_rate=0.05)
    threshold, _ = choose_threshold(scores, seconds, share)
    assert (scores >= threshold).sum() == round(0.05 * 4001)
    # labels are ignored by the budget
    labels = np.zeros(4001, dtype=np.int8)
    labels[:10] = 1
    assert choose_threshold(scores, seconds, share, labels)[0] == threshold


def test_tied_scores_never_overrun_the_budget() -> None:
    scores = np.r_[np.zeros(950), np.ones(40), np.full(10, 3.0)]  # a rule score: many ties
    seconds = np.arange(1000.0)
    threshold, _ = choose_threshold(scores, seconds, EvaluationConfig(alert_rate=0.02))
    assert threshold == 3.0 and (scores >= threshold).sum() == 10
    threshold, _ = choose_threshold(scores, seconds, EvaluationConfig(alert_rate=0.005))
    assert threshold == 3.0  # the top group alone is over the budget: it is still alerted
    saturated = np.r_[np.zeros(900), np.full(97, 0.9), np.ones(3)]  # ties just past the edge
    threshold, _ = choose_threshold(saturated, seconds, EvaluationConfig(alert_rate=0.09))
    assert threshold == 0.9  # 100 alerts for a budget of 90, not 3
    constant = np.zeros(1000)  # nothing above the tie: every event is alerted
    assert choose_threshold(constant, seconds, EvaluationConfig(alert_rate=0.01))[0] == 0.0


def test_daily_precision_is_the_mean_of_each_days_share() -> None:
    seconds = np.array([0, 10, 20, 86_400, 86_410, 2 * 86_400])
    labels = np.array([1, 0, 0, 1, 1, 0])
    alerts = np.array([True, True, False, True, True, False])
    value, days = daily_precision(labels, alerts, seconds)
    assert days == 2 and value == pytest.approx((0.5 + 1.0) / 2)


def test_tail_scale_counts_ties_and_is_monotone() -> None:
    train = np.r_[np.zeros(980), np.arange(1, 21)]
    scale = TailScale().fit(train)
    surprise = scale.transform(np.array([-1.0, 0.0, 1.0, 20.0, 21.0]))
    assert surprise[0] == surprise[1] == pytest.approx(0.0, abs=1e-12)
    assert surprise[2] == pytest.approx(-np.log(21 / 1001))  # 20 training scores >= 1
    assert surprise[3] == pytest.approx(-np.log(2 / 1001))
    assert np.all(np.diff(surprise) >= 0)
    again = TailScale.from_dict(json.loads(json.dumps(scale.to_dict())), "x")
    np.testing.assert_array_equal(again.transform(train), scale.transform(train))


def test_histogram_scores_equal_pyods_own() -> None:
    """The numpy scoring gives PyOD's HBOS scores exactly, inside, near and beyond the bins."""
    rng = np.random.default_rng(3)
    train = rng.normal(size=(4000, 5))
    train[:, 2] = rng.poisson(0.2, 4000)  # few distinct values: empty bins
    detector = HistogramDetector().fit(train)
    new = rng.normal(scale=3.0, size=(5000, 5))
    new[:, 2] = rng.poisson(1.0, 5000)
    edges = detector.model_.bin_edges_
    width = edges[1, 0] - edges[0, 0]
    new[:4, 0] = edges[0, 0] - width * np.array([0.0, 0.49, 0.51, 5.0])  # within tol and not
    new[4:8, 0] = edges[-1, 0] + width * np.array([0.0, 0.49, 0.51, 5.0])
    new[8:12, 0] = edges[[0, 1, 5, 10], 0]  # on the edges
    expected = detector.model_.decision_function(new)
    assert np.array_equal(detector.decision_function(new), expected)


def test_soft_targets_average_over_log_uniform_contamination_rates() -> None:
    reference = np.arange(9999, dtype=float)  # 9,999 training priors: share = rank / 10,000
    # top 10 (share 0.001): 1; top 1,000 (0.1): 0; top 100 (0.01): halfway on the log scale
    targets = soft_targets(np.array([9990.0, 9900.0, 8999.0, 0.0]), reference, (0.001, 0.1))
    np.testing.assert_allclose(targets, [1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_average_ranks_share_ties() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 0.0, 3.0])),
                                  [4.0, 2.0, 4.0, 1.0, 4.0])  # fmt: skip


def test_decorrelated_weights_give_a_copied_signal_no_extra_vote() -> None:
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=(3, 5000))
    independent = decorrelated_weights({"a": a, "b": b, "c": c})
    np.testing.assert_allclose(list(independent.values()), [1 / 3] * 3, atol=0.02)
    # a near-copy of a: the pair shares the weight a alone had, c keeps half the prior
    copied = decorrelated_weights({"a": a, "a2": a + 1e-3 * b, "c": c})
    assert copied["a"] + copied["a2"] == pytest.approx(0.5, abs=0.02)
    assert copied["c"] == pytest.approx(0.5, abs=0.02)
    # rank-based: a monotone transform of a signal changes nothing
    assert decorrelated_weights({"a": np.exp(a), "b": b, "c": c}) == pytest.approx(independent)
    # a constant signal ranks nothing and weighs 0; one signal weighs everything
    assert decorrelated_weights({"a": a, "k": np.zeros(5000)}) == {"a": 1.0, "k": 0.0}
    assert decorrelated_weights({"a": a}) == {"a": 1.0}


def test_top_membership_shares_the_places_left_among_the_ties_at_the_cut() -> None:
    membership = top_membership(np.array([5.0, 3.0, 3.0, 3.0, 1.0, 0.0]), 3)
    np.testing.assert_allclose(membership, [1.0, 2 / 3, 2 / 3, 2 / 3, 0.0, 0.0])
    assert membership.sum() == pytest.approx(3.0)


def _grouped_and_scattered(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """3,000 ordinary events in 4 dimensions and 20 events of one mechanism, close together
    away from them. "group" scores those 20 highest; "scatter" scores highest the 20 events
    farthest out in one dimension or another, each unusual in its own way."""
    ordinary = rng.normal(size=(3000, 4))
    group = rng.normal(loc=4.0, scale=0.05, size=(20, 4))
    space = np.vstack([ordinary, group])
    grouped = np.r_[rng.random(3000), 5.0 + rng.random(20)]
    scattered = np.abs(space - space.mean(axis=0)).max(axis=1)
    scattered[3000:] = 0.0
    return space, {"group": grouped, "scatter": scattered}


def test_neighbour_purity_is_high_for_a_group_and_low_for_scattered_outliers() -> None:
    space, signals = _grouped_and_scattered(np.random.default_rng(4))
    rng = np.random.default_rng(0)
    assert neighbour_purity(space, signals["group"], 20, 5, rng) == pytest.approx(1.0)
    assert neighbour_purity(space, signals["scatter"], 20, 5, rng) < 0.3
    # a constant signal: every event tied at the cut, purity its chance level top / n
    constant = neighbour_purity(space, np.zeros(len(space)), 20, 5, rng)
    assert constant == pytest.approx(20 / len(space))


def test_purity_weights_trust_the_signal_whose_top_comes_in_groups() -> None:
    space, signals = _grouped_and_scattered(np.random.default_rng(4))
    weights, purities = purity_weights(space, signals, seed=1)
    assert purities["group"] == pytest.approx(1.0) and purities["scatter"] < 0.3
    base = decorrelated_weights(signals)
    expected = {name: base[name] * purities[name] for name in signals}
    total = sum(expected.values())
    assert weights == pytest.approx({name: value / total for name, value in expected.items()})
    assert weights["group"] > 0.75 and sum(weights.values()) == pytest.approx(1.0)
    assert purity_weights(space, signals, seed=1) == (weights, purities)  # seeded


def test_weighted_prior_is_the_weighted_mean() -> None:
    surprises = {"x": np.array([0.0, 3.0]), "y": np.array([6.0, 0.0])}
    np.testing.assert_allclose(prior(surprises, {"x": 2.0, "y": 1.0}, "mean"), [2.0, 2.0])
    np.testing.assert_allclose(prior(surprises, None, "mean"), [3.0, 1.5])


def test_harmonic_prior_keeps_one_strong_signal_on_top_where_the_mean_dilutes_it() -> None:
    # 2,000 events; "strong" finds events 0-9 1-in-10,000 rare and nothing else; two noise
    # views find 40 other events 1-in-500 rare together (their shared extreme) and the rest
    # ordinary. The harmonic mean p keeps the strong view's ten on top; the mean of
    # surprises divides their 9.2 by three and puts the noise pairs above them.
    n = 2000
    ordinary = -np.log(np.linspace(0.05, 1.0, n))
    strong, noise = ordinary.copy(), ordinary[::-1].copy()
    strong[:10] = -np.log(1e-4)
    noise[10:50] = -np.log(2e-3)
    surprises = {"strong": strong, "noise_a": noise, "noise_b": noise.copy()}
    weights = {"strong": 1 / 3, "noise_a": 1 / 3, "noise_b": 1 / 3}
    top = set(range(10))
    harmonic = prior(surprises, weights, "harmonic")
    assert set(np.argsort(-harmonic)[:10]) == top
    assert not set(np.argsort(-prior(surprises, weights, "mean"))[:10]) & top


def test_harmonic_combination_is_minus_log_the_weighted_harmonic_mean_p() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(1e-6, 1.0, size=(500, 3))
    w = np.array([0.5, 0.3, 0.2])
    expected = -np.log(1.0 / ((w / p).sum(axis=1)))
    np.testing.assert_allclose(combine_harmonic(-np.log(p), w), expected, rtol=1e-12)
    # a zero weight drops a signal, and huge surprises do not overflow
    np.testing.assert_allclose(
        combine_harmonic(-np.log(p), np.array([0.5, 0.5, 0.0])),
        -np.log(1.0 / (0.5 / p[:, 0] + 0.5 / p[:, 1])),
        rtol=1e-12,
    )
    extreme = combine_harmonic(np.array([[800.0, 0.0], [0.0, 0.0]]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(extreme, [800.0 + np.log(0.5), 0.0], atol=1e-12)
    # monotone in every signal: more surprise never lowers the prior
    more = -np.log(p)
    more[:, 1] += 1.0
    assert np.all(combine_harmonic(more, w) > combine_harmonic(-np.log(p), w))


def test_mid_p_counts_half_the_ties_and_is_saved() -> None:
    rule_scores = np.array([0.0] * 90 + [2.0] * 10)  # a rule score: a floor and a plateau
    scale = TailScale().fit(rule_scores)
    # upper share: every event on the plateau is as ordinary as all ten; mid-p: five above
    np.testing.assert_allclose(scale.transform(np.array([2.0, 0.0])), -np.log([11 / 101, 1.0]))
    np.testing.assert_allclose(
        scale.mid_surprise(np.array([2.0, 0.0, 5.0, -1.0])),
        -np.log([6 / 101, 56 / 101, 1 / 101, 1.0]),
    )
    continuous = np.random.default_rng(0).normal(size=3000)
    smooth = TailScale().fit(continuous)
    values = np.linspace(-3, 3, 50)

    def rank(surprise: np.ndarray) -> np.ndarray:
        return np.exp(-surprise) * (len(continuous) + 1) - 1

    gap = rank(smooth.transform(values)) - rank(smooth.mid_surprise(values))
    assert np.all(gap >= 0) and np.all(gap <= 0.5 + 1e-9)  # no ties: at most half a rank
    loaded = TailScale.from_dict(json.loads(json.dumps(scale.to_dict())), "rules")
    np.testing.assert_array_equal(loaded.mid_surprise(rule_scores), scale.mid_surprise(rule_scores))
    old = {key: value for key, value in scale.to_dict().items() if key != "ties"}
    np.testing.assert_array_equal(  # saved before the tie counts: the upper share, as fitted
        TailScale.from_dict(old, "rules").mid_surprise(rule_scores), scale.transform(rule_scores)
    )


def test_combination_harmonic_combines_the_mid_p_shares(fitted) -> None:
    detector, split = fitted
    assert detector.config.judge.pseudo.combination == "mean"
    outputs = detector.stage_outputs(split.validation)
    weights = detector.prior_weights_
    assert weights is not None
    surprises = {name: detector._surprise(outputs, name) for name in weights}
    np.testing.assert_allclose(detector._prior(outputs), prior(surprises, weights, "mean"))
    harmonic = copy.copy(detector)
    pseudo = {"pseudo": {"combination": "harmonic"}}
    harmonic.config = config_from_dict(small_config_dict(judge=pseudo))
    assert detector.tail_scales_ is not None
    mid = {name: detector.tail_scales_[name].mid_surprise(outputs.signal(name)) for name in weights}
    np.testing.assert_allclose(harmonic._prior(outputs), prior(mid, weights, "harmonic"))
    assert not np.allclose(harmonic._prior(outputs), detector._prior(outputs))


@pytest.fixture(scope="module")
def fitted():
    config = config_from_dict(small_config_dict())
    events, _ = validate_events(make_events(), config.data, "events")
    split = time_split(events, config.data.split)
    return Detector(config).fit(split.train, split.validation), split


def test_explain_gives_rules_judge_and_autoencoder_reasons(fitted) -> None:
    detector, split = fitted
    reasons = detector.explain(split.test)
    assert list(reasons.index) == list(split.test.index)
    scored = detector.score(split.test)
    for text, hits in zip(reasons["reasons"], scored["rules_hit"], strict=True):
        payload = json.loads(text)
        assert [r["rule"] for r in payload["rules"]] == [h for h in hits.split(";") if h]
        assert all(r["reason"] for r in payload["rules"])
        assert len(payload["judge"]) == 3 and len(payload["autoencoder"]) == 3
        for item in payload["judge"] + payload["autoencoder"]:
            assert "latent" not in item["input"] and not item["input"].startswith("z_")


def test_contributions_plus_bias_equal_the_margin(fitted) -> None:
    detector, split = fitted
    outputs = detector.stage_outputs(split.test)
    inputs, _ = detector._judge_matrix(outputs)
    judge = detector.judge_
    contributions = judge.contributions(inputs)
    np.testing.assert_allclose(contributions.sum(axis=1), judge.margin(inputs), atol=1e-4)
    probability = 1 / (1 + np.exp(-judge.margin(inputs)))
    np.testing.assert_allclose(probability, judge.predict_proba(inputs), rtol=1e-5)


def test_score_command_writes_reasons(fitted, tmp_path) -> None:
    detector, split = fitted
    detector.save(tmp_path / "model")
    split.test.drop(columns=EVENT_SECONDS).to_csv(tmp_path / "test.csv", index=False)
    result = runner.invoke(
        app,
        ["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "test.csv"),
         "--output", str(tmp_path / "out.csv"), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == len(split.test)
    assert all(json.loads(text)["judge"] for text in out["reasons"])


def test_prior_weights_come_from_validation_and_are_saved(fitted, tmp_path) -> None:
    detector, split = fitted
    weights = detector.prior_weights_
    assert weights is not None and set(weights) == {"rules", "autoencoder", "histogram"}
    assert sum(weights.values()) == pytest.approx(1.0) and min(weights.values()) >= 0
    outputs = detector.stage_outputs(split.validation)
    surprises = {name: detector._surprise(outputs, name) for name in weights}
    space = outputs.features.scaled
    assert purity_weights(space, surprises, detector.config.seed)[0] == weights
    detector.save(tmp_path / "model")
    assert Detector.load(tmp_path / "model").prior_weights_ == weights
    ablation = detector.without_autoencoder_inputs(split.train, split.validation)
    assert set(ablation.prior_weights_ or {}) == {"rules", "histogram"}
    assert detector.prior_weights_ == weights  # the ablation leaves the detector as it was


def test_decorrelated_weighting_leaves_purity_out(fitted) -> None:
    detector, split = fitted
    plain = copy.copy(detector)
    plain.config = config_from_dict(
        small_config_dict(judge={"pseudo": {"weighting": "decorrelated"}})
    )
    outputs = plain.stage_outputs(split.validation)
    surprises = {name: plain._surprise(outputs, name) for name in plain.prior_signals()}
    assert plain._prior_weights(outputs) == decorrelated_weights(surprises)


def test_equal_weighting_is_the_plain_mean(fitted) -> None:
    detector, split = fitted
    equal = copy.copy(detector)
    equal.config = config_from_dict(small_config_dict(judge={"pseudo": {"weighting": "equal"}}))
    weights = equal._prior_weights(equal.stage_outputs(split.validation))
    assert weights == {name: pytest.approx(1 / 3) for name in ("rules", "autoencoder", "histogram")}
