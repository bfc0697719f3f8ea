"""A seeded simulator of card transactions with customer and terminal ids and labelled fraud.

Entity-keyed behavioural features (a customer's recent spending, a terminal's recent fraud)
need a transaction log with ids, and public card data has none. This module simulates one the
way the handbook "Reproducible Machine Learning for Credit Card Fraud Detection - Practical
Handbook" (Le Borgne, Siblini, Lebichot, Bontempi; Université Libre de Bruxelles, 2022,
chapter 3.2) does, vectorised: 5,000 customers x 10,000 terminals x 183 days (1.75 M
transactions, the handbook's size) take seconds. Everything is drawn from one
`numpy.random.default_rng(seed)`, so the same arguments give the same frame.

What is simulated
-----------------
* Customers at uniform locations in a 100 x 100 square, each with a mean amount
  (uniform 5-100), an amount spread (half the mean) and a mean number of transactions a day
  (uniform 0-4). Terminals at uniform locations in the same square.
* A customer uses the terminals within `radius` (5) of their location, uniformly at random; a
  customer with none makes no transactions.
* Per customer and day a Poisson number of transactions, at a time of day drawn from a normal
  around noon (sd 20,000 s; draws outside the day are dropped, as in the handbook), with a
  normal amount around the customer's mean (a negative draw is replaced by a uniform one in
  [0, 2 x mean)), rounded to cents.

Fraud scenarios (`fraud_scenario`; later scenarios overwrite earlier ones)
-------------------------------------------------------------------------
* ``high_amount``: every transaction above 220 is fraud (the handbook's baseline pattern,
  which a rule finds).
* ``compromised_terminal``: each day some terminals are compromised (2 a day per 10,000
  terminals); all their transactions in the next 28 days are fraud. Only a terminal's
  recent fraud history, known once labels arrive, gives it away.
* ``compromised_customer``: each day some customers' credentials leak (3 a day per 5,000
  customers); over the next 14 days a third of their transactions have their amount
  multiplied by 5 and are fraud. The customer's own spending history gives it away.

The daily numbers are scaled to the population (stochastically rounded, so the handbook's
sizes give exactly 2 and 3 a day) so that smaller logs keep the handbook's fraud mix (about
0.8 % of transactions).

Columns (one row per transaction, sorted by time; ties keep customer order)
--------------------------------------------------------------------------
================ ===================== ====================================================
column           dtype                 meaning
================ ===================== ====================================================
transaction_id   int64                 0, 1, ... in time order
timestamp        datetime64[ns, UTC]   transaction time, whole seconds
seconds          int64                 seconds since `start` (midnight UTC)
day              int64                 days since `start`
customer_id      int64                 0 .. customers - 1
terminal_id      int64                 0 .. terminals - 1
amount           float64               amount, in cents precision
is_fraud         int64                 1 for fraudulent transactions
fraud_scenario   str                   one of `FRAUD_SCENARIOS`, or "none"
================ ===================== ====================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["FRAUD_SCENARIOS", "simulate_transactions"]

FRAUD_SCENARIOS = ("high_amount", "compromised_terminal", "compromised_customer")
HIGH_AMOUNT = 220.0
TERMINAL_DAYS = 28
CUSTOMER_DAYS = 14
TERMINALS_PER_DAY = 2 / 10_000
"""Share of terminals compromised each day (the handbook: 2 of 10,000)."""
CUSTOMERS_PER_DAY = 3 / 5_000
"""Share of customers compromised each day (the handbook: 3 of 5,000)."""
SECONDS_PER_DAY = 86_400
_CHUNK = 512
"""Customers per block of the customer x terminal distance computation."""


def simulate_transactions(
    customers: int,
    terminals: int,
    days: int,
    seed: int,
    start: str = "2018-04-01",
    radius: float = 5.0,
) -> pd.DataFrame:
    """A transaction log with labelled fraud of the three handbook scenarios; see the module."""
    for name, value in (("customers", customers), ("terminals", terminals), ("days", days)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    origin = _origin(start)
    rng = np.random.default_rng(seed)
    where = rng.uniform(0.0, 100.0, (customers, 2))
    mean_amount = rng.uniform(5.0, 100.0, customers)
    std_amount = mean_amount / 2.0
    per_day = rng.uniform(0.0, 4.0, customers)
    terminal_where = rng.uniform(0.0, 100.0, (terminals, 2))
    offsets, reachable = _terminals_within(where, terminal_where, radius)
    n_reachable = np.diff(offsets)

    counts = rng.poisson(per_day[:, None], (customers, days)) * (n_reachable > 0)[:, None]
    flat = counts.ravel()
    customer = np.repeat(np.repeat(np.arange(customers), days), flat)
    day = np.repeat(np.tile(np.arange(days), customers), flat)
    time_of_day = rng.normal(SECONDS_PER_DAY / 2, 20_000.0, len(customer)).astype(np.int64)
    amount = rng.normal(mean_amount[customer], std_amount[customer])
    fallback = rng.uniform(0.0, 2.0 * mean_amount[customer])
    amount = np.round(np.where(amount < 0.0, fallback, amount), 2)
    pick = (rng.random(len(customer)) * n_reachable[customer]).astype(np.int64)
    terminal = reachable[offsets[customer] + pick]
    inside = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY)
    seconds = day * SECONDS_PER_DAY + time_of_day
    order = np.flatnonzero(inside)[np.argsort(seconds[inside], kind="stable")]
    customer, day, terminal = customer[order], day[order], terminal[order]
    amount, seconds = amount[order], seconds[order]

    scenario = np.zeros(len(seconds), np.int8)  # 0 = none, else 1 + index in FRAUD_SCENARIOS
    scenario[amount > HIGH_AMOUNT] = 1
    by_terminal = _Groups(terminal, terminals)
    for first_day, chosen in _compromised(rng, terminals, TERMINALS_PER_DAY, days):
        for rows in by_terminal.rows(chosen):
            hit = rows[(day[rows] >= first_day) & (day[rows] < first_day + TERMINAL_DAYS)]
            scenario[hit] = 2
    by_customer = _Groups(customer, customers)
    for first_day, chosen in _compromised(rng, customers, CUSTOMERS_PER_DAY, days):
        rows = np.concatenate([np.empty(0, np.int64), *by_customer.rows(chosen)])
        rows = np.sort(rows[(day[rows] >= first_day) & (day[rows] < first_day + CUSTOMER_DAYS)])
        hit = rng.choice(rows, size=len(rows) // 3, replace=False)
        amount[hit] = np.round(amount[hit] * 5.0, 2)
        scenario[hit] = 3

    kinds = np.array(["none", *FRAUD_SCENARIOS], dtype=object)
    return pd.DataFrame(
        {
            "transaction_id": np.arange(len(seconds), dtype=np.int64),
            "timestamp": origin + pd.to_timedelta(seconds, unit="s"),
            "seconds": seconds.astype(np.int64),
            "day": day.astype(np.int64),
            "customer_id": customer.astype(np.int64),
            "terminal_id": terminal.astype(np.int64),
            "amount": amount,
            "is_fraud": (scenario > 0).astype(np.int64),
            "fraud_scenario": kinds[scenario],
        }
    )


def _origin(start: str) -> pd.Timestamp:
    try:
        origin = pd.Timestamp(start)
    except (ValueError, TypeError):
        raise ValueError(f"start {start!r} is not a date (use YYYY-MM-DD)") from None
    if origin.tzinfo is None:
        origin = origin.tz_localize("UTC")
    return origin.normalize()


def _terminals_within(
    customers: np.ndarray, terminals: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per customer the terminals closer than `radius`, as CSR arrays (offsets, indices), in
    terminal order."""
    found: list[np.ndarray] = []
    counts = np.zeros(len(customers), np.int64)
    for lo in range(0, len(customers), _CHUNK):
        block = customers[lo : lo + _CHUNK]
        squared = ((block[:, None, :] - terminals[None, :, :]) ** 2).sum(axis=2)
        rows, columns = np.nonzero(squared < radius * radius)
        counts[lo : lo + len(block)] = np.bincount(rows, minlength=len(block))
        found.append(columns.astype(np.int64))
    return np.concatenate([[0], np.cumsum(counts)]), np.concatenate(found)


def _compromised(
    rng: np.random.Generator, population: int, share: float, days: int
) -> list[tuple[int, np.ndarray]]:
    """Per day, the members compromised that day: share x population of them, stochastically
    rounded (never more than the population)."""
    expected = share * population
    chosen = []
    for first_day in range(days):
        k = min(population, int(expected) + int(rng.random() < expected - int(expected)))
        chosen.append((first_day, rng.choice(population, size=k, replace=False)))
    return chosen


class _Groups:
    """Row positions of each member (terminal or customer), in row order."""

    def __init__(self, member: np.ndarray, size: int) -> None:
        self.order = np.argsort(member, kind="stable")
        self.bounds = np.searchsorted(member[self.order], np.arange(size + 1))

    def rows(self, members: np.ndarray) -> list[np.ndarray]:
        return [self.order[self.bounds[m] : self.bounds[m + 1]] for m in members.tolist()]
