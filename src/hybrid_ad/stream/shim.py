"""TEMPORARY stand-in for the core's `live.score_many` / `live.checkpoint` (issue 10 item 1).

It runs the live scorer's own steps over a micro-batch (the behavioural state's
`update_many`, then the detector's scoring and reasons), and is removed as soon as branch
`core` provides `Detector.live(state=...)`, `score_many` and `checkpoint`; the processor
codes against that contract only (`ScoredBatch`-shaped results).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from hybrid_ad.behavioural.live import FeatureState
from hybrid_ad.core.detector import Detector
from hybrid_ad.data import EVENT_ID, event_ids, validate_events
from hybrid_ad.errors import InputError
from hybrid_ad.stages.features import PreparedEvents


@dataclass(frozen=True)
class ShimDeadLetter:
    event: dict[str, Any]
    reason: str
    position: int


@dataclass(frozen=True)
class ShimScoredBatch:
    scores: pd.DataFrame
    dead_letters: list[ShimDeadLetter] = field(default_factory=list)


class ShimLive:
    """`score_many` and `checkpoint` over the live scorer's state and the detector's steps."""

    def __init__(self, detector: Detector, state: bytes | None = None) -> None:
        self.detector = detector
        self.live = detector.live()
        if state is not None:
            self.live._state = FeatureState.from_dict(json.loads(state))

    def checkpoint(self) -> bytes:
        state = self.live._state
        return b"{}" if state is None else json.dumps(state.to_dict(), allow_nan=False).encode()

    def score_many(self, batch: Mapping[str, Any] | pd.DataFrame) -> ShimScoredBatch:
        raw = batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(dict(batch))
        raw = raw.reset_index(drop=True)
        dead: list[ShimDeadLetter] = []
        config = self.detector.config
        try:
            events, columns = validate_events(raw, config.data, "event")
            ids = event_ids(raw, config.data, "event")
        except InputError:  # find the bad rows one by one, score the others together
            good = []
            for position in range(len(raw)):
                try:
                    validate_events(raw.iloc[[position]], config.data, "event")
                    event_ids(raw.iloc[[position]], config.data, "event")
                    good.append(position)
                except InputError as exc:
                    event = raw.iloc[position].to_dict()
                    dead.append(ShimDeadLetter(event, str(exc), position))
            raw = raw.iloc[good]
            events, columns = validate_events(raw, config.data, "event")
            ids = event_ids(raw, config.data, "event")
        state = self.live._state
        if state is not None and len(events):
            label = config.data.label
            if label is not None and label not in events:
                events = events.assign(**{label: None})
            before = len(state.dead_letters)
            behaviour = state.update_many(events)
            refused = state.dead_letters[before:]
            del state.dead_letters[before:]
            late = events.index.difference(behaviour.index)
            for position, letter in zip(late.tolist(), refused, strict=True):
                dead.append(ShimDeadLetter(raw.loc[position].to_dict(), letter.reason, position))
            events = pd.concat([events.loc[behaviour.index], behaviour], axis=1)
            ids = ids.loc[behaviour.index]
        columns_out = [EVENT_ID, "score", "alert", "threshold", "reasons", "rule_score"]
        columns_out += ["reconstruction_error", "histogram_score", "rules_hit", "clipped"]
        if not len(events):
            return ShimScoredBatch(pd.DataFrame(columns=columns_out), dead)
        detector = self.detector
        prepared = detector._events(PreparedEvents(events, columns, "event"), "event")
        scored = detector._score_events(prepared)
        scored.insert(0, EVENT_ID, ids.to_numpy())
        scored.insert(3, "threshold", detector.threshold_)
        scored.insert(4, "reasons", detector._reasons(prepared))
        dead.sort(key=lambda letter: letter.position)
        return ShimScoredBatch(scored[columns_out], dead)
