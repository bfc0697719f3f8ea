"""Live engine of the behavioural features: `FeatureState`, one event (or micro-batch) at a time.

It computes the features `hybrid_ad.behavioural.batch` declares, from each entity's history
before the event, with bounded memory, and its state round-trips through JSON. The batch engine
(`batch.compute_batch`) computes the same features over a whole history with a
different algorithm (vectorised prefix sums); the test suite proves the two agree to 1e-9
relative. This module maps events and entity keys to the compiled kernel's slots
(`hybrid_ad.behavioural.kernel`), which holds the per-entity state in numpy arrays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from hybrid_ad.behavioural import distinct, kernel
from hybrid_ad.behavioural.batch import (
    BehaviouralConfig,
    FeaturePlan,
    as_float_array,
    feature_plan,
)
from hybrid_ad.errors import ArtifactError, ConfigError, InputError

__all__ = ["DeadLetter", "FeatureState", "Step"]

_CHUNK = 65_536
"""`update_many` works through this many rows at a time: entity slots are assigned per chunk
and idle entities evicted between chunks, so memory stays bounded on long frames."""
_MIN_HEAP_ROWS = 1024
_FEW_ROWS = 16
"""Up to this many events, entity slots are looked up row by row (factorizing costs more)."""


class DeadLetter(NamedTuple):
    """An event the live engine refused, and why; nothing else about the state changed.
    `position`: the event's position in the batch it came in (None for `update`)."""

    event: dict[str, Any]
    reason: str
    position: int | None = None


class Step(NamedTuple):
    """What `FeatureState.step` found for a batch of events."""

    features: np.ndarray
    """(n, features) float64, in `feature_names` order; rows of refused events are garbage."""
    accepted: np.ndarray
    """(n,) bool: the event was accepted (described, and learned if asked)."""
    refused: dict[int, str]
    """Position -> one-line reason of each refused event (late or malformed)."""


class _OneEvent:
    """The kernel's input and output arrays for one event, allocated once: `update` fills them
    in place instead of building six small arrays per event."""

    def __init__(self, n_values: int, n_keys: int, width: int) -> None:
        self.times = np.zeros(1)
        self.slots = np.zeros((1, n_keys), np.int64)
        self.slot_row = self.slots[0]
        self.values = np.zeros((1, n_values))
        self.labels = np.zeros(1, np.int64)
        self.skip = np.zeros(1, np.bool_)
        self.learn = np.ones(1, np.bool_)
        self.out = np.zeros((1, width))
        self.status = np.zeros(1, np.int8)
        self.late_at = np.zeros(1)


