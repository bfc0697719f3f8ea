"""A seeded simulator of a video-streaming service's event log, with labelled anomalies.

The pipeline needs realistic, labelled, reproducible event data at any size; this module makes
it. Everything is drawn from one `numpy.random.default_rng(seed)`, so the same arguments give
the same frame, and the work is vectorised over sessions so millions of rows take seconds.

What is simulated
-----------------
* Accounts, each with habits: a home country (from `COUNTRIES`, which carries coordinates and a
  UTC offset), a subscription plan (basic / standard / premium), 1-3 devices (tv, mobile, web,
  tablet; the first is the primary one), a preferred evening viewing hour (local time), a share
  of evening viewing, a typical number of sessions a day and a typical session length, a home
  network (one /24 prefix), and a monthly billing day. A few accounts change plan, add a new
  device, or travel abroad for some days (legitimate country changes, never concurrent).
* Sessions: Poisson counts per account and day (weekends about 35 % heavier), start hours from
  a mixture of "around the preferred evening hour" and a daily profile (low at 2-6 am),
  lognormal (heavy-tailed) lengths that depend on the device (tv longest, mobile shortest).
  A session is `play_start`, a `heartbeat` every ~5 minutes (a little network jitter) and a
  `play_stop`; some sessions are preceded by a `login_success` (new token), occasionally after
  one or a few `login_failed` typos, and some by a rental or gift-card `payment`.
* Payments: the monthly charge on the billing day (plan price times a country price factor,
  from the billing server; 10 % of accounts pay ten months' price once a year instead), a
  prorated charge when a plan changes (0 for a downgrade), rentals (3.99-19.99 times the price
  factor) and now and then a gift card (25, 50 or 100).
* Rows outside `[start, start + days)` are dropped, so sessions can be cut at the edges.

Columns (one row per event, sorted by `timestamp`, stable; ties are allowed)
-------------------------------------------------------------------------
=============== ======================== =====================================================
column          dtype                    meaning
=============== ======================== =====================================================
timestamp       datetime64[ns, UTC]      event time, millisecond resolution (ISO-8601 in CSV)
account_id      str                      "A000042"
device_id       str                      10 hex digits; "server" for monthly charges
device_type     str                      tv, mobile, web, tablet; "server" for monthly charges
country         str                      ISO 3166-1 alpha-2 code where the event came from
ip_prefix       str                      /24 prefix "a.b.c"; "10.0.0" for the billing server
event_type      str                      see `EVENT_TYPES`
session_id      int64                    playback session (numbered in time order), -1 if none
plan            str                      plan at event time: basic, standard, premium
watch_seconds   float64                  playback seconds since the previous playback event of
                                         the session (heartbeat, play_stop); 0 otherwise
bytes_mb        float64                  megabytes streamed for that playback segment; a few
                                         hundredths for logins; 0 for payments
amount          float64                  payment amount (USD equivalent); 0 for non-payments
failed_login    int64                    1 for `login_failed`, else 0
is_anomaly      int64                    1 for rows of an injected anomaly, else 0
anomaly_kind    str                      one of `ANOMALY_KINDS`, or "none" for normal rows
=============== ======================== =====================================================

Anomaly kinds
-------------
Episodes per 1,000 account-days: sharing 3, stuffing 0.6, bot 0.06, payment fraud 1.5 (Poisson
counts); about 0.8-1 % of rows at 5,000 accounts and 30 days. From 2,000 account-days up every
kind is injected at least once, so simulations near that size have 1-3 % anomalous rows, mostly
from the one bot.

* ``account_sharing``: a partner abroad (a country at least `DISTANT_KM` from home) streams on
  the account from their own device and network, 1-4 times, each time starting within 20
  minutes of one of the owner's sessions, so the account plays concurrently from two distant
  countries. Labelled: the partner's rows (login and playback).
* ``credential_stuffing``: a burst of 15-80 `login_failed` within 3-20 minutes, each from a
  different IP prefix, device and (mostly) country; in 40 % of bursts a `login_success` follows
  and half of those play briefly. Labelled: all rows of the burst.
* ``bot_playback``: one new web device, on one network in the home country, plays round the
  clock for 26-50 hours: back-to-back sessions of one fixed length separated by one fixed
  gap, heartbeats exactly on time, through the night. Labelled: the bot's rows.
* ``payment_fraud``: 3-9 payments within 5-45 minutes, first 1-3 small card tests (0.50-2.00),
  then large ones (gift cards and annual plans as normal accounts buy them, or odd sums of
  25-250), with the plan flipping between rows; half from a new device abroad, half from the
  primary device at home. Labelled: those payments.

A single row rarely gives an anomaly away (failed logins, foreign countries, new devices, night
playback, odd amounts and plan changes all occur in normal rows too); the behaviour over an
account's recent window does.
"""

from __future__ import annotations

import gzip
import operator
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

