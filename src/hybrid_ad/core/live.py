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

Checkpoints. `checkpoint()` is JSON (no pickle) holding the behavioural state and the
remembered ids; `Detector.live(state=...)` restores it, and scoring continues exactly as
without the interruption.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.behavioural.batch import feature_plan
from hybrid_ad.behavioural.live import DeadLetter, FeatureState
from hybrid_ad.core.detector import Detector, Events
from hybrid_ad.core.scoring import Explain, score_prepared
from hybrid_ad.data import EVENT_ID, EVENT_SECONDS, canonical_text, event_ids, validate_events
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.stages.features import PreparedEvents

__all__ = ["SCORE_COLUMNS", "Batch", "DeadLetter", "LiveScorer", "ScoredBatch"]

Batch = pd.DataFrame | Mapping[str, Any] | Any
"""A micro-batch of raw events: a DataFrame, a mapping of column name to equally long arrays
or lists, or a pyarrow RecordBatch."""

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
CHECKPOINT_VERSION = 1
REMEMBER_IDS = 10_000


@dataclass(frozen=True)
class ScoredBatch:
    """What `score_many` says about a batch.

    `scores`: one row per accepted event, in input order, indexed by the event's position in
    the batch, with `SCORE_COLUMNS`; `reasons` is the JSON string `Detector.explain` writes
    for each explained event (by default the alerting ones) and None for the others.
    `dead_letters`: the refused events, each with its one-line reason and position.
    """

    scores: pd.DataFrame
    dead_letters: list[DeadLetter]


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
        self._lateness = 0.0
        self._seen: dict[str, tuple[float, np.ndarray]] = {}
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
        columns = detector.feature_columns_ or []
        needed = [config.data.timestamp, *config.data.entity_keys, *columns]
        if behavioural is not None:
            needed += [*behavioural.entity_columns, *behavioural.values]
        self._needed = list(dict.fromkeys(needed))

    # -- scoring --------------------------------------------------------------------------------

    def score_many(
        self, batch: Batch, remember: bool = True, explain: Explain = "alerts"
    ) -> ScoredBatch:
        """Score a micro-batch of raw events (a DataFrame, a mapping of columns, or a pyarrow
        RecordBatch), in order.

        `remember`: learn the events into the behavioural state (False: describe them against
        the state as it is, and change nothing). `explain`: which events get their `reasons`
        ("alerts" by default: TreeSHAP is the costly part; "all" gives every event the JSON
        `Detector.explain` writes; "none").
        """
        frame = _as_frame(batch)
        dead: dict[int, str] = {}
        events = self._validated(frame, dead)
        ids = self._event_ids(events, dead)
        events = events.loc[[i for i in events.index if i not in dead]]
        ids = ids.loc[events.index]
        prepared: dict[str, Any] = {name: events[name].to_numpy() for name in events.columns}
        if self._state is not None and len(events):
            behaviour, accepted = self._behaviour(frame, events, ids, remember, dead)
            events, ids = events.iloc[accepted], ids.iloc[accepted]
            prepared = {name: values[accepted] for name, values in prepared.items()}
            names = self._state.feature_names
            prepared.update({name: behaviour[:, j] for j, name in enumerate(names)})
        letters = [
            DeadLetter(_row(frame, position), reason, position)
            for position, reason in sorted(dead.items())
        ]
        return ScoredBatch(self._scores(prepared, events.index, ids, explain), letters)

    def score_event(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        """The event's row of `Detector.score` as a dict, or None if it is a dead letter (kept
        in `dead_letters`): `score_many` of one event, without reasons."""
        result = self.score_many({name: [value] for name, value in event.items()}, explain="none")
        if result.dead_letters:
            self.dead_letters.append(DeadLetter(dict(event), result.dead_letters[0].reason))
            return None
        row = result.scores.iloc[0]
        out: dict[str, Any] = {name: row[name] for name in EVENT_COLUMNS}
        if self.detector.threshold_ is None:
            del out["alert"]
        out["rules_hit"], out["clipped"] = row["rules_hit"], row["clipped"]
        return out

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """The behavioural state and the remembered event ids, as JSON bytes (no pickle)."""
        seen_ids = list(self._seen)
        times = [self._seen[key][0] for key in seen_ids]
        width = len(self._state.feature_names) if self._state is not None else 0
        rows = np.array([self._seen[key][1] for key in seen_ids], dtype="<f8").reshape(-1, width)
        document = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "state": None if self._state is None else self._state.to_dict(),
            "seen": {
                "ids": seen_ids,
                "times": [repr(t) for t in times],
                "features": base64.b64encode(rows.tobytes()).decode("ascii"),
            },
        }
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode("utf-8")

    def _restore(self, data: bytes) -> None:
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ArtifactError("live checkpoint: not valid JSON") from None
        if (
            not isinstance(document, dict)
            or document.get("format") != CHECKPOINT_FORMAT
            or document.get("version") != CHECKPOINT_VERSION
        ):
            raise ArtifactError(
                f"live checkpoint: not a {CHECKPOINT_FORMAT} document of version "
                f"{CHECKPOINT_VERSION}"
            )
        saved = document.get("state")
        if (saved is None) != (self._state is None):
            raise ArtifactError("live checkpoint: behavioural state does not match the model")
        if saved is not None:
            if not isinstance(saved, dict):
                raise ArtifactError("live checkpoint: malformed behavioural state")
            state = FeatureState.from_dict(saved)
            assert self._state is not None
            if state.config != self._state.config or state.label_column != self._state_label:
                raise ArtifactError(
                    "live checkpoint: its behavioural config differs from the model's"
                )
            self._state = state
        try:
            seen = document["seen"]
            ids = [str(key) for key in seen["ids"]]
            times = [float(t) for t in seen["times"]]
            width = len(self._state.feature_names) if self._state is not None else 0
            rows = np.frombuffer(base64.b64decode(seen["features"], validate=True), dtype="<f8")
            rows = rows.reshape(len(ids), width) if width else np.zeros((len(ids), 0))
            if len(times) != len(ids):
                raise ValueError("ids and times differ in length")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"live checkpoint: malformed remembered ids ({exc})") from None
        self._seen = {
            key: (t, rows[i].copy()) for i, (key, t) in enumerate(zip(ids, times, strict=True))
        }

    # -- steps ----------------------------------------------------------------------------------

    def _validated(self, frame: pd.DataFrame, dead: dict[int, str]) -> pd.DataFrame:
        """The events that parse, as `validate_events` gives them; the others into `dead`."""
        missing = [name for name in self._needed if name not in frame.columns]
        if self._data.event_id is not None and self._data.event_id not in frame.columns:
            missing.append(self._data.event_id)
        if missing:
            for position in range(len(frame)):
                dead[position] = f"missing column '{missing[0]}'"
            return frame.iloc[:0]
        columns = self._needed + [
            name for name in (self._data.event_id,) if name is not None and name not in self._needed
        ]
        parts = _validate_parts(frame[columns], self._data, dead)
        if not parts:
            return frame.iloc[:0].assign(**{EVENT_SECONDS: np.zeros(0)})
        events = pd.concat(parts) if len(parts) > 1 else parts[0]
        keys = [*self._data.entity_keys, *(self._state.feature_plan.columns if self._state else ())]
        for name in dict.fromkeys(keys):
            for position in np.flatnonzero(events[name].isna().to_numpy()).tolist():
                dead.setdefault(int(events.index[position]), f"entity column '{name}' is missing")
        return events

    def _event_ids(self, events: pd.DataFrame, dead: dict[int, str]) -> pd.Series:
        """Each event's id (the configured column, or the id derived from the event)."""
        clean = events.loc[[i for i in events.index if i not in dead]]
        column = self._data.event_id
        if column is None:
            return event_ids(clean, self._data, "event")
        raw = clean[column]
        for position in np.flatnonzero(raw.isna().to_numpy()).tolist():
            dead[int(clean.index[position])] = f"missing event id in column '{column}'"
        present = raw[raw.notna()]
        ids = canonical_text(present, column, "event", what="event id")
        for label in ids.index[(ids.str.strip() == "").to_numpy()].tolist():
            dead[int(label)] = f"empty event id in column '{column}'"
        return ids.rename(EVENT_ID)

    def _behaviour(
        self,
        frame: pd.DataFrame,
        events: pd.DataFrame,
        ids: pd.Series,
        remember: bool,
        dead: dict[int, str],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Behavioural features of the events (rows), and which of them were accepted.

        An id already remembered takes its remembered features; a repeat within the batch
        takes its first occurrence's. The others go through the state, learned if `remember`.
        """
        state = self._state
        assert state is not None
        n = len(events)
        keys = list(ids)
        width = len(state.feature_names)
        features = np.empty((n, width))
        fresh = np.ones(n, dtype=bool)
        first_at: dict[str, int] = {}
        repeat_of = np.full(n, -1, np.int64)
        for row, key in enumerate(keys):
            known = self._seen.get(key)
            if known is not None:
                features[row] = known[1]
                fresh[row] = False
            elif remember:
                if key in first_at:
                    repeat_of[row] = first_at[key]
                    fresh[row] = False
                else:
                    first_at[key] = row
        accepted = ~fresh & (repeat_of < 0)  # remembered ones
        rows = np.flatnonzero(fresh)
        if rows.size:
            canonical = self._canonical_keys(events.iloc[rows], "event")
            columns: dict[str, Any] = {
                name: canonical[name].to_numpy() for name in self._state_columns()
            }
            if self._state_label is not None:
                columns[self._state_label] = _label_values(
                    frame, self._state_label, events.index[rows]
                )
            step = state.step(columns, learn=remember)
            features[rows] = step.features
            accepted[rows] = step.accepted
            for at, reason in step.refused.items():
                dead[int(events.index[rows[at]])] = reason
        for row in np.flatnonzero(repeat_of >= 0).tolist():
            first = int(repeat_of[row])
            if accepted[first]:
                features[row] = features[first]
                accepted[row] = True
            else:
                dead[int(events.index[row])] = dead[int(events.index[first])]
        if remember:
            times = events[EVENT_SECONDS].to_numpy()
            for row in rows[accepted[rows]].tolist():
                self._seen[keys[row]] = (float(times[row]), features[row].copy())
            self._forget()
        kept = np.flatnonzero(accepted)
        return features[kept], kept

    def _forget(self) -> None:
        """Keep the last `remember_ids` ids, and every id within the allowed lateness."""
        assert self._state is not None
        floor = self._state.watermark - self._lateness
        while len(self._seen) > self.remember_ids:
            oldest = next(iter(self._seen))
            if self._seen[oldest][0] >= floor:
                break
            del self._seen[oldest]

    def _state_columns(self) -> list[str]:
        assert self._state is not None
        plan = self._state.feature_plan
        return list(dict.fromkeys([EVENT_SECONDS, *plan.columns, *plan.values]))

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

    def _scores(
        self, prepared: dict[str, Any], index: pd.Index, ids: pd.Series, explain: Explain
    ) -> pd.DataFrame:
        positions = pd.Index(np.asarray(index, dtype=np.int64), name=None)
        if len(positions) == 0:
            return pd.DataFrame({name: [] for name in SCORE_COLUMNS}, index=positions)
        scored = score_prepared(self.detector, prepared, explain, threads=1)
        threshold = np.nan if scored.threshold is None else scored.threshold
        return pd.DataFrame(
            {
                EVENT_ID: ids.to_numpy(),
                "score": scored.score,
                "alert": scored.alert,
                "threshold": np.full(len(positions), threshold),
                "reasons": scored.reasons,
                "rule_score": scored.rule_score,
                "reconstruction_error": scored.reconstruction_error,
                "histogram_score": scored.histogram_score,
                "rules_hit": scored.rules_hit,
                "clipped": scored.clipped,
            },
            index=positions,
        )


def _as_frame(batch: Batch) -> pd.DataFrame:
    """The batch as a frame indexed by position."""
    if isinstance(batch, pd.DataFrame):
        return batch.reset_index(drop=True)
    if isinstance(batch, Mapping):
        try:
            return pd.DataFrame(dict(batch))
        except ValueError as exc:
            message = f"score_many: the columns of a batch must be equally long ({exc})"
            raise InputError(message) from None
    import pyarrow

    if isinstance(batch, pyarrow.RecordBatch | pyarrow.Table):
        return batch.to_pandas()
    raise InputError(
        f"score_many: a batch is a DataFrame, a mapping of columns or a pyarrow RecordBatch, "
        f"not {type(batch).__name__}"
    )


def _validate_parts(frame: pd.DataFrame, config: Any, dead: dict[int, str]) -> list[pd.DataFrame]:
    """`validate_events` on the frame; where it fails, on halves, down to single events."""
    try:
        events, _ = validate_events(frame, config, "event")
        return [events]
    except InputError as exc:
        if len(frame) == 1:
            dead[int(frame.index[0])] = str(exc)
            return []
    middle = len(frame) // 2
    return _validate_parts(frame.iloc[:middle], config, dead) + _validate_parts(
        frame.iloc[middle:], config, dead
    )


def _label_values(frame: pd.DataFrame, label: str, index: pd.Index) -> np.ndarray:
    """The events' labels as given (text, numbers or missing), None where there is none."""
    if label not in frame.columns:
        return np.full(len(index), None, dtype=object)
    return frame[label].to_numpy(dtype=object)[np.asarray(index, dtype=np.int64)]


def _row(frame: pd.DataFrame, position: int) -> dict[str, Any]:
    return frame.iloc[position].to_dict()
