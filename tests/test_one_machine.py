"""The batch job on one machine: sampled training with its rate recorded, the label-free
outputs reused within a run, and large inputs transformed in chunks with the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import EVENT_SECONDS, Split, time_split, validate_events
from hybrid_ad.stages import features as features_module
from hybrid_ad.stages import label_free
from hybrid_ad.stages.features import FeatureBuilder, prepare_events
from tests.conftest import make_events, small_config_dict


def _split(events: pd.DataFrame, config) -> Split:
    validated, _ = validate_events(events, config.data, "events")
    return time_split(validated, config.data.split)


def _sampled_config():
    return config_from_dict(
        small_config_dict(autoencoder={"max_train_rows": 600}, judge={"max_negatives": 500})
    )


def test_sampling_rates_are_recorded_in_the_manifest_and_reloaded(tmp_path: Path) -> None:
    config = _sampled_config()
    split = _split(make_events(), config)
    detector = Detector(config).fit(split.train, validation=split.validation)
    rates = detector.sampling()
    # 2,400 training events: the autoencoder sees about 600 of its normal ones, the judge
    # 500 of its target-0 events
    assert 0.2 < rates["autoencoder_sample_rate"] < 0.3
    assert 0.1 < rates["judge_negative_rate"] < 0.3
    detector.save(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["sampling"] == rates
    loaded = Detector.load(tmp_path / "model")
    assert loaded.autoencoder_ is not None
    assert loaded.autoencoder_.sample_rate_ == rates["autoencoder_sample_rate"]
    assert loaded.judge_ is not None and loaded.judge_.odds_correction_ != 1.0
    np.testing.assert_array_equal(
        loaded.score(split.test)["score"], detector.score(split.test)["score"]
    )
    assert detector.training_summary()["judge_negative_rate"] == rates["judge_negative_rate"]


def test_without_caps_nothing_is_sampled(config, events) -> None:
    split = _split(events, config)
    detector = Detector(config).fit(split.train, validation=split.validation)
    assert detector.sampling() == {"autoencoder_sample_rate": 1.0, "judge_negative_rate": 1.0}
    assert detector.fitted_judge().odds_correction_ == 1.0


def test_same_seed_same_sampled_model(tmp_path: Path) -> None:
    config = _sampled_config()
    split = _split(make_events(), config)
    for name in ("a", "b"):
        Detector(config).fit(split.train, validation=split.validation).save(tmp_path / name)
    for file in ("autoencoder.safetensors", "judge.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_the_judge_keeps_every_event_with_a_positive_target() -> None:
    """Soft targets: an event slightly in the prior's top (target in (0, 0.5)) is kept, not
    thinned with the target-0 events."""
    from hybrid_ad.config import JudgeConfig
    from hybrid_ad.stages.judge import Judge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3)).astype(np.float32)
    targets = np.clip(x[:, 0] - 1.0, 0.0, 1.0).astype(np.float32)  # ~16% positive, mostly < 0.5
    judge = Judge(JudgeConfig(n_estimators=5, threads=1, max_negatives=1000), seed=1)
    assert judge.negative_rate(targets) == pytest.approx(1000 / np.count_nonzero(targets == 0))
    judge.fit(x, targets, x[:500], targets[:500], ["a", "b", "c"])
    assert judge.sample_rate_ < 1.0
    assert 0 < judge.odds_correction_ < 1.5


def test_reused_outputs_give_the_same_scores_and_are_computed_once(
    config, events, monkeypatch
) -> None:
    split = _split(events, config)
    detector = Detector(config).fit(split.train, validation=split.validation)
    test = prepare_events(split.test, config, "test")  # one frame: reuse is by identity
    plain = detector.score(test)
    calls = []
    original = FeatureBuilder.transform
    monkeypatch.setattr(
        FeatureBuilder, "transform", lambda self, frame: calls.append(1) or original(self, frame)
    )
    with detector.reusing_outputs():
        first = detector.score(test)
        second = detector.stage_scores(test)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(first, plain)
    np.testing.assert_array_equal(second["judge"], plain["score"].to_numpy())
    detector.score(test)  # outside: computed again
    assert len(calls) == 2


def test_chunked_transforms_equal_one_pass(config, events, monkeypatch) -> None:
    split = _split(events, config)
    detector = Detector(config).fit(split.train, validation=split.validation)
    assert detector.features_ is not None and detector.histogram_ is not None
    whole = detector.features_.transform(split.test)
    histogram = detector.histogram_.decision_function(whole.scaled)
    monkeypatch.setattr(features_module, "TRANSFORM_ROWS", 97)
    monkeypatch.setattr(label_free, "SCORE_ROWS", 89)
    chunked = detector.features_.transform(split.test)
    for name in ("scaled", "engineered", "clipped"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    np.testing.assert_array_equal(detector.histogram_.decision_function(whole.scaled), histogram)


def test_a_sample_keeps_the_whole_datas_optimiser_steps_per_epoch() -> None:
    from hybrid_ad.config import AutoencoderConfig
    from hybrid_ad.stages.autoencoder import Autoencoder

    model = Autoencoder(AutoencoderConfig())
    assert model.batch_size(1_000_000) == model.batch_size(1_000_000, 1.0) == 1024
    # a quarter of the rows in batches a quarter the size: as many steps an epoch as all
    assert model.batch_size(262_144, 0.25) == 256
    assert model.batch_size(262_144, 0.001) == 32  # never below 32
    small = Autoencoder(AutoencoderConfig(batch_size=16))
    assert small.batch_size(1_000_000) == small.batch_size(1_000_000, 0.5) == 16


def test_past_the_budget_a_negative_share_keeps_a_fraction_of_it() -> None:
    from hybrid_ad.config import JudgeConfig
    from hybrid_ad.stages.judge import Judge

    labels = np.r_[np.zeros(1000), np.full(50, 0.3)]
    judge = Judge(JudgeConfig(max_negatives=500))
    assert judge.negative_rate(labels) == 0.5
    assert judge.negative_rate(labels, share=4) == 0.125  # 125 of the 1,000
    below = Judge(JudgeConfig(max_negatives=2000))
    assert below.negative_rate(labels, share=4) == 1.0  # under the budget: every one


def test_the_ablation_fits_on_fewer_negatives_only_past_the_budget(config, events):
    from hybrid_ad.jobs.pipeline import ABLATION_NEGATIVE_SHARE

    split = _split(events, config)
    unsampled = Detector(config).fit(split.train, validation=split.validation)
    ablation = unsampled.without_autoencoder_inputs(
        split.train, split.validation, ABLATION_NEGATIVE_SHARE
    )
    assert ablation.fitted_judge().sample_rate_ == 1.0  # a smaller file: the ablation as before
    sampled_config = _sampled_config()
    split = _split(make_events(), sampled_config)
    detector = Detector(sampled_config).fit(split.train, validation=split.validation)
    ablation = detector.without_autoencoder_inputs(split.train, split.validation, 4)
    # 125 of about as many target-0 events as the judge's 500 came from
    ratio = ablation.fitted_judge().sample_rate_ / detector.fitted_judge().sample_rate_
    assert 0.2 < ratio < 0.3
    assert detector.config.judge.max_negatives == 500  # the detector itself is unchanged
    assert not ablation.judge_uses_autoencoder_ and detector.judge_uses_autoencoder_


def test_the_ablation_fitted_alongside_the_autoencoder_is_the_one_fitted_after(tmp_path):
    """`fit_unsupervised(alongside=...)`: the ablation fitted on a second thread while the
    autoencoder trains gives the same trees as the one fitted after the judge, and the
    detector the same models as without it."""
    config = _sampled_config()
    split = _split(make_events(), config)
    prepared = prepare_events(split.train, config, "train")
    validation = prepare_events(split.validation, config, "validation", history=split.train)
    test = prepare_events(split.test, config, "test", history=split.train)
    fitted: list[Detector] = []
    threads: list[str] = []

    def ablation(partial: Detector) -> None:
        import threading

        threads.append(threading.current_thread().name)
        assert partial.autoencoder_ is None  # the label-free stages, but not the autoencoder
        fitted.append(partial.without_autoencoder_inputs(prepared, validation, 4))

    alongside = Detector(config)
    with alongside.reusing_outputs():
        alongside.fit_unsupervised(prepared, validation, alongside=ablation)
        alongside.fit_judge(prepared, validation)
    after = Detector(config)
    with after.reusing_outputs():
        after.fit_unsupervised(prepared, validation).fit_judge(prepared, validation)
        sequential = after.without_autoencoder_inputs(prepared, validation, 4)
    assert threads == ["alongside"]
    assert fitted[0].fitted_judge().to_bytes() == sequential.fitted_judge().to_bytes()
    assert fitted[0].threshold_ == sequential.threshold_
    alongside.save(tmp_path / "a")
    after.save(tmp_path / "b")
    for name in ("autoencoder.safetensors", "judge.json", "label_free.json", "features.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    inputs, _ = fitted[0].judge_inputs(alongside.stage_outputs(test))
    np.testing.assert_array_equal(
        fitted[0].fitted_judge().predict_proba(inputs), sequential.stage_scores(test)["judge"]
    )


def test_an_error_alongside_is_raised_on_the_fitting_thread(config, events) -> None:
    split = _split(events, config)

    def failing(partial: Detector) -> None:
        raise ValueError("alongside failed")

    with pytest.raises(ValueError, match="alongside failed"):
        Detector(config).fit_unsupervised(split.train, split.validation, alongside=failing)


def test_the_histogram_fit_equals_pyods() -> None:
    from pyod.models.hbos import HBOS

    rng = np.random.default_rng(5)
    inputs = rng.normal(size=(3000, 4)).astype(np.float32)
    inputs[:, 1] = rng.poisson(0.3, 3000)  # few distinct values: empty bins
    inputs[:, 3] = 2.5  # constant
    ours = label_free.HistogramDetector().fit(inputs)
    pyod = HBOS(n_bins=label_free.HistogramDetector.N_BINS).fit(inputs.astype(np.float64))
    np.testing.assert_array_equal(ours.model_.hist_, pyod.hist_)
    np.testing.assert_array_equal(ours.model_.bin_edges_, pyod.bin_edges_)
    new = rng.normal(scale=2.0, size=(500, 4))
    np.testing.assert_array_equal(ours.decision_function(new), pyod.decision_function(new))
    with pytest.raises(ValueError, match="column 2 is not finite"):
        label_free.HistogramDetector().fit(np.where(np.arange(4) == 2, np.nan, inputs))


def test_a_log_in_time_order_is_split_without_a_copy(config, events) -> None:
    validated, _ = validate_events(events, config.data, "events")
    ordered = validated.sort_values(EVENT_SECONDS, kind="stable")
    split = time_split(ordered, config.data.split)
    pd.testing.assert_frame_equal(pd.concat([split.train, split.validation, split.test]), ordered)
    shuffled = time_split(ordered.sample(frac=1.0, random_state=0), config.data.split)
    assert shuffled.train[EVENT_SECONDS].is_monotonic_increasing  # out of order: sorted
    assert shuffled.train[EVENT_SECONDS].max() <= shuffled.validation[EVENT_SECONDS].min()
    seconds = ordered[EVENT_SECONDS].to_numpy()
    assert np.shares_memory(split.train[EVENT_SECONDS].to_numpy(), seconds)