# --- reference tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Country:
    """Where viewers live: coordinates for distances, offset for local time, market data."""

    lat: float
    lon: float
    utc_offset: float
    weight: float
    price_factor: float
    first_octets: tuple[int, int]


COUNTRIES: dict[str, Country] = {
    "US": Country(39.8, -98.6, -6.0, 0.22, 1.00, (23, 73)),
    "CA": Country(56.1, -106.3, -5.0, 0.05, 0.95, (24, 70)),
    "MX": Country(23.6, -102.5, -6.0, 0.05, 0.55, (187, 189)),
    "BR": Country(-14.2, -51.9, -3.0, 0.08, 0.50, (177, 179)),
    "AR": Country(-38.4, -63.6, -3.0, 0.03, 0.40, (181, 186)),
    "GB": Country(55.4, -3.4, 0.0, 0.07, 0.95, (81, 86)),
    "DE": Country(51.2, 10.5, 1.0, 0.07, 0.95, (46, 79)),
    "FR": Country(46.2, 2.2, 1.0, 0.06, 0.95, (78, 82)),
    "ES": Country(40.5, -3.7, 1.0, 0.04, 0.85, (83, 88)),
    "IT": Country(41.9, 12.6, 1.0, 0.04, 0.85, (93, 95)),
    "NL": Country(52.1, 5.3, 1.0, 0.02, 0.95, (145, 212)),
    "SE": Country(60.1, 18.6, 1.0, 0.02, 0.95, (155, 213)),
    "PL": Country(51.9, 19.1, 1.0, 0.03, 0.65, (31, 37)),
    "TR": Country(39.0, 35.2, 3.0, 0.03, 0.35, (85, 176)),
    "IN": Country(20.6, 79.0, 5.5, 0.07, 0.30, (49, 117)),
    "JP": Country(36.2, 138.3, 9.0, 0.05, 0.85, (126, 133)),
    "KR": Country(35.9, 127.8, 9.0, 0.03, 0.80, (121, 175)),
    "AU": Country(-25.3, 133.8, 10.0, 0.03, 0.95, (1, 101)),
    "ZA": Country(-30.6, 22.9, 2.0, 0.02, 0.55, (41, 105)),
    "NG": Country(9.1, 8.7, 1.0, 0.02, 0.35, (102, 197)),
    "EG": Country(26.8, 30.8, 2.0, 0.02, 0.35, (156, 196)),
}
"""Countries by ISO-2 code (centroid lat/lon in degrees, UTC offset in hours)."""

DISTANT_KM = 3000.0
"""Two countries at least this far apart cannot both be home to one viewer within an hour."""

EVENT_TYPES = ("login_success", "login_failed", "play_start", "heartbeat", "play_stop", "payment")
DEVICE_TYPES = ("tv", "mobile", "web", "tablet")
PLANS = ("basic", "standard", "premium")
NORMAL_KIND = "none"
ANOMALY_KINDS = ("account_sharing", "credential_stuffing", "bot_playback", "payment_fraud")
COLUMNS = (
    "timestamp",
    "account_id",
    "device_id",
    "device_type",
    "country",
    "ip_prefix",
    "event_type",
    "session_id",
    "plan",
    "watch_seconds",
    "bytes_mb",
    "amount",
    "failed_login",
    "is_anomaly",
    "anomaly_kind",
)

_LOGIN_OK, _LOGIN_FAIL, _PLAY_START, _HEARTBEAT, _PLAY_STOP, _PAYMENT = range(6)
_TV, _MOBILE, _WEB, _TABLET = range(4)
_SERVER_DEVICE = -1
_SERVER_IP = 10 << 16  # 10.0.0
_KIND_CODE = {kind: code for code, kind in enumerate((NORMAL_KIND, *ANOMALY_KINDS))}

_DAY = 86_400.0
_HEARTBEAT_S = 300.0
_PLAN_PRICE = np.array([6.99, 12.99, 19.99])
_PLAN_MBPS = np.array([1.5, 5.0, 15.0])
_DEVICE_MBPS = np.array([16.0, 3.0, 8.0, 5.0])
_DEVICE_LENGTH = np.array([1.5, 0.6, 1.0, 0.9])
_LOGIN_PROB = np.array([0.05, 0.3, 0.5, 0.2])
_RENTAL_PRICES = np.array([3.99, 4.99, 5.99, 14.99, 19.99])
_GIFT_CARDS = np.array([25.0, 50.0, 100.0])
_ANNUAL_MONTHS = 10.0
# Relative weight of each local hour for sessions outside the evening habit.
_HOUR_PROFILE = np.array(
    [3, 1.5, 0.7, 0.4, 0.3, 0.4, 1, 2, 2.5, 2.5, 3, 3.5, 4, 4, 3.5, 3.5, 4, 5, 6, 7, 7, 6, 5, 4],
    dtype=float,
)
_HOUR_PROFILE /= _HOUR_PROFILE.sum()
# Episodes per 1,000 account-days.
_EPISODE_RATE = {
    "account_sharing": 3.0,
    "credential_stuffing": 0.6,
    "bot_playback": 0.06,
    "payment_fraud": 1.5,
}
_MIN_EPISODE_ACCOUNT_DAYS = 2000

