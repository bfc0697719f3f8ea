"""Typed configuration: YAML files validated into pydantic models that reject unknown keys.

A section of `config.yaml` may be written inline or as the path of a YAML file of its own,
relative to the config file (`rules: rules.yaml`), so each step can keep its own file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybrid_ad.behavioural.batch import BehaviouralConfig
from hybrid_ad.errors import ConfigError, format_validation_error

SECTIONS = ("data", "rules", "features", "autoencoder", "judge", "evaluation", "artifacts")
MAX_WIDTH = 4096
"""Widest autoencoder layer: a [1e8] layer allocated 19 GB in a minute."""
MAX_THREADS = 256


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored, and numbers
    are finite (every numeric key also has a range: a typo like `max_depth: 1e12` is refused
    before any work, not after an hour of training or a 20 GB allocation)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SplitConfig(StrictModel):
    """Time-ordered split fractions, in row order after sorting by timestamp."""

    train: float = Field(0.6, gt=0, lt=1)
    validation: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        return self


class DataConfig(StrictModel):
    """Where the events are and which role each column plays."""

    path: Path = Path("data/demo/creditcard_50k.csv.gz")
    timestamp: str = "Time"
    timestamp_unit: Literal["s", "ms", "datetime"] = Field(
        "s", description="numeric seconds, numeric milliseconds, or parseable date-times"
    )
    label: str | None = "Class"
    features: list[str] = Field(
        default_factory=lambda: ["V*", "Amount"],
        min_length=1,
        description="column names or glob patterns (`V*`), in the order given",
    )
    entity_keys: list[str] = Field(default_factory=list)
    event_id: str | None = Field(
        None,
        description="column holding each event's unique id (never a model input); without it, "
        "ids are derived from the event (hybrid_ad.data.event_ids)",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _event_id_has_its_own_column(self) -> DataConfig:
        if self.event_id is not None and self.event_id in {
            self.timestamp,
            self.label,
            *self.entity_keys,
        }:
            raise ValueError(f"event_id: '{self.event_id}' already has another role")
        return self


# --- rules ------------------------------------------------------------------------------------


class QuantileRef(StrictModel):
    """A threshold learned from the training split: the q-quantile of the feature."""

    quantile: float = Field(ge=0, le=1)


class MeanPlusStdRef(StrictModel):
    """A threshold learned from the training split: mean + k standard deviations."""

    mean_plus_std: float = Field(ge=-1e6, le=1e6)


class Threshold(StrictModel):
    feature: str
    op: Literal[">", ">=", "<", "<="]
    value: float | QuantileRef | MeanPlusStdRef


class ZScore(StrictModel):
    """|z| of one feature (training mean and std) above a bound."""

    feature: str
    abs_above: float = Field(gt=0, le=1e6)


class CountExtreme(StrictModel):
    """At least `at_least` of the named features have |z| above `abs_z_above`."""

    features: list[str] = Field(min_length=1, description="names or glob patterns")
    abs_z_above: float = Field(gt=0, le=1e6)
    at_least: int = Field(ge=1, le=100_000)


class HourOfDay(StrictModel):
    """Hour of day in [start, end); wraps past midnight when start > end (22 -> 4)."""

    start: float = Field(ge=0, lt=24)
    end: float = Field(ge=0, le=24)


class Condition(StrictModel):
    """Exactly one of the condition kinds; `all`, `any` and `not` combine others."""

    threshold: Threshold | None = None
    zscore: ZScore | None = None
    count_extreme: CountExtreme | None = None
    hour_of_day: HourOfDay | None = None
    all: list[Condition] | None = Field(None, min_length=1)
    any: list[Condition] | None = Field(None, min_length=1)
    not_: Condition | None = Field(None, alias="not")

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Condition:
        given = [name for name, value in self if value is not None]
        if len(given) != 1:
            kinds = "threshold, zscore, count_extreme, hour_of_day, all, any, not"
            raise ValueError(f"a condition needs exactly one of {kinds}; got {given or 'none'}")
        return self


class Rule(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    weight: float = Field(1.0, gt=0, le=1e6)
    reason: str = Field(min_length=1)
    when: Condition


class RulesConfig(StrictModel):
    """Domain rules; an event whose summed hit weight reaches the threshold is pseudo-anomalous."""

    pseudo_label_threshold: float = Field(2.0, gt=0, le=1e6)
    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Rule]) -> list[Rule]:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        return rules


# --- features, models, evaluation ---------------------------------------------------------------


class FeaturesConfig(StrictModel):
    log_scale: list[str] = Field(
        default_factory=lambda: ["Amount"], description="features passed through log1p first"
    )
    hour_of_day: bool = True
    calendar: list[Literal["weekend", "night"]] = Field(
        default_factory=list,
        description="0/1 inputs from the event time (UTC; numeric seconds as epoch seconds): "
        "weekend = Saturday or Sunday, night = hour in night_hours",
    )
    night_hours: HourOfDay = Field(default_factory=lambda: HourOfDay(start=0, end=6))
    extreme_z: float = Field(
        3.0, gt=0, le=1e6, description="|z| above which a component is extreme"
    )
    behavioural: BehaviouralConfig | None = Field(
        None,
        description="features of each event against its entity's history (docs/"
        "behavioural_features.md); value columns and entity keys name data columns",
    )

    @field_validator("calendar")
    @classmethod
    def _unique_flags(cls, flags: list[str]) -> list[str]:
        if len(set(flags)) < len(flags):
            raise ValueError("each calendar flag at most once")
        return flags


class AutoencoderConfig(StrictModel):
    inputs: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description="which model inputs the autoencoder sees: feature columns, behavioural "
        "features and hour_sin / hour_cos, by name or glob",
    )
    hidden_layers: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=lambda: [64, 32], max_length=16
    )
    latent_dim: int = Field(16, ge=1, le=MAX_WIDTH)
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    learning_rate: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-5, ge=0, le=10)
    batch_size: int = Field(1024, ge=1, le=1 << 20, description="the largest batch")
    min_steps_per_epoch: int = Field(
        100,
        ge=1,
        le=1 << 20,
        description="on small data batches shrink (to no fewer than 32 events) so that every "
        "epoch takes at least this many optimiser steps",
    )
    input_scaling: Literal["robust", "as_features"] = Field(
        "robust",
        description="robust: each input centred on its training median and divided by its "
        "IQR / 1.349, then clipped to +-input_clip, so heavy-tailed inputs cannot dominate "
        "the loss and the score; as_features: the feature stage's z-scores unchanged",
    )
    input_clip: float = Field(5.0, gt=0, le=1e6, description="robust units (input_scaling: robust)")
    max_epochs: int = Field(40, ge=1, le=10_000)
    patience: int = Field(5, ge=1, le=10_000, description="epochs without validation improvement")
    error_metric: Literal["l2", "l1"] = "l2"
    train_on: Literal["rule_normal", "all"] = "rule_normal"
    max_train_rows: int | None = Field(
        262_144,
        ge=1,
        description="the network trains (and early-stops) on a seeded uniform sample of this "
        "many of its rows when it has more (the rate is recorded in the model), in batches "
        "shrunk by the rate so that an epoch keeps the whole data's optimiser steps; null: all",
    )
    threads: int = Field(
        1, ge=1, le=MAX_THREADS, description="torch threads; small dense layers run fastest on one"
    )


class PseudoLabelConfig(StrictModel):
    """How the judge learns without labels (hybrid_ad.stages.label_free); one default for all data.

    Each signal's score becomes a tail share (a p-value) against the training events; the
    prior combines them (`combination`, weights from the signals' rank correlations and the
    neighbour purity of their top events on validation, `weighting`), and the judge's target
    is the share of contamination rates in `contamination_range` (log-uniform) at which an
    event is in the prior's top.
    """

    signals: list[Literal["rules", "autoencoder", "histogram"]] = Field(
        default_factory=lambda: ["rules", "autoencoder", "histogram"],
        min_length=1,
        description="label-free signals combined into the prior",
    )
    weighting: Literal["purity", "decorrelated", "equal"] = Field(
        "purity",
        description="purity: the decorrelated weights times each signal's neighbour purity on "
        "validation, the share of its top events' nearest neighbours that it also ranks at "
        "the top (an anomaly mechanism makes groups of similar events; a detector's noise "
        "outliers are scattered); decorrelated: weights C^-1 1 from the signals' rank "
        "correlations C on validation, so signals that rank events alike share one vote; "
        "equal: the plain mean (all label-free)",
    )
    combination: Literal["mean", "harmonic"] = Field(
        "mean",
        description="mean: the weighted mean of the signals' surprises -log p (Fisher's "
        "combination), which rewards views that agree; harmonic: the weighted harmonic mean of "
        "their mid-p tail shares, where one view that finds an event very rare is enough "
        "(measured: a better prior, not a better judge; BENCHMARKS.md)",
    )
    contamination_range: tuple[float, float] = Field(
        (0.001, 0.1),
        description="the shares of anomalous events considered possible, low and high; the "
        "target averages over rates log-uniform between them",
    )

    @field_validator("signals")
    @classmethod
    def _distinct_signals(cls, signals: list[str]) -> list[str]:
        if len(set(signals)) < len(signals):
            raise ValueError("each signal may be listed once")
        return signals

    @field_validator("contamination_range")
    @classmethod
    def _range_in_unit_interval(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        low, high = bounds
        if not 0 < low < high < 1:
            raise ValueError("contamination_range needs 0 < low < high < 1")
        return bounds


class MixedLabelConfig(StrictModel):
    """`label_source: mixed`: analysts' labels where the label store knows the event, the
    label-free soft targets elsewhere (hybrid_ad.stages.mixed_labels)."""

    label_weight: float | None = Field(
        10.0,
        gt=0,
        description="sample weight of a labelled event (label-free targets weigh 1); null: "
        "label_share decides",
    )
    label_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="with label_weight null: the known labels' share of the part's total "
        "training weight, split evenly among them",
    )
    unlabelled: Literal["auto", "soft", "zero"] = Field(
        "auto",
        description="target of an event without a label: soft (the label-free target), "
        "zero (taken as normal, PU-style), or auto: at each fit, the one whose judge ranks "
        "held-out known labels better (cross-validated on the known labels only)",
    )


class JudgeConfig(StrictModel):
    label_source: Literal["pseudo", "truth", "mixed"] = Field(
        "pseudo",
        description="pseudo: label-free; truth: the label column; mixed: a label store's "
        "labels where known, label-free targets elsewhere (never the label column)",
    )
    n_estimators: int = Field(600, ge=1, le=100_000)
    learning_rate: float = Field(0.05, gt=0, le=1)
    max_depth: int = Field(6, ge=1, le=24)
    min_child_weight: float = Field(1.0, ge=0, le=1e6)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0, le=1e6)
    early_stopping_rounds: int = Field(50, ge=1, le=100_000)
    eval_metric: Literal["logloss", "aucpr"] = Field(
        "logloss", description="validation metric for early stopping"
    )
    scale_pos_weight: Annotated[float, Field(gt=0, le=1e6)] | Literal["auto"] = "auto"
    negative_sample_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="share of the training events with target 0 the judge fits on, every "
        "event with a positive target kept; its probabilities are corrected for the rate "
        "(1 = no sampling)",
    )
    max_negatives: int | None = Field(
        200_000,
        ge=1,
        description="at most this many target-0 events are fitted on: above it, the rate is "
        "lowered to max_negatives / their number (recorded, corrected); null: no cap",
    )
    threads: int = Field(2, ge=1, le=MAX_THREADS)
    pseudo: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)
    mixed: MixedLabelConfig = Field(default_factory=MixedLabelConfig)


class EvaluationConfig(StrictModel):
    """How alerts are decided and how every stage is measured on the test split."""

    precision_at_k: int = Field(100, ge=1, le=10_000_000)
    threshold_policy: Literal["alert_budget", "best_f1"] = Field(
        "alert_budget",
        description="alert_budget: the score giving the analysts' capacity of alerts on "
        "validation, from ranks alone (label-free); best_f1: best F1 on validation labels "
        "(truth mode only)",
    )
    alerts_per_day: float | None = Field(
        None, gt=0, le=1e9, description="analyst capacity in alerts per day of event time"
    )
    alert_rate: float = Field(
        0.01, gt=0, lt=1, description="share of events alerted when alerts_per_day is not set"
    )
    kind_column: str | None = Field(
        None, description="column naming each labelled anomaly's kind: recall per kind"
    )
    report: bool = True


class ArtifactsConfig(StrictModel):
    out_dir: Path = Path("artifacts")


class Config(StrictModel):
    seed: int = Field(42, ge=0, le=2**32 - 1)
    data: DataConfig = Field(default_factory=DataConfig)
    rules: RulesConfig
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)

    @model_validator(mode="after")
    def _label_free_stays_label_free(self) -> Config:
        label, kind = self.data.label, self.evaluation.kind_column
        mode = self.judge.label_source
        if mode != "truth" and self.evaluation.threshold_policy == "best_f1":
            raise ValueError(
                f"evaluation.threshold_policy: best_f1 reads validation labels, and {mode} mode "
                "never reads the label column: use alert_budget, or judge.label_source: truth"
            )
        for role, column in (("data.label", label), ("evaluation.kind_column", kind)):
            if column is None:
                continue
            for where, name in _named_columns(self):
                if name == column:
                    raise ValueError(
                        f"{where}: '{name}' is the {role} column; models and rules never "
                        "read it (it would leak the answer into training and scoring)"
                    )
        return self

    @model_validator(mode="after")
    def _behaviour_fits_the_data(self) -> Config:
        behavioural = self.features.behavioural
        if behavioural is None:
            return self
        for column in behavioural.entity_columns:
            if column not in self.data.entity_keys:
                where = next(
                    (
                        f"distinct[{index}].column"
                        for index, spec in enumerate(behavioural.distinct)
                        if spec.column == column
                    ),
                    "entity_keys",
                )
                raise ValueError(
                    f"features.behavioural.{where}: '{column}' must also be listed in "
                    "data.entity_keys (entity columns are never model inputs)"
                )
        if behavioural.label_risk is not None:
            if self.data.label is None:
                raise ValueError("features.behavioural.label_risk needs data.label")
            if self.judge.label_source != "truth":
                raise ValueError(
                    "features.behavioural.label_risk reads the label column, and "
                    f"{self.judge.label_source} mode never does: "
                    "use judge.label_source: truth, or drop label_risk"
                )
        return self


def _named_columns(config: Config) -> list[tuple[str, str]]:
    """(config key, column) for every column a model input or a rule names explicitly."""
    named = [("data.features", name) for name in config.data.features]
    named += [("data.entity_keys", name) for name in config.data.entity_keys]
    named += [("features.log_scale", name) for name in config.features.log_scale]
    behavioural = config.features.behavioural
    if behavioural is not None:
        named += [("features.behavioural.values", name) for name in behavioural.values]
        named += [
            (f"features.behavioural.distinct[{index}].column", spec.column)
            for index, spec in enumerate(behavioural.distinct)
            if spec.column is not None
        ]
    for rule in config.rules.rules:
        named += [(f"rules.{rule.name}", name) for name in _condition_columns(rule.when)]
    return named


def _condition_columns(condition: Condition) -> list[str]:
    if condition.threshold is not None:
        return [condition.threshold.feature]
    if condition.zscore is not None:
        return [condition.zscore.feature]
    if condition.count_extreme is not None:
        return list(condition.count_extreme.features)
    children = condition.all or condition.any or ([condition.not_] if condition.not_ else [])
    return [name for child in children for name in _condition_columns(child)]


# --- loading ----------------------------------------------------------------------------------


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None


def config_from_dict(raw: Any, source: str = "<config>") -> Config:
    """Validate an already-parsed mapping; errors name `source` and the key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def parse_override(override: str) -> tuple[tuple[str, ...], Any]:
    """`judge.max_depth=4` -> (("judge", "max_depth"), 4); the value is read as YAML."""
    key, equals, text = override.partition("=")
    path = tuple(key.strip().split("."))
    if not equals or not all(path):
        raise ConfigError(f"--set {override}: expected key.path=value (judge.max_depth=4)")
    try:
        return path, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--set {override}: the value is malformed YAML ({problem})") from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> None:
    """Set each `key.path=value` in the raw config mapping, creating sections as needed."""
    for override in overrides:
        path, value = parse_override(override)
        mapping = raw
        for depth, part in enumerate(path[:-1]):
            child = mapping.setdefault(part, {})
            if child is None:
                child = mapping[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"--set {override}: '{where}' is not a mapping of keys")
            mapping = child
        mapping[path[-1]] = value


