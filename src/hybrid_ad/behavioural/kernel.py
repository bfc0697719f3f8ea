"""Compiled core of the live behavioural engine: per-entity state in numpy arrays, numba loops.

`FeatureState` (behavioural_live.py) owns the Python side: parsing events, mapping entity keys
to slots, eviction and persistence. This module owns the memory layout and the per-event
arithmetic, so the hot loop runs without a Python object per event (pure Python measured about
20 µs per event; this kernel is well under 1 µs per entity update).

Layout. Every entity (of every key) has a slot: one row of `header` (float64; integers are
stored exactly as floats) and a region of rows in `heap`, its buffer of recent events. A
region is contiguous; buffer index = sequence - base, where sequence counts the entity's events
since it was (re)started. When a region is full, events no window can see any more are dropped
(the buffer shifts down); if it is still more than half full it moves to a region twice as
large at the top of the heap. When the heap has no room, the kernel returns and the caller
compacts or grows the heap, then calls it again from the same event.

Window sums and sums of squares are running double-double sums (hi, lo): an event is added
when learned and subtracted when it leaves the window, each step an error-free TwoSum followed
by renormalisation, so the error stays about 1e-32 of the largest sum held and never drifts;
an empty window resets its sums to exact zeros.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hybrid_ad.behavioural.batch import CANCELLATION, compensated_variance, two_prod

# header columns of a slot
LAST_T, END, BASE, OFFSET, CAP, FRESH = 0, 1, 2, 3, 4, 5
SESSION_START, SESSION_COUNT, LABEL_HI = 6, 7, 8
FIXED = 9
"""Columns before the per-window blocks. LABEL_HI: the first sequence whose label is not known
yet (shared by every label-risk window, as they share the delay)."""
# per window: its start sequence, then per value these columns
SUM_HI, SUM_LO, SQ_HI, SQ_LO, MIN, MIN_AT, MAX, MAX_AT = range(8)
PER_VALUE = 8
# after the windows, the session sums (2 per value), then per label-risk window these columns
LABEL_LO, KNOWN, BAD = range(3)
PER_RISK = 3
# heap columns of a buffered event
ROW_TIME, ROW_LABEL, ROW_VALUES = 0, 1, 2
MIN_CAPACITY = 8
# per-event status written by the kernel
ACCEPTED, LATE, SKIPPED = 0, 1, 2
# flags (int64 array) positions
(
    F_COUNT,
    F_SUM,
    F_MEAN,
    F_STD,
    F_MIN,
    F_MAX,
    F_RATIO,
    F_SINCE_PREVIOUS,
    F_SESSION,
) = range(9)
# params (float64 array) positions
P_TTL, P_LATENESS, P_GAP_FILL, P_SESSION_GAP, P_RISK_DELAY = range(5)


def header_width(n_windows: int, n_values: int, n_risk: int) -> int:
    """Columns of a slot's header row for this many windows, value columns and label-risk
    windows."""
    return risk_column(n_windows, n_values) + PER_RISK * n_risk


@njit(cache=True)
def risk_column(n_windows: int, n_values: int) -> int:
    """Header column where the label-risk windows' blocks start."""
    return FIXED + n_windows * (1 + PER_VALUE * n_values) + 2 * n_values


def heap_width(n_values: int) -> int:
    """Columns of a buffered event: time, label, then the values."""
    return ROW_VALUES + n_values


