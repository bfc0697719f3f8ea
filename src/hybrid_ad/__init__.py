"""hybrid-ad: domain rules, an autoencoder and a supervised judge for anomalous events."""

__version__ = "0.1.0"
