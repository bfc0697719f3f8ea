"""Distinct counts over time windows, in both engines: "distinct countries of this account in
the last hour", "distinct clock hours this device was active in the last day".

A distinct count is the number of different values (of a categorical column, or of the clock
period `floor(t / period)` an event falls in) among an event and its entity's previous events
with time in [t - w, t]. Account sharing shows up as two countries within an hour, a bot as a
device active in nearly every hour of the day; sums and counts over windows cannot say either.

Batch: one pass over the entity-grouped rows with a count per value code and a sliding start,
O(n) per window. Live: per entity and distinct spec a small table of (value code, last time
seen), pruned of values no window can see any more, so its size is the number of distinct
values within the longest window; an event costs O(that size). The tables live in one float64
heap of regions (like the main kernel's), relocated to twice the size when full.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# columns of a (slot, spec) header row
D_LAST, D_LEN, D_OFFSET, D_CAP = range(4)
D_WIDTH = 4
D_MIN_CAPACITY = 4
# columns of a heap row: the value's code and the last time it was seen
D_CODE, D_SEEN = range(2)


@njit(cache=True)
def distinct_in_windows(code: np.ndarray, starts: np.ndarray, n_codes: int) -> np.ndarray:
    """Per row k (entity-grouped order), the distinct codes among rows [starts[k], k].

    `starts` never decreases (within an entity times do not; a new entity starts after every
    earlier row), so a single sliding start with a count per code suffices.
    """
    n = code.shape[0]
    counts = np.zeros(n_codes, np.int64)
    out = np.empty(n)
    left = 0
    distinct = 0
    for k in range(n):
        while left < starts[k]:
            c = code[left]
            counts[c] -= 1
            if counts[c] == 0:
                distinct -= 1
            left += 1
        c = code[k]
        if counts[c] == 0:
            distinct += 1
        counts[c] += 1
        out[k] = distinct
    return out


@njit(cache=True)
def _room(h: np.ndarray, heap: np.ndarray, used: np.ndarray, horizon: float, te: float) -> bool:
    """Ensure the table can take one more value; False if the heap has no room (nothing
    observable changed, so calling again after the heap grew is harmless)."""
    length = int(h[D_LEN])
    cap = int(h[D_CAP])
    if length < cap:
        return True
    offset = int(h[D_OFFSET])
    bound = te - horizon
    kept = 0
    for r in range(length):  # drop values no window can see at te or later
        if heap[offset + r, D_SEEN] >= bound:
            heap[offset + kept, D_CODE] = heap[offset + r, D_CODE]
            heap[offset + kept, D_SEEN] = heap[offset + r, D_SEEN]
            kept += 1
    h[D_LEN] = kept
    if cap > 0 and 2 * kept <= cap:
        return True
    new_cap = max(D_MIN_CAPACITY, 2 * cap)
    top = used[0]
    if top + new_cap > heap.shape[0]:
        used[1] = new_cap
        return False
    for r in range(kept):
        heap[top + r, D_CODE] = heap[offset + r, D_CODE]
        heap[top + r, D_SEEN] = heap[offset + r, D_SEEN]
    h[D_OFFSET] = top
    h[D_CAP] = new_cap
    used[0] = top + new_cap
    return True


@njit(cache=True)
def _code_of(
    codes: np.ndarray, i: int, s: int, column_at: np.ndarray, periods: np.ndarray, te: float
) -> float:
    if column_at[s] >= 0:
        return float(codes[i, column_at[s]])
    return np.floor(te / periods[s])


@njit(cache=True)
def advance_distinct(
    times: np.ndarray,
    slots: np.ndarray,
    codes: np.ndarray,
    accepted: np.ndarray,
    learn: np.ndarray,
    column_at: np.ndarray,
    periods: np.ndarray,
    windows: np.ndarray,
    n_windows: np.ndarray,
    horizons: np.ndarray,
    out_at: np.ndarray,
    header: np.ndarray,
    heap: np.ndarray,
    used: np.ndarray,
    out: np.ndarray,
    first: int,
) -> int:
    """Distinct counts of events first.. (accepted ones), each from its entities' tables, then
    learned where `learn` says so.

    Spec s reads code column `column_at[s]` of `codes`, or (-1) the clock period of length
    `periods[s]`; its windows are `windows[s, :n_windows[s]]`, `horizons[s]` the longest. Key
    k's count for spec s, window w goes to out[i, out_at[k, s] + w] (-1: k has no spec s).
    `header[slot, s]` is the table of a slot for spec s. Returns len(times) when done, or the
    index of the event that found the heap full (nothing of it was learned yet).
    """
    n_keys = slots.shape[1]
    n_specs = column_at.shape[0]
    for i in range(first, times.shape[0]):
        if not accepted[i]:
            continue
        t = times[i]
        if learn[i]:
            for k in range(n_keys):
                for s in range(n_specs):
                    if out_at[k, s] >= 0:
                        h = header[slots[i, k], s]
                        if not _room(h, heap, used, horizons[s], max(t, h[D_LAST])):
                            return i
        for k in range(n_keys):
            for s in range(n_specs):
                if out_at[k, s] < 0:
                    continue
                h = header[slots[i, k], s]
                te = max(t, h[D_LAST])
                c = _code_of(codes, i, s, column_at, periods, te)
                offset = int(h[D_OFFSET])
                length = int(h[D_LEN])
                found = -1
                for r in range(length):
                    if heap[offset + r, D_CODE] == c:
                        found = r
                        break
                for w in range(n_windows[s]):
                    bound = te - windows[s, w]
                    count = 0
                    for r in range(length):
                        if heap[offset + r, D_SEEN] >= bound:
                            count += 1
                    if found < 0 or heap[offset + found, D_SEEN] < bound:
                        count += 1  # the event's own value is new to this window
                    out[i, out_at[k, s] + w] = count
                if learn[i]:
                    if found < 0:
                        found = length
                        heap[offset + found, D_CODE] = c
                        h[D_LEN] = length + 1
                    heap[offset + found, D_SEEN] = te
                    h[D_LAST] = te
    return times.shape[0]


@njit(cache=True)
def compact_distinct(
    header: np.ndarray, keep: np.ndarray, heap: np.ndarray, new_heap: np.ndarray
) -> int:
    """Copy the kept slots' tables into `new_heap` back to back; drop the others' regions.
    Returns the rows now used."""
    top = 0
    for slot in range(header.shape[0]):
        for s in range(header.shape[1]):
            h = header[slot, s]
            cap = int(h[D_CAP])
            if not keep[slot] or cap == 0:
                h[D_OFFSET] = 0.0
                h[D_CAP] = 0.0
                h[D_LEN] = 0.0
                continue
            offset = int(h[D_OFFSET])
            for r in range(int(h[D_LEN])):
                new_heap[top + r] = heap[offset + r]
            h[D_OFFSET] = top
            top += cap
    return top