class FeatureState:
    """Incremental behavioural features: `update` one event, or `update_many` a micro-batch.

    Per entity it keeps only the events some window can still see (the longest time window,
    the largest last-N, the label-risk horizon) and forgets entities idle for `entity_ttl`.
    The state round-trips through JSON (`to_dict` / `from_dict`, `save` / `load`).
    """

    FORMAT = "hybrid-ad.behavioural-state"
    VERSION = 4
    READS = (3, 4)
    """Versions `from_dict` reads: 3 is 4 without distinct counts."""

    def __init__(
        self,
        config: BehaviouralConfig,
        label_column: str | None = None,
        *,
        time_column: str = "time",
    ) -> None:
        plan = feature_plan(config)
        if plan.risk_delay is not None and label_column is None:
            raise ConfigError("behavioural: label_risk is configured but no label column given")
        self.config = config
        self.time_column = time_column
        self.label_column = label_column
        self.dead_letters: list[DeadLetter] = []
        self.evicted = 0
        self.feature_plan = plan
        self._names = plan.names()
        # then the entity columns are exactly the keys, in order
        self._plain_keys = plan.key_positions == tuple((i,) for i in range(len(plan.columns)))
        # per key, its value from the entity columns' values: one value, or a tuple of several
        self._key_getters = [itemgetter(*positions) for positions in plan.key_positions]
        self._tables: list[dict[Any, int]] = [{} for _ in plan.prefixes]  # entity key -> slot
        self._next_sweep = -math.inf
        self._sweep_every = plan.ttl / 8 if math.isfinite(plan.ttl) else math.inf
        # What the kernel needs of the plan: time windows, then last-N windows.
        n_time = len(plan.time_windows)
        self._spans = np.array(plan.time_windows + (0.0,) * len(plan.last_n))
        self._sizes = np.array((0,) * n_time + plan.last_n, dtype=np.int64)
        aggs = set(plan.value_aggregates)
        self._flags = np.array(
            [plan.count]
            + [agg in aggs for agg in ("sum", "mean", "std", "min", "max", "ratio_to_mean")]
            + [plan.since_previous, plan.session_gap is not None],
            dtype=np.int64,
        )
        self._params = np.array(
            [
                plan.ttl,
                plan.lateness,
                plan.gap_fill,
                plan.session_gap or 0.0,
                plan.risk_delay or 0.0,
            ]
        )
        self._risk_spans = np.array(plan.risk_horizons, dtype=np.float64)
        self._key_risk = np.array(plan.key_risk, dtype=np.int64)
        widths = [len(plan.for_key(k).key_suffixes()) for k in range(len(plan.prefixes))]
        self._key_at = np.cumsum([0, *widths], dtype=np.int64)  # each key's output columns
        n_values = len(plan.values)
        n_risk = len(plan.risk_horizons)
        self._header = np.zeros((0, kernel.header_width(plan.n_windows, n_values, n_risk)))
        self._heap = np.zeros((_MIN_HEAP_ROWS, kernel.heap_width(n_values)))
        self._used = np.zeros(2, np.int64)  # heap rows in use, rows a relocation asked for
        self._watermark = np.array([-math.inf])
        self._owners: list[tuple[int, Any] | None] = []  # slot -> (table, key), None if free
        self._free: list[int] = []
        self._one = _OneEvent(len(plan.values), len(plan.prefixes), len(self._names))
        self._init_distinct(plan, widths)
        needed = [(time_column, "time")]
        needed += [(column, "entity") for column in plan.columns]
        needed += [(value, "value") for value in plan.values]
        if plan.risk_delay is not None and label_column is not None:
            needed.append((label_column, "label"))
        self._needed = needed  # the columns `step` reads, with their roles

    def _init_distinct(self, plan: FeaturePlan, widths: list[int]) -> None:
        """The distinct counts' arrays: the code column or clock period each reads, where each
        key's counts go, and a table per (slot, count) in a heap of regions."""
        specs = plan.distinct
        self._d_columns = [spec.column for spec in specs if spec.column is not None]
        self._d_positions = [plan.columns.index(column) for column in self._d_columns]
        self._d_vocab: list[dict[Any, int]] = [{} for _ in self._d_columns]  # value -> code
        self._d_values: list[list[Any]] = [[] for _ in self._d_columns]  # code -> value
        self._d_column_at = np.array(
            [-1 if spec.column is None else self._d_columns.index(spec.column) for spec in specs],
            np.int64,
        )
        self._d_periods = np.array([spec.period or 0.0 for spec in specs])
        self._d_windows = np.zeros((len(specs), max((len(s.windows) for s in specs), default=0)))
        for index, spec in enumerate(specs):
            self._d_windows[index, : len(spec.windows)] = spec.windows
        self._d_n_windows = np.array([len(spec.windows) for spec in specs], np.int64)
        self._d_horizons = np.array([max(spec.windows) for spec in specs])
        out_at = np.full((len(plan.prefixes), len(specs)), -1, np.int64)
        for k, own in enumerate(plan.key_distinct):
            at = int(self._key_at[k + 1]) - sum(
                len(spec.windows) for spec, has in zip(specs, own, strict=True) if has
            )
            for index, has in enumerate(own):
                if has:
                    out_at[k, index] = at
                    at += len(specs[index].windows)
        self._d_out_at = out_at
        self._d_header = np.zeros((0, len(specs), distinct.D_WIDTH))
        self._d_heap = np.zeros((_MIN_HEAP_ROWS if specs else 0, 2))
        self._d_used = np.zeros(2, np.int64)
        self._d_one = np.zeros((1, len(self._d_columns)), np.int64)  # `update`'s codes, reused
        self._d_one_accepted = np.zeros(1, np.bool_)

    # -- public ---------------------------------------------------------------------------------

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    @property
    def n_entities(self) -> int:
        """Entities currently held, over all keys."""
        return sum(len(table) for table in self._tables)

    @property
    def buffered_events(self) -> int:
        """Events held in entity buffers, over all entities: what the windows can still see."""
        slots = self._held_slots()
        header = self._header[slots]
        return int((header[:, kernel.END] - header[:, kernel.BASE]).sum())

    @property
    def watermark(self) -> float:
        """The latest event time seen."""
        return float(self._watermark[0])

    def update(self, event: Mapping[str, Any]) -> dict[str, float] | None:
        """Features of `event` (from its entity's history before it), then learn from it.

        Returns None, and appends a `DeadLetter`, if the event is too late or malformed.
        """
        parsed = self._parse(event)
        if isinstance(parsed, str):
            self.dead_letters.append(DeadLetter(dict(event), parsed))
            return None
        t, entity, keys, xs, label = parsed
        late = self._one_event(t, entity, keys, xs, label, learn=True)
        if late is not None:
            self.dead_letters.append(DeadLetter(dict(event), late))
            return None
        return dict(zip(self._names, self._one.out[0].tolist(), strict=True))

    def _one_event(
        self,
        t: float,
        entity: tuple | list,
        keys: tuple | list,
        xs: list[float],
        label: int,
        learn: bool,
    ) -> str | None:
        """One checked event through the kernels, in the buffers allocated once
        (`_OneEvent`): its features are in `self._one.out[0]`; the reason if it was late."""
        one = self._one
        one.times[0] = t
        one.values[0] = xs
        one.labels[0] = label
        one.learn[0] = learn
        new = self._slots_of_keys(keys, one.slot_row)
        self._run(
            one.times, one.slots, one.values, one.labels, one.skip, one.learn,
            one.out, one.status, one.late_at,
        )  # fmt: skip
        if len(self._d_column_at):
            codes = self._d_one
            for c, at in enumerate(self._d_positions):
                codes[0, c] = self._code(c, entity[at])
            accepted = self._d_one_accepted
            accepted[0] = one.status[0] == kernel.ACCEPTED
            self._run_distinct(one.times, one.slots, codes, accepted, one.learn, one.out)
        self._release_unused(new)
        if one.status[0] == kernel.LATE:
            return self._late_reason(t, one.late_at[0])
        self._maybe_sweep()
        return None

    def update_many(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`update` for each row in order; rows refused as dead letters are left out.

        The fused fast path: each event is described, then remembered, in one kernel pass.
        """
        return self._kept(frame, self.step(frame), dead_letters=True)

    def fit(self, frame: pd.DataFrame) -> FeatureState:
        """Learn a history of events (`remember`); returns the state, as scikit-learn's `fit`
        does. An empty state is usable too: every entity starts afresh."""
        self.remember(frame)
        return self

    def describe(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Each event's features from the state as it is, and nothing changes: the events do
        not see each other, are not learned and leave no dead letters. Refused rows (late,
        malformed) are left out. `describe` then `remember` of one event is `update`."""
        return self._kept(frame, self.step(frame, learn=False), dead_letters=False)

    def remember(self, frame: pd.DataFrame) -> None:
        """Learn the events in order, as `update_many` does, without returning features."""
        self.update_many(frame)

    def step(self, columns: Mapping[str, Any], learn: bool | np.ndarray = True) -> Step:
        """The array form of `update_many` / `describe`: `columns` is a frame or a mapping of
        equally long columns (numpy arrays, lists or Series); `learn` (one flag, or one per
        event) says which events are learned; the others are only described. Nothing is
        appended to `dead_letters`: refused events come back with their reasons.

        The rows are checked column by column, then go through the compiled kernel a chunk at
        a time; only malformed rows take the per-row path, to find their reason.
        """
        plan = self.feature_plan
        for column, role in self._needed:
            if column not in columns:
                raise InputError(f"behavioural features: unknown {role} column '{column}'")
        one = self._typed_event(columns, learn)
        if one is not None:
            return one
        times = _float_column(columns[self.time_column])
        n = len(times)
        values = np.empty((n, len(plan.values)))
        for v, column in enumerate(plan.values):
            values[:, v] = _float_column(columns[column])
        suspect = ~(np.isfinite(times) & np.isfinite(values).all(axis=1))
        keys = {column: _object_column(columns[column]) for column in plan.columns}
        for column in plan.columns:
            missing = _missing(keys[column])
            if missing is not None:
                suspect |= missing
        labels = np.full(n, -1, np.int64)
        if plan.risk_delay is not None and self.label_column is not None:
            raw = pd.Series(_object_column(columns[self.label_column]))
            numeric = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64, na_value=np.nan)
            suspect |= ~(np.isnan(numeric) | (numeric == 0.0) | (numeric == 1.0))
            suspect |= np.isnan(numeric) & raw.notna().to_numpy()
            labels = np.where(np.isnan(numeric), -1, numeric).astype(np.int64)
        if isinstance(learn, bool | np.bool_):
            learning = np.full(n, bool(learn), dtype=np.bool_)
        else:
            learning = np.ascontiguousarray(np.broadcast_to(np.asarray(learn, np.bool_), (n,)))
        data = np.empty((n, len(self._names)))
        status = np.empty(n, np.int8)
        late_at = np.zeros(n)
        for start in range(0, n, _CHUNK):
            rows = slice(start, min(start + _CHUNK, n)) if n > _CHUNK else slice(None)
            part = keys if n <= _CHUNK else {c: key[rows] for c, key in keys.items()}
            skip = suspect[rows]
            slots, new = self._slots_of_rows(part, skip)
            self._run(
                times[rows], slots, values[rows], labels[rows], skip, learning[rows],
                data[rows], status[rows], late_at[rows],
            )  # fmt: skip
            if len(self._d_column_at):
                codes = self._codes_of_rows(part, skip)
                accepted = status[rows] == kernel.ACCEPTED
                self._run_distinct(times[rows], slots, codes, accepted, learning[rows], data[rows])
            self._release_unused(new)
            self._maybe_sweep()
        accepted = status == kernel.ACCEPTED
        refused: dict[int, str] = {}
        if not accepted.all():
            for i in np.flatnonzero(~accepted).tolist():
                if status[i] == kernel.LATE:
                    refused[i] = self._late_reason(float(times[i]), late_at[i])
                else:
                    event = {column: _item(columns[column], i) for column, _ in self._needed}
                    parsed = self._parse(event)
                    refused[i] = (
                        parsed if isinstance(parsed, str) else "missing or non-numeric value"
                    )
        return Step(data, accepted, refused)

    def _typed_event(self, columns: Mapping[str, Any], learn: bool | np.ndarray) -> Step | None:
        """`step` of one event given as the live path gives it (float64 time and values, text
        keys, no label), through `_one_event`: the batch machinery (checks column by column,
        entity slots and codes by factorising) cost twice as much for one event. None for
        anything else, which takes the batch path (so do the events it refuses: their reasons
        are found there)."""
        times = columns[self.time_column]
        if (
            self.feature_plan.risk_delay is not None
            or not isinstance(times, np.ndarray)
            or times.shape != (1,)
            or times.dtype != np.float64
            or np.size(learn) != 1
        ):
            return None
        xs = []
        for column in self.feature_plan.values:
            values = columns[column]
            if not isinstance(values, np.ndarray) or values.dtype != np.float64:
                return None
            xs.append(float(values[0]))
        entity = []
        for column in self.feature_plan.columns:
            values = columns[column]
            if not isinstance(values, np.ndarray) or type(values[0]) is not str:
                return None
            entity.append(values[0])
        t = float(times[0])
        if not (math.isfinite(t) and all(math.isfinite(x) for x in xs)):
            return None
        flag = bool(np.asarray(learn).reshape(-1)[0])
        late = self._one_event(t, entity, self._table_keys(tuple(entity)), xs, -1, flag)
        refused = {} if late is None else {0: late}
        return Step(self._one.out.copy(), np.array([late is None]), refused)

    def _kept(self, frame: pd.DataFrame, step: Step, dead_letters: bool) -> pd.DataFrame:
        """The accepted rows of a step as a frame; the refused ones as dead letters."""
        if dead_letters:
            for i, reason in step.refused.items():
                self.dead_letters.append(DeadLetter(frame.iloc[i].to_dict(), reason, i))
        if step.refused:
            kept = np.flatnonzero(step.accepted)
            return pd.DataFrame(step.features[kept], index=frame.index[kept], columns=self._names)
        return pd.DataFrame(step.features, index=frame.index, columns=self._names, copy=False)

    # -- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; floats round-trip exactly, so features continue bit for bit."""
        return {
            **self._document(),
            "entities": [
                [[_json_key(key), self._slot_to_dict(slot)] for key, slot in table.items()]
                for table in self._tables
            ],
        }

    def _document(self) -> dict[str, Any]:
        """The state less its entities: what `to_dict` and `to_arrays` both hold."""
        return {
            "format": self.FORMAT,
            "version": self.VERSION,
            "config": self.config.model_dump(mode="json"),
            "time_column": self.time_column,
            "label_column": self.label_column,
            "watermark": _json_float(self.watermark),
            "next_sweep": _json_float(self._next_sweep),
            "evicted": self.evicted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureState:
        """Rebuild a state saved by `to_dict`; a foreign or damaged document is an ArtifactError."""
        if data.get("format") != cls.FORMAT or data.get("version") not in cls.READS:
            raise ArtifactError(
                f"not a {cls.FORMAT} document of version {cls.VERSION} "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        try:
            config = BehaviouralConfig.model_validate(data["config"])
            state = cls(config, data["label_column"], time_column=data["time_column"])
            state._watermark[0] = _from_json_float(data["watermark"])
            state._next_sweep = _from_json_float(data["next_sweep"])
            state.evicted = int(data["evicted"])
            if len(data["entities"]) != len(state._tables):
                raise ValueError("entity tables do not match the entity keys")
            widths = [len(key) for key in state.feature_plan.keys] or [1]  # the global key is None
            for index, (items, width) in enumerate(zip(data["entities"], widths, strict=True)):
                for value, saved in items:
                    state._slot_from_dict(index, _from_json_key(value, width), saved)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ArtifactError(f"damaged behavioural state: {type(exc).__name__}: {exc}") from None
        return state

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What `to_dict` holds, as a small JSON-ready document (config, entity keys) and two
        arrays: every entity's header and its buffered events, one after the other in the
        order of the keys. Where entities live in memory is not in it, so equal states give
        equal arrays; a checkpoint writes them as raw bytes (`from_arrays`)."""
        keys: list[list[Any]] = []
        slots: list[int] = []
        for table in self._tables:
            keys.append([key if type(key) is str else _json_key(key) for key in table])
            slots += table.values()
        at = np.array(slots, np.int64)
        headers = self._header[at].copy()
        offsets = headers[:, kernel.OFFSET].astype(np.int64)
        lengths = (headers[:, kernel.END] - headers[:, kernel.BASE]).astype(np.int64)
        headers[:, kernel.OFFSET] = headers[:, kernel.CAP] = 0.0  # where it lives is not state
        starts = np.cumsum(lengths) - lengths
        rows = np.repeat(offsets - starts, lengths) + np.arange(int(lengths.sum()))
        document = {**self._document(), "keys": keys}
        if any(any(own) for own in self.feature_plan.key_distinct):
            document["distinct"] = [
                [self._slot_tables(slot) for slot in table.values()] for table in self._tables
            ]
        return document, {"headers": headers, "events": self._heap[rows]}

    @classmethod
    def from_arrays(
        cls, document: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> FeatureState:
        """Rebuild a state saved by `to_arrays`, checked as `from_dict` checks; a foreign or
        damaged one is an ArtifactError."""
        state = cls.from_dict({**document, "entities": [[] for _ in document.get("keys", [])]})
        try:
            headers, events = arrays["headers"], arrays["events"]
            n_keys = sum(len(keys) for keys in document["keys"])
            if headers.ndim != 2 or len(headers) != n_keys or events.ndim != 2:
                raise ValueError("entity headers do not match the entity keys")
            spans = headers[:, kernel.END] - headers[:, kernel.BASE]
            if not np.isfinite(spans).all():
                raise ValueError("a buffer length that is not finite")
            lengths = spans.astype(np.int64)
            if (lengths < 0).any() or int(lengths.sum()) != len(events):
                raise ValueError("buffer lengths do not match the buffered events")
            ends = np.cumsum(lengths)
            widths = [len(key) for key in state.feature_plan.keys] or [1]
            keys = document["keys"]
            tables = document.get("distinct") or [[None] * len(items) for items in keys]
            if len(tables) != len(keys):
                raise ValueError("distinct tables do not match the entity keys")
            row = 0
            for index, (items, width) in enumerate(zip(keys, widths, strict=True)):
                for value, saved in zip(items, tables[index], strict=True):
                    key = _from_json_key(value, width)
                    start = int(ends[row] - lengths[row])
                    state._restore_slot(
                        index, key, headers[row].copy(), events[start : ends[row]], saved
                    )
                    row += 1
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ArtifactError(f"damaged behavioural state: {type(exc).__name__}: {exc}") from None
        return state

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), allow_nan=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> FeatureState:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot read behavioural state ({exc})") from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{path}: not a behavioural state document")
        return cls.from_dict(data)

    # -- events to kernel calls -----------------------------------------------------------------

    def _parse(
        self, event: Mapping[str, Any]
    ) -> tuple[float, tuple, tuple | list, list[float], int] | str:
        plan = self.feature_plan
        try:
            t = float(event[self.time_column])
            entity = tuple([event[column] for column in plan.columns])
            xs = [float(event[value]) for value in plan.values]
            label = -1
            if plan.risk_delay is not None and self.label_column is not None:
                label = _label_code(event[self.label_column])
        except KeyError as exc:
            return f"missing column {exc.args[0]!r}"
        except (TypeError, ValueError) as exc:
            return f"bad value: {exc}"
        return _check_event(t, entity, xs, plan) or (t, entity, self._table_keys(entity), xs, label)

    def _table_keys(self, entity: tuple) -> tuple | list:
        """Per entity table its key: the column's value, a tuple for a composite key, or None
        for the global entity."""
        if not self.feature_plan.keys:
            return (None,)
        if self._plain_keys:
            return entity
        return [key_of(entity) for key_of in self._key_getters]

    def _run(
        self,
        times: np.ndarray,
        slots: np.ndarray,
        values: np.ndarray,
        labels: np.ndarray,
        skip: np.ndarray,
        learn: np.ndarray,
        out: np.ndarray,
        status: np.ndarray,
        late_at: np.ndarray,
    ) -> None:
        """The kernel over these events, into `out`, `status` and `late_at` (rows of events);
        the heap grows whenever the kernel runs out of it."""
        n = len(times)
        done = 0
        while done < n:
            done = kernel.advance(
                times, slots, values, labels, skip, learn,
                self._spans, self._sizes, self._flags, self._params,
                self._risk_spans, self._key_risk, self._key_at,
                self._header, self._heap, self._watermark, self._used,
                out, status, late_at, done,
            )  # fmt: skip
            if done < n:
                self._grow_heap(int(self._used[1]))

    def _run_distinct(
        self,
        times: np.ndarray,
        slots: np.ndarray,
        codes: np.ndarray,
        accepted: np.ndarray,
        learn: np.ndarray,
        out: np.ndarray,
    ) -> None:
        """The distinct counts of the accepted events into `out`; their tables' heap grows
        whenever the kernel runs out of it."""
        n = len(times)
        done = 0
        while done < n:
            done = distinct.advance_distinct(
                times, slots, codes, accepted, learn,
                self._d_column_at, self._d_periods, self._d_windows, self._d_n_windows,
                self._d_horizons, self._d_out_at,
                self._d_header, self._d_heap, self._d_used, out, done,
            )  # fmt: skip
            if done < n:
                self._grow_distinct(int(self._d_used[1]))

    def _code(self, column: int, value: Any) -> int:
        """The code of a distinct-count column's value (a new one for an unseen value)."""
        vocab = self._d_vocab[column]
        code = vocab.get(value)
        if code is None:
            code = vocab[value] = len(self._d_values[column])
            self._d_values[column].append(value)
        return code

    def _codes_of_rows(self, columns: dict[str, np.ndarray], skip: np.ndarray) -> np.ndarray:
        """Per row and distinct-count column, its value's code (0 for skipped rows); the
        vocabulary is asked once per distinct value in the chunk."""
        codes = np.zeros((len(skip), len(self._d_columns)), np.int64)
        ok = np.flatnonzero(~skip)
        if ok.size == 0:
            return codes
        if ok.size == 1:  # one event (the request path): no factorising, same values
            row = int(ok[0])
            for c, column in enumerate(self._d_columns):
                codes[row, c] = self._code(c, columns[column][row : row + 1].tolist()[0])
            return codes
        for c, column in enumerate(self._d_columns):
            values = columns[column][ok] if ok.size < len(skip) else columns[column]
            local, uniques = pd.factorize(values)
            code_of = np.array([self._code(c, value) for value in uniques.tolist()], np.int64)
            codes[ok, c] = code_of[local]
        return codes

    def _grow_distinct(self, asked: int) -> None:
        """Compact the distinct tables' heap, at twice its size when they fill more than half."""
        keep = np.zeros(len(self._d_header), np.bool_)
        keep[self._held_slots()] = True
        live = int(self._d_header[keep][:, :, distinct.D_CAP].sum()) + asked
        rows = len(self._d_heap) if 2 * live <= len(self._d_heap) else 2 * live
        heap = np.zeros((max(rows, _MIN_HEAP_ROWS), 2))
        self._d_used[0] = distinct.compact_distinct(self._d_header, keep, self._d_heap, heap)
        self._d_heap = heap

    def _forget_unused_values(self) -> None:
        """Renumber each distinct-count column's vocabulary to the values some table still
        holds, so it stays as small as the tables (values of evicted entities go)."""
        slots = self._held_slots()
        for s, c in enumerate(self._d_column_at.tolist()):
            if c < 0:
                continue
            tables = self._d_header[slots, s]
            lengths = tables[:, distinct.D_LEN].astype(np.int64)
            starts = tables[:, distinct.D_OFFSET].astype(np.int64)
            rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
                int(lengths.sum())
            )
            held, inverse = np.unique(self._d_heap[rows, distinct.D_CODE], return_inverse=True)
            self._d_heap[rows, distinct.D_CODE] = inverse
            values = [self._d_values[c][int(code)] for code in held.tolist()]
            self._d_values[c] = values
            self._d_vocab[c] = {value: code for code, value in enumerate(values)}

    def _slots_of_keys(self, keys: tuple | list, slots: np.ndarray) -> list[int]:
        """Write the slot of each key's entity into `slots` (new slots for unseen entities);
        return the new ones."""
        new: list[int] = []
        for index, (table, key) in enumerate(zip(self._tables, keys, strict=True)):
            slot = table.get(key)
            if slot is None:
                slot = self._new_slot(index, key)
                new.append(slot)
            slots[index] = slot
        return new

    def _slots_of_rows(
        self, keys: dict[str, np.ndarray], skip: np.ndarray
    ) -> tuple[np.ndarray, list[int]]:
        """Per row and entity key, its entity's slot (-1 for skipped rows), and the new slots.

        Each key's values are factorized, so the dictionary of entities is asked once per
        distinct entity in the chunk, not once per row.
        """
        n = len(skip)
        slots = np.full((n, len(self._tables)), -1, np.int64)
        new: list[int] = []
        ok = np.flatnonzero(~skip)
        if ok.size == 0:
            return slots, new
        if ok.size <= _FEW_ROWS:  # a few events: the dictionaries directly, no factorize
            columns = [keys[column] for column in self.feature_plan.columns]
            for row in ok.tolist():
                entity = tuple([values[row] for values in columns])
                new += self._slots_of_keys(self._table_keys(entity), slots[row])
            return slots, new
        rows = {column: values[ok] for column, values in keys.items()} if ok.size < n else keys
        for index, (table, columns) in enumerate(
            zip(self._tables, self.feature_plan.keys or ((),), strict=True)
        ):
            codes, uniques = _factorize_key(rows, columns, int(ok.size))
            slot_of = np.empty(len(uniques), np.int64)
            for j, key in enumerate(uniques):
                slot = table.get(key)
                if slot is None:
                    slot = self._new_slot(index, key)
                    new.append(slot)
                slot_of[j] = slot
            slots[ok, index] = slot_of[codes]
        return slots, new

    def _new_slot(self, table: int, key: Any) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._owners)
            self._owners.append(None)
            if slot == len(self._header):
                grown = np.zeros((max(64, 2 * len(self._header)), self._header.shape[1]))
                grown[:slot] = self._header
                self._header = grown
                d_grown = np.zeros((len(grown), *self._d_header.shape[1:]))
                d_grown[:slot] = self._d_header[:slot]
                self._d_header = d_grown
        self._owners[slot] = (table, key)
        self._header[slot, kernel.FRESH] = 1.0
        self._d_header[slot, :, distinct.D_LEN] = 0.0
        self._d_header[slot, :, distinct.D_LAST] = -math.inf
        self._tables[table][key] = slot
        return slot

    def _free_slots(self, slots: list[int]) -> None:
        for slot in slots:
            owner = self._owners[slot]
            assert owner is not None
            del self._tables[owner[0]][owner[1]]
            self._owners[slot] = None
            self._free.append(slot)

    def _release_unused(self, new: list[int]) -> None:
        """Free the slots given to entities whose events were all refused: no state for them."""
        unused = [slot for slot in new if self._header[slot, kernel.FRESH] != 0.0]
        self._free_slots(unused)

    def _held_slots(self) -> np.ndarray:
        return np.array([s for s, owner in enumerate(self._owners) if owner is not None], np.int64)

    def _grow_heap(self, asked: int) -> None:
        """Compact the heap, at twice its size when the live regions fill more than half."""
        keep = np.zeros(len(self._header), np.bool_)
        keep[self._held_slots()] = True
        live = int(self._header[keep, kernel.CAP].sum()) + asked
        rows = len(self._heap) if 2 * live <= len(self._heap) else 2 * live
        heap = np.zeros((max(rows, _MIN_HEAP_ROWS), self._heap.shape[1]))
        self._used[0] = kernel.compact(self._header, keep, self._heap, heap)
        self._heap = heap

    def _maybe_sweep(self) -> None:
        """Evict entities no accepted event can reach within entity_ttl any more.

        An accepted event has t >= watermark - lateness, so an entity whose last event is more
        than ttl before that bound would be restarted afresh anyway: evicting it changes nothing.
        """
        if self._watermark[0] < self._next_sweep:
            return
        floor = self.watermark - self.feature_plan.lateness
        slots = self._held_slots()
        stale = slots[floor - self._header[slots, kernel.LAST_T] > self.feature_plan.ttl]
        self._free_slots(stale.tolist())
        self.evicted += len(stale)
        if len(self._d_columns):
            self._forget_unused_values()
        self._next_sweep = self.watermark + self._sweep_every

    def _late_reason(self, t: float, watermark: float) -> str:
        return (
            f"late: time {t!r} is more than allowed_lateness "
            f"({self.config.allowed_lateness}) before the latest time seen ({float(watermark)!r})"
        )

    # -- slots to and from JSON -----------------------------------------------------------------

    def _slot_to_dict(self, slot: int) -> dict[str, Any]:
        header = self._header[slot].copy()
        offset, base, end = (int(header[at]) for at in (kernel.OFFSET, kernel.BASE, kernel.END))
        header[kernel.OFFSET] = header[kernel.CAP] = 0.0  # where it lives is not state
        saved: dict[str, Any] = {
            "header": [_json_float(value) for value in header.tolist()],
            "events": self._heap[offset : offset + end - base].tolist(),
        }
        tables = self._slot_tables(slot)
        if tables:
            saved["distinct"] = tables
        return saved

    def _slot_tables(self, slot: int) -> list[list[list[Any]]]:
        """The slot's distinct-count tables, one per count its key has (none: [])."""
        owner = self._owners[slot]
        assert owner is not None
        own = self.feature_plan.key_distinct[owner[0]]
        return [self._table_to_list(slot, s) for s, has in enumerate(own) if has]

    def _table_to_list(self, slot: int, s: int) -> list[list[Any]]:
        """A distinct count's table as [value, last time seen] pairs (values as JSON): the
        values a window can still see, by time then value, so equal states save alike however
        their tables were pruned."""
        h = self._d_header[slot, s]
        offset, length = int(h[distinct.D_OFFSET]), int(h[distinct.D_LEN])
        rows = self._d_heap[offset : offset + length]
        rows = rows[rows[:, distinct.D_SEEN] >= h[distinct.D_LAST] - self._d_horizons[s]]
        c = int(self._d_column_at[s])
        pairs = [
            [code if c < 0 else _json_key(self._d_values[c][int(code)]), seen]
            for code, seen in rows.tolist()
        ]
        return sorted(pairs, key=lambda pair: (pair[1], json.dumps(pair[0])))

    def _table_from_list(self, slot: int, s: int, items: Any, last: float) -> None:
        """Restore a table `_table_to_list` saved; values must be distinct and seen by `last`."""
        c = int(self._d_column_at[s])
        codes, seen = [], []
        for value, time in items:
            if c < 0:
                code = float(value)
                if not math.isfinite(code) or code != math.floor(code):
                    raise ValueError(f"clock period {value!r} is not a whole number")
            else:
                if isinstance(value, list | dict) or value is None:
                    raise ValueError(f"distinct value {value!r} is not a plain value")
                code = float(self._code(c, value))
            if not (math.isfinite(float(time)) and float(time) <= last):
                raise ValueError(f"distinct value {value!r}: time {time!r} is after the entity's")
            codes.append(code)
            seen.append(float(time))
        if len(set(codes)) < len(codes):
            raise ValueError("a distinct-count table holds a value twice")
        cap = max(distinct.D_MIN_CAPACITY, 2 * len(codes))
        if self._d_used[0] + cap > len(self._d_heap):
            self._grow_distinct(cap)
        top = int(self._d_used[0])
        self._d_heap[top : top + len(codes), distinct.D_CODE] = codes
        self._d_heap[top : top + len(codes), distinct.D_SEEN] = seen
        self._d_header[slot, s] = [last, len(codes), top, cap]
        self._d_used[0] = top + cap

    def _slot_from_dict(self, table: int, key: Any, saved: Mapping[str, Any]) -> None:
        header = np.array([_from_json_float(value) for value in saved["header"]], np.float64)
        events = np.array(saved["events"], np.float64).reshape(-1, self._heap.shape[1])
        self._restore_slot(table, key, header, events, saved.get("distinct"))

    def _restore_slot(
        self,
        table: int,
        key: Any,
        header: np.ndarray,
        events: np.ndarray,
        distinct_tables: Any = None,
    ) -> None:
        """Give `key` a slot holding a saved header, buffer and distinct-count tables (as
        `_table_to_list` writes them; None for none), after checking them."""
        if events.ndim != 2 or events.shape[1] != self._heap.shape[1]:
            raise ValueError("buffered events do not match the config")
        if header.shape != (self._header.shape[1],):
            raise ValueError("entity header does not match the config")
        if len(events) != header[kernel.END] - header[kernel.BASE] or header[kernel.FRESH]:
            raise ValueError("buffer length does not match the entity header")
        n_risk = len(self.feature_plan.risk_horizons) if self.feature_plan.key_risk[table] else 0
        problem = kernel.header_problem(
            header, self.feature_plan.n_windows, len(self.feature_plan.values), n_risk
        )
        if problem is not None:
            raise ValueError(f"entity {key!r}: {problem}")
        if not np.isfinite(events).all():
            raise ValueError(f"entity {key!r}: a buffered event is not finite")
        if key in self._tables[table]:
            raise ValueError(f"entity key {key!r} appears twice")
        slot = self._new_slot(table, key)
        cap = max(kernel.MIN_CAPACITY, 2 * len(events))
        if self._used[0] + cap > len(self._heap):
            self._grow_heap(cap)
        top = int(self._used[0])
        header[kernel.OFFSET] = top
        header[kernel.CAP] = cap
        self._heap[top : top + len(events)] = events
        self._header[slot] = header
        self._used[0] = top + cap
        own = [s for s, has in enumerate(self.feature_plan.key_distinct[table]) if has]
        tables = [[] for _ in own] if distinct_tables is None else distinct_tables
        if len(tables) != len(own):
            raise ValueError(f"entity {key!r}: distinct tables do not match the config")
        for s, items in zip(own, tables, strict=True):
            self._table_from_list(slot, s, items, float(header[kernel.LAST_T]))


