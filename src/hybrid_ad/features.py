"""Feature construction: scaling fitted on training data only, time of day, outlier summaries.

`FeatureBuilder` produces two matrices from the same fitted state: the autoencoder's input
(scaled columns and the hour of day) and the judge's extra engineered features. Batch scoring,
streaming and the service all go through `transform`, so the feature logic exists once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hybrid_ad.config import FeaturesConfig
from hybrid_ad.data import EVENT_SECONDS
from hybrid_ad.errors import ArtifactError, InputError
from hybrid_ad.rules import hour_of_day


@dataclass(frozen=True)
class FeatureMatrix:
    """Model inputs for a batch of events, with column names for importance plots."""

    scaled: np.ndarray  # (n, d) float32: autoencoder input
    scaled_names: list[str]
    engineered: np.ndarray  # (n, e) float32: extra judge input
    engineered_names: list[str]


class FeatureBuilder:
    """Standardises the configured columns (log1p first where asked) with training statistics."""

    def __init__(self, config: FeaturesConfig) -> None:
        self.config = config
        self.columns_: list[str] | None = None
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None

    def fit(self, frame: pd.DataFrame, columns: list[str]) -> FeatureBuilder:
        """Learn per-column mean and standard deviation from the training rows only."""
        unknown = [name for name in self.config.log_scale if name not in columns]
        if unknown:
            raise InputError(f"features.log_scale: '{unknown[0]}' is not a feature column")
        raw = self._raw(frame, columns)
        std = raw.std(axis=0)
        self.columns_ = list(columns)
        self.mean_ = raw.mean(axis=0)
        self.std_ = np.where(std > 0, std, 1.0)
        return self

    def _raw(self, frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
        missing = [name for name in columns if name not in frame.columns]
        if missing:
            raise InputError(f"missing feature column '{missing[0]}'")
        raw = frame[columns].to_numpy(np.float64, copy=True)
        for name in self.config.log_scale:
            index = columns.index(name)
            raw[:, index] = np.sign(raw[:, index]) * np.log1p(np.abs(raw[:, index]))
        return raw

    def transform(self, frame: pd.DataFrame) -> FeatureMatrix:
        """Scaled inputs plus the engineered summaries, for any number of events."""
        if self.columns_ is None or self.mean_ is None or self.std_ is None:
            raise RuntimeError("FeatureBuilder.transform called before fit")
        z = (self._raw(frame, self.columns_) - self.mean_) / self.std_
        scaled_parts = [z]
        scaled_names = [f"z_{name}" for name in self.columns_]
        if self.config.hour_of_day:
            angle = hour_of_day(frame[EVENT_SECONDS].to_numpy(np.float64)) * (2 * np.pi / 24)
            scaled_parts.append(np.column_stack([np.sin(angle), np.cos(angle)]))
            scaled_names += ["hour_sin", "hour_cos"]
        abs_z = np.abs(z)
        engineered = np.column_stack(
            [
                (abs_z > self.config.extreme_z).sum(axis=1),
                abs_z.max(axis=1),
                np.sqrt((z**2).mean(axis=1)),
            ]
        )
        return FeatureMatrix(
            scaled=np.hstack(scaled_parts).astype(np.float32),
            scaled_names=scaled_names,
            engineered=engineered.astype(np.float32),
            engineered_names=["n_extreme_components", "max_abs_z", "rms_z"],
        )

    def to_dict(self) -> dict[str, Any]:
        if self.columns_ is None or self.mean_ is None or self.std_ is None:
            raise RuntimeError("FeatureBuilder.to_dict called before fit")
        return {"columns": self.columns_, "mean": self.mean_.tolist(), "std": self.std_.tolist()}

    @classmethod
    def from_dict(cls, config: FeaturesConfig, payload: dict[str, Any]) -> FeatureBuilder:
        builder = cls(config)
        try:
            columns = [str(name) for name in payload["columns"]]
            mean = np.asarray(payload["mean"], dtype=np.float64)
            std = np.asarray(payload["std"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ArtifactError("features.json: malformed scaler") from None
        if not (len(columns) == len(mean) == len(std)) or not np.all(std > 0):
            raise ArtifactError("features.json: scaler shapes or values are inconsistent")
        builder.columns_, builder.mean_, builder.std_ = columns, mean, std
        return builder
