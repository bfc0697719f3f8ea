"""The scoring core: the fitted detector every runtime (batch, stream, service) calls."""

from hybrid_ad.core.live import DeadLetter, LiveScorer, ScoredBatch

__all__ = ["DeadLetter", "LiveScorer", "ScoredBatch"]
