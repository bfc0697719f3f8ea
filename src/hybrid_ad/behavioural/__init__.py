"""Behavioural features per entity, one definition in two engines.

`batch` computes a whole history at once; `live` keeps per-entity state on the numba `kernel`.
"""