def header_problem(h: np.ndarray, n_windows: int, n_values: int, n_risk: int) -> str | None:
    """What makes a restored header unsafe for the kernel, or None.

    The kernel does not check bounds, so positions read from a saved state must be proven to
    lie inside the entity's buffer before the kernel sees them. `n_risk` is 0 for a key
    without label-risk features (the kernel never reads those columns of its slots).
    """
    if not np.isfinite(np.delete(h, _extreme_columns(n_windows, n_values))).all():
        return "a non-finite number where a finite one is needed"
    base, end = h[BASE], h[END]
    block = 1 + PER_VALUE * n_values
    positions = [h[FIXED + w * block] for w in range(n_windows)]
    counts = [base, end, h[SESSION_COUNT]]
    if n_risk:
        positions.append(h[LABEL_HI])
        for r in range(n_risk):
            at = risk_column(n_windows, n_values) + PER_RISK * r
            lo, known, bad = h[at + LABEL_LO], h[at + KNOWN], h[at + BAD]
            if not lo <= h[LABEL_HI] or not 0 <= bad <= known:
                return "label-risk counters out of order"
            positions.append(lo)
            counts += [known, bad]
    counts += positions
    if any(value < 0 or value != int(value) for value in counts):
        return "a count or position that is not a whole number >= 0"
    if not base <= end or any(not base <= p <= end for p in positions):
        return "a window start outside the entity's buffer"
    return None


def _extreme_columns(n_windows: int, n_values: int) -> list[int]:
    """Header columns of the cached minima and maxima, which may be infinite (none yet)."""
    block = 1 + PER_VALUE * n_values
    return [
        FIXED + w * block + 1 + PER_VALUE * v + column
        for w in range(n_windows)
        for v in range(n_values)
        for column in (MIN, MAX)
    ]


_nb_two_prod = njit(cache=True)(two_prod)
_nb_variance = njit(cache=True)(compensated_variance)


@njit(cache=True)
def _two_sum(a: float, b: float) -> tuple[float, float]:
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


@njit(cache=True)
def _dd_add(h: np.ndarray, at: int, hi: float, lo: float) -> None:
    """h[at], h[at + 1] += (hi, lo) in double-double, renormalised."""
    s, e = _two_sum(h[at], hi)
    s, e = _two_sum(s, e + h[at + 1] + lo)
    h[at] = s
    h[at + 1] = e


@njit(cache=True)
def _reset(h: np.ndarray, t: float, n_windows: int, n_values: int) -> None:
    """Start the slot afresh at time t (a new entity, or one idle for longer than the TTL);
    its heap region is kept."""
    h[LAST_T] = t
    h[END] = 0.0
    h[BASE] = 0.0
    h[FRESH] = 0.0
    h[SESSION_START] = t
    h[SESSION_COUNT] = 0.0
    h[LABEL_HI] = 0.0
    block = 1 + PER_VALUE * n_values
    for w in range(n_windows):
        at = FIXED + w * block
        h[at] = 0.0
        for v in range(n_values):
            a = at + 1 + PER_VALUE * v
            h[a + SUM_HI] = h[a + SUM_LO] = h[a + SQ_HI] = h[a + SQ_LO] = 0.0
            h[a + MIN] = np.inf
            h[a + MAX] = -np.inf
            h[a + MIN_AT] = h[a + MAX_AT] = -1.0
    session = FIXED + n_windows * block
    for v in range(session, h.shape[0]):  # session sums and label-risk counters
        h[v] = 0.0


@njit(cache=True)
def _make_room(
    h: np.ndarray, heap: np.ndarray, used: np.ndarray, n_windows: int, n_values: int, n_risk: int
) -> bool:
    """Ensure the slot's region can take one more event; False if the heap has no room.

    Drops the events before the earliest window start (and label-risk start) when the region
    is full; grows the region to twice its size when that frees less than half. Both steps
    leave the features unchanged, so repeating them after a False is harmless.
    """
    length = int(h[END] - h[BASE])
    cap = int(h[CAP])
    if length < cap:
        return True
    keep = h[END]
    block = 1 + PER_VALUE * n_values
    for w in range(n_windows):
        keep = min(keep, h[FIXED + w * block])
    risk_at = risk_column(n_windows, n_values)
    for r in range(n_risk):
        keep = min(keep, h[risk_at + PER_RISK * r + LABEL_LO])
    drop = int(keep - h[BASE])
    offset = int(h[OFFSET])
    if drop > 0:
        for r in range(length - drop):  # ascending: the rows move down
            heap[offset + r] = heap[offset + drop + r]
        length -= drop
        h[BASE] = keep
    if cap > 0 and 2 * length <= cap:
        return True
    new_cap = max(MIN_CAPACITY, 2 * cap)
    top = used[0]
    if top + new_cap > heap.shape[0]:
        used[1] = new_cap
        return False
    for r in range(length):
        heap[top + r] = heap[offset + r]
    h[OFFSET] = top
    h[CAP] = new_cap
    used[0] = top + new_cap
    return True


