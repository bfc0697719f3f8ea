"""The analyst feedback loop, simulated: review queues become labels, the judge is retrained.

Events arrive in time order, in blocks (for example six hours or a day of event time). At
the end of each block the analyst reviews that block's review queue (`jobs.review`, or a
random sample of the block as the baseline) and the verdicts become known `delay` blocks
later, as chargebacks and slow reviews do; the judge is then retrained (`judge.label_source:
mixed`) on the labels known at that moment, and the next queue comes from the new judge.

The analyst is an `Oracle`: it holds the label column and reveals a label only for an event
it is asked to review, and it records every event it was asked about, so a test can check
that nothing else was read. The label-free stages are reused as fitted: they never read
labels, so only the judge (and its alert threshold) is refitted, as `hybrid-ad retrain` does.
The review budget is given per block (`budgets[i]` events in block i, none after the list):
`block_budgets` spreads a total evenly; a growing schedule (50, 50, 100, 300, 500) makes one
loop pass 50, 100, 200, 500 and 1,000 known labels, with a retrain at each.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.config import config_from_dict, config_to_dict
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import EVENT_ID, EVENT_SECONDS
from hybrid_ad.jobs.review import STRATEGIES, review_queue
from hybrid_ad.stages.features import PreparedEvents

LOOP_STRATEGIES = (*STRATEGIES, "random")
"""The review queue's strategies, and a random sample of the block as the baseline."""


class Oracle:
    """The analyst with perfect judgement: the label of an event, only when reviewed."""

    def __init__(self, labels: np.ndarray) -> None:
        self._labels = np.asarray(labels)
        self.reviewed: set[int] = set()
        """Positions of every event whose label was read."""

    def review(self, positions: np.ndarray) -> np.ndarray:
        """The labels (0/1) of the events at `positions`; recorded as reviewed."""
        self.reviewed.update(int(p) for p in positions)
        return self._labels[positions].astype(np.int8)


@dataclass(frozen=True)
class BlockRecord:
    """What happened at the end of one block."""

    block: int
    events: int
    known_labels: int
    """Labels the judge was retrained on at the end of this block (known by then)."""
    retrained: bool
    reviewed: int
    """Events the analyst reviewed from this block (their labels arrive `delay` blocks on)."""
    reviewed_positives: int
    unlabelled: dict[str, Any] | None = None
    """The retrained judge's choice of target for unreviewed events (`UnlabelledChoice`)."""


@dataclass
class LoopResult:
    """The judge in place after the last block, and how the loop got there."""

    detector: Detector
    blocks: list[BlockRecord] = field(default_factory=list)

    @property
    def known_labels(self) -> int:
        """Labels the final judge learned from."""
        return self.blocks[-1].known_labels if self.blocks else 0

    @property
    def reviewed(self) -> int:
        return sum(record.reviewed for record in self.blocks)


def identity_ids(detector: Detector, events: PreparedEvents) -> np.ndarray:
    """The event ids the detector joins labels by (`Detector.known_labels_for`), as text."""
    return detector.label_ids(events.frame, events.source).to_numpy(dtype=str)


def retrain_judge(
    base: Detector, labels: pd.Series, train: PreparedEvents, validation: PreparedEvents
) -> Detector:
    """A copy of `base` with its judge refitted in `mixed` mode on `labels` (0/1 by event id);
    the label-free stages are shared, `base` is left unchanged."""
    raw = config_to_dict(base.config)
    raw["judge"]["label_source"] = "mixed"
    detector = copy.copy(base)
    detector.config = config_from_dict(raw, "feedback loop (judge.label_source: mixed)")
    detector.known_labels = labels.astype("float64")
    return detector.fit_judge(train, validation)


def block_budgets(total: int, blocks: int) -> list[int]:
    """`total` reviews spread evenly over `blocks` blocks, earlier blocks taking the rest."""
    if blocks < 1:
        raise ValueError("no block to review in")
    share, rest = divmod(total, blocks)
    return [share + (1 if block < rest else 0) for block in range(blocks)]


