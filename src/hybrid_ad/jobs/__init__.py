"""Batch jobs over the core: the pipeline run, the review queue, dataset downloads."""
