"""The judge's approximate contributions (Saabas path attribution), compiled, on flat trees.

XGBoost's `pred_contribs=True, approx_contribs=True` walks each tree from the root to the
event's leaf and credits each split's input with the change of the node's mean value
(hessian-weighted mean of its leaves). It recomputes every node's mean on every call, so a
call costs the same for one event as for dozens: 0.4 ms for one event, 2.4 ms for 14 on the
streaming model's 400 trees. Here the means are computed once when the model is loaded, and a
numba loop walks the trees: the same attribution (to float32 rounding; the tests compare it
with XGBoost's), each row summing with the bias to the margin, in microseconds per event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["FlatTrees"]


@dataclass(frozen=True)
class FlatTrees:
    """A binary-logistic XGBoost model's trees as flat arrays, nodes of tree t at
    `offsets[t]:offsets[t+1]`, children as tree-local indices (-1 for a leaf)."""

    offsets: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    means: np.ndarray
    """Each node's hessian-weighted mean leaf value (a leaf's own value)."""
    n_features: int

    @classmethod
    def from_json(cls, model: bytes, n_features: int) -> FlatTrees | None:
        """The trees of XGBoost's JSON model, or None for a model this cannot walk (several
        outputs, parallel trees, categorical splits, non-tree boosters): XGBoost serves it."""
        learner = json.loads(model)["learner"]
        booster = learner["gradient_booster"]
        if booster.get("name") != "gbtree" or int(learner["learner_model_param"]["num_class"]):
            return None
        trees = booster["model"]["trees"]
        if int(booster["model"]["gbtree_model_param"]["num_parallel_tree"]) != 1:
            return None
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("l", "r", "f", "c", "d", "m")}
        sizes = [0]
        for tree in trees:
            if any(int(kind) != 0 for kind in tree["split_type"]):
                return None
            left = np.asarray(tree["left_children"], dtype=np.int64)
            right = np.asarray(tree["right_children"], dtype=np.int64)
            condition = np.asarray(tree["split_conditions"], dtype=np.float32)
            hessian = np.asarray(tree["sum_hessian"], dtype=np.float64)
            parts["l"].append(left)
            parts["r"].append(right)
            parts["f"].append(np.asarray(tree["split_indices"], dtype=np.int64))
            parts["c"].append(condition)
            parts["d"].append(np.asarray(tree["default_left"], dtype=np.bool_))
            parts["m"].append(_node_means(left, right, condition.astype(np.float64), hessian))
            sizes.append(len(left))
        return cls(
            offsets=np.cumsum(sizes, dtype=np.int64),
            left=np.concatenate(parts["l"]),
            right=np.concatenate(parts["r"]),
            feature=np.concatenate(parts["f"]),
            threshold=np.concatenate(parts["c"]),
            default_left=np.concatenate(parts["d"]),
            means=np.concatenate(parts["m"]),
            n_features=n_features,
        )

    @property
    def n_trees(self) -> int:
        return len(self.offsets) - 1

    def contributions(self, inputs: np.ndarray, n_trees: int) -> np.ndarray:
        """(n, d + 1) float64 contributions of the first `n_trees` trees, bias last (without
        the model's base margin)."""
        rows = np.ascontiguousarray(inputs, dtype=np.float32)
        out = np.zeros((len(rows), self.n_features + 1))
        _walk(
            rows,
            min(n_trees, self.n_trees),
            self.offsets,
            self.left,
            self.right,
            self.feature,
            self.threshold,
            self.default_left,
            self.means,
            out,
        )
        return out


def _node_means(
    left: np.ndarray, right: np.ndarray, value: np.ndarray, hessian: np.ndarray
) -> np.ndarray:
    """Hessian-weighted mean leaf value below each node, children before their parents."""
    means = value.copy()  # a leaf's split condition holds its value
    order, at = [0], 0
    while at < len(order):  # breadth first from the root: every parent before its children
        node = order[at]
        if left[node] >= 0:
            order += [int(left[node]), int(right[node])]
        at += 1
    for node in reversed(order):
        a, b = left[node], right[node]
        if a >= 0:
            means[node] = (means[a] * hessian[a] + means[b] * hessian[b]) / hessian[node]
    return means


@njit(cache=True, nogil=True)
def _walk(inputs, n_trees, offsets, left, right, feature, threshold, default_left, means, out):
    n_features = inputs.shape[1]
    for row in range(inputs.shape[0]):
        for tree in range(n_trees):
            base = offsets[tree]
            node = 0
            value = means[base]
            out[row, n_features] += value
            while left[base + node] >= 0:
                at = base + node
                split = feature[at]
                x = inputs[row, split]
                if np.isnan(x):
                    node = left[at] if default_left[at] else right[at]
                elif x < threshold[at]:
                    node = left[at]
                else:
                    node = right[at]
                child = means[base + node]
                out[row, split] += child - value
                value = child
