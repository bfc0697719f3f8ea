"""The fitted whole: rules, features, autoencoder and judge behind one object.

`Detector.fit` trains every stage on a time-ordered training frame (validation for early
stopping), `score` runs them all on any frame, and `save` / `load` move the fitted state to
and from a checked directory with no pickle in it. `live()` gives a `LiveScorer`
(`hybrid_ad.core.live`), which scores micro-batches as they arrive; it and `score` share one
path from prepared events to scores, alerts and reasons (`hybrid_ad.core.scoring`).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import hybrid_ad
from hybrid_ad.artifacts import read_model_dir, write_model_dir
from hybrid_ad.config import Config, config_from_dict, config_to_dict
from hybrid_ad.core.scoring import Contributions, readable_input, score_prepared
from hybrid_ad.data import EVENT_SECONDS, Columns, check_training_range, event_ids
from hybrid_ad.errors import ArtifactError, InputError, NotFittedError
from hybrid_ad.evaluation import choose_threshold
from hybrid_ad.monitoring.reference import REFERENCE_FILE, DriftReference, score_columns
from hybrid_ad.progress import QUIET, ProgressReporter
from hybrid_ad.stages.autoencoder import Autoencoder, sample_rows
from hybrid_ad.stages.features import FeatureBuilder, FeatureMatrix, PreparedEvents, prepare_events
from hybrid_ad.stages.judge import Judge
from hybrid_ad.stages.label_free import (
    HistogramDetector,
    TailScale,
    decorrelated_weights,
    prior,
    purity_weights,
    soft_targets,
)
from hybrid_ad.stages.mixed_labels import (
    UnlabelledChoice,
    choose_unlabelled,
    configured_unlabelled,
    mixed_targets,
    mixed_weights,
)
from hybrid_ad.stages.rules import RuleResult, RuleSet

if TYPE_CHECKING:
    from hybrid_ad.core.live import LiveScorer

__all__ = ["SIGNALS", "Detector", "StageOutputs", "library_versions", "readable_input"]

Events = pd.DataFrame | PreparedEvents
"""What every method takes: a raw frame, or events already prepared by `prepare_events`."""


SIGNALS = ("rules", "autoencoder", "histogram")
"""The label-free signals, each a score where higher is more unusual."""


@dataclass(frozen=True)
class StageOutputs:
    """What the label-free stages say about a batch of events."""

    features: FeatureMatrix
    rules: RuleResult
    reconstruction_error: np.ndarray | None
    """None (and `embedding`) only within `fit_unsupervised`, before the autoencoder trains."""
    embedding: np.ndarray | None
    histogram: np.ndarray

    def signal(self, name: str) -> np.ndarray:
        """One label-free signal's raw score (higher is more unusual)."""
        signal = {
            "rules": self.rules.score,
            "autoencoder": self.reconstruction_error,
            "histogram": self.histogram,
        }[name]
        if signal is None:
            raise RuntimeError(f"the {name} signal is read before its stage is fitted")
        return signal


Alongside = Callable[["Detector"], None]
"""Work for a second thread while the autoencoder trains (`Detector.fit_unsupervised`)."""


class _Alongside:
    """`alongside` running on its own thread with a copy of the detector as it is now: the
    copy keeps this moment's stages (later assignments on the detector do not reach it) and
    reports no progress (one progress bar at a time). Its reused outputs are let go when
    it returns."""

    def __init__(self, work: Alongside, detector: Detector) -> None:
        self.partial = copy.copy(detector)
        self.partial.progress = QUIET
        if detector._reused is not None:
            self.partial._reused = dict(detector._reused)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), name="alongside")
        self.thread.start()

    def _run(self, work: Alongside) -> None:
        try:
            work(self.partial)
        except BaseException as exc:  # raised again on the caller's thread, in `join`
            self.error = exc
        finally:
            if self.partial._reused is not None:
                self.partial._reused.clear()

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


