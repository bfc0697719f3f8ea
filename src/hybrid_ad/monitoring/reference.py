"""The drift reference a fitted detector carries: what its inputs and scores looked like at fit.

Saved as `drift_reference.json` in the model directory (listed in the manifest like every
other file). Two parts, chosen so that data from the training distribution does not drift:

- every judge input, profiled on the **training** part: the data the models were fitted on,
  and the longest stretch of time, so time-of-day inputs see every hour; except the inputs
  that are fitted models' outputs (`FITTED_INPUTS`), profiled on validation like the scores;
- each stage's output (rules, autoencoder, histogram detector) and the final judge score, as
  `score:<stage>`, profiled on the **validation** part: out of sample, as new events will be
  (on training events the autoencoder and the judge were fitted, so their outputs there are
  optimistic), and the part the alert threshold was chosen on.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError

from hybrid_ad.config import StrictModel
from hybrid_ad.errors import ArtifactError, format_validation_error
from hybrid_ad.monitoring.drift import DEFAULT_BINS, ReferenceProfile

REFERENCE_FILE = "drift_reference.json"
SCORE_PREFIX = "score:"
FITTED_INPUTS = ("autoencoder_surprise", "histogram_surprise")
"""Judge inputs made by models fitted on the training part, which look better there than on
any new events: profiled on validation."""


class DriftReference(StrictModel):
    """Quantile profiles of the judge inputs (training part) and the scores (validation)."""

    format_version: Literal[1] = 1
    inputs: list[str] = Field(description="judge inputs, in the judge's order")
    scores: list[str] = Field(description="stage outputs and the final score, score:<stage>")
    training_rows: int = Field(ge=1)
    validation_rows: int = Field(ge=1)
    profile: ReferenceProfile

    @classmethod
    def fit(
        cls, inputs: pd.DataFrame, validation_inputs: pd.DataFrame, scores: pd.DataFrame
    ) -> DriftReference:
        """Profile the judge's `inputs` on training events (`FITTED_INPUTS` from
        `validation_inputs`) and `scores` on validation events; inputs and scores must not
        share names."""
        if set(inputs.columns) & set(scores.columns):
            raise ValueError("input and score columns share a name")
        fitted = [name for name in inputs.columns if name in FITTED_INPUTS]
        plain = [name for name in inputs.columns if name not in FITTED_INPUTS]
        profiles = {
            **ReferenceProfile.fit(inputs, plain, DEFAULT_BINS).columns,
            **ReferenceProfile.fit(validation_inputs, fitted, DEFAULT_BINS).columns,
            **ReferenceProfile.fit(scores, list(scores.columns), DEFAULT_BINS).columns,
        }
        return cls(
            inputs=list(inputs.columns),
            scores=list(scores.columns),
            training_rows=len(inputs),
            validation_rows=len(scores),
            profile=ReferenceProfile(bins=DEFAULT_BINS, columns=profiles),
        )

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> DriftReference:
        """Parse a saved reference; anything malformed is an `ArtifactError` naming `source`."""
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArtifactError(f"{source}: not valid JSON") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ArtifactError(format_validation_error(source, error)) from None


def score_columns(stage_scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """Stage outputs as the reference names them (`score:rules`, …, `score:judge`)."""
    return pd.DataFrame(
        {
            f"{SCORE_PREFIX}{stage}": np.asarray(values, np.float64)
            for stage, values in stage_scores.items()
        }
    )
