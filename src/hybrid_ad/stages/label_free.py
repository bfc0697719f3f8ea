"""How the judge learns without labels: independent label-free signals, combined by rank.

The rules, the autoencoder and a histogram detector (PyOD's HBOS) each say how unusual an
event is, on scales that cannot be compared. Each score becomes a tail share p, the share of
training events scoring at least as high, or its *surprise* -log p: 1 in 1,000 is 6.9
whatever the detector. The prior combines them as p-values are combined in multiple testing:
by default their weighted mean surprise (Fisher's combination), which rewards views that
agree; `combination: harmonic`, the weighted harmonic mean p (`combine_harmonic`), follows
the smallest weighted p, so one view that finds an event very rare is enough (measured: a
better prior, but not a better judge, BENCHMARKS.md). Views that move together are not
independent evidence, so the weights come from the signals' rank correlations on validation events
(`decorrelated_weights`): two signals that say the same thing share one vote.

The judge is then trained on soft targets from that prior. How many events are anomalous is
unknown without labels, so instead of guessing one contamination rate the target is the share
of rates (log-uniform, 0.1 % ... 10 %) at which the event would be in the prior's top: the
rarest events are positive at every rate, borderline ones at a few. The trees learn which
features and signals produce high priors and generalise that to events no single signal ranks
first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid_ad.errors import ArtifactError
from hybrid_ad.stages.base import Stage, json_file, read_json_file

CHUNK_ROWS = 4096
SCORE_ROWS = 65_536
TAIL_POINTS = 512
"""Points kept of each training score distribution: log-spaced ranks, dense in the upper tail."""


COLLINEAR = 0.01
"""Directions of the signals' correlation matrix with an eigenvalue below this share of the
largest are left out of its inverse: two near-copies of a signal then split its weight,
instead of the inverse amplifying the noise in their difference."""


class TailScale(Stage):
    """Turns a detector's scores into surprises, -log(share of training scores >= s).

    Keeps `TAIL_POINTS` (score, rank) pairs of the training distribution, log-spaced from the
    top, so the saved form is small and the upper tail, where alerts live, stays exact.
    """

    def __init__(self) -> None:
        self.scores_: np.ndarray | None = None  # descending scores at the kept ranks
        self.ranks_: np.ndarray | None = None  # 1-based ranks from the top
        self.ties_: np.ndarray | None = None  # training scores equal to each kept score
        self.n_: int = 0

    def fit(self, scores: np.ndarray) -> TailScale:
        ascending = np.sort(np.asarray(scores, dtype=np.float64))
        n = len(ascending)
        positions = np.round(np.geomspace(1, n, min(TAIL_POINTS, n))).astype(np.int64)
        kept = np.unique(ascending[n - positions])[::-1]  # distinct scores, descending
        # The rank of a kept score counts every training score equal to it (ties).
        ranks = n - np.searchsorted(ascending, kept, side="left")
        ties = np.searchsorted(ascending, kept, side="right") - (n - ranks)
        self.scores_, self.ranks_, self.n_ = kept, ranks.astype(np.float64), n
        self.ties_ = ties.astype(np.float64)
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Surprise of each score: 0 for the most ordinary, about log(n) beyond the maximum."""
        self.check_fitted()
        assert self.scores_ is not None and self.ranks_ is not None
        return self._surprise(scores, self.ranks_)

    def mid_surprise(self, scores: np.ndarray) -> np.ndarray:
        """Surprise of the mid-p: a score shared by many training events (a rule score's
        plateau, the floor of 0) counts half of its ties as above it. The upper share
        (`transform`) calls every event on a plateau as ordinary as its most ordinary member,
        which understates a discrete signal against a continuous one: a continuous score
        spread over the same share of events has a mean tail share of about the mid-p."""
        self.check_fitted()
        assert self.ranks_ is not None and self.ties_ is not None
        return self._surprise(scores, self.ranks_ - self.ties_ / 2.0)

    def _surprise(self, scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        assert self.scores_ is not None
        values = np.asarray(scores, dtype=np.float64)
        # Rank of a score: how many training scores are >= it (interpolated between kept
        # points); below the training minimum all n are above it
        rank = np.interp(values, self.scores_[::-1], ranks[::-1], left=self.n_, right=0.0)
        return -np.log((rank + 1.0) / (self.n_ + 1.0))

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        assert self.scores_ is not None and self.ranks_ is not None and self.ties_ is not None
        return {
            "scores": self.scores_.tolist(),
            "ranks": self.ranks_.tolist(),
            "ties": self.ties_.tolist(),
            "n": self.n_,
        }

    @property
    def is_fitted(self) -> bool:
        return self.scores_ is not None and self.ranks_ is not None and self.ties_ is not None

    def to_files(self) -> dict[str, bytes]:
        return {"tail_scale.json": json_file(self.to_dict())}

    def from_files(self, files: Mapping[str, bytes]) -> TailScale:
        loaded = self.from_dict(read_json_file(files, "tail_scale.json"), "tail_scale.json")
        vars(self).update(vars(loaded))
        return self

    @classmethod
    def from_dict(cls, payload: Any, name: str) -> TailScale:
        scale = cls()
        try:
            scores = np.asarray(payload["scores"], dtype=np.float64)
            ranks = np.asarray(payload["ranks"], dtype=np.float64)
            # models saved before the mid-p had no tie counts: 0 gives their upper share
            ties = np.asarray(payload.get("ties", np.zeros(len(ranks))), dtype=np.float64)
            n = int(payload["n"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"label_free.json: malformed tail scale '{name}'") from None
        shapes = {scores.shape, ranks.shape, ties.shape}
        if scores.ndim != 1 or len(shapes) > 1 or len(scores) == 0 or n < 1:
            raise ArtifactError(f"label_free.json: tail scale '{name}' has inconsistent shapes")
        if not (np.all(np.isfinite(scores)) and np.all(np.diff(scores) < 0)):
            raise ArtifactError(f"label_free.json: tail scale '{name}' is not a sorted tail")
        if not (np.all(ties >= 0) and np.all(ties <= ranks)):
            raise ArtifactError(f"label_free.json: tail scale '{name}' has impossible tie counts")
        scale.scores_, scale.ranks_, scale.ties_, scale.n_ = scores, ranks, ties, n
        return scale


@dataclass(frozen=True)
class _HistogramTables:
    """`HistogramDetector._scoring_tables`: the fitted model's arrays as scoring reads them."""

    edges: np.ndarray
    log_density: np.ndarray
    rarest: np.ndarray
    low_step: np.ndarray
    high_step: np.ndarray
    first_edge: np.ndarray
    last_edge: np.ndarray
    first_density: np.ndarray
    last_density: np.ndarray
    columns: np.ndarray


class HistogramDetector(Stage):
    """PyOD's HBOS on the scaled features: independent per-feature histograms, fast to score.

    Fitted by PyOD; its fitted state (bin edges and densities) is saved as JSON arrays and put
    back into a fresh PyOD estimator on load, so nothing is pickled.
    """

    N_BINS = 10

    def __init__(self) -> None:
        self.model_: Any = None
        self._tables: tuple[Any, _HistogramTables] | None = None

    def fit(self, inputs: np.ndarray) -> HistogramDetector:
        """PyOD's HBOS histograms (`np.histogram`, 10 bins, density), a column at a time in
        float64: the same bins and densities as `HBOS.fit` (a test checks equality), without
        its float64 copy of the whole matrix (0.8 GiB on a large log) and its training
        scores through a numba kernel compiled in every process, which nothing reads (12 s
        of a 1.1M-row fit)."""
        from pyod.models.hbos import HBOS

        values = np.asarray(inputs)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(f"histogram detector: expected a non-empty 2-D array, {values.shape}")
        hist = np.zeros((self.N_BINS, values.shape[1]))
        edges = np.zeros((self.N_BINS + 1, values.shape[1]))
        for column in range(values.shape[1]):
            data = values[:, column].astype(np.float64)
            if not np.all(np.isfinite(data)):
                raise ValueError(f"histogram detector: input column {column} is not finite")
            hist[:, column], edges[:, column] = np.histogram(data, bins=self.N_BINS, density=True)
        model = HBOS(n_bins=self.N_BINS)
        model.hist_, model.bin_edges_ = hist, edges
        self.model_ = model
        return self

    def decision_function(self, inputs: np.ndarray) -> np.ndarray:
        """Higher is more anomalous: minus the summed log densities of the event's bins.

        PyOD's own scoring, vectorised with numpy over events and features at once: PyOD's is
        a numba kernel compiled on first use in every process (5-17 s on this machine), which
        dominated `score` and `review` start-up. Same bins, `alpha` and `tol` rule, same sum
        (a test checks equality).
        """
        self.check_fitted()
        # in chunks of rows: the float64 copy and the per-value temporaries of a million
        # events were 4 GiB at once
        if len(inputs) <= SCORE_ROWS:  # a micro-batch: one chunk, nothing to concatenate
            return self._decision(np.asarray(inputs, dtype=np.float64))
        parts = [
            self._decision(np.asarray(inputs[start : start + SCORE_ROWS], dtype=np.float64))
            for start in range(0, len(inputs), SCORE_ROWS)
        ]
        return np.concatenate(parts)

    def _decision(self, values: np.ndarray) -> np.ndarray:
        tables = self._scoring_tables()
        edges, log_density = tables.edges, tables.log_density
        n_bins = log_density.shape[0]
        # np.digitize(x, edges, right=True) per feature: how many edges lie below x (in
        # chunks of rows, to bound the (rows, edges, features) comparison)
        if len(values) <= CHUNK_ROWS:
            index = (edges[None, :, :] < values[:, None, :]).sum(axis=1)
        else:
            index = np.empty(values.shape, dtype=np.int64)
            for start in range(0, len(values), CHUNK_ROWS):
                part = values[start : start + CHUNK_ROWS]
                index[start : start + len(part)] = (edges[None, :, :] < part[:, None, :]).sum(
                    axis=1
                )
        below_near = tables.first_edge - values <= tables.low_step
        above_near = values - tables.last_edge <= tables.high_step
        # index - 1 within [0, n_bins - 1] (np.clip's checks cost more on a few events)
        inside = log_density[np.minimum(np.maximum(index - 1, 0), n_bins - 1), tables.columns]
        scores = np.where(
            index == 0,
            np.where(below_near, tables.first_density, tables.rarest),
            np.where(
                index == n_bins + 1,
                np.where(above_near, tables.last_density, tables.rarest),
                inside,
            ),
        )
        return -np.sum(scores, axis=1)

    def _scoring_tables(self) -> _HistogramTables:
        """What scoring reads of the fitted model, computed once per model (a one-event call
        spent a third of its time recomputing them): edges, log densities, each feature's
        rarest log density, and the `tol` margins below the first and above the last edge."""
        if self._tables is None or self._tables[0] is not self.model_:
            hist, edges = np.asarray(self.model_.hist_), np.asarray(self.model_.bin_edges_)
            log_density = np.log2(hist + self.model_.alpha)  # (bins, features)
            tol = self.model_.tol
            tables = _HistogramTables(
                edges=edges,
                log_density=log_density,
                rarest=log_density.min(axis=0),
                low_step=(edges[1] - edges[0]) * tol,
                high_step=(edges[-1] - edges[-2]) * tol,
                first_edge=edges[0],
                last_edge=edges[-1],
                first_density=log_density[0],
                last_density=log_density[-1],
                columns=np.arange(edges.shape[1]),
            )
            self._tables = (self.model_, tables)
        return self._tables[1]

    def to_dict(self) -> dict[str, Any]:
        self.check_fitted()
        return {
            "hist": np.asarray(self.model_.hist_).tolist(),
            "bin_edges": np.asarray(self.model_.bin_edges_).tolist(),
        }

    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None

    def to_files(self) -> dict[str, bytes]:
        return {"histogram.json": json_file(self.to_dict())}

    def from_files(self, files: Mapping[str, bytes]) -> HistogramDetector:
        payload = read_json_file(files, "histogram.json")
        try:
            n_inputs = np.asarray(payload["hist"], dtype=np.float64).shape[1]
        except (KeyError, TypeError, ValueError, IndexError):
            raise ArtifactError("histogram.json: malformed histogram detector") from None
        self.model_ = self.from_dict(payload, n_inputs).model_
        return self

    @classmethod
    def from_dict(cls, payload: Any, n_inputs: int) -> HistogramDetector:
        from pyod.models.hbos import HBOS

        try:
            hist = np.asarray(payload["hist"], dtype=np.float64)
            edges = np.asarray(payload["bin_edges"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ArtifactError("label_free.json: malformed histogram detector") from None
        if hist.shape != (cls.N_BINS, n_inputs) or edges.shape != (cls.N_BINS + 1, n_inputs):
            raise ArtifactError("label_free.json: histogram detector shapes do not match")
        detector = cls()
        model = HBOS(n_bins=cls.N_BINS)
        model.hist_, model.bin_edges_ = hist, edges
        detector.model_ = model
        return detector


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank (a rule score has many ties)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def rank_correlations(surprises: dict[str, np.ndarray]) -> np.ndarray:
    """Spearman correlations between the signals (ties get their mean rank); a constant
    signal, which ranks nothing, is uncorrelated with every other."""
    ranks = np.column_stack([average_ranks(values) for values in surprises.values()])
    spread = ranks.std(axis=0)
    centred = (ranks - ranks.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    correlations = centred.T @ centred / len(ranks)
    np.fill_diagonal(correlations, 1.0)
    return correlations


def decorrelated_weights(surprises: dict[str, np.ndarray]) -> dict[str, float]:
    """Weights of the signals in the prior: C^-1 1 for their rank correlations C, negative
    weights set to 0, normalised to sum to 1.

    The minimum-variance combination of noisy views of one quantity: independent signals
    weigh alike, and a group of signals that rank events the same way shares the weight one
    of them would get, so adding a near-copy of a view does not double its say (near-copies:
    see `COLLINEAR`). A constant
    signal ranks nothing and weighs 0. Needs no labels; computed on validation events.
    """
    ranking = {name: values for name, values in surprises.items() if np.ptp(values) > 0}
    if not ranking:  # nothing ranks the events: any weights give the same prior
        return {name: 1.0 / len(surprises) for name in surprises}
    correlations = rank_correlations(ranking)
    raw = np.linalg.pinv(correlations, rcond=COLLINEAR, hermitian=True) @ np.ones(len(ranking))
    clipped = np.clip(raw, 0.0, None)  # sums to 1'C^-1 1 > 0, so some weight is positive
    weights = dict(zip(ranking, clipped / clipped.sum(), strict=True))
    return {name: float(weights.get(name, 0.0)) for name in surprises}


PURITY_SAMPLE = 20_000
"""Validation events per sample in which `neighbour_purity` is measured (more are sampled
afresh `PURITY_DRAWS` times): the top `PURITY_TOP` of a sample is its rarest 0.1 %, the low end
of the default contamination range."""
PURITY_TOP = 20
"""Events each signal finds most unusual in a sample, whose neighbours are looked at."""
PURITY_NEIGHBOURS = 5
PURITY_DRAWS = 10
PURITY_QUERIES = 256
"""At most this many of a sample's top events (ties at the cut included) are looked at."""


def top_membership(scores: np.ndarray, top: int) -> np.ndarray:
    """Each event's share of a place among the `top` highest scores: 1 above the cut, and for
    the events tied at the cut the chance that a random tie-break puts them in (a rule score's
    plateau is not cut at an arbitrary event), 0 below."""
    values = np.asarray(scores, dtype=np.float64)
    cut = np.partition(values, len(values) - top)[len(values) - top]
    above, tied = values > cut, values == cut
    membership = above.astype(np.float64)
    membership[tied] = (top - above.sum()) / tied.sum()
    return membership


def neighbour_purity(
    space: np.ndarray, scores: np.ndarray, top: int, neighbours: int, rng: np.random.Generator
) -> float:
    """The share of the nearest neighbours (Euclidean, in `space`) of a signal's `top` events
    that are among its `top` events too, each event weighted by its `top_membership`.

    An anomaly mechanism (a fraud pattern, a bot, an attack class) makes many similar events,
    so a signal that sees it puts a group of neighbours at its top: purity near 1. A signal
    whose top is its own noise, events each unusual in its own way (an extreme value in one
    feature), has ordinary neighbours: purity near `top` / len(space), its chance level."""
    membership = top_membership(scores, top)
    queries = np.flatnonzero(membership > 0)
    if len(queries) > PURITY_QUERIES:  # a large plateau at the cut: a seeded share of it
        certain = queries[membership[queries] == 1.0]
        tied = queries[membership[queries] < 1.0]
        picked = rng.choice(tied, max(PURITY_QUERIES - len(certain), 1), replace=False)
        queries = np.sort(np.concatenate([certain, picked]))
    squared = np.einsum("ij,ij->i", space, space)
    shares = np.empty(len(queries))
    for start in range(0, len(queries), 64):
        rows = queries[start : start + 64]
        distances = squared[rows, None] - 2.0 * space[rows] @ space.T + squared[None, :]
        distances[np.arange(len(rows)), rows] = np.inf  # an event is not its own neighbour
        nearest = np.argpartition(distances, neighbours, axis=1)[:, :neighbours]
        shares[start : start + len(rows)] = membership[nearest].mean(axis=1)
    weights = membership[queries]
    return float(np.dot(weights, shares) / weights.sum())


def purity_weights(
    space: np.ndarray, surprises: dict[str, np.ndarray], seed: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Weights of the signals in the prior: the decorrelated weights times each signal's
    `neighbour_purity`, normalised; and the purities. Which signal to trust is not
    identifiable from the signals' agreement (every detector shares an "unusual event"
    factor); whether its top events come in groups of similar events is, without labels.

    Measured on `PURITY_DRAWS` seeded samples of `PURITY_SAMPLE` validation events (all of
    them when fewer) and averaged; `space` is their scaled model inputs."""
    names = list(surprises)
    matrix = np.asarray(space, dtype=np.float64)
    n = len(matrix)
    if n <= PURITY_TOP + PURITY_NEIGHBOURS:  # too few events to have neighbours at the top
        return decorrelated_weights(surprises), {name: 1.0 for name in names}
    totals = dict.fromkeys(names, 0.0)
    draws = 1 if n <= PURITY_SAMPLE else PURITY_DRAWS
    for draw in range(draws):
        rng = np.random.default_rng([seed, 0x9E7, draw])
        rows = np.arange(n) if draws == 1 else np.sort(rng.choice(n, PURITY_SAMPLE, replace=False))
        sample = matrix[rows]
        for name in names:
            totals[name] += neighbour_purity(
                sample, surprises[name][rows], PURITY_TOP, PURITY_NEIGHBOURS, rng
            )
    purities = {name: total / draws for name, total in totals.items()}
    base = decorrelated_weights(surprises)
    raw = {name: base[name] * purities[name] for name in names}
    total = sum(raw.values())
    if total <= 0:  # no signal's top has a neighbour in it: nothing to go by but correlation
        return base, purities
    return {name: value / total for name, value in raw.items()}, purities


COMBINATIONS = ("harmonic", "mean")
"""How the prior combines the signals' surprises (`judge.pseudo.combination`)."""


def prior(
    surprises: dict[str, np.ndarray], weights: dict[str, float] | None, combination: str
) -> np.ndarray:
    """The rank-combined prior of the signals' surprises (equal weights without `weights`):
    `mean`, their weighted mean (Fisher's combination); `harmonic`, `combine_harmonic`."""
    names = list(surprises)
    vector = np.ones(len(names)) if weights is None else np.array([weights[n] for n in names])
    vector = np.asarray(vector, dtype=np.float64) / vector.sum()
    matrix = np.column_stack([surprises[name] for name in names])
    if combination == "mean":
        return matrix @ vector
    if combination == "harmonic":
        return combine_harmonic(matrix, vector)
    raise ValueError(f"unknown combination '{combination}'; known: {COMBINATIONS}")


def combine_harmonic(surprises: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """-log of the weighted harmonic mean p-value (Wilson 2019) of each row's tail shares
    p = exp(-surprise): log(sum w_i / p_i), computed without overflow.

    It is dominated by the smallest weighted p, so an event that one view finds very rare
    keeps that view's rank among the events the others find ordinary (a mean of surprises
    would divide it by the number of views), and unlike the minimum p it still adds the other
    views' evidence. The harmonic mean stays a valid combination when the p-values are
    dependent, as these are (every signal reads the same events), up to a factor of at most
    e log L for L signals (Vovk & Wang 2020). Zero weights drop a signal.
    """
    used = weights > 0
    values, logw = surprises[:, used], np.log(weights[used])
    peak = np.max(values + logw, axis=1)
    return peak + np.log(np.exp(values + logw - peak[:, None]).sum(axis=1))


def soft_targets(
    prior_scores: np.ndarray, reference: np.ndarray, contamination: tuple[float, float]
) -> np.ndarray:
    """Share of contamination rates, log-uniform in `contamination` = (low, high), at which
    each event is in the top of `reference` (the training prior).

    An event whose prior is in the top share u of training events gets
    log(high / u) / log(high / low), clipped to [0, 1]: 1 in the top `low`, 0 below the top
    `high`, and in between rising with every halving of u, so the judge learns the order of
    the rare events rather than one cut. Validation targets use the same training reference.
    """
    low, high = contamination
    ordered = np.sort(np.asarray(reference, dtype=np.float64))
    at_least = len(ordered) - np.searchsorted(ordered, prior_scores, side="left")
    share = (at_least + 1.0) / (len(ordered) + 1.0)
    return np.clip(np.log(high / share) / np.log(high / low), 0.0, 1.0).astype(np.float32)
