"""Labels from analysts and chargebacks, kept as an append-only audit trail (`store`)."""

from hybrid_ad.labels.store import (
    VERDICT_COLUMNS,
    LabelStats,
    LabelStore,
    Verdicts,
    open_store,
    read_verdicts,
    validate_verdicts,
)

__all__ = [
    "VERDICT_COLUMNS",
    "LabelStats",
    "LabelStore",
    "Verdicts",
    "open_store",
    "read_verdicts",
    "validate_verdicts",
]
