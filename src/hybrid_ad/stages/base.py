"""The shared interface of a fitted stage.

Every stage (the scaler, the rules, the autoencoder, the histogram detector, the tail scales,
the judge) is built from its config, then either fitted (`fit` returns the stage itself, as in
scikit-learn) or given its saved files (`from_files`). Using it before either raises
`NotFittedError`. `to_files` gives the stage's saved files (name -> bytes: JSON, safetensors,
XGBoost JSON; never pickle) and `from_files` reads them back into an unfitted stage, so a
saved and reloaded stage gives identical outputs. One check suite
(tests/test_stage_checks.py) holds every stage to this.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Self

from hybrid_ad.errors import ArtifactError, NotFittedError


class Stage(ABC):
    """A stage that is fitted, or loaded from its saved files, before it is used."""

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """Whether `fit` (or `from_files`) has run."""

    def check_fitted(self) -> None:
        """Raise `NotFittedError`, naming the stage, unless it is fitted."""
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit first")

    @abstractmethod
    def to_files(self) -> dict[str, bytes]:
        """The fitted state as saved files, name -> bytes."""

    @abstractmethod
    def from_files(self, files: Mapping[str, bytes]) -> Self:
        """Take the fitted state from files `to_files` wrote; returns the stage itself."""


def json_file(payload: Any) -> bytes:
    """A JSON document as saved-file bytes."""
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read_json_file(files: Mapping[str, bytes], name: str) -> Any:
    """The JSON document `name` among saved files; a missing or unreadable one is an
    ArtifactError naming it."""
    if name not in files:
        raise ArtifactError(f"saved stage lacks {name}")
    try:
        return json.loads(files[name])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ArtifactError(f"{name}: not valid JSON") from None