_CODES = tuple(COUNTRIES)
_LAT = np.radians([c.lat for c in COUNTRIES.values()])
_LON = np.radians([c.lon for c in COUNTRIES.values()])
_OFFSET_S = np.array([c.utc_offset for c in COUNTRIES.values()]) * 3600.0
_COUNTRY_WEIGHT = np.array([c.weight for c in COUNTRIES.values()])
_COUNTRY_WEIGHT /= _COUNTRY_WEIGHT.sum()
_PRICE_FACTOR = np.array([c.price_factor for c in COUNTRIES.values()])
_OCTETS = np.array([c.first_octets for c in COUNTRIES.values()])


def _distance_matrix() -> np.ndarray:
    dlat = _LAT[:, None] - _LAT[None, :]
    dlon = _LON[:, None] - _LON[None, :]
    h = (
        np.sin(dlat / 2) ** 2
        + np.cos(_LAT[:, None]) * np.cos(_LAT[None, :]) * np.sin(dlon / 2) ** 2
    )
    return 2 * 6371.0 * np.arcsin(np.sqrt(h))


_DISTANCE_KM = _distance_matrix()


def country_distance_km(a: str, b: str) -> float:
    """Great-circle distance between two countries' centroids, to judge "impossible travel"."""
    return float(_DISTANCE_KM[_CODES.index(a), _CODES.index(b)])


# --- public API ---------------------------------------------------------------------------------


def simulate_events(accounts: int, days: int, seed: int, start: str = "2026-01-05") -> pd.DataFrame:
    """Simulate `days` days of `accounts` accounts from the date `start`; see the module doc.

    Deterministic: the same arguments give an identical frame. Raises `ValueError` for
    accounts or days below 1, a negative seed, or a start that is not a date.
    """
    accounts = _count("accounts", accounts)
    days = _count("days", days)
    seed = _seed(seed)
    origin = _origin(start)
    rng = np.random.default_rng(seed)
    sim = _Simulation(rng, accounts, days, origin)
    sim.normal_activity()
    sim.anomalies()
    return sim.frame()


