"""The judge: gradient-boosted trees (XGBoost `hist`) giving the final anomaly probability.

It sees everything the earlier stages know about an event (features, reconstruction error,
embedding, rule hits) and learns how much to trust each. Saved in XGBoost's own JSON format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import xgboost as xgb

from hybrid_ad.config import JudgeConfig
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.stages.base import Stage
from hybrid_ad.stages.dense_predict import DensePredictor
from hybrid_ad.stages.saabas import FlatTrees

RoundCallback = Callable[[int], None]
"""Called after each boosting round with the round number."""


class _RoundProgress(xgb.callback.TrainingCallback):
    def __init__(self, on_round: RoundCallback) -> None:
        super().__init__()
        self.on_round = on_round

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        self.on_round(epoch + 1)
        return False


class Judge(Stage):
    """Binary classifier with early stopping on validation and imbalance weighting."""

    def __init__(self, config: JudgeConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.booster_: xgb.Booster | None = None
        self.feature_names_: list[str] | None = None
        self.scale_pos_weight_: float | None = None
        self.odds_correction_ = 1.0
        """Odds factor undoing negative sampling (1 without): see `fit`."""
        self.sample_rate_ = 1.0
        """The share of target-0 events the trees were fitted on (`negative_rate`)."""
        self._threads: int | None = None  # what the booster is set to
        self._rounds_: tuple[int, int] | None = None
        self._flat: tuple[FlatTrees, float] | None = None  # trees and base margin, on first use
        self._dense: DensePredictor | None = None  # the booster's predictions, on first use

    def fit(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        validation_inputs: np.ndarray,
        validation_labels: np.ndarray,
        feature_names: list[str],
        on_round: RoundCallback | None = None,
        sample_weight: np.ndarray | None = None,
        validation_weight: np.ndarray | None = None,
        negative_share: int = 1,
    ) -> Judge:
        """`sample_weight` (and `validation_weight`) weigh events, e.g. known labels above
        label-free targets; `auto` imbalance weighting then counts weighted events.
        `negative_share`: see `negative_rate`.

        The trees see every event with a positive target (with soft targets: every event in
        the prior's top, however slightly) and a seeded share r of those with target 0: r is
        `negative_sample_rate`, lowered to `max_negatives` / (their number) on large data
        (`sample_rate_` records it). Their odds are then spw_s / r times the data's odds where
        the full data's fit has spw times them (spw_s, spw: the imbalance weights of the
        sample and of the full data), so predictions multiply the odds by
        `odds_correction_` = r * spw / spw_s (prior correction; 1 with `auto` weighting up to
        the sample's noise, r with a fixed weight). Exact in expectation for 0/1 targets;
        with soft targets the kept events' (1 - target) share is not thinned, so the
        correction is approximate, and monotone: ranks, and so every rank metric and the
        alert budget's threshold, are those of the trees.
        """
        full_weight = self._imbalance_weight(labels, sample_weight)
        rate = self.negative_rate(labels, negative_share)
        if rate < 1.0:
            rng = np.random.default_rng([self.seed, 0x5A3])
            keep = (labels > 0) | (rng.random(len(labels)) < rate)
            inputs, labels = inputs[keep], labels[keep]
            sample_weight = None if sample_weight is None else sample_weight[keep]
        self.sample_rate_ = rate
        self.scale_pos_weight_ = self._imbalance_weight(labels, sample_weight)
        self.odds_correction_ = rate * full_weight / self.scale_pos_weight_
        validation_has_both = 0 < validation_labels.sum() < len(validation_labels)
        params = {
            "objective": "binary:logistic",
            "tree_method": "hist",
            "eta": self.config.learning_rate,
            "max_depth": self.config.max_depth,
            "min_child_weight": self.config.min_child_weight,
            "subsample": self.config.subsample,
            "colsample_bytree": self.config.colsample_bytree,
            "lambda": self.config.reg_lambda,
            "scale_pos_weight": self.scale_pos_weight_,
            "eval_metric": self.config.eval_metric if validation_has_both else "logloss",
            "nthread": self.config.threads,
            "seed": self.seed,
        }
        # QuantileDMatrix: the float32 inputs binned once, straight into the histogram
        # index (one byte a value), without the DMatrix's float copy; the validation matrix
        # shares the training bins.
        train = xgb.QuantileDMatrix(
            inputs,
            label=labels,
            weight=sample_weight,
            feature_names=feature_names,
            nthread=self.config.threads,
        )
        validation = xgb.QuantileDMatrix(
            validation_inputs,
            label=validation_labels,
            weight=validation_weight,
            feature_names=feature_names,
            ref=train,
            nthread=self.config.threads,
        )
        del inputs, labels, sample_weight  # the matrices hold their own bins (the sample: 0.1 GiB)
        callbacks = [_RoundProgress(on_round)] if on_round is not None else []
        self._threads, self._rounds_, self._flat = None, None, None
        self.booster_ = xgb.train(
            params,
            train,
            num_boost_round=self.config.n_estimators,
            evals=[(validation, "validation")],
            early_stopping_rounds=self.config.early_stopping_rounds,
            callbacks=callbacks,
            verbose_eval=False,
        )
        self.feature_names_ = list(feature_names)
        return self

    def negative_rate(self, labels: np.ndarray, share: int = 1) -> float:
        """The share of target-0 events to fit on: `negative_sample_rate`, capped so that at
        most `max_negatives` of them are kept (one budget for every dataset: past a few
        hundred thousand normal events, more add fit time, not information). `share`: past
        the budget, keep only `max_negatives // share` (the batch job's ablation judge, an
        evaluation aid); below it, every one as any judge does."""
        negatives = int(np.count_nonzero(labels <= 0))
        budget = self.config.max_negatives
        if budget is None or negatives <= budget:
            return self.config.negative_sample_rate
        return min(self.config.negative_sample_rate, max(1, budget // share) / negatives)

    def _imbalance_weight(self, labels: np.ndarray, sample_weight: np.ndarray | None) -> float:
        if sample_weight is None:
            positives = float(labels.sum())  # soft targets in [0, 1] count fractionally
            total = float(len(labels))
        else:
            positives = float(np.dot(sample_weight, labels))
            total = float(sample_weight.sum())
        if positives == 0 or positives == total:
            raise InputError(
                f"judge: the training labels ({self.config.label_source}) contain only one class; "
                "check the rules' pseudo_label_threshold or the label column"
            )
        if self.config.scale_pos_weight == "auto":
            return (total - positives) / positives
        return float(self.config.scale_pos_weight)

    def predict_proba(self, inputs: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Probability of the anomaly class, shape (n,), using the best early-stopped round
        (corrected for negative sampling).

        What `inplace_predict` computes on the array (no DMatrix per call: the same trees, the
        same float32 inputs, so the same numbers), through `DensePredictor`: without the
        wrapper's per-call work and cyclic garbage, which were most of the cost for one event."""
        predict = self._dense_predictor(threads)
        try:
            scores = predict(np.ascontiguousarray(inputs, dtype=np.float32))
        except (xgb.core.XGBoostError, ValueError) as exc:  # a judge.json that does not fit
            first_line = (str(exc).strip().splitlines() or ["XGBoostError"])[0]
            raise ArtifactError(f"judge.json: cannot score these inputs ({first_line})") from None
        proba = np.asarray(scores, dtype=np.float64).reshape(-1)
        if self.odds_correction_ == 1.0:
            return proba
        odds = self.odds_correction_ * proba
        return odds / (odds + 1.0 - proba)

    def _dense_predictor(self, threads: int | None) -> DensePredictor:
        """The booster's `DensePredictor` (set to `threads`), made again for a new booster."""
        booster = self._booster(threads)
        if self._dense is None or self._dense.booster is not booster:
            self._dense = DensePredictor(booster, self._rounds())
        return self._dense

    def contributions(
        self, inputs: np.ndarray, threads: int | None = None, approximate: bool = False
    ) -> np.ndarray:
        """Per-input contributions to the log-odds, (n, d + 1), the bias last: each row sums
        to the margin the probability is the sigmoid of. Exact TreeSHAP by default;
        `approximate`: Saabas path attribution (what XGBoost's `approx_contribs` computes),
        which ranks the inputs much as TreeSHAP does but is not identical. The approximate
        ones are computed by `hybrid_ad.stages.saabas` on the model's flat trees: XGBoost
        recomputes every node's mean on each call (0.4 ms for one event), these take
        microseconds per event."""
        if approximate:
            flat = self._flat_trees()
            if flat is not None:
                trees, base_margin = flat
                end = self._rounds()[1]
                contributions = trees.contributions(inputs, end or trees.n_trees)
                contributions[:, -1] += base_margin + math.log(self.odds_correction_)
                return contributions
        booster = self._booster(threads)
        # the DMatrix's own threads: by default all cores, whose start-up cost 55 ms per call
        # on the busy 2-core machine, against 0.2 ms with the scoring threads
        matrix = xgb.DMatrix(
            inputs, feature_names=self.feature_names_, nthread=threads or self.config.threads
        )
        contributions = booster.predict(
            matrix,
            iteration_range=self._rounds(),
            pred_contribs=True,
            approx_contribs=approximate,
        )
        contributions[:, -1] += math.log(self.odds_correction_)  # the sampling's share: bias
        return contributions

    def _flat_trees(self) -> tuple[FlatTrees, float] | None:
        """The flat trees and the model's base margin (its margin less the leaf values, on
        one event), built once; None where the model is not one `FlatTrees` can walk."""
        if self._flat is None:
            booster = self._fitted()
            n_features = booster.num_features()
            trees = FlatTrees.from_json(bytes(booster.save_raw(raw_format="json")), n_features)
            if trees is None:
                return None
            row = np.zeros((1, n_features), dtype=np.float32)
            margin = booster.inplace_predict(
                row, iteration_range=self._rounds(), predict_type="margin"
            )
            _, end = self._rounds()
            leaves = trees.contributions(row, end or trees.n_trees).sum()
            self._flat = (trees, float(np.asarray(margin).reshape(-1)[0]) - float(leaves))
        return self._flat

    def _booster(self, threads: int | None) -> xgb.Booster:
        """The booster, set to `threads` (default: the configured ones) when that changed."""
        booster = self._fitted()
        wanted = threads or self.config.threads
        if self._threads != wanted:
            booster.set_param({"nthread": wanted})
            self._threads = wanted
        return booster

    def margin(self, inputs: np.ndarray) -> np.ndarray:
        """The log-odds before the sigmoid, (n,)."""
        booster = self._fitted()
        matrix = xgb.DMatrix(inputs, feature_names=self.feature_names_)
        margin = booster.predict(matrix, iteration_range=self._rounds(), output_margin=True)
        return margin + math.log(self.odds_correction_)

    def _rounds(self) -> tuple[int, int]:
        if self._rounds_ is None:
            booster = self._fitted()
            self._rounds_ = (0, booster.best_iteration + 1) if _has_best(booster) else (0, 0)
        return self._rounds_

    def feature_importance(self) -> dict[str, float]:
        """Total gain per input, normalised to sum to 1 (unused inputs are 0)."""
        booster = self._fitted()
        gains = booster.get_score(importance_type="total_gain")
        total = sum(gains.values()) or 1.0
        return {name: float(gains.get(name, 0.0)) / total for name in self.feature_names_ or []}

    @property
    def best_round(self) -> int:
        booster = self._fitted()
        return (
            int(booster.best_iteration) + 1 if _has_best(booster) else booster.num_boosted_rounds()
        )

    def _fitted(self) -> xgb.Booster:
        self.check_fitted()
        assert self.booster_ is not None
        return self.booster_

    @property
    def is_fitted(self) -> bool:
        return self.booster_ is not None

    def to_files(self) -> dict[str, bytes]:
        return {"judge.json": self.to_bytes()}

    def from_files(self, files: Mapping[str, bytes]) -> Judge:
        if "judge.json" not in files:
            raise ArtifactError("saved stage lacks judge.json")
        loaded = self.from_bytes(self.config, files["judge.json"], self.seed)
        vars(self).update(vars(loaded))
        return self

    # -- persistence --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """XGBoost's own JSON model format (no pickle), with the imbalance weight it used."""
        booster = self._fitted()
        booster.set_attr(scale_pos_weight=repr(self.scale_pos_weight_))
        booster.set_attr(odds_correction=repr(self.odds_correction_))
        return bytes(booster.save_raw(raw_format="json"))

    @classmethod
    def from_bytes(cls, config: JudgeConfig, data: bytes, seed: int = 0) -> Judge:
        judge = cls(config, seed=seed)
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(data))
        except xgb.core.XGBoostError as exc:
            first_line = (str(exc).strip().splitlines() or ["XGBoostError"])[0]
            raise ArtifactError(f"judge.json: cannot load model ({first_line[:200]})") from None
        judge.booster_ = booster
        judge.feature_names_ = list(booster.feature_names or [])
        judge.scale_pos_weight_ = _positive_attribute(
            booster, "scale_pos_weight", "", "missing or malformed"
        )
        # absent in models saved before negative sampling: no correction
        judge.odds_correction_ = _positive_attribute(booster, "odds_correction", "1.0", "malformed")
        return judge


def _has_best(booster: xgb.Booster) -> bool:
    try:
        booster.best_iteration  # noqa: B018 - raises when training had no early stopping
    except AttributeError:
        return False
    return True


def _positive_attribute(booster: xgb.Booster, name: str, default: str, problem: str) -> float:
    """A positive finite number stored as a booster attribute (`default` when absent)."""
    try:
        value = float(booster.attr(name) or default)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ArtifactError(f"judge.json: {problem} {name} attribute")
    return value