def _override_error(overrides: Sequence[str], error: ValidationError) -> ConfigError | None:
    """The error against the override that set the offending key, if one did."""
    first = error.errors()[0]
    loc = tuple(str(part) for part in first["loc"])
    for override in reversed(overrides):
        path, _ = parse_override(override)
        if loc[: len(path)] == path:
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            inner = ".".join(loc[len(path) :])
            return ConfigError(f"--set {override}: {inner + ': ' if inner else ''}{message}")
    return None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read `config.yaml`, inline any per-step section files, apply `--set` overrides
    (`judge.max_depth=4`), and validate the whole.

    A problem inside a section file is reported against that file, with the key path
    inside it; a problem in an override names the override.
    """
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    section_files: dict[str, Path] = {}
    for section in SECTIONS:
        value = raw.get(section)
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            section_path = path.parent / value
            section_raw = _read_yaml(section_path)
            if not isinstance(section_raw, dict):
                raise ConfigError(f"{section_path}: expected a mapping for section '{section}'")
            raw[section] = section_raw
            section_files[section] = section_path
    apply_overrides(raw, overrides)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        override_error = _override_error(overrides, exc)
        if override_error is not None:
            raise override_error from None
        loc = exc.errors()[0]["loc"]
        if loc and loc[0] in section_files:
            source = f"{section_files[loc[0]]}"
            raise ConfigError(format_validation_error(source, exc, skip=1)) from None
        raise ConfigError(format_validation_error(str(path), exc)) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """JSON-ready form, used in the saved model and its manifest."""
    return config.model_dump(mode="json", by_alias=True)
