"""LightGBM's single-row fast prediction, for the service's small requests.

``Booster.predict`` on one row spends most of its time in Python before LightGBM computes
anything: it builds a predictor object, serializes its parameters, checks and converts the
array and frees it all again (about 40 of the 80 microseconds of one row's ``pred_contrib``
with the demo data's 75-tree model, and as much again for the value model). LightGBM's C API
has a path made for this, ``LGBM_BoosterPredictForMatSingleRowFast``: the configuration is
parsed once (``...FastInit``) and every call then passes one row and an output buffer. Its R
package exposes it (``lgb.configure_fast_predict``); the Python package does not, so
`RowPredictor` calls it through the ctypes library the Python package itself loads
(``lightgbm.basic._LIB``), with the package's own error check (``_safe_call``).

The values are LightGBM's own (the same code computes them; equal to ``Booster.predict``,
tested). LightGBM serializes single-row calls on one booster with its own lock, so a
`RowPredictor` may be shared by threads.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import lightgbm as lgb

__all__ = ["RowPredictor"]

# c_api.h: C_API_PREDICT_NORMAL / _RAW_SCORE / _CONTRIB and C_API_DTYPE_FLOAT64
_PREDICT_TYPES = {"normal": 0, "raw": 1, "contrib": 3}
_DTYPE_FLOAT64 = 1

Kind = Literal["normal", "raw", "contrib"]


class RowPredictor:
    """``booster.predict(X, num_iteration=..., num_threads=1)`` (``raw_score=True`` for
    ``kind="raw"``, ``pred_contrib=True`` for ``kind="contrib"``) one row at a time through
    LightGBM's single-row fast path.

    ``predict`` takes an (n, num_feature) float array and returns (n,) values, or
    (n, num_feature + 1) contributions (the last column is the bias) for ``"contrib"``:
    the shapes of ``Booster.predict``. Meant for a few rows; for many, ``Booster.predict``
    is as fast and uses threads.
    """

    def __init__(self, booster: lgb.Booster, kind: Kind = "normal",
                 num_iteration: int | None = None) -> None:
        from lightgbm.basic import _LIB, _safe_call

        if kind not in _PREDICT_TYPES:
            raise ValueError(f"kind must be one of {sorted(_PREDICT_TYPES)}, not {kind!r}")
        self.booster = booster  # keeps the booster (and its handle) alive with the config
        self.kind = kind
        self.n_features = booster.num_feature()
        self.width = self.n_features + 1 if kind == "contrib" else 1
        if booster.num_model_per_iteration() != 1:
            raise ValueError("RowPredictor handles one tree per iteration (not multiclass)")
        handle = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(_PREDICT_TYPES[kind]), ctypes.c_int(0),
            ctypes.c_int(num_iteration if num_iteration and num_iteration > 0 else -1),
            ctypes.c_int(_DTYPE_FLOAT64), ctypes.c_int32(self.n_features),
            b"num_threads=1", ctypes.byref(handle)))
        self._handle = handle
        self._call = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._free = _LIB.LGBM_FastConfigFree
        self._safe_call = _safe_call

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an (n, {self.n_features}) array, got shape {X.shape}")
        n = X.shape[0]
        out = np.empty((n, self.width), dtype=np.float64)
        out_len = ctypes.c_int64()
        call, handle, check = self._call, self._handle, self._safe_call
        row_bytes = X.strides[0]
        out_bytes = out.strides[0]
        x0, o0 = X.ctypes.data, out.ctypes.data
        for i in range(n):
            check(call(handle, ctypes.c_void_p(x0 + i * row_bytes), ctypes.byref(out_len),
                       ctypes.c_void_p(o0 + i * out_bytes)))
            if out_len.value != self.width:  # LightGBM wrote another shape: never expected
                raise RuntimeError(f"LightGBM returned {out_len.value} values per row, "
                                   f"expected {self.width}")
        return out if self.kind == "contrib" else out[:, 0]

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value is not None:
            self._free(handle)
            self._handle = None