@njit(cache=True)
def _extreme(
    heap: np.ndarray, offset: int, first: int, end: int, column: int, sign: float
) -> tuple[float, int]:
    """The largest (sign 1) or smallest (sign -1) value of sequences [first, end) in a column,
    and the sequence of its first occurrence."""
    best, where = heap[offset + first, column], first
    for s in range(first + 1, end):
        if sign * (heap[offset + s, column] - best) > 0.0:
            best, where = heap[offset + s, column], s
    return best, where


@njit(cache=True)
def _features(
    h: np.ndarray,
    heap: np.ndarray,
    t: float,
    x: np.ndarray,
    out: np.ndarray,
    spans: np.ndarray,
    sizes: np.ndarray,
    flags: np.ndarray,
    params: np.ndarray,
    risk_spans: np.ndarray,
) -> None:
    """Write the features of an event at t from the slot's history into `out`, moving every
    window's start (and subtracting the events that leave it) on the way. `risk_spans` holds
    delay + window of each label-risk window (empty for a key without them)."""
    n_values = x.shape[0]
    seq = int(h[END])
    base = int(h[BASE])
    offset = int(h[OFFSET]) - base  # heap row of sequence s: offset + s
    need_sq = flags[F_STD] != 0
    block = 1 + PER_VALUE * n_values
    c = 0
    for w in range(spans.shape[0]):
        at = FIXED + w * block
        old = int(h[at])
        if sizes[w] > 0:
            st = max(seq - sizes[w], 0)
        else:
            st = old
            bound = t - spans[w]
            while st < seq and heap[offset + st, ROW_TIME] < bound:
                st += 1
        h[at] = st
        n = seq - st
        for v in range(n_values):
            a = at + 1 + PER_VALUE * v
            if n == 0:
                h[a + SUM_HI] = h[a + SUM_LO] = h[a + SQ_HI] = h[a + SQ_LO] = 0.0
                continue
            for s in range(old, st):
                leaving = heap[offset + s, ROW_VALUES + v]
                _dd_add(h, a + SUM_HI, -leaving, 0.0)
                if need_sq:
                    p, e = _nb_two_prod(leaving, leaving)
                    _dd_add(h, a + SQ_HI, -p, -e)
        if flags[F_COUNT]:
            out[c] = n
            c += 1
        for v in range(n_values):
            a = at + 1 + PER_VALUE * v
            if n == 0:
                for flag in range(F_SUM, F_RATIO):
                    if flags[flag]:
                        out[c] = 0.0
                        c += 1
                if flags[F_RATIO]:
                    out[c] = 1.0
                    c += 1
                continue
            s_hi = h[a + SUM_HI]
            s_lo = h[a + SUM_LO]
            total = s_hi + s_lo
            mean = total / n
            if flags[F_SUM]:
                out[c] = total
                c += 1
            if flags[F_MEAN]:
                out[c] = mean
                c += 1
            if flags[F_STD]:
                std = 0.0
                if n > 1:
                    q_hi = h[a + SQ_HI]
                    q_lo = h[a + SQ_LO]
                    nq = n * (q_hi + q_lo)
                    d = nq - total * total
                    if d > CANCELLATION * nq:
                        var = d / (n * n)
                    else:
                        var = _nb_variance(float(n), s_hi, s_lo, q_hi, q_lo)
                    std = np.sqrt(var) if var > 0.0 else 0.0
                out[c] = std
                c += 1
            column = ROW_VALUES + v
            if flags[F_MIN]:
                if h[a + MIN_AT] < st:  # the cached minimum left the window: rescan it
                    h[a + MIN], h[a + MIN_AT] = _extreme(heap, offset, st, seq, column, -1.0)
                out[c] = h[a + MIN]
                c += 1
            if flags[F_MAX]:
                if h[a + MAX_AT] < st:
                    h[a + MAX], h[a + MAX_AT] = _extreme(heap, offset, st, seq, column, 1.0)
                out[c] = h[a + MAX]
                c += 1
            if flags[F_RATIO]:
                out[c] = x[v] / mean if mean != 0.0 else 1.0
                c += 1
    if flags[F_SINCE_PREVIOUS]:
        out[c] = t - h[LAST_T] if seq else params[P_GAP_FILL]
        c += 1
    if flags[F_SESSION]:
        session = FIXED + spans.shape[0] * block
        if seq and t - h[LAST_T] > params[P_SESSION_GAP]:
            h[SESSION_START] = t
            h[SESSION_COUNT] = 0.0
            for v in range(2 * n_values):
                h[session + v] = 0.0
        out[c] = h[SESSION_COUNT]
        out[c + 1] = t - h[SESSION_START]
        c += 2
        for v in range(n_values):
            out[c] = h[session + 2 * v] + h[session + 2 * v + 1]
            c += 1
    if risk_spans.shape[0]:
        old_hi = int(h[LABEL_HI])  # labels of sequences old_hi..hi become known now
        hi = old_hi
        bound = t - params[P_RISK_DELAY]
        while hi < seq and heap[offset + hi, ROW_TIME] <= bound:
            hi += 1
        h[LABEL_HI] = hi
        risk_at = risk_column(spans.shape[0], n_values)
        for r in range(risk_spans.shape[0]):
            at = risk_at + PER_RISK * r
            lo = int(h[at + LABEL_LO])
            known = h[at + KNOWN]
            bad = h[at + BAD]
            for s in range(old_hi, hi):
                code = heap[offset + s, ROW_LABEL]
                if code >= 0.0:
                    known += 1.0
                    bad += code
            bound = t - risk_spans[r]
            while lo < hi and heap[offset + lo, ROW_TIME] <= bound:
                code = heap[offset + lo, ROW_LABEL]
                if code >= 0.0:
                    known -= 1.0
                    bad -= code
                lo += 1
            h[at + LABEL_LO] = lo
            h[at + KNOWN] = known
            h[at + BAD] = bad
            out[c] = bad / known if known else 0.0
            out[c + 1] = known
            c += 2


