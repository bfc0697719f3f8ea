"""The simulated feedback loop: the oracle reads only reviewed labels, labels arrive late."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hybrid_ad.config import config_from_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import EVENT_SECONDS
from hybrid_ad.jobs.pipeline import LoadedData, load_data
from hybrid_ad.lifecycle import loop
from hybrid_ad.lifecycle.loop import Oracle, block_budgets, feedback_loop, identity_ids
from hybrid_ad.stages.features import PreparedEvents
from tests.conftest import make_events, small_config_dict

BLOCK = 6 * 3600


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, LoadedData]:
    path = tmp_path_factory.mktemp("loop") / "events.csv"
    make_events(3000, seed=5, fraud_rate=0.03).to_csv(path, index=False)
    config = config_from_dict(small_config_dict())
    data = load_data(config, path)
    return Detector(config).fit(data.part("train"), data.part("validation")), data


def _unlabelled(part: PreparedEvents) -> PreparedEvents:
    return PreparedEvents(part.frame.drop(columns="Class"), part.feature_columns, part.source)


def test_block_budgets_spread_the_total_over_the_blocks() -> None:
    assert block_budgets(10, 4) == [3, 3, 2, 2]
    assert block_budgets(2, 4) == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="no block"):
        block_budgets(10, 0)


@pytest.mark.parametrize(("strategy", "delay"), [("mixed", 1), ("uncertain", 2), ("random", 1)])
def test_oracle_reads_reviewed_events_only_and_labels_arrive_after_the_delay(
    fitted: tuple[Detector, LoadedData],
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
    delay: int,
) -> None:
    base, data = fitted
    train, validation = _unlabelled(data.part("train")), _unlabelled(data.part("validation"))
    seen = pd.concat([data.split.train, data.split.validation])
    truth = seen["Class"].to_numpy()
    ids = identity_ids(base, PreparedEvents(seen, train.feature_columns, "seen"))
    blocks = np.floor(seen[EVENT_SECONDS].to_numpy() / BLOCK)
    n_blocks = len(np.unique(blocks))
    retrained_with: list[set[str]] = []
    records = []
    real_retrain = loop.retrain_judge

    def recording(base: Detector, labels: pd.Series, *parts: PreparedEvents) -> Detector:
        retrained_with.append(set(labels.index))
        return real_retrain(base, labels, *parts)

    monkeypatch.setattr(loop, "retrain_judge", recording)
    oracle = Oracle(truth)
    budgets = block_budgets(40, n_blocks - delay)
    judges = []

    def seen_block(record: loop.BlockRecord, detector: Detector) -> None:
        records.append(record)
        judges.append(detector)

    result = feedback_loop(
        base, train, validation, oracle, BLOCK, budgets, strategy, delay=delay, on_block=seen_block
    )
    reviewed = np.array(sorted(oracle.reviewed))
    # every label read is a reviewed event, of a block that was still reviewable
    assert len(reviewed) == result.reviewed == 40
    assert set(np.unique(blocks[reviewed])) <= set(np.unique(blocks)[: n_blocks - delay])
    # the final judge learned exactly the reviewed events' true labels
    known = result.detector.known_labels
    assert known is not None
    assert set(known.index) == set(ids[reviewed])
    assert (known.loc[ids[reviewed]].to_numpy() == truth[reviewed]).all()
    # at the end of block i the judge knows the reviews of blocks up to i - delay, no later
    for record in records:
        expected = sum(r.reviewed for r in records if r.block <= record.block - delay)
        assert record.known_labels == expected
    arrived = [r for r in records if r.retrained]
    assert len(retrained_with) == len(arrived) >= 1
    for labels, record in zip(retrained_with, arrived, strict=True):
        earlier = {ids[p] for p in reviewed if blocks[p] <= np.unique(blocks)[record.block - delay]}
        assert labels == earlier
    # the judge in place after a block is the one retrained then (or the one before)
    assert judges[0] is base
    assert judges[-1] is result.detector
    # the model the loop started from is unchanged
    assert base.config.judge.label_source == "pseudo"
    assert base.known_labels is None


def test_loop_refuses_an_unknown_strategy(fitted: tuple[Detector, LoadedData]) -> None:
    base, data = fitted
    with pytest.raises(ValueError, match="strategy"):
        feedback_loop(
            base, data.part("train"), data.part("validation"), Oracle(np.zeros(1)), BLOCK, [5], "x"
        )
