"""Kernel-level latency predictor for workloads a table has not timed.

nn-Meter (Zhang et al., MobiSys 2021, section 5): one random forest per kernel type, on features
such as input height/width, cin, cout, kernel size, stride, groups, FLOPs and parameters. Here a
kernel type is `op|strategy|kind|mode` (the kernel qcompile actually runs). Forests are refit from
the table's JSON samples on load, never pickled (nn-Meter issue #131: pickled predictors break with
scikit-learn upgrades). Targets are log-latencies, so relative errors weigh the same at every size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["KernelPredictor", "kernel_type", "features"]

_MODES = ("", "vnni512", "vnni", "u8s8", "i16", "amx")


def kernel_type(w: dict) -> str:
    return f"{w['op']}|{w['strategy']}|{w.get('kind', '')}|{w.get('mode', '')}"


def _pad4(s: list[int]) -> list[int]:
    s = list(s)[:4]
    return [1] * (4 - len(s)) + s


def features(w: dict) -> list[float]:
    """hw, cin, cout, kernel, stride, groups, FLOPs, params, in/out elements, kernel mode (nn-Meter features)."""
    shapes = w.get("shapes") or [[1]]
    x = _pad4(shapes[0])
    out = _pad4(w.get("out_shape") or shapes[0])
    conv = w["op"] in ("conv2d", "conv2d_requant", "float_conv2d", "linear", "linear_requant", "float_linear")
    wsh = list(shapes[1]) if conv and len(shapes) > 1 else [1]
    wsh4 = _pad4(wsh)
    params = math.prod(wsh) if conv else 0
    flops = math.prod(out) * math.prod(wsh[1:]) if conv else sum(math.prod(s) for s in shapes)
    stride = w.get("stride", [1, 1])
    stride = stride[0] if isinstance(stride, list) else stride
    mode = w.get("mode", "")
    return [x[2] * x[3], x[1], out[1], wsh4[2], float(stride), float(w.get("groups", 1)), float(flops),
            float(params), float(math.prod(x)), float(math.prod(out)),
            float(_MODES.index(mode) if mode in _MODES else len(_MODES)), float(len(shapes))]


class KernelPredictor:
    """`fit(workloads, ms)` then `predict(workload) -> ms`: a forest per kernel type, one per op, one overall."""

    def __init__(self, seed: int = 0, n_estimators: int = 60) -> None:
        self.seed = seed
        self.n_estimators = n_estimators
        self.models: dict[str, Any] = {}

    def _forest(self, X: np.ndarray, y: np.ndarray) -> Any:
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=self.n_estimators, random_state=self.seed, min_samples_leaf=1,
                                     n_jobs=1).fit(X, y)

    def fit(self, workloads: list[dict], ms: list[float]) -> KernelPredictor:
        self.models = {}
        if not workloads:
            return self
        X = np.array([features(w) for w in workloads], dtype=np.float64)
        y = np.log(np.maximum(np.asarray(ms, dtype=np.float64), 1e-6))
        groups: dict[str, list[int]] = {}
        for i, w in enumerate(workloads):
            groups.setdefault("t:" + kernel_type(w), []).append(i)
            groups.setdefault("o:" + w["op"], []).append(i)
        for key, idx in groups.items():
            if len(idx) >= 2:
                self.models[key] = self._forest(X[idx], y[idx])
        op_codes = sorted({w["op"] for w in workloads})
        self._ops = op_codes
        Xg = np.hstack([X, np.array([[op_codes.index(w["op"])] for w in workloads], dtype=np.float64)])
        self.models["all"] = self._forest(Xg, y)
        return self

    def predict(self, w: dict) -> float:
        """Predicted latency (ms) of one workload."""
        if not self.models:
            raise ValueError("predictor not fitted")
        x = np.array([features(w)], dtype=np.float64)
        for key in ("t:" + kernel_type(w), "o:" + w["op"]):
            m = self.models.get(key)
            if m is not None:
                return float(np.exp(m.predict(x)[0]))
        code = self._ops.index(w["op"]) if w["op"] in self._ops else -1
        return float(np.exp(self.models["all"].predict(np.hstack([x, [[code]]]))[0]))
