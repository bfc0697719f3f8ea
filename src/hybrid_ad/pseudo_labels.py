"""Label-free training targets: rule pseudo-labels refined by the autoencoder.

Rules are precise about the patterns they encode but blunt: a rule hit on an event the
autoencoder reconstructs as well as typical traffic is probably a false alarm, and an event
the autoencoder finds extreme is suspicious even when no rule names its pattern. The judge
learns from the refined labels, so it can generalise beyond both sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybrid_ad.config import PseudoLabelConfig


@dataclass(frozen=True)
class ErrorBounds:
    """Reconstruction-error bounds learned from training events the rules call normal."""

    demote_below: float
    promote_above: float

    @classmethod
    def fit(cls, normal_errors: np.ndarray, config: PseudoLabelConfig) -> ErrorBounds:
        return cls(
            demote_below=float(np.quantile(normal_errors, config.demote_below_quantile)),
            promote_above=float(np.quantile(normal_errors, config.promote_above_quantile)),
        )


def refine_pseudo_labels(
    rule_labels: np.ndarray, reconstruction_error: np.ndarray, bounds: ErrorBounds
) -> np.ndarray:
    """Rule hits the autoencoder finds ordinary are demoted; extreme errors are promoted."""
    kept = rule_labels & (reconstruction_error >= bounds.demote_below)
    promoted = reconstruction_error > bounds.promote_above
    return (kept | promoted).astype(np.int8)
