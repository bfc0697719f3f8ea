"""Watching a fitted model in production: how far new data has drifted from training (`drift`)."""
