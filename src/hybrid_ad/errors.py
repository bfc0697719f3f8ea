"""Errors a user can act on: each carries a one-line message naming the file, column or key."""


class HybridADError(Exception):
    """Base class: the command line prints the message on one line and exits with code 2."""


class ConfigError(HybridADError):
    """A configuration file is malformed, has unknown keys, or holds bad values."""


class InputError(HybridADError):
    """Event data is missing, unreadable, or has missing, non-numeric or non-finite values."""


class ArtifactError(HybridADError):
    """A saved model is missing, truncated, tampered with, or from an incompatible version."""
