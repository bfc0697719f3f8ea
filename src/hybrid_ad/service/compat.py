"""Temporary stand-in for `LiveScorer.score_many` / `checkpoint` until branch `core` lands.

Removed once `core` is merged: it scores through `LiveScorer.score_event`, has no reasons and
no persistent state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hybrid_ad.core.detector import Detector, LiveScorer
from hybrid_ad.data import event_ids


@dataclass(frozen=True)
class ShimDeadLetter:
    event: dict[str, Any]
    reason: str
    position: int


@dataclass(frozen=True)
class ShimScoredBatch:
    scores: pd.DataFrame
    dead_letters: list[ShimDeadLetter]


class ShimLive:
    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.live = detector.live()

    def score_many(self, batch: Mapping[str, list[Any]], remember: bool = True) -> ShimScoredBatch:
        frame = pd.DataFrame(dict(batch))
        rows, dead = {}, []
        for position, event in enumerate(frame.to_dict("records")):
            row = self.live.score_event(event)
            if row is None:
                dead.append(ShimDeadLetter(event, self.live.dead_letters.pop().reason, position))
                continue
            row["event_id"] = event_ids(frame.iloc[[position]], self.detector.config.data).iloc[0]
            row["threshold"] = self.detector.threshold_
            row["reasons"] = json.dumps({"rules": [], "judge": [], "autoencoder": []})
            rows[position] = row
        return ShimScoredBatch(pd.DataFrame.from_dict(rows, orient="index"), dead)

    def checkpoint(self) -> bytes:
        return b"{}"


def open_live(detector: Detector, state: bytes | None) -> Any:
    """The contract's `detector.live(state=...)`, or the stand-in before `core` is merged."""
    if hasattr(LiveScorer, "score_many"):
        return detector.live(state=state)  # type: ignore[call-arg]
    return ShimLive(detector)
