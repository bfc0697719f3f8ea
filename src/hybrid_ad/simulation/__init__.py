"""Simulated event logs with labelled anomalies: a streaming service and card transactions."""