@njit(cache=True)
def _learn(
    h: np.ndarray,
    heap: np.ndarray,
    t: float,
    x: np.ndarray,
    label: int,
    flags: np.ndarray,
    n_windows: int,
) -> None:
    """Append the event to the slot's buffer and add it to every running sum and cache."""
    n_values = x.shape[0]
    seq = int(h[END])
    row = int(h[OFFSET]) + seq - int(h[BASE])
    heap[row, ROW_TIME] = t
    heap[row, ROW_LABEL] = label
    block = 1 + PER_VALUE * n_values
    for v in range(n_values):
        xv = x[v]
        heap[row, ROW_VALUES + v] = xv
        p, e = _nb_two_prod(xv, xv)
        for w in range(n_windows):
            a = FIXED + w * block + 1 + PER_VALUE * v
            _dd_add(h, a + SUM_HI, xv, 0.0)
            if flags[F_STD]:
                _dd_add(h, a + SQ_HI, p, e)
            # A new value that reaches a cached extreme is its window's new extreme.
            if xv <= h[a + MIN]:
                h[a + MIN] = xv
                h[a + MIN_AT] = seq
            if xv >= h[a + MAX]:
                h[a + MAX] = xv
                h[a + MAX_AT] = seq
        _dd_add(h, FIXED + n_windows * block + 2 * v, xv, 0.0)
    h[END] = seq + 1
    h[SESSION_COUNT] += 1.0
    h[LAST_T] = t


