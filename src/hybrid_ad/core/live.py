"""The live scorer: micro-batches of raw events in, scores, alerts and reasons out.

`LiveScorer.score_many` is the entry every runtime (the stream processor, the HTTP service)
calls. It parses raw events as the data config says (values may arrive as text), computes
their behavioural features with the `FeatureState`, and scores them through the one path
`Detector.score` uses (`hybrid_ad.core.scoring`). A malformed or too-late event becomes a
`DeadLetter`, never an exception for the whole batch.

Redelivery. The scorer remembers the events it counted, by event id, with their behavioural
features: an event seen again is scored from those features (the same answer as the first
time) and not counted twice. It remembers at least the last `remember_ids` events and every
event within `allowed_lateness` of the latest time seen; older events cannot be counted again
anyway, as the state refuses them as late.

Checkpoints. `checkpoint()` holds the behavioural state and the remembered ids as a JSON
header and raw numpy arrays (`artifacts.pack_arrays`, no pickle): a copy of the state's arrays
rather than a Python object per number, some 35x faster to write than the JSON of version 1.
Equal states give equal bytes. `Detector.live(state=...)` restores it, and scoring continues
exactly as without the interruption.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.artifacts import pack_arrays, unpack_arrays
from hybrid_ad.behavioural.batch import feature_plan
from hybrid_ad.behavioural.live import DeadLetter, FeatureState
from hybrid_ad.core.detector import Detector, Events
from hybrid_ad.core.events import Batch, RawBatch, numbers, seconds, texts
from hybrid_ad.core.scoring import Contributions, Explain, score_prepared
from hybrid_ad.data import (
    EVENT_ID,
    EVENT_SECONDS,
    ColumnBlocks,
    canonical_text,
    derived_event_ids,
    validate_events,
)
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.stages.features import PreparedEvents

__all__ = ["SCORE_COLUMNS", "DeadLetter", "LiveScorer", "ScoredBatch"]

SCORE_COLUMNS = (
    EVENT_ID,
    "score",
    "alert",
    "threshold",
    "reasons",
    "rule_score",
    "reconstruction_error",
    "histogram_score",
    "rules_hit",
    "clipped",
)
"""The columns of `ScoredBatch.scores`, in order."""
EVENT_COLUMNS = ("score", "alert", "rule_score", "reconstruction_error", "histogram_score")
CHECKPOINT_FORMAT = "hybrid-ad.live-scorer"
CHECKPOINT_VERSION = 2
REMEMBER_IDS = 10_000


@dataclass(frozen=True)
class ScoredBatch:
    """What `score_many` says about a batch.

    `scores`: one row per accepted event, in input order, indexed by the event's position in
    the batch, with `SCORE_COLUMNS`; `reasons` is the JSON string `Detector.explain` writes
    for each explained event (by default the alerting ones) and None for the others. It is
    built on first use from `columns` (the same values as numpy arrays, by column name) and
    `positions`: a runtime that only forwards alerts need not pay for a DataFrame per event.
    `dead_letters`: the refused events, each with its one-line reason and position.
    """

    columns: dict[str, np.ndarray]
    positions: np.ndarray
    dead_letters: list[DeadLetter]

    @cached_property
    def scores(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns, index=pd.Index(self.positions), columns=SCORE_COLUMNS)


class LiveScorer:
    """Scores events as they arrive, carrying the behavioural state from batch to batch.

    Scoring a sequence here, in batches of any size, gives what `Detector.score` gives the
    whole sequence. One thread: XGBoost runs with nthread=1 (torch's threads are the
    process's; the benchmark sets 1).
    """

    def __init__(
        self,
        detector: Detector,
        history: Events | None = None,
        state: bytes | None = None,
        remember_ids: int = REMEMBER_IDS,
    ) -> None:
        if history is not None and state is not None:
            raise InputError("live scorer: give a history or a checkpoint, not both")
        self.detector = detector
        self.remember_ids = remember_ids
        self.dead_letters: list[DeadLetter] = []
        """Events `score_event` refused (`score_many` returns its own instead)."""
        config = detector.config
        self._data = config.data
        behavioural = config.features.behavioural
        self._label = config.data.label
        self._state: FeatureState | None = None
        self._state_label: str | None = None
        self._lateness = 0.0
        self._seen: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()
        if behavioural is not None:
            label = self._label if behavioural.label_risk is not None else None
            self._state_label = label
            self._state = FeatureState(behavioural, label, time_column=EVENT_SECONDS)
            self._lateness = feature_plan(behavioural).lateness
            if history is not None:
                past = history.frame if isinstance(history, PreparedEvents) else history
                past, _ = validate_events(past, config.data, "history")
                past = past.sort_values(EVENT_SECONDS, kind="stable")
                self._state.update_many(self._canonical_keys(past, "history"))
        if state is not None:
            self._restore(state)
        self._behaviour_names = [] if self._state is None else self._state.feature_names
        self._features = list(detector.feature_columns_ or [])
        numeric, keys = list(self._features), list(config.data.entity_keys)
        if behavioural is not None:
            numeric += behavioural.values
            keys += behavioural.entity_columns
        self._numeric = list(dict.fromkeys(numeric))
        self._keys = list(dict.fromkeys(keys))
        self._needed = [config.data.timestamp, *self._numeric, *self._keys]
        if config.data.event_id is not None:
            self._needed.append(config.data.event_id)
        # the approximate contributions' flat trees are built (and their loop loaded) now,
        # not at the first alert: that one would wait some 150 ms
        judge = detector.fitted_judge()
        judge.contributions(np.zeros((1, len(judge.feature_names_ or ()))), 1, approximate=True)

    # -- scoring --------------------------------------------------------------------------------

    def score_many(
        self,
        batch: Batch,
        remember: bool = True,
        explain: Explain = "alerts",
        contributions: Contributions = "approximate",
    ) -> ScoredBatch:
        """Score a micro-batch of raw events (a DataFrame, a mapping of columns, or a pyarrow
        RecordBatch), in order.

        `remember`: learn the events into the behavioural state (False: describe them against
        the state as it is, and change nothing). `explain`: which events get their `reasons`
        ("alerts" by default; "all" gives every event the JSON `Detector.explain` writes;
        "none"). `contributions`: "approximate" by default, Saabas path attribution (what
        XGBoost's `approx_contribs` gives, compiled: microseconds per explained event), or
        "exact" TreeSHAP, the reasons `Detector.explain` gives by default (about 3 ms per
        explained event on the streaming model). The same JSON either way; the judge's
        contribution values differ, and both sum with the bias to the margin.
        """
        raw = RawBatch(batch)
        refused: dict[int, str] = {}
        missing = [name for name in self._needed if name not in raw]
        if missing:
            refused = dict.fromkeys(range(raw.n), f"missing column '{missing[0]}'")
            return self._result(raw, refused, {}, np.zeros(0, np.int64), [], explain, contributions)
        data = self._data
        columns = {EVENT_SECONDS: seconds(raw.column(data.timestamp), data, refused)}
        for name in self._numeric:
            columns[name] = numbers(raw.column(name), name, refused)
        keys = {name: texts(raw.column(name), name, "entity key", refused) for name in self._keys}
        if data.event_id is not None:
            given = texts(raw.column(data.event_id), data.event_id, "event id", refused)
            for position in np.flatnonzero(np.char.str_len(given.astype(str)) == 0).tolist():
                refused.setdefault(position, f"column '{data.event_id}' has an empty event id")
        positions = np.arange(raw.n)
        if refused:
            positions = np.flatnonzero(~np.isin(positions, list(refused)))
            columns = {name: values[positions] for name, values in columns.items()}
            keys = {name: values[positions] for name, values in keys.items()}
        if data.event_id is not None:
            ids = list(given[positions])
        else:
            features = {name: columns[name] for name in self._features}
            ids = derived_event_ids(
                columns[EVENT_SECONDS], features, [keys[name].tolist() for name in data.entity_keys]
            )
        prepared = {EVENT_SECONDS: columns[EVENT_SECONDS]}
        prepared.update({name: columns[name] for name in self._features})
        if self._state is not None and len(positions):
            step = {EVENT_SECONDS: columns[EVENT_SECONDS]}
            step.update({name: keys[name] for name in self._state.feature_plan.columns})
            step.update({name: columns[name] for name in self._state.feature_plan.values})
            if self._state_label is not None:
                labels = (
                    raw.column(self._state_label)
                    if self._state_label in raw
                    else np.full(raw.n, None, dtype=object)
                )
                step[self._state_label] = np.asarray(labels, dtype=object)[positions]
            behaviour, accepted = self._behaviour(step, ids, positions, remember, refused)
            if len(accepted) < len(positions):
                positions = positions[accepted]
                ids = [ids[i] for i in accepted.tolist()]
                prepared = {name: values[accepted] for name, values in prepared.items()}
            prepared = ColumnBlocks(prepared, [(self._behaviour_names, behaviour)])
        return self._result(raw, refused, prepared, positions, ids, explain, contributions)

    def score_event(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        """The event's row of `Detector.score` as a dict, or None if it is a dead letter (kept
        in `dead_letters`): `score_many` of one event, without reasons."""
        result = self.score_many({name: [value] for name, value in event.items()}, explain="none")
        if result.dead_letters:
            self.dead_letters.append(DeadLetter(dict(event), result.dead_letters[0].reason))
            return None
        out: dict[str, Any] = {name: result.columns[name][0].item() for name in EVENT_COLUMNS}
        if self.detector.threshold_ is None:
            del out["alert"]
        out["rules_hit"], out["clipped"] = (
            result.columns["rules_hit"][0],
            result.columns["clipped"][0],
        )
        return out

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """The behavioural state and the remembered event ids (`pack_arrays` bytes)."""
        seen_ids = list(self._seen)
        width = len(self._state.feature_names) if self._state is not None else 0
        times = np.fromiter((self._seen[key][0] for key in seen_ids), np.float64, len(seen_ids))
        rows = np.empty((len(seen_ids), width))
        for at, key in enumerate(seen_ids):
            rows[at] = self._seen[key][1]
        meta: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "state": None,
            "seen_ids": seen_ids,
        }
        arrays = {"seen_times": times, "seen_features": rows}
        if self._state is not None:
            meta["state"], state = self._state.to_arrays()
            arrays.update({f"state_{name}": values for name, values in state.items()})
        return pack_arrays(meta, arrays)

    def _restore(self, data: bytes) -> None:
        if data.startswith(b"{"):
            raise ArtifactError(
                "live checkpoint: a JSON checkpoint of version 1, from before the binary one; "
                "start from a new checkpoint (or history)"
            )
        try:
            meta, arrays = unpack_arrays(data)
        except ValueError as exc:
            raise ArtifactError(f"live checkpoint: damaged ({exc})") from None
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
            raise ArtifactError(
                f"live checkpoint: not a {CHECKPOINT_FORMAT} document of version "
                f"{CHECKPOINT_VERSION}"
            )
        saved = meta.get("state")
        if (saved is None) != (self._state is None):
            raise ArtifactError("live checkpoint: behavioural state does not match the model")
        if saved is not None:
            if not isinstance(saved, dict):
                raise ArtifactError("live checkpoint: malformed behavioural state")
            parts = {name[6:]: values for name, values in arrays.items() if name[:6] == "state_"}
            self._adopt(FeatureState.from_arrays(saved, parts))
        try:
            ids = [str(key) for key in meta["seen_ids"]]
            times, rows = arrays["seen_times"], arrays["seen_features"]
            width = len(self._state.feature_names) if self._state is not None else 0
            if times.shape != (len(ids),) or rows.shape != (len(ids), width) or rows.dtype != "<f8":
                raise ValueError("ids, times and features differ in length")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"live checkpoint: malformed remembered ids ({exc})") from None
        self._seen = OrderedDict(
            (key, (float(t), rows[i].copy()))
            for i, (key, t) in enumerate(zip(ids, times.tolist(), strict=True))
        )

    def _adopt(self, state: FeatureState) -> None:
        """Take a restored behavioural state, if it was made with the model's config."""
        assert self._state is not None
        if state.config != self._state.config or state.label_column != self._state_label:
            raise ArtifactError("live checkpoint: its behavioural config differs from the model's")
        self._state = state

    # -- steps ----------------------------------------------------------------------------------

    def _behaviour(
        self,
        columns: dict[str, np.ndarray],
        ids: list[str],
        positions: np.ndarray,
        remember: bool,
        refused: dict[int, str],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Behavioural features of the events, and the rows of them that were accepted.

        An id already remembered takes its remembered features; a repeat within the batch
        takes its first occurrence's. The others go through the state, learned if `remember`.
        """
        state = self._state
        assert state is not None
        n = len(ids)
        seen = self._seen
        if len(set(ids)) == n and seen.keys().isdisjoint(ids):
            # the usual batch: no id seen before, none twice: the state's step as it is
            step = state.step(columns, learn=remember)
            for at, reason in step.refused.items():
                refused[int(positions[at])] = reason
            kept = np.flatnonzero(step.accepted)
            if remember:
                self._remember(ids, columns[EVENT_SECONDS], step.features, kept)
            return (step.features if len(kept) == n else step.features[kept]), kept
        features = np.empty((n, len(state.feature_names)))
        fresh = np.ones(n, dtype=bool)
        accepted = np.zeros(n, dtype=bool)
        repeats: list[tuple[int, int]] = []
        if seen or remember:
            first_at: dict[str, int] = {}
            for row, key in enumerate(ids):
                known = seen.get(key)
                if known is not None:
                    features[row] = known[1]
                    fresh[row] = False
                    accepted[row] = True
                elif remember:
                    first = first_at.setdefault(key, row)
                    if first != row:
                        repeats.append((row, first))
                        fresh[row] = False
        rows = np.flatnonzero(fresh) if not fresh.all() else np.arange(n)
        if rows.size:
            part = columns if rows.size == n else {k: v[rows] for k, v in columns.items()}
            step = state.step(part, learn=remember)
            features[rows] = step.features
            accepted[rows] = step.accepted
            for at, reason in step.refused.items():
                refused[int(positions[rows[at]])] = reason
        for row, first in repeats:
            if accepted[first]:
                features[row] = features[first]
                accepted[row] = True
            else:
                refused[int(positions[row])] = refused[int(positions[first])]
        if remember:
            self._remember(ids, columns[EVENT_SECONDS], features, rows[accepted[rows]])
        kept = np.flatnonzero(accepted)
        return features[kept], kept

    def _remember(
        self, ids: list[str], times: np.ndarray, features: np.ndarray, learned: np.ndarray
    ) -> None:
        """Remember the features of the events at `learned`, by id (then forget the oldest)."""
        block = features[learned]  # one copy for the batch; each id keeps a row of it
        at_times = times[learned].tolist()
        seen = self._seen
        for at, row in enumerate(learned.tolist()):
            seen[ids[row]] = (at_times[at], block[at])
        self._forget()

    def _forget(self) -> None:
        """Keep the last `remember_ids` ids, and every id within the allowed lateness."""
        assert self._state is not None
        floor = self._state.watermark - self._lateness
        seen = self._seen
        while len(seen) > self.remember_ids:
            oldest, (time, features) = seen.popitem(last=False)
            if time >= floor:
                seen[oldest] = (time, features)
                seen.move_to_end(oldest, last=False)
                break

    def _canonical_keys(self, events: pd.DataFrame, source: str) -> pd.DataFrame:
        """Entity keys as text (7, 7.0 and "7" alike), so events from text streams, files
        and history meet the same entity."""
        assert self._state is not None
        keys = {}
        for name in self._state.feature_plan.columns:
            values = events[name]
            present = values.notna().to_numpy()
            if present.all():
                keys[name] = canonical_text(values, name, source, what="entity key")
            else:  # missing keys stay missing: the state refuses those events
                text = values.astype(object).copy()
                text[present] = canonical_text(values[present], name, source, "entity key")
                keys[name] = text
        return events.assign(**keys)

    def _result(
        self,
        raw: RawBatch,
        refused: dict[int, str],
        prepared: Mapping[str, np.ndarray],
        positions: np.ndarray,
        ids: list[str],
        explain: Explain,
        contributions: Contributions,
    ) -> ScoredBatch:
        letters = [
            DeadLetter(raw.event(position), reason, position)
            for position, reason in sorted(refused.items())
        ]
        positions = positions.astype(np.int64)
        if len(positions) == 0:
            empty = {name: np.zeros(0, dtype=object) for name in SCORE_COLUMNS}
            return ScoredBatch(empty, positions, letters)
        scored = score_prepared(self.detector, prepared, explain, 1, contributions)
        threshold = np.nan if scored.threshold is None else scored.threshold
        columns = {
            EVENT_ID: np.array(ids, dtype=object),
            "score": scored.score,
            "alert": scored.alert,
            "threshold": np.full(len(positions), threshold),
            "reasons": np.array(scored.reasons, dtype=object),
            "rule_score": scored.rule_score,
            "reconstruction_error": scored.reconstruction_error,
            "histogram_score": scored.histogram_score,
            "rules_hit": np.array(scored.rules_hit, dtype=object),
            "clipped": np.array(scored.clipped, dtype=object),
        }
        return ScoredBatch(columns, positions, letters)