class Detector:
    """Rules -> autoencoder -> judge, fitted together and used as one estimator."""

    def __init__(self, config: Config, progress: ProgressReporter = QUIET) -> None:
        self.config = config
        self.progress = progress
        self.feature_columns_: list[str] | None = None
        self.features_: FeatureBuilder | None = None
        self.rules_: RuleSet | None = None
        self.autoencoder_: Autoencoder | None = None
        self.autoencoder_inputs_: list[int] | None = None
        self.histogram_: HistogramDetector | None = None
        self.tail_scales_: dict[str, TailScale] | None = None
        self.judge_: Judge | None = None
        self.judge_uses_autoencoder_ = True
        self.prior_weights_: dict[str, float] | None = None
        self.threshold_: float | None = None
        self.drift_reference_: DriftReference | None = None
        self.data_sha256_: str | None = None
        self.known_labels: pd.Series | None = None
        """For `judge.label_source: mixed`: a label store's labels (0/1) by event id."""
        self.mixed_choice_: UnlabelledChoice | None = None
        """`mixed` mode: the unlabelled events' target the last `fit_judge` used, and why."""
        self._reused: dict[int, tuple[Columns, StageOutputs]] | None = None
        self._judge_names: tuple[tuple, list[str]] | None = None  # `_judge_matrix`'s, kept

    def release_outputs(self, frame: Events) -> None:
        """Forget one frame's reused outputs (`reusing_outputs`) once they are not needed."""
        events = frame.frame if isinstance(frame, PreparedEvents) else frame
        if self._reused is not None:
            self._reused.pop(id(events), None)

    @contextmanager
    def reusing_outputs(self) -> Iterator[None]:
        """Within: each events frame's label-free outputs are computed once and reused. The
        batch job fits the judge and its ablation on the same parts and then scores them:
        without this, the features, the autoencoder and the histograms ran over the training
        part three times and the validation part four. Frames are told apart by identity,
        so they must not change within. Nested uses share the outer one's."""
        if self._reused is not None:
            yield
            return
        self._reused = {}
        try:
            yield
        finally:
            self._reused = None

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, frame: Events, validation: Events | None = None) -> Detector:
        """Fit every stage. Without `validation`, the latest events of `frame` are held out.

        `validation` follows `frame` in time: `frame` is its behavioural history.
        """
        train, validation = self._train_validation(frame, validation)
        self.fit_unsupervised(train, validation)
        return self.fit_judge(train, validation)

    def fit_unsupervised(
        self, frame: Events, validation: Events, alongside: Alongside | None = None
    ) -> Detector:
        """Fit scaler, rules, autoencoder and histogram detector. Never reads the label column.

        `alongside`: called on a second thread with a copy of the detector whose label-free
        stages but the autoencoder are fitted, while this thread trains the autoencoder (one
        core, and on a large log a minute): the batch job fits its ablation judge there, which
        reads no autoencoder output. Its exception, if any, is raised here."""
        self.feature_columns_ = None
        events = self._events(frame, "training data")
        behavioural = self.config.features.behavioural
        check_training_range(
            events,
            [*(self.feature_columns_ or []), *(behavioural.values if behavioural else [])],
            frame.source if isinstance(frame, PreparedEvents) else "training data",
        )
        train = self._unlabelled(events)
        held_out_events = self._events(validation, "validation data", history=frame)
        held_out = self._unlabelled(held_out_events)
        self.features_ = FeatureBuilder(self.config.features).fit(train, self.feature_columns_)
        self.rules_ = RuleSet(self.config.rules).fit(train)
        self.autoencoder_, self.judge_ = None, None  # `_outputs` without it until it is trained
        reusing = self._reused is not None
        self._reused = {} if reusing else None  # the stages change
        train_features = self.features_.transform(train)
        held_out_features = self.features_.transform(held_out)
        self.autoencoder_inputs_ = self._select_autoencoder_inputs(train_features.scaled_names)
        self.histogram_ = HistogramDetector().fit(train_features.scaled)
        # the label-free outputs but the autoencoder's; fit_judge takes them from here
        partial = self._outputs(events, train_features)
        held_out_partial = self._outputs(held_out_events, held_out_features)
        del train_features, held_out_features
        self.tail_scales_ = {
            name: TailScale().fit(partial.signal(name)) for name in SIGNALS if name != "autoencoder"
        }
        worker = _Alongside(alongside, self) if alongside is not None else None
        try:
            self.autoencoder_ = self._fit_autoencoder(partial, held_out_partial)
        finally:
            if worker is not None:
                worker.join()
        outputs = self._with_autoencoder(events, partial)
        self._reused = {} if reusing else None  # the outputs above lack the autoencoder's
        if reusing:
            self._reused[id(events)] = (events, outputs)
            self._reused[id(held_out_events)] = (
                held_out_events,
                self._with_autoencoder(held_out_events, held_out_partial),
            )
        errors = TailScale().fit(outputs.signal("autoencoder"))
        self.tail_scales_ = {
            name: errors if name == "autoencoder" else self.tail_scales_[name] for name in SIGNALS
        }
        return self

    def _fit_autoencoder(self, train: StageOutputs, held_out: StageOutputs) -> Autoencoder:
        """The autoencoder on the normal-looking rows (`train_on`) of the two parts, or a
        seeded share of them (`max_train_rows`)."""
        columns = self.autoencoder_inputs_
        if self.config.autoencoder.train_on == "rule_normal":
            train_rows, held_out_rows = ~train.rules.pseudo_label, ~held_out.rules.pseudo_label
        else:
            train_rows = np.ones(len(train.rules.score), dtype=bool)
            held_out_rows = np.ones(len(held_out.rules.score), dtype=bool)
        autoencoder = Autoencoder(self.config.autoencoder, seed=self.config.seed)
        rate = autoencoder.training_share(int(train_rows.sum()))
        seed = self.config.seed
        train_inputs = train.features.scaled[sample_rows(train_rows, rate, [seed, 1])][:, columns]
        held_out_at = sample_rows(held_out_rows, rate, [seed, 2])
        held_out_inputs = held_out.features.scaled[held_out_at][:, columns]
        with self.progress.task("autoencoder", self.config.autoencoder.max_epochs) as advance:
            autoencoder.fit(
                train_inputs,
                held_out_inputs,
                on_epoch=lambda epoch, loss, val: advance(epoch, f"val loss {val:.4f}"),
                sample_rate=rate,
            )
        return autoencoder

    def _with_autoencoder(self, events: Columns, partial: StageOutputs) -> StageOutputs:
        """`partial` (outputs without the autoencoder's) completed with the autoencoder's."""
        assert self.autoencoder_ is not None
        scaled = partial.features.scaled[:, self.autoencoder_inputs_]
        error, embedding = self.autoencoder_.transform(scaled)
        return replace(partial, reconstruction_error=error, embedding=embedding)

    def _select_autoencoder_inputs(self, scaled_names: list[str]) -> list[int]:
        """Positions of the inputs named by `autoencoder.inputs` (globs; `z_` prefix dropped)."""
        names = [name.removeprefix("z_") for name in scaled_names]
        chosen = []
        for pattern in self.config.autoencoder.inputs:
            matches = [i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, pattern)]
            if not matches:
                raise InputError(f"autoencoder.inputs: no model input matches '{pattern}'")
            chosen += [i for i in matches if i not in chosen]
        return sorted(chosen)

    def fit_judge(
        self,
        frame: Events,
        validation: Events,
        use_autoencoder: bool = True,
        negative_share: int = 1,
        release_training: bool = False,
    ) -> Detector:
        """Fit the judge on the label source from config and choose its alert threshold on
        validation; needs `fit_unsupervised` first (`negative_share`: `Judge.negative_rate`).
        `release_training`: forget the training part's reused outputs (`reusing_outputs`)
        once its judge inputs and targets are made, before the trees: the batch job needs
        them no more, and on a large log they are 0.6 GiB."""
        self._require_unsupervised()
        truth = self.config.judge.label_source == "truth"
        train = self._events(frame, "training data", require_label=truth)
        held_out = self._events(validation, "validation data", require_label=truth, history=frame)
        self.judge_uses_autoencoder_ = use_autoencoder
        train_outputs, held_out_outputs = self._outputs(train), self._outputs(held_out)
        self.prior_weights_ = self._prior_weights(held_out_outputs)
        inputs, names = self._judge_matrix(train_outputs)
        held_out_inputs, _ = self._judge_matrix(held_out_outputs)
        judge = Judge(self.config.judge, seed=self.config.seed)
        title = "judge" if use_autoencoder else "judge (no autoencoder)"
        reference = self._prior(train_outputs)
        self.mixed_choice_ = None
        if self.config.judge.label_source == "mixed":
            self.mixed_choice_ = self._choose_unlabelled(train, train_outputs, inputs, reference)
        targets = self.training_labels(train, train_outputs, reference)
        held_out_targets = self.training_labels(held_out, held_out_outputs, reference)
        if release_training:
            self.release_outputs(train)
        del train_outputs
        with self.progress.task(title, self.config.judge.n_estimators) as advance:
            judge.fit(
                inputs,
                targets,
                held_out_inputs,
                held_out_targets,
                names,
                on_round=lambda round_: advance(round_, ""),
                sample_weight=self.training_weights(train),
                validation_weight=self.training_weights(held_out),
                negative_share=negative_share,
            )
        self.judge_ = judge
        label = self.config.data.label
        held_out_scores = judge.predict_proba(held_out_inputs)
        self.threshold_, _ = choose_threshold(
            held_out_scores,
            held_out[EVENT_SECONDS].to_numpy(),
            self.config.evaluation,
            held_out[label].to_numpy(np.int8) if truth and label is not None else None,
        )
        # the ablation is an evaluation aid, never saved or monitored: no drift reference
        self.drift_reference_ = (
            DriftReference.fit(
                pd.DataFrame(inputs, columns=names, copy=False),  # views, not 0.6 GiB of copies
                pd.DataFrame(held_out_inputs, columns=names, copy=False),
                score_columns(self._stage_scores(held_out_outputs, held_out_scores)),
            )
            if use_autoencoder
            else None
        )
        return self

    def without_autoencoder_inputs(
        self, frame: Events, validation: Events, negative_share: int = 1
    ) -> Detector:
        """Ablation: the same detector with a judge that never sees the autoencoder, in its
        inputs or in its label-free prior. The original detector is left unchanged.
        `negative_share`: where its negatives exceed `judge.max_negatives`, it fits on
        1 / this of them (a cheaper evaluation aid, `Judge.negative_rate`). Needs no
        autoencoder unless the prior has no other signal (`reads_autoencoder`), so it can
        be fitted while the autoencoder trains (`fit_unsupervised`'s `alongside`)."""
        ablation = copy.copy(self)
        return ablation.fit_judge(
            frame, validation, use_autoencoder=False, negative_share=negative_share
        )

    def reads_autoencoder(self, use_autoencoder: bool) -> bool:
        """Whether a judge with (or without) the autoencoder's input reads its output: in its
        inputs, or in its prior (`prior_signals`)."""
        return use_autoencoder or "autoencoder" in self._signals(use_autoencoder)

    def training_labels(
        self, events: pd.DataFrame, outputs: StageOutputs, reference: np.ndarray
    ) -> np.ndarray:
        """The judge's targets: the label column in `truth` mode; otherwise soft targets from
        the label-free prior, against the training prior `reference` (hybrid_ad.stages.label_free),
        replaced in `mixed` mode by the known label (0/1) where `known_labels` has the event
        (`hybrid_ad.stages.mixed_labels`: and by 0 elsewhere where `unlabelled` is, or `auto`
        chose, `zero`)."""
        if self.config.judge.label_source == "truth":
            return events[self.config.data.label].to_numpy(np.int8)
        contamination = self.config.judge.pseudo.contamination_range
        targets = soft_targets(self._prior(outputs), reference, contamination)
        if self.config.judge.label_source == "mixed":
            mixed = self.config.judge.mixed
            known = self.known_labels_for(events)
            if mixed.unlabelled == "auto":
                if self.mixed_choice_ is None:
                    raise RuntimeError("judge.mixed.unlabelled: auto is chosen in fit_judge")
                choice = self.mixed_choice_
            else:
                choice = configured_unlabelled(mixed, self._any_known_positive())
            targets = mixed_targets(targets, known, choice.unlabelled)
        return targets

    def _any_known_positive(self) -> bool:
        assert self.known_labels is not None
        return bool((self.known_labels == 1).any())

    def _choose_unlabelled(
        self, events: pd.DataFrame, outputs: StageOutputs, inputs: np.ndarray, reference: np.ndarray
    ) -> UnlabelledChoice:
        """`mixed` mode: the unlabelled events' target (`choose_unlabelled`: with `auto`,
        compared on the training part's known labels alone)."""
        contamination = self.config.judge.pseudo.contamination_range
        soft = soft_targets(self._prior(outputs), reference, contamination)
        known = self.known_labels_for(events)
        return choose_unlabelled(
            inputs, soft, known, self.config.judge, self.config.seed, self._any_known_positive()
        )

    def training_weights(self, events: pd.DataFrame) -> np.ndarray | None:
        """Sample weights in `mixed` mode (`hybrid_ad.stages.mixed_labels.mixed_weights`: the
        known labels a fixed share of the total); None (every event alike) otherwise."""
        if self.config.judge.label_source != "mixed":
            return None
        return mixed_weights(self.known_labels_for(events), self.config.judge.mixed)

    def known_labels_for(self, events: pd.DataFrame) -> np.ndarray:
        """Each event's label from `known_labels` by event id, NaN where unknown. The label
        column is not read: the ids come from the event time, features and keys (or the
        configured id column)."""
        if self.known_labels is None:
            raise InputError(
                "judge.label_source: mixed takes its labels from a label store "
                "(hybrid-ad retrain --store PATH), and none was given"
            )
        ids = self.label_ids(events, "training data")
        return ids.map(self.known_labels).to_numpy(np.float64)

    def label_ids(self, events: pd.DataFrame, source: str) -> pd.Series:
        """The event ids labels are joined by: the configured id column, else the id derived
        from the event time, entity keys and the model's feature columns (not the label)."""
        data = self.config.data
        assert self.feature_columns_ is not None
        identity = (
            [data.event_id]
            if data.event_id is not None
            else [data.timestamp, *data.entity_keys, *self.feature_columns_]
        )
        return event_ids(events[identity], data, source)

    def prior_signals(self) -> list[str]:
        """The label-free signals the judge's prior combines (the ablation drops the
        autoencoder's)."""
        return self._signals(self.judge_uses_autoencoder_)

    def _signals(self, use_autoencoder: bool) -> list[str]:
        signals = list(self.config.judge.pseudo.signals)
        if not use_autoencoder and len(signals) > 1:
            signals = [name for name in signals if name != "autoencoder"]
        return signals

    def _prior_weights(self, held_out: StageOutputs) -> dict[str, float]:
        """Each prior signal's weight (`judge.pseudo.weighting`), from validation events
        without their labels: decorrelated by the signals' rank correlations (times their top
        events' neighbour purity with `purity`), or equal."""
        surprises = {name: self._surprise(held_out, name) for name in self.prior_signals()}
        weighting = self.config.judge.pseudo.weighting
        if weighting == "equal":
            return {name: 1.0 / len(surprises) for name in surprises}
        if weighting == "purity":
            space = held_out.features.scaled
            return purity_weights(space, surprises, self.config.seed)[0]
        return decorrelated_weights(surprises)

    def _prior(self, outputs: StageOutputs) -> np.ndarray:
        """`judge.pseudo.combination` of the signals' surprises: the harmonic mean p of their
        mid-p tail shares, or the mean of their surprises (hybrid_ad.stages.label_free)."""
        signals = self.prior_signals()
        weights = self.prior_weights_
        if weights is None or set(weights) != set(signals):
            raise RuntimeError("Detector has no prior weights for its signals: call fit_judge")
        combination = self.config.judge.pseudo.combination
        assert self.tail_scales_ is not None
        surprises = {
            name: self.tail_scales_[name].mid_surprise(outputs.signal(name))
            if combination == "harmonic"
            else self._surprise(outputs, name)
            for name in signals
        }
        return prior(surprises, weights, combination)

    def _surprise(self, outputs: StageOutputs, name: str) -> np.ndarray:
        assert self.tail_scales_ is not None
        return self.tail_scales_[name].transform(outputs.signal(name))

    # -- scoring ------------------------------------------------------------------------------

    def score(
        self, frame: Events, source: str = "input", history: Events | None = None
    ) -> pd.DataFrame:
        """One row per input event, in input order: judge probability and stage outputs.

        Behavioural features see `history` (earlier events, not scored) and `frame` itself.
        """
        return self._score_events(self._events(frame, source, history=history))

    def _score_events(self, events: pd.DataFrame) -> pd.DataFrame:
        scored = score_prepared(self, events)
        result = pd.DataFrame(index=events.index)
        result["score"] = scored.score
        if self.threshold_ is not None:
            result["alert"] = scored.alert
        result["rule_score"] = scored.rule_score
        result["reconstruction_error"] = scored.reconstruction_error
        result["histogram_score"] = scored.histogram_score
        result["rules_hit"] = scored.rules_hit
        result["clipped"] = scored.clipped
        return result

    def explain(
        self,
        frame: Events,
        source: str = "input",
        history: Events | None = None,
        contributions: Contributions = "exact",
    ) -> pd.DataFrame:
        """Why each event scored as it did: one JSON `reasons` string per event, in input order.

        The rules that fired with their reasons; the judge's top contributions (XGBoost
        `pred_contribs`: input, its value, signed contribution to the log-odds, which with
        the bias sum to the margin; exact TreeSHAP, or `contributions="approximate"`: Saabas
        path attribution, what the live path gives by default); the autoencoder's
        worst-reconstructed inputs.
        """
        events = self._events(frame, source, history=history)
        reasons = score_prepared(self, events, explain="all", contributions=contributions).reasons
        return pd.DataFrame({"reasons": reasons}, index=events.index)

    def monitored(
        self, frame: Events, source: str = "input", history: Events | None = None
    ) -> pd.DataFrame:
        """What drift monitoring watches, per event, in input order: every judge input by
        name and each stage's output as `score:<stage>` (`hybrid_ad.monitoring.reference`)."""
        events = self._events(frame, source, history=history)
        outputs = self._outputs(events)
        inputs, names = self._judge_matrix(outputs)
        scores = self._stage_scores(outputs, self._fitted_judge().predict_proba(inputs))
        values = pd.concat([pd.DataFrame(inputs, columns=names), score_columns(scores)], axis=1)
        return values.set_axis(events.index)

    def stage_scores(
        self, frame: Events, source: str = "input", history: Events | None = None
    ) -> dict[str, np.ndarray]:
        """Each stage's score per event, in input order: the label-free signals (`SIGNALS`,
        raw) and `judge`, the probability. What the review queue chooses by, without the
        per-event text of `score` or the judge inputs of `monitored`."""
        events = self._events(frame, source, history=history)
        outputs = self._outputs(events)
        inputs, _ = self._judge_matrix(outputs)
        return self._stage_scores(outputs, self._fitted_judge().predict_proba(inputs))

    @staticmethod
    def _stage_scores(outputs: StageOutputs, judge: np.ndarray) -> dict[str, np.ndarray]:
        return {**{name: outputs.signal(name) for name in SIGNALS}, "judge": judge}

    def predict_proba(self, frame: Events) -> np.ndarray:
        """scikit-learn convention: columns are P(normal), P(anomaly)."""
        anomaly = self.score(frame)["score"].to_numpy()
        return np.column_stack([1.0 - anomaly, anomaly])

    def decision_function(self, frame: Events) -> np.ndarray:
        """Higher is more anomalous: the judge probability."""
        return self.score(frame)["score"].to_numpy()

    def embed(
        self, frame: Events, source: str = "input", history: Events | None = None
    ) -> pd.DataFrame:
        """Autoencoder outputs per event: reconstruction error and latent coordinates."""
        events = self._events(frame, source, history=history)
        outputs = self._outputs(events)
        latent = pd.DataFrame(
            outputs.embedding,
            index=events.index,
            columns=[f"latent_{i}" for i in range(outputs.embedding.shape[1])],
        )
        latent.insert(0, "reconstruction_error", outputs.reconstruction_error)
        return latent

    def rule_alerts(self, rule_score: np.ndarray) -> np.ndarray:
        """The rules' own alert decision for rule scores from `score`."""
        self._require_unsupervised()
        assert self.rules_ is not None
        return self.rules_.alerts(rule_score)

    def stage_outputs(
        self, frame: Events, source: str = "input", history: Events | None = None
    ) -> StageOutputs:
        """The label-free stages' outputs, for evaluation and inspection."""
        return self._outputs(self._events(frame, source, history=history))

    def live(self, history: Events | None = None, state: bytes | None = None) -> LiveScorer:
        """A scorer for events as they arrive, in micro-batches or one at a time: its
        behavioural state warmed up on `history`, or restored from a `LiveScorer.checkpoint`."""
        from hybrid_ad.core.live import LiveScorer

        self._fitted_judge()
        return LiveScorer(self, history, state)

    def label_free_outputs(self, events: Columns) -> StageOutputs:
        """The label-free stages on prepared events (a frame, or a mapping of columns): the
        first step of the scoring core (`hybrid_ad.core.scoring`)."""
        return self._outputs(events)

    def judge_inputs(self, outputs: StageOutputs) -> tuple[np.ndarray, list[str]]:
        """The judge's input matrix and its column names, from the label-free outputs."""
        return self._judge_matrix(outputs)

    def fitted_judge(self) -> Judge:
        """The judge; a NotFittedError before `fit` / `fit_judge`."""
        return self._fitted_judge()

    def _outputs(self, events: Columns, features: FeatureMatrix | None = None) -> StageOutputs:
        """The label-free stages on `events` (`features`: their feature matrix, if at hand)."""
        self._require_unsupervised()
        assert self.features_ and self.rules_ and self.histogram_
        reused = None if self._reused is None else self._reused.get(id(events))
        if reused is not None and reused[0] is events:
            return reused[1]
        unlabelled = self._unlabelled(events)
        if features is None:
            features = self.features_.transform(unlabelled)
        error, embedding = None, None  # within `fit_unsupervised`, until the autoencoder trains
        if self.autoencoder_ is not None:
            scaled = features.scaled[:, self.autoencoder_inputs_]
            error, embedding = self.autoencoder_.transform(scaled)
        histogram = self.histogram_.decision_function(features.scaled)
        outputs = StageOutputs(
            features, self.rules_.evaluate(unlabelled), error, embedding, histogram
        )
        if self._reused is not None:
            self._reused[id(events)] = (events, outputs)
        return outputs

    def _unlabelled(self, events: Columns) -> Columns:
        """The events without the label and kind columns: label-free stages cannot read them."""
        hidden = [self.config.data.label, self.config.evaluation.kind_column]
        present = [column for column in hidden if column is not None and column in events]
        if not present:
            return events
        if isinstance(events, pd.DataFrame):
            return events.drop(columns=present)
        return {name: values for name, values in events.items() if name not in present}

    def _judge_matrix(self, outputs: StageOutputs) -> tuple[np.ndarray, list[str]]:
        """Everything the earlier stages know, by name. The autoencoder's latent code is left
        out: its coordinates have no meaning a reason could name.

        Filled into one float32 array in place (the same rounding as casting each part), with
        the names worked out once per layout of the parts: a one-event batch spent more on
        the hstack and the names than on the values."""
        features, rules = outputs.features, outputs.rules
        surprises = ["autoencoder"] if self.judge_uses_autoencoder_ else []
        surprises.append("histogram")
        key = (features.scaled_names, features.engineered_names, rules.names, len(surprises))
        cached = self._judge_names
        if cached is None or not all(a is b for a, b in zip(cached[0], key, strict=True)):
            names = [*features.scaled_names, *features.engineered_names]
            names += [f"{name}_surprise" for name in surprises]
            names += [*(f"rule_{name}" for name in rules.names), "rule_score"]
            self._judge_names = cached = (key, names)
        names = cached[1]
        matrix = np.empty((len(rules.score), len(names)), dtype=np.float32)
        at = features.scaled.shape[1]
        matrix[:, :at] = features.scaled
        matrix[:, at : at + features.engineered.shape[1]] = features.engineered
        at += features.engineered.shape[1]
        for name in surprises:
            matrix[:, at] = self._surprise(outputs, name)
            at += 1
        matrix[:, at : at + len(rules.names)] = rules.hits
        matrix[:, -1] = rules.score
        return matrix, list(names)

    def feature_importance(self) -> dict[str, float]:
        """The judge's normalised total gain per input."""
        return self._fitted_judge().feature_importance()

    def training_summary(self) -> dict[str, Any]:
        """How long each model trained, for the report and the manifest."""
        self._require_unsupervised()
        assert self.autoencoder_ is not None
        history = self.autoencoder_.history_
        return {
            "autoencoder_epochs": len(history),
            "autoencoder_best_validation_loss": min(h["validation_loss"] for h in history),
            "judge_best_round": self._fitted_judge().best_round,
            "judge_scale_pos_weight": self._fitted_judge().scale_pos_weight_,
            **self.sampling(),
            "prior_weights": self.prior_weights_,
        }

    def sampling(self) -> dict[str, float]:
        """The shares of their candidate rows the models were fitted on (1: all): the
        autoencoder's of its normal-looking rows, the judge's of its target-0 events."""
        assert self.autoencoder_ is not None
        rates = {"autoencoder_sample_rate": self.autoencoder_.sample_rate_}
        if self.judge_ is not None:
            rates["judge_negative_rate"] = self.judge_.sample_rate_
        return rates

    # -- helpers ------------------------------------------------------------------------------

    def _events(
        self,
        frame: Events,
        source: str,
        require_label: bool = False,
        history: Events | None = None,
    ) -> pd.DataFrame:
        """Validated events with behavioural columns; prepared events are taken as they are."""
        if isinstance(frame, PreparedEvents):
            prepared = frame
            label = self.config.data.label
            if require_label and (label is None or label not in frame.frame.columns):
                raise InputError(f"{frame.source}: this step needs the label column (data.label)")
        else:
            prepared = prepare_events(
                frame, self.config, source, require_label=require_label, history=history
            )
        if self.feature_columns_ is None:
            self.feature_columns_ = prepared.feature_columns
        elif set(prepared.feature_columns) != set(self.feature_columns_):
            # matched by name: the model reads its columns by name, in its own order
            missing = [
                name for name in self.feature_columns_ if name not in prepared.feature_columns
            ]
            extra = [name for name in prepared.feature_columns if name not in self.feature_columns_]
            differences = [
                f"{kind} {', '.join(repr(name) for name in names)}"
                for kind, names in (("missing", missing), ("extra", extra))
                if names
            ]
            raise InputError(
                f"{prepared.source}: feature columns differ from the ones the model was fitted "
                f"on: {'; '.join(differences)}"
            )
        return prepared.frame

    def _train_validation(self, frame: Events, validation: Events | None) -> tuple[Events, Events]:
        if validation is not None:
            return frame, validation
        events = self._events(frame, "training data")
        split = self.config.data.split
        holdout = split.validation / (split.train + split.validation)
        ordered = events.sort_values(EVENT_SECONDS, kind="stable")
        cut = round(len(ordered) * (1 - holdout))
        if cut < 1 or cut >= len(ordered):
            raise InputError("training data: too few events to hold out a validation part")
        assert self.feature_columns_ is not None
        prepared = PreparedEvents(ordered, self.feature_columns_, "training data")
        return prepared.rows(0, cut), prepared.rows(cut, len(ordered))

    def _require_unsupervised(self) -> None:
        if self.features_ is None or self.rules_ is None or self.histogram_ is None:
            raise NotFittedError("Detector is not fitted: call fit (or fit_unsupervised) first")

    def _fitted_judge(self) -> Judge:
        if self.judge_ is None:
            raise NotFittedError("Detector has no judge yet: call fit (or fit_judge) first")
        return self.judge_

    # -- persistence --------------------------------------------------------------------------

    def save(
        self,
        directory: str | Path,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        """Write the fitted detector: JSON, safetensors and XGBoost JSON, with a manifest
        (`lineage`: where a retrained model came from, recorded as the manifest's `retrain`)."""
        self._require_unsupervised()
        assert self.features_ and self.rules_ and self.autoencoder_ and self.histogram_
        assert self.tail_scales_ is not None
        weights, autoencoder_meta = self.autoencoder_.to_bytes()
        state = {
            "feature_columns": self.feature_columns_,
            "judge_uses_autoencoder": self.judge_uses_autoencoder_,
            "prior_weights": self.prior_weights_,
            "threshold": self.threshold_,
            "autoencoder_inputs": self.autoencoder_inputs_,
        }
        label_free = {
            "histogram": self.histogram_.to_dict(),
            "tail_scales": {name: scale.to_dict() for name, scale in self.tail_scales_.items()},
        }
        files = {
            "config.json": _json_bytes(config_to_dict(self.config)),
            "detector.json": _json_bytes(state),
            "features.json": _json_bytes(self.features_.to_dict()),
            "rules.json": _json_bytes(
                {**self.rules_.to_dict(), "described": self.rules_.describe()}
            ),
            "autoencoder.safetensors": weights,
            "autoencoder.json": autoencoder_meta,
            "label_free.json": _json_bytes(label_free),
        }
        if self.judge_ is not None:
            files["judge.json"] = self.judge_.to_bytes()
        if self.drift_reference_ is not None:
            files[REFERENCE_FILE] = self.drift_reference_.to_bytes()
        manifest = {
            "package": "hybrid-ad",
            "package_version": hybrid_ad.__version__,
            "versions": library_versions(),
            "config": config_to_dict(self.config),
            "data_sha256": self.data_sha256_,
            "seed": self.config.seed,
            "sampling": self.sampling(),
            "metrics": metrics,
        }
        if lineage is not None:
            manifest["retrain"] = lineage
        write_model_dir(directory, files, manifest)

    @classmethod
    def load(cls, directory: str | Path, progress: ProgressReporter = QUIET) -> Detector:
        """Load a saved detector after checking every file against the manifest."""
        manifest, files = read_model_dir(directory)
        try:
            config = config_from_dict(_json(files, "config.json"), f"{directory}/config.json")
            state = _json(files, "detector.json")
            detector = cls(config, progress)
            detector.feature_columns_ = [str(name) for name in state["feature_columns"]]
            detector.judge_uses_autoencoder_ = bool(state["judge_uses_autoencoder"])
            detector.prior_weights_ = _saved_prior_weights(state.get("prior_weights"))
            threshold = state["threshold"]
            detector.threshold_ = None if threshold is None else _finite(threshold)
            detector.autoencoder_inputs_ = [int(i) for i in state["autoencoder_inputs"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{directory}/detector.json: malformed ({exc})") from None
        detector.features_ = FeatureBuilder.from_dict(
            config.features, _json(files, "features.json")
        )
        if detector.features_.columns_ != detector.feature_columns_:
            raise ArtifactError(
                f"{directory}/features.json: scaler columns differ from detector.json's"
            )
        detector.rules_ = RuleSet.from_dict(config.rules, _json(files, "rules.json"))
        detector.autoencoder_ = Autoencoder.from_bytes(
            config.autoencoder,
            _file(files, "autoencoder.safetensors"),
            _json(files, "autoencoder.json"),
        )
        chosen = detector.autoencoder_inputs_
        if not chosen or any(not 0 <= i < detector.features_.n_scaled for i in chosen):
            raise ArtifactError(f"{directory}/detector.json: autoencoder_inputs out of range")
        if detector.autoencoder_.n_inputs_ != len(chosen):
            raise ArtifactError(
                f"{directory}/autoencoder.json: {detector.autoencoder_.n_inputs_} inputs, "
                f"but detector.json's autoencoder_inputs name {len(chosen)}"
            )
        label_free = _json(files, "label_free.json")
        if not isinstance(label_free, dict) or not isinstance(label_free.get("tail_scales"), dict):
            raise ArtifactError(f"{directory}/label_free.json: malformed")
        n_scaled = detector.features_.n_scaled
        detector.histogram_ = HistogramDetector.from_dict(label_free.get("histogram"), n_scaled)
        scales = label_free["tail_scales"]
        missing = [name for name in SIGNALS if name not in scales]
        if missing:
            raise ArtifactError(f"{directory}/label_free.json: no tail scale for '{missing[0]}'")
        detector.tail_scales_ = {name: TailScale.from_dict(scales[name], name) for name in SIGNALS}
        if "judge.json" in files:
            detector.judge_ = Judge.from_bytes(config.judge, files["judge.json"], config.seed)
        if REFERENCE_FILE in files:
            source = f"{directory}/{REFERENCE_FILE}"
            detector.drift_reference_ = DriftReference.from_bytes(files[REFERENCE_FILE], source)
        detector.data_sha256_ = manifest.get("data_sha256")
        return detector


def library_versions() -> dict[str, str]:
    """Versions that decide whether a saved model reproduces its scores."""
    import pyod
    import sklearn
    import torch
    import xgboost

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "torch": torch.__version__,
        "xgboost": xgboost.__version__,
        "scikit-learn": sklearn.__version__,
        "pyod": pyod.__version__,
    }


def _json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _file(files: dict[str, bytes], name: str) -> bytes:
    if name not in files:
        raise ArtifactError(f"saved model lacks {name}")
    return files[name]


def _json(files: dict[str, bytes], name: str) -> dict[str, Any]:
    try:
        payload = json.loads(_file(files, name))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ArtifactError(f"{name}: not valid JSON") from None
    if not isinstance(payload, dict):
        raise ArtifactError(f"{name}: expected a JSON object, got {type(payload).__name__}")
    return payload


def _saved_prior_weights(value: Any) -> dict[str, float] | None:
    """The saved prior weights: None (a model saved before fit_judge), or one finite weight
    per known signal."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value or not set(value) <= set(SIGNALS):
        raise ValueError(f"prior_weights {value!r} does not weigh the signals {list(SIGNALS)}")
    return {str(name): _finite(weight) for name, weight in value.items()}


def _finite(value: Any) -> float:
    """A number from a model file; bool, text and NaN are malformed."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def require_judge(detector: Detector, model_dir: Path) -> None:
    """A model saved by `train-ae` alone cannot score: say which step is missing."""
    if detector.judge_ is None:
        raise ArtifactError(
            f"{model_dir}: the model has no judge yet: run train-judge (or run) first"
        )
