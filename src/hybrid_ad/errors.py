"""Errors a user can act on: each carries a one-line message naming the file, column or key."""

from __future__ import annotations

from pydantic import ValidationError


class HybridADError(Exception):
    """Base class: the command line prints the message on one line and exits with code 2."""


class ConfigError(HybridADError):
    """A configuration file is malformed, has unknown keys, or holds bad values."""


class InputError(HybridADError):
    """Event data is missing, unreadable, or has missing, non-numeric or non-finite values."""


class ArtifactError(HybridADError):
    """A saved model is missing, truncated, tampered with, or from an incompatible version."""


class NotFittedError(HybridADError, ValueError, AttributeError):
    """A stage or detector used before `fit` (or before loading its saved files).

    The bases are scikit-learn's `NotFittedError`'s (ValueError, AttributeError), so code that
    expects those catches it; it does not inherit scikit-learn's class itself, since importing
    scikit-learn costs seconds on every command that only needs an error type."""


class StoreError(HybridADError):
    """A label store cannot be reached or opened, or is not a label store."""


def format_validation_error(source: str, error: ValidationError, skip: int = 0) -> str:
    """One line: the file, the dotted key path (less `skip` leading parts) and the problem."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"][skip:]) or "<root>"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {key}: {message}{suffix}"