@njit(cache=True)
def advance(
    times: np.ndarray,
    slots: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    skip: np.ndarray,
    learn: np.ndarray,
    spans: np.ndarray,
    sizes: np.ndarray,
    flags: np.ndarray,
    params: np.ndarray,
    risk_spans: np.ndarray,
    key_risk: np.ndarray,
    key_at: np.ndarray,
    header: np.ndarray,
    heap: np.ndarray,
    watermark: np.ndarray,
    used: np.ndarray,
    out: np.ndarray,
    status: np.ndarray,
    late_at: np.ndarray,
    first: int,
) -> int:
    """Features of events first.. in order, each from its entities' history, then learned.

    `slots[i, k]` is event i's slot for entity key k; out[i, key_at[k]:key_at[k + 1]] gets
    key k's features; `key_risk[k]` says whether key k has the label-risk windows
    `risk_spans`. Skipped events (malformed, found by the caller) and late ones are left out
    and change nothing. An event with `learn[i]` False is only described: its features are
    computed on a copy of each slot's header (the heap is only read), so nothing changes.
    Returns len(times) when done, or the index of the event that found the heap full (nothing
    of it was learned yet): grow the heap and call again from there.
    """
    n_keys = slots.shape[1]
    n_values = values.shape[1]
    n_windows = spans.shape[0]
    ttl = params[P_TTL]
    no_risk = risk_spans[:0]
    scratch = np.empty(header.shape[1])
    for i in range(first, times.shape[0]):
        if skip[i]:
            status[i] = SKIPPED
            continue
        t = times[i]
        if t < watermark[0] - params[P_LATENESS]:
            status[i] = LATE
            late_at[i] = watermark[0]
            continue
        if not learn[i]:
            for k in range(n_keys):
                scratch[:] = header[slots[i, k]]
                if scratch[FRESH] != 0.0 or t - scratch[LAST_T] > ttl:
                    _reset(scratch, t, n_windows, n_values)
                te = max(t, scratch[LAST_T])
                row = out[i, key_at[k] : key_at[k + 1]]
                risk = risk_spans if key_risk[k] else no_risk
                _features(scratch, heap, te, values[i], row, spans, sizes, flags, params, risk)
            status[i] = ACCEPTED
            continue
        for k in range(n_keys):
            h = header[slots[i, k]]
            if h[FRESH] != 0.0 or t - h[LAST_T] > ttl:
                _reset(h, t, n_windows, n_values)
            n_risk = risk_spans.shape[0] if key_risk[k] else 0
            if not _make_room(h, heap, used, n_windows, n_values, n_risk):
                return i
        if t > watermark[0]:
            watermark[0] = t
        x = values[i]
        for k in range(n_keys):
            h = header[slots[i, k]]
            te = max(t, h[LAST_T])  # late, but allowed: keep the entity in order
            row = out[i, key_at[k] : key_at[k + 1]]
            risk = risk_spans if key_risk[k] else no_risk
            _features(h, heap, te, x, row, spans, sizes, flags, params, risk)
            _learn(h, heap, te, x, labels[i], flags, n_windows)
        status[i] = ACCEPTED
    return times.shape[0]


@njit(cache=True)
def compact(header: np.ndarray, keep: np.ndarray, heap: np.ndarray, new_heap: np.ndarray) -> int:
    """Copy the kept slots' buffers into `new_heap` back to back; drop the others' regions.

    Returns the rows now used. Slots not kept (free ones) lose their region (capacity 0).
    """
    top = 0
    for s in range(header.shape[0]):
        h = header[s]
        cap = int(h[CAP])
        if not keep[s] or cap == 0:
            h[OFFSET] = 0.0
            h[CAP] = 0.0
            continue
        length = 0 if h[FRESH] != 0.0 else int(h[END] - h[BASE])
        offset = int(h[OFFSET])
        for r in range(length):
            new_heap[top + r] = heap[offset + r]
        h[OFFSET] = top
        top += cap
    return top
