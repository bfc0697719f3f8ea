"""XGBoost's prediction on a dense float32 matrix, called through XGBoost's C API.

`Booster.inplace_predict` ends in the C function `XGBoosterPredictFromDense`; this calls that
function with the same arguments, without the Python wrapper's work around it. Why: on one
event the wrapper costs about as much as the trees (type checks, a JSON of the arguments,
the array interface), and it defines a class on every call (`from_array_interface` in
xgboost's data utilities): 25 objects of cyclic garbage per prediction that only the garbage
collector frees, so a generation-0 collection ran every few dozen one-event calls, and those
calls were the one-event path's p99 (BENCHMARKS.md, branch p99b). Same C function, same
trees, same float32 inputs: the same numbers, bit for bit (tests/test_predict_paths.py).

Only public interfaces: XGBoost's C API (`c_api.h`), the booster's `handle`, and
`xgboost.libpath` to find the library XGBoost already loaded (opened with `RTLD_NOLOAD`, so
it is that very library or none).
"""

from __future__ import annotations

import ctypes
import json
import os
from functools import lru_cache

import numpy as np
import xgboost as xgb
from xgboost.libpath import find_lib_path

__all__ = ["DensePredictor"]

_FLOAT_P = ctypes.POINTER(ctypes.c_float)
_SHAPE_P = ctypes.POINTER(ctypes.c_uint64)


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    """The XGBoost library `import xgboost` loaded, with the two functions' signatures."""
    for path in find_lib_path():
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        except OSError:
            continue
        break
    else:
        raise xgb.core.XGBoostError("the XGBoost library xgboost loaded was not found")
    predict = library.XGBoosterPredictFromDense
    predict.argtypes = [
        ctypes.c_void_p,  # booster
        ctypes.c_char_p,  # the array interface of the inputs (JSON)
        ctypes.c_char_p,  # the prediction's configuration (JSON)
        ctypes.c_void_p,  # a proxy DMatrix for a base margin: none
        ctypes.POINTER(_SHAPE_P),
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(_FLOAT_P),
    ]
    predict.restype = ctypes.c_int
    library.XGBGetLastError.restype = ctypes.c_char_p
    return library


class DensePredictor:
    """`booster.inplace_predict(inputs, iteration_range=..., predict_type=...)` on a C-ordered
    float32 matrix (n, n_features), as float32 (n,): for single-output models (the judge)."""

    def __init__(
        self, booster: xgb.Booster, iteration_range: tuple[int, int], margin: bool = False
    ) -> None:
        self.booster = booster
        self.n_features = booster.num_features()
        self._config = json.dumps(  # the arguments inplace_predict passes, made once
            {
                "type": 1 if margin else 0,
                "training": False,
                "iteration_begin": int(iteration_range[0]),
                "iteration_end": int(iteration_range[1]),
                "missing": float("nan"),
                "strict_shape": False,
                "cache_id": 0,
            }
        ).encode()
        library = _library()
        self._predict = library.XGBoosterPredictFromDense
        self._last_error = library.XGBGetLastError

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Predictions of the rows of `inputs`; ValueError for a matrix of the wrong width,
        XGBoostError for what XGBoost refuses."""
        if inputs.ndim != 2 or inputs.dtype != np.float32 or not inputs.flags.c_contiguous:
            raise ValueError("expected a C-ordered float32 matrix")
        if inputs.shape[1] != self.n_features:
            raise ValueError(
                f"Feature shape mismatch, expected: {self.n_features}, got {inputs.shape[1]}"
            )
        n = inputs.shape[0]
        if n == 0:
            return np.zeros(0, np.float32)
        interface = (
            f'{{"data":[{inputs.ctypes.data},{"false" if inputs.flags.writeable else "true"}],'
            f'"shape":[{n},{inputs.shape[1]}],"strides":null,"typestr":"<f4","version":3}}'
        ).encode()
        shape, dims, result = _SHAPE_P(), ctypes.c_uint64(), _FLOAT_P()
        status = self._predict(
            self.booster.handle,
            interface,
            self._config,
            None,
            ctypes.byref(shape),
            ctypes.byref(dims),
            ctypes.byref(result),
        )
        if status != 0:
            raise xgb.core.XGBoostError(self._last_error().decode(errors="replace"))
        size = 1
        for axis in range(dims.value):
            size *= shape[axis]
        if size != n:
            raise ValueError(f"expected one prediction per row, got {size} for {n} rows")
        out = np.empty(n, np.float32)
        ctypes.memmove(out.ctypes.data, result, 4 * n)  # XGBoost's buffer, reused next call
        return out