def feedback_loop(
    base: Detector,
    train: PreparedEvents,
    validation: PreparedEvents,
    oracle: Oracle,
    block_seconds: float,
    budgets: Sequence[int],
    strategy: str,
    delay: int = 1,
    seed: int = 0,
    on_block: Callable[[BlockRecord, Detector], None] | None = None,
) -> LoopResult:
    """Run the loop over the train and validation parts (time-ordered, without the label
    column: labels come from `oracle`, indexed by position in train then validation).

    Blocks are `block_seconds` of event time (aligned to multiples of it); `budgets[i]` events
    of block i are reviewed. At the end of each block the labels reviewed `delay` blocks
    earlier arrive; if any did, the judge is retrained like `hybrid-ad retrain` does: on the
    train part, early-stopped and thresholded on the validation part, with every label known
    by then. `on_block` sees each block's record and the judge in place after it.
    """
    if strategy not in LOOP_STRATEGIES:
        raise ValueError(f"strategy: expected one of {', '.join(LOOP_STRATEGIES)}")
    frame = pd.concat([train.frame, validation.frame])
    seen = PreparedEvents(frame, train.feature_columns, "feedback loop")
    ids = identity_ids(base, seen)
    block_of = np.floor(frame[EVENT_SECONDS].to_numpy(np.float64) / block_seconds)
    blocks = np.unique(block_of)
    rng = np.random.default_rng(seed)
    detector = base
    known = pd.Series(dtype="float64", name="label")
    arrivals: dict[int, pd.Series] = {}
    labelled: set[str] = set()
    result = LoopResult(detector)
    for index, block in enumerate(blocks):
        arrived = arrivals.pop(index, None)
        retrained = arrived is not None
        if arrived is not None:
            known = pd.concat([known, arrived])
            detector = retrain_judge(base, known, train, validation)
        rows = np.flatnonzero(block_of == block)
        budget = budgets[index] if index < len(budgets) else 0
        reviewed = np.array([], dtype=np.int64)
        if budget > 0:
            reviewed = _review(detector, seen, ids, rows, budget, strategy, labelled, rng)
        verdicts = oracle.review(reviewed)
        if len(reviewed):
            arrivals[index + delay] = pd.Series(
                verdicts.astype("float64"), index=pd.Index(ids[reviewed], name=EVENT_ID)
            )
            labelled.update(ids[reviewed].tolist())
        record = BlockRecord(
            block=index,
            events=len(rows),
            known_labels=len(known),
            retrained=retrained,
            reviewed=len(reviewed),
            reviewed_positives=int(verdicts.sum()),
            unlabelled=(
                detector.mixed_choice_.to_dict()
                if retrained and detector.mixed_choice_ is not None
                else None
            ),
        )
        result.blocks.append(record)
        if on_block is not None:
            on_block(record, detector)
    result.detector = detector
    return result


def _review(
    detector: Detector,
    seen: PreparedEvents,
    ids: np.ndarray,
    rows: np.ndarray,
    budget: int,
    strategy: str,
    labelled: set[str],
    rng: np.random.Generator,
) -> np.ndarray:
    """Positions (in `seen`) of the block's events the analyst reviews."""
    block_ids = ids[rows]
    first = ~pd.Series(block_ids).duplicated().to_numpy()
    open_rows = rows[first & ~np.isin(block_ids, np.asarray(sorted(labelled), dtype=str))]
    if strategy == "random":
        return np.sort(rng.choice(open_rows, min(budget, len(open_rows)), replace=False))
    events = PreparedEvents(seen.frame.iloc[rows], seen.feature_columns, seen.source)
    queue = review_queue(detector, events, pd.Series(block_ids), budget, strategy, False, labelled)
    position = pd.Series(rows[first], index=block_ids[first])
    return position.loc[queue[EVENT_ID].to_numpy(dtype=str)].to_numpy(np.int64)
