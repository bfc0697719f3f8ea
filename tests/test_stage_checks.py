"""One check suite over every fitted stage, the behavioural state and the Detector (as
scikit-learn's `estimator_checks` and River's `checks` run over every estimator): fit returns
self, use before fit raises NotFittedError, save/load gives identical outputs, inputs are not
mutated, and refitting with the same seed gives the same model."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.behavioural.live import FeatureState
from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.errors import NotFittedError
from hybrid_ad.stages.autoencoder import Autoencoder
from hybrid_ad.stages.base import Stage
from hybrid_ad.stages.features import FeatureBuilder, prepare_events
from hybrid_ad.stages.judge import Judge
from hybrid_ad.stages.label_free import HistogramDetector, TailScale
from hybrid_ad.stages.rules import RuleSet

from .conftest import make_events, small_config_dict
from .test_detector_behaviour import behaviour_config, entity_events


@dataclass
class Case:
    """How the checks drive one stage: build it unfitted, fit it, use it, save and reload it."""

    make: Callable[[], Any]
    fit: Callable[[Any], Any]
    use: Callable[[Any], tuple[np.ndarray, ...]]
    reload: Callable[[Any], Any]
    inputs: list[Any]
    """Everything `fit` and `use` read, to check that none of it is changed."""
    files: Callable[[Any], dict[str, bytes]] | None = None
    """The saved form, compared across refits (None: compared by outputs only)."""


def stage_reload(make: Callable[[], Stage]) -> Callable[[Stage], Stage]:
    return lambda fitted: make().from_files(fitted.to_files())


def build_cases(tmp: Path) -> dict[str, Case]:
    config = config_from_dict(small_config_dict())
    frame = make_events(1200, seed=4)
    prepared = prepare_events(frame, config, "events")
    train, held = prepared.frame.iloc[:800], prepared.frame.iloc[800:]
    columns = prepared.feature_columns
    scaler = FeatureBuilder(config.features).fit(train, columns)
    x_train, x_held = scaler.transform(train).scaled, scaler.transform(held).scaled
    y_train = train["Class"].to_numpy(np.int8)
    y_held = held["Class"].to_numpy(np.int8)
    names = [f"x{i}" for i in range(x_train.shape[1])]
    scores = np.random.default_rng(1).gamma(2.0, size=800)
    new_scores = np.random.default_rng(2).gamma(2.0, size=300)
    seed = config.seed

    def matrix(features):
        return features.scaled, features.engineered, features.clipped

    behavioural = behaviour_config().features.behavioural
    events = entity_events(600).assign(time=lambda f: f["Time"].astype(float))
    head, tail = events.iloc[:400], events.iloc[400:]

    def state_reload(state: FeatureState) -> FeatureState:
        return FeatureState.from_dict(json.loads(json.dumps(state.to_dict())))

    raw = make_events(1500, seed=5)
    d_train, d_val, d_test = raw.iloc[:900], raw.iloc[900:1200], raw.iloc[1200:]

    def detector_reload(detector: Detector) -> Detector:
        target = tmp / f"model-{id(detector)}"
        detector.save(target)
        return Detector.load(target)

    def detector_files(detector: Detector) -> dict[str, bytes]:
        target = tmp / f"files-{id(detector)}"
        detector.save(target)
        return {p.name: p.read_bytes() for p in target.iterdir() if p.name != "manifest.json"}

    def stage(make, fit, use, inputs) -> Case:
        return Case(make, fit, use, stage_reload(make), inputs, lambda s: s.to_files())

    return {
        "features": stage(
            lambda: FeatureBuilder(config.features),
            lambda s: s.fit(train, columns),
            lambda s: matrix(s.transform(held)),
            [train, held, columns],
        ),
        "rules": stage(
            lambda: RuleSet(config.rules),
            lambda s: s.fit(train),
            lambda s: (s.evaluate(held).hits, s.evaluate(held).score),
            [train, held],
        ),
        "autoencoder": stage(
            lambda: Autoencoder(config.autoencoder, seed=seed),
            lambda s: s.fit(x_train, x_held),
            lambda s: s.transform(x_held),
            [x_train, x_held],
        ),
        "histogram": stage(
            HistogramDetector,
            lambda s: s.fit(x_train),
            lambda s: (s.decision_function(x_held),),
            [x_train, x_held],
        ),
        "tail_scale": stage(
            TailScale,
            lambda s: s.fit(scores),
            lambda s: (s.transform(new_scores),),
            [scores, new_scores],
        ),
        "judge": stage(
            lambda: Judge(config.judge, seed=seed),
            lambda s: s.fit(x_train, y_train, x_held, y_held, names),
            lambda s: (s.predict_proba(x_held), s.contributions(x_held)),
            [x_train, y_train, x_held, y_held, names],
        ),
        "feature_state": Case(
            lambda: FeatureState(behavioural, time_column="time"),
            lambda s: s.fit(head),
            lambda s: (s.describe(tail).to_numpy(),),
            state_reload,
            [head, tail],
            lambda s: {"state.json": json.dumps(s.to_dict(), sort_keys=True).encode()},
        ),
        "detector": Case(
            lambda: Detector(config),
            lambda s: s.fit(d_train, d_val),
            lambda s: tuple(s.score(d_test).drop(columns=["rules_hit", "clipped"]).T.to_numpy()),
            detector_reload,
            [d_train, d_val, d_test],
            detector_files,
        ),
    }


NAMES = [
    "features",
    "rules",
    "autoencoder",
    "histogram",
    "tail_scale",
    "judge",
    "feature_state",
    "detector",
]
NEEDS_FIT = [name for name in NAMES if name != "feature_state"]
"""An empty behavioural state is a valid state (every entity starts afresh), so it is the one
case with nothing to refuse before fit."""


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    return build_cases(tmp_path_factory.mktemp("stages"))


@pytest.fixture(scope="module")
def fitted(cases) -> dict[str, Any]:
    return {name: case.fit(case.make()) for name, case in cases.items()}


def assert_same(left: tuple, right: tuple) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_every_stage_is_checked(cases) -> None:
    stages = {cls.__name__ for cls in Stage.__subclasses__()}
    covered = {type(case.make()).__name__ for case in cases.values()}
    assert stages <= covered, f"stages without checks: {stages - covered}"
    assert set(cases) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self(cases, name: str) -> None:
    case = cases[name]
    stage = case.make()
    assert case.fit(stage) is stage


@pytest.mark.parametrize("name", NEEDS_FIT)
def test_use_before_fit_raises_not_fitted(cases, name: str) -> None:
    case = cases[name]
    with pytest.raises(NotFittedError, match="not fitted"):
        case.use(case.make())
    stage = case.make()
    if isinstance(stage, Stage):
        with pytest.raises(NotFittedError):
            stage.to_files()


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_give_identical_outputs(cases, fitted, name: str) -> None:
    case = cases[name]
    assert_same(case.use(case.reload(fitted[name])), case.use(fitted[name]))


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_mutated(cases, name: str) -> None:
    case = cases[name]
    before = copy.deepcopy(case.inputs)
    case.use(case.fit(case.make()))
    for now, then in zip(case.inputs, before, strict=True):
        if isinstance(now, pd.DataFrame):
            pd.testing.assert_frame_equal(now, then)
        elif isinstance(now, np.ndarray):
            np.testing.assert_array_equal(now, then)
        else:
            assert now == then


@pytest.mark.parametrize("name", NAMES)
def test_refit_with_the_same_seed_gives_the_same_model(cases, fitted, name: str) -> None:
    case = cases[name]
    again = case.fit(case.make())
    assert_same(case.use(again), case.use(fitted[name]))
    if case.files is not None:
        assert case.files(again) == case.files(fitted[name])
