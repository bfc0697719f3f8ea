"""Behavioural features and scoring on Spark, identical to the local engines.

The runtime over the scoring core for histories larger than one process holds: the batch
behavioural engine runs per entity-key partition (`features`), and the saved model scores
the result inside `mapInArrow` (`scoring`). pyspark is imported only here (the `spark` extra),
so the rest of the package never needs it. See docs/spark.md.
"""