def write_events(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write Parquet (`.parquet`/`.pq`) or CSV (`.csv`, `.csv.gz`) atomically and reproducibly.

    The file appears complete or not at all (temporary file in the same folder, then
    `os.replace`); gzip output carries no name or time stamp, so equal frames give equal bytes.
    """
    path = Path(path)
    name = path.name.lower()
    is_parquet = name.endswith((".parquet", ".pq"))
    if not is_parquet and not name.endswith((".csv", ".csv.gz")):
        raise ValueError(f"{path}: unsupported file type; use .parquet, .pq, .csv or .csv.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name rather than mkstemp, so the file gets the usual permissions (not 0600).
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if is_parquet:
            frame.to_parquet(temp, index=False)
        else:
            _write_csv(frame, temp, compress=name.endswith(".gz"))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


# --- argument checks ----------------------------------------------------------------------------


def _count(name: str, value: object) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return number


def _seed(value: object) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}") from None
    if isinstance(value, bool) or number < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return number


def _origin(start: str) -> pd.Timestamp:
    try:
        origin = pd.Timestamp(start)
    except (ValueError, TypeError):
        raise ValueError(f"start must be a date such as '2026-01-05', got {start!r}") from None
    if pd.isna(origin):
        raise ValueError(f"start must be a date such as '2026-01-05', got {start!r}")
    origin = origin.tz_localize("UTC") if origin.tzinfo is None else origin.tz_convert("UTC")
    if origin != origin.normalize():
        raise ValueError(f"start must be a date (midnight UTC), got {start!r}")
    return origin


# --- the simulation -----------------------------------------------------------------------------


@dataclass
class _Rows:
    """Columns of events collected in parts, joined once at the end."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, t: np.ndarray, **columns: np.ndarray | float | int) -> None:
        n = len(t)
        defaults = {"session": -1, "watch": 0.0, "bytes": 0.0, "amount": 0.0, "kind": 0}
        part = {"t": np.asarray(t, dtype=float)}
        for key in ("account", "device", "country", "ip", "event", "plan", *defaults):
            value = columns.pop(key, defaults.get(key))
            if value is None:
                raise KeyError(f"column {key} missing")
            part[key] = np.broadcast_to(value, (n,))
        if columns:
            raise KeyError(f"unknown columns {sorted(columns)}")
        self.parts.append(part)

    def joined(self) -> dict[str, np.ndarray]:
        return {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}


class _Simulation:
    """Holds the accounts, devices and collected rows of one simulation run."""

    def __init__(self, rng: np.random.Generator, accounts: int, days: int, origin: pd.Timestamp):
        self.rng = rng
        self.n = accounts
        self.days = days
        self.origin = origin
        self.horizon = days * _DAY
        self.rows = _Rows()
        self.device_type = np.empty(0, dtype=np.int64)
        self.n_sessions = 0
        self._make_accounts()

    # -- helpers --

    def new_devices(self, types: np.ndarray) -> np.ndarray:
        """Register devices of the given types; return their indices."""
        first = len(self.device_type)
        self.device_type = np.concatenate([self.device_type, np.asarray(types, dtype=np.int64)])
        return np.arange(first, len(self.device_type))

    def random_ips(self, countries: np.ndarray, mobile: np.ndarray | bool = False) -> np.ndarray:
        """/24 prefixes (as integers) in the given countries; mobile ones in carrier blocks."""
        countries = np.asarray(countries)
        rng = self.rng
        n = len(countries)
        first = _OCTETS[countries, rng.integers(0, 2, n)]
        carrier = (countries * 53 + rng.integers(0, 4, n)) % 256
        second = np.where(mobile, carrier, rng.integers(0, 256, n))
        return (first << 16) | (second << 8) | rng.integers(0, 256, n)

    def plan_at(self, account: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.where(
            t >= self.plan_change_t[account], self.new_plan[account], self.plan[account]
        )

    def distant_countries(self, home: np.ndarray) -> np.ndarray:
        """A country at least `DISTANT_KM` from each home, weighted by market size."""
        out = np.empty(len(home), dtype=np.int64)
        for i, h in enumerate(home):
            options = np.flatnonzero(_DISTANCE_KM[h] >= DISTANT_KM)
            weights = _COUNTRY_WEIGHT[options] / _COUNTRY_WEIGHT[options].sum()
            out[i] = self.rng.choice(options, p=weights)
        return out

    def sessions(
        self,
        t: np.ndarray,
        duration: np.ndarray,
        jitter_s: float,
        *,
        account: np.ndarray,
        device: np.ndarray,
        country: np.ndarray,
        ip: np.ndarray,
        kind: int = 0,
    ) -> np.ndarray:
        """Expand sessions into play_start, heartbeats and play_stop; return session keys."""
        rng = self.rng
        n = len(t)
        keys = np.arange(self.n_sessions, self.n_sessions + n)
        self.n_sessions += n
        beats = np.maximum((duration - 5.0) // _HEARTBEAT_S, 0).astype(np.int64)
        per_session = beats + 2
        idx = np.repeat(np.arange(n), per_session)
        first = np.cumsum(per_session) - per_session
        pos = np.arange(len(idx)) - first[idx]
        last = pos == per_session[idx] - 1
        jitter = np.clip(rng.normal(0.0, jitter_s, len(idx)), -4.0, 4.0) if jitter_s else 0.0
        offset = pos * _HEARTBEAT_S + jitter
        offset[pos == 0] = 0.0
        offset[last] = duration[idx[last]]
        watch = np.diff(offset, prepend=0.0)
        watch[pos == 0] = 0.0
        event = np.full(len(idx), _HEARTBEAT)
        event[pos == 0] = _PLAY_START
        event[last] = _PLAY_STOP
        times = t[idx] + offset
        acc = account[idx]
        plan = self.plan_at(acc, times)
        dev_type = self.device_type[device[idx]]
        mbps = np.minimum(_PLAN_MBPS[plan], _DEVICE_MBPS[dev_type])
        mbps = mbps * rng.lognormal(0.0, 0.25, len(idx))
        self.rows.add(
            times,
            account=acc,
            device=device[idx],
            country=country[idx],
            ip=ip[idx],
            event=event,
            plan=plan,
            session=keys[idx],
            watch=np.round(watch, 3),
            bytes=np.round(watch * mbps / 8.0, 3),
            kind=kind,
        )
        return keys

    def login_bytes(self, n: int) -> np.ndarray:
        return np.round(0.02 * self.rng.lognormal(0.0, 0.3, n), 3)

    # -- accounts --

    def _make_accounts(self) -> None:
        rng, n = self.rng, self.n
        self.home = rng.choice(len(_CODES), size=n, p=_COUNTRY_WEIGHT)
        self.plan = rng.choice(3, size=n, p=[0.3, 0.45, 0.25])
        self.pref_hour = np.clip(rng.normal(20.5, 1.2, n), 17.0, 23.5)
        self.evening_share = rng.beta(6.0, 2.0, n)
        self.rate = 0.85 * rng.lognormal(-0.18, 0.6, n)
        self.median_len = 35.0 * 60.0 * rng.lognormal(0.0, 0.4, n)
        self.billing_day = rng.integers(1, 29, n)
        # Annual subscribers (10 %) pay ten months' price once a year, in this month (0: monthly).
        self.annual_month = np.where(rng.random(n) < 0.1, rng.integers(1, 13, n), 0)
        self.home_ip = self.random_ips(self.home)

        n_dev = rng.choice([1, 2, 3], size=n, p=[0.35, 0.4, 0.25])
        self.device_slots = np.full((n, 4), -1, dtype=np.int64)
        primary = rng.choice(4, size=n, p=[0.45, 0.25, 0.15, 0.15])
        self.device_slots[:, 0] = self.new_devices(primary)
        for slot in (1, 2):
            owners = np.flatnonzero(n_dev > slot)
            types = rng.choice(4, size=len(owners), p=[0.2, 0.45, 0.2, 0.15])
            self.device_slots[owners, slot] = self.new_devices(types)
        # Cumulative slot weights: primary 65 % of two devices, 50/30/20 of three.
        self.slot_cut = np.select(
            [n_dev[:, None] == 1, n_dev[:, None] == 2],
            [np.array([[1.0, 1.0]]), np.array([[0.65, 1.0]])],
            np.array([[0.5, 0.8]]),
        )

        # A new device (phone upgrade) for some accounts, used half the time after it appears.
        span = self.horizon
        gets_new = rng.random(n) < 1 - np.exp(-0.02 * self.days / 30)
        owners = np.flatnonzero(gets_new)
        self.device_slots[owners, 3] = self.new_devices(
            rng.choice(4, size=len(owners), p=[0.15, 0.55, 0.15, 0.15])
        )
        self.new_device_t = np.where(gets_new, rng.uniform(0, span, n), np.inf)

        # Plan changes: a prorated payment, then the new plan.
        changes = rng.random(n) < 1 - np.exp(-0.03 * self.days / 30)
        self.plan_change_t = np.where(changes, rng.uniform(0, span, n), np.inf)
        self.new_plan = np.where(changes, (self.plan + rng.integers(1, 3, n)) % 3, self.plan)

        # Trips abroad: all sessions come from the destination, the tv stays home.
        travels = rng.random(n) < 1 - np.exp(-0.04 * self.days / 30)
        leave = rng.uniform(-3 * _DAY, span, n)
        self.trip_start = np.where(travels, leave, np.inf)
        self.trip_end = np.where(travels, leave + rng.integers(2, 8, n) * _DAY, -np.inf)
        shift = rng.integers(1, len(_CODES), n)
        self.trip_country = (self.home + shift) % len(_CODES)

    # -- normal behaviour --

    def normal_activity(self) -> None:
        rng, n, days = self.rng, self.n, self.days
        weekday = (self.origin.weekday() + np.arange(days)) % 7
        weekend = weekday >= 5
        counts = rng.poisson(self.rate[:, None] * np.where(weekend, 1.35, 1.0)[None, :])
        cell = np.repeat(np.arange(n * days), counts.ravel())
        acc, day = cell // days, cell % days
        m = len(acc)

        on_weekend = weekend[day]
        evening = rng.random(m) < self.evening_share[acc] * np.where(on_weekend, 0.75, 1.0)
        habit = self.pref_hour[acc] + rng.normal(0.0, 1.3, m)
        other = rng.choice(24, size=m, p=_HOUR_PROFILE) + rng.random(m)
        hour = np.where(evening, habit, other)
        t = day * _DAY + hour * 3600.0 - _OFFSET_S[self.home[acc]]

        u = rng.random(m)
        slot = (u > self.slot_cut[acc, 0]).astype(np.int64) + (u > self.slot_cut[acc, 1])
        device = self.device_slots[acc, slot]
        use_new = (t >= self.new_device_t[acc]) & (rng.random(m) < 0.5)
        device = np.where(use_new, self.device_slots[acc, 3], device)
        dev_type = self.device_type[device]

        away = (t >= self.trip_start[acc]) & (t < self.trip_end[acc])
        keep = (t >= 0) & (t < self.horizon) & ~(away & (dev_type == _TV))
        acc, t, device, dev_type, away = (a[keep] for a in (acc, t, device, dev_type, away))
        m = len(acc)

        country = np.where(away, self.trip_country[acc], self.home[acc])
        mobile = dev_type == _MOBILE
        ip = np.where(away | mobile, self.random_ips(country, mobile), self.home_ip[acc])
        duration = self.median_len[acc] * _DEVICE_LENGTH[dev_type] * rng.lognormal(0.0, 0.9, m)
        duration = np.clip(duration, 30.0, 8 * 3600.0)
        keys = self.sessions(t, duration, 1.5, account=acc, device=device, country=country, ip=ip)
        self.normal = {"t": t, "account": acc, "away": away}

        # Logins (a new token) before some sessions, sometimes after typos.
        logs = np.flatnonzero(rng.random(m) < _LOGIN_PROB[dev_type])
        login_t = t[logs] - rng.uniform(5.0, 60.0, len(logs))
        source = {"account": acc[logs], "device": device[logs], "country": country[logs]}
        source["ip"] = ip[logs]
        self.rows.add(
            login_t,
            **source,
            event=_LOGIN_OK,
            plan=self.plan_at(acc[logs], login_t),
            session=keys[logs],
            bytes=self.login_bytes(len(logs)),
        )
        u = rng.random(len(logs))
        typos = np.where(u < 0.01, rng.integers(2, 5, len(logs)), (u < 0.05).astype(np.int64))
        which = np.repeat(np.arange(len(logs)), typos)
        rank = np.arange(len(which)) - (np.cumsum(typos) - typos)[which] + 1
        fail_t = login_t[which] - rank * rng.uniform(8.0, 40.0, len(which))
        self.rows.add(
            fail_t,
            **{key: value[which] for key, value in source.items()},
            event=_LOGIN_FAIL,
            plan=self.plan_at(acc[logs][which], fail_t),
            bytes=self.login_bytes(len(which)),
        )

        # Rentals, and now and then a gift card, just before a session.
        rent = np.flatnonzero(rng.random(m) < 0.035)
        rent_t = t[rent] - rng.uniform(10.0, 40.0, len(rent))
        price = _RENTAL_PRICES[rng.integers(0, len(_RENTAL_PRICES), len(rent))]
        gift = rng.random(len(rent)) < 0.1
        price = np.where(gift, _GIFT_CARDS[rng.integers(0, len(_GIFT_CARDS), len(rent))], price)
        self.rows.add(
            rent_t,
            account=acc[rent],
            device=device[rent],
            country=country[rent],
            ip=ip[rent],
            event=_PAYMENT,
            plan=self.plan_at(acc[rent], rent_t),
            amount=np.where(gift, price, np.round(price * _PRICE_FACTOR[self.home[acc[rent]]], 2)),
        )
        self._billing()

    def _billing(self) -> None:
        rng = self.rng
        dates = self.origin.normalize() + pd.to_timedelta(np.arange(self.days), unit="D")
        day_of_month = np.asarray(dates.day)
        month = np.asarray(dates.month)
        due = self.billing_day[:, None] == day_of_month[None, :]
        due &= (self.annual_month[:, None] == 0) | (self.annual_month[:, None] == month[None, :])
        acc, day = np.nonzero(due)
        t = day * _DAY + rng.uniform(2 * 3600.0, 6 * 3600.0, len(acc))
        plan = self.plan_at(acc, t)
        months = np.where(self.annual_month[acc] > 0, _ANNUAL_MONTHS, 1.0)
        self.rows.add(
            t,
            account=acc,
            device=_SERVER_DEVICE,
            country=self.home[acc],
            ip=_SERVER_IP,
            event=_PAYMENT,
            plan=plan,
            amount=np.round(_PLAN_PRICE[plan] * months * _PRICE_FACTOR[self.home[acc]], 2),
        )
        acc = np.flatnonzero(self.plan_change_t < self.horizon)
        t = self.plan_change_t[acc]
        old, new = self.plan[acc], self.new_plan[acc]
        prorated = np.maximum(_PLAN_PRICE[new] - _PLAN_PRICE[old], 0.0) * rng.uniform(
            0.05, 1, len(acc)
        )
        self.rows.add(
            t,
            account=acc,
            device=self.device_slots[acc, 0],
            country=self.home[acc],
            ip=self.home_ip[acc],
            event=_PAYMENT,
            plan=new,
            amount=np.round(prorated * _PRICE_FACTOR[self.home[acc]], 2),
        )

    # -- anomalies --

    def anomalies(self) -> None:
        account_days = self.n * self.days
        for kind in ANOMALY_KINDS:
            episodes = int(self.rng.poisson(_EPISODE_RATE[kind] * account_days / 1000))
            if account_days >= _MIN_EPISODE_ACCOUNT_DAYS:
                episodes = max(episodes, 1)
            if episodes:
                getattr(self, f"_{kind}")(episodes)

    def _account_sharing(self, episodes: int) -> None:
        """A partner abroad streams 1-4 times, each overlapping one of the owner's sessions."""
        rng, normal = self.rng, self.normal
        kind = _KIND_CODE["account_sharing"]
        hosts_ok = (normal["t"] > 3600) & (normal["t"] < self.horizon - 3 * 3600) & ~normal["away"]
        candidates = np.flatnonzero(hosts_ok)
        if not len(candidates):
            return
        remaining = episodes
        while remaining > 0:
            host = candidates[rng.integers(len(candidates))]
            account = normal["account"][host]
            lo, hi = np.searchsorted(normal["account"][candidates], [account, account + 1])
            own = candidates[lo:hi]
            take = min(remaining, int(rng.integers(1, 5)), len(own))
            hosts = np.sort(rng.choice(own, size=take, replace=False))
            remaining -= take
            partner = self.distant_countries(self.home[[account]])
            device = self.new_devices(rng.choice(4, size=1, p=[0.4, 0.35, 0.1, 0.15]))
            ip = self.random_ips(partner)
            start = normal["t"][hosts] + rng.uniform(-20 * 60.0, 20 * 60.0, take)
            duration = np.clip(45 * 60.0 * rng.lognormal(0.0, 0.7, take), 120.0, 5 * 3600.0)
            ones = np.ones(take, dtype=np.int64)
            keys = self.sessions(
                start,
                duration,
                1.5,
                account=account * ones,
                device=device[0] * ones,
                country=partner[0] * ones,
                ip=ip[0] * ones,
                kind=kind,
            )
            login = np.flatnonzero((np.arange(take) == 0) | (rng.random(take) < 0.3))
            login_t = start[login] - rng.uniform(5.0, 60.0, len(login))
            self.rows.add(
                login_t,
                account=account,
                device=device[0],
                country=partner[0],
                ip=ip[0],
                event=_LOGIN_OK,
                plan=self.plan_at(account * ones[login], login_t),
                session=keys[login],
                bytes=self.login_bytes(len(login)),
                kind=kind,
            )

    def _credential_stuffing(self, episodes: int) -> None:
        """Many failed logins from rotating proxies, sometimes one success and a quick look."""
        rng = self.rng
        kind = _KIND_CODE["credential_stuffing"]
        for account in rng.integers(0, self.n, episodes):
            t0 = rng.uniform(0, max(self.horizon - 3600.0, 1.0))
            tries = int(rng.integers(15, 81))
            t = t0 + np.sort(rng.uniform(0, rng.uniform(3, 20) * 60.0, tries))
            home_share = rng.random(tries) < 0.15
            country = np.where(
                home_share,
                self.home[account],
                rng.choice(len(_CODES), size=tries, p=_COUNTRY_WEIGHT),
            )
            device = self.new_devices(rng.choice(4, size=tries, p=[0.0, 0.3, 0.7, 0.0]))
            ip = self.random_ips(country)
            acc = np.full(tries, account)
            self.rows.add(
                t,
                account=acc,
                device=device,
                country=country,
                ip=ip,
                event=_LOGIN_FAIL,
                plan=self.plan_at(acc, t),
                bytes=self.login_bytes(tries),
                kind=kind,
            )
            if rng.random() >= 0.4:
                continue
            ok_t = t[-1:] + rng.uniform(20.0, 90.0, 1)
            session = -1
            if rng.random() < 0.5:
                play_t = ok_t + rng.uniform(10.0, 60.0, 1)
                session = self.sessions(
                    play_t,
                    rng.uniform(60.0, 400.0, 1),
                    1.5,
                    account=acc[:1],
                    device=device[-1:],
                    country=country[-1:],
                    ip=ip[-1:],
                    kind=kind,
                )[0]
            self.rows.add(
                ok_t,
                account=account,
                device=device[-1],
                country=country[-1],
                ip=ip[-1],
                event=_LOGIN_OK,
                plan=self.plan_at(acc[:1], ok_t),
                session=session,
                bytes=self.login_bytes(1),
                kind=kind,
            )

    def _bot_playback(self, episodes: int) -> None:
        """Back-to-back sessions of one length and one gap, round the clock, no jitter."""
        rng = self.rng
        kind = _KIND_CODE["bot_playback"]
        for account in rng.integers(0, self.n, episodes):
            t0 = rng.uniform(0, max(self.horizon - 26 * 3600.0, 1.0))
            end = min(t0 + rng.uniform(26, 50) * 3600.0, self.horizon)
            length = float(rng.uniform(25, 60) * 60.0)
            gap = float(rng.uniform(5.0, 60.0))
            count = max(int((end - t0) // (length + gap)), 1)
            start = t0 + np.arange(count) * (length + gap) + rng.normal(0.0, 0.3, count)
            device = self.new_devices(np.array([_WEB]))[0]
            ip = self.random_ips(self.home[[account]])[0]
            country = self.home[account]
            ones = np.ones(count, dtype=np.int64)
            keys = self.sessions(
                start,
                np.full(count, length) + rng.normal(0.0, 0.3, count),
                0.02,
                account=account * ones,
                device=device * ones,
                country=country * ones,
                ip=ip * ones,
                kind=kind,
            )
            login_t = start[:1] - 3.0
            self.rows.add(
                login_t,
                account=account,
                device=device,
                country=country,
                ip=ip,
                event=_LOGIN_OK,
                plan=self.plan_at(ones[:1] * account, login_t),
                session=keys[0],
                bytes=self.login_bytes(1),
                kind=kind,
            )

    def _payment_fraud(self, episodes: int) -> None:
        """Card tests then odd large charges, the plan flipping, often from a new device."""
        rng = self.rng
        kind = _KIND_CODE["payment_fraud"]
        for account in rng.integers(0, self.n, episodes):
            count = int(rng.integers(3, 10))
            t = rng.uniform(0, max(self.horizon - 3600.0, 1.0))
            t = t + np.sort(rng.uniform(0, rng.uniform(5, 45) * 60.0, count))
            tests = int(rng.integers(1, min(3, count - 1) + 1))
            # Large charges: gift cards or annual plans (as normal accounts buy), or odd sums.
            annual = np.round(_PLAN_PRICE * _ANNUAL_MONTHS * _PRICE_FACTOR[self.home[account]], 2)
            menu = np.concatenate([_GIFT_CARDS, annual])
            usual = menu[rng.integers(0, len(menu), count)]
            odd = rng.uniform(25.0, 250.0, count)
            large = np.where(rng.random(count) < 0.5, usual, odd)
            amount = np.where(np.arange(count) < tests, rng.uniform(0.5, 2.0, count), large)
            if rng.random() < 0.5:
                device = self.device_slots[account, 0]
                country, ip = self.home[account], self.home_ip[account]
            else:
                country = self.distant_countries(self.home[[account]])[0]
                device = self.new_devices(np.array([_WEB]))[0]
                ip = self.random_ips(np.array([country]))[0]
            self.rows.add(
                t,
                account=account,
                device=device,
                country=country,
                ip=ip,
                event=_PAYMENT,
                plan=rng.integers(0, 3, count),
                amount=np.round(amount, 2),
                kind=kind,
            )

    # -- assembly --

    def frame(self) -> pd.DataFrame:
        rows = self.rows.joined()
        millis = np.round(rows["t"] * 1000.0).astype(np.int64)
        keep = (millis >= 0) & (millis < round(self.horizon * 1000))
        order = np.flatnonzero(keep)[np.argsort(millis[keep], kind="stable")]
        rows = {key: value[order] for key, value in rows.items()}
        millis = millis[order]

        device = rows["device"]
        server = device == _SERVER_DEVICE
        n_devices = len(self.device_type)
        hex_ids = self.rng.choice(16**10, size=n_devices, replace=False)
        device_names = np.array([f"{x:010x}" for x in hex_ids] + ["server"], dtype=object)
        type_names = np.array([*DEVICE_TYPES, "server"], dtype=object)
        device_type = np.where(
            server, len(DEVICE_TYPES), self.device_type[np.where(server, 0, device)]
        )

        origin_ns = self.origin.value
        timestamps = pd.to_datetime(origin_ns + millis * 1_000_000, unit="ns", utc=True)
        kind_names = np.array([NORMAL_KIND, *ANOMALY_KINDS], dtype=object)
        account_names = np.array([f"A{i:06d}" for i in range(self.n)], dtype=object)
        event = rows["event"]
        columns = {
            "timestamp": timestamps,
            "account_id": _strings(account_names, rows["account"]),
            "device_id": _strings(device_names, np.where(server, n_devices, device)),
            "device_type": _strings(type_names, device_type),
            "country": _strings(np.array(_CODES, dtype=object), rows["country"]),
            "ip_prefix": _ip_strings(rows["ip"]),
            "event_type": _strings(np.array(EVENT_TYPES, dtype=object), event),
            "session_id": _session_ids(rows["session"]),
            "plan": _strings(np.array(PLANS, dtype=object), rows["plan"]),
            "watch_seconds": rows["watch"].astype(np.float64),
            "bytes_mb": rows["bytes"].astype(np.float64),
            "amount": rows["amount"].astype(np.float64),
            "failed_login": (event == _LOGIN_FAIL).astype(np.int64),
            "is_anomaly": (rows["kind"] != 0).astype(np.int64),
            "anomaly_kind": _strings(kind_names, rows["kind"]),
        }
        return pd.DataFrame(columns, columns=list(COLUMNS))


def _strings(names: np.ndarray, codes: np.ndarray) -> pd.Series:
    """Map integer codes to a pandas string column (an Arrow take: fast for millions of rows)."""
    values = pa.array(names, type=pa.large_string()).take(pa.array(codes))
    return pd.Series(pd.array(values, dtype="str"))


def _ip_strings(codes: np.ndarray) -> pd.Series:
    unique, inverse = np.unique(codes, return_inverse=True)
    names = np.array([f"{c >> 16}.{(c >> 8) & 255}.{c & 255}" for c in unique], dtype=object)
    return _strings(names, inverse)


def _session_ids(keys: np.ndarray) -> np.ndarray:
    """Number sessions 1, 2, ... in order of their first row, so ids follow time; -1 for none."""
    ids = np.full(len(keys), -1, dtype=np.int64)
    has = keys >= 0
    unique, first, inverse = np.unique(keys[has], return_index=True, return_inverse=True)
    rank = np.empty(len(unique), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, len(unique) + 1)
    ids[has] = rank[inverse]
    return ids


def _write_csv(frame: pd.DataFrame, path: Path, compress: bool) -> None:
    """CSV through Arrow's writer (fast); date-times as ISO-8601 UTC strings ending in "Z"."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, column in enumerate(table.column_names):
        if pa.types.is_timestamp(table.schema.field(i).type):
            values = frame[column].dt.tz_convert("UTC").to_numpy(dtype="datetime64[ms]")
            text = pa.array(np.datetime_as_string(values, unit="ms", timezone="UTC"))
            table = table.set_column(i, column, text)
    with open(path, "wb") as raw:
        if compress:
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0
            ) as out:
                pa_csv.write_csv(table, out)
        else:
            pa_csv.write_csv(table, raw)