def _factorize_key(
    rows: Mapping[str, np.ndarray], columns: tuple[str, ...], n: int
) -> tuple[np.ndarray, list[Any]]:
    """Per row the code of its entity under a key, and each code's key as `update` sees it:
    the column's value, a tuple for a composite key, None for the global entity."""
    if not columns:
        return np.zeros(n, np.int64), [None]
    if len(columns) == 1:
        codes, uniques = pd.factorize(rows[columns[0]])
        return codes, list(uniques.tolist())
    combined = np.zeros(n, np.int64)
    for column in columns:
        part, uniques = pd.factorize(rows[column])
        combined = combined * len(uniques) + part
        combined, _ = pd.factorize(combined)  # dense again, so the product never overflows
    codes, _ = pd.factorize(combined)
    first_rows = np.unique(codes, return_index=True)[1]
    parts = [rows[column][first_rows].tolist() for column in columns]
    return codes, list(zip(*parts, strict=True))


def _float_column(values: Any) -> np.ndarray:
    """float64 values; anything non-numeric becomes NaN (and then a dead letter)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        return values.astype(np.float64, copy=False)
    return as_float_array(pd.Series(values) if not isinstance(values, pd.Series) else values)


def _object_column(values: Any) -> np.ndarray:
    """A column as a numpy array (entity keys keep their type)."""
    if isinstance(values, pd.Series):
        return values.to_numpy()
    return values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)


def _missing(values: np.ndarray) -> np.ndarray | None:
    """Which entity keys are missing (None, NaN, NA), or None when none can be: a column of
    text has no missing value, and checking that is cheaper than `pd.isna` on a few rows."""
    if values.dtype.kind in "biuUS":
        return None
    few = values.dtype.kind == "O" and len(values) <= _FEW_ROWS
    if few and all(type(value) is str for value in values.tolist()):
        return None
    return np.asarray(pd.isna(values), dtype=bool)


def _item(values: Any, position: int) -> Any:
    return values.iloc[position] if isinstance(values, pd.Series) else values[position]


def _json_key(key: Any) -> Any:
    """A JSON value for an entity key; JSON has no tuples, so a composite key becomes a list."""
    if isinstance(key, tuple):
        return [_json_key(part) for part in key]
    if isinstance(key, np.generic):
        key = key.item()
    if key is not None and not isinstance(key, str | int | float | bool):
        raise InputError(f"behavioural state: entity key {key!r} cannot be saved as JSON")
    return key


def _from_json_key(value: Any, n_columns: int) -> Any:
    """The entity key `_json_key` saved: a tuple again for a composite key."""
    if n_columns == 1:
        if isinstance(value, list):
            raise ValueError(f"entity key {value!r} is a list, but the key has one column")
        return value
    if not isinstance(value, list) or len(value) != n_columns:
        raise ValueError(f"composite entity key {value!r} does not have {n_columns} parts")
    return tuple(value)


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def _from_json_float(value: float | str) -> float:
    return float(value)


def _label_code(label: Any) -> int:
    """1 anomaly, 0 normal, -1 unknown; anything else is a ValueError."""
    if label is None or (isinstance(label, float | np.floating) and math.isnan(label)):
        return -1
    if label is pd.NA:
        return -1
    if label == 1:
        return 1
    if label == 0:
        return 0
    raise ValueError(f"label must be 0, 1 or missing, got {label!r}")


def _check_event(t: float, entity: tuple, xs: list[float], plan: FeaturePlan) -> str | None:
    """Why an event cannot be used, or None; mirrors the batch engine's input checks."""
    if not math.isfinite(t):
        return f"time {t!r} is not a finite number"
    for name, key in zip(plan.columns, entity, strict=True):
        if key is None or key is pd.NA or (isinstance(key, float) and math.isnan(key)):
            return f"entity column '{name}' is missing"
    for name, x in zip(plan.values, xs, strict=True):
        if not math.isfinite(x):
            return f"value column '{name}' is {x!r}, not a finite number"
    return None
