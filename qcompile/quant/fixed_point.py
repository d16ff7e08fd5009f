"""Fixed-point helpers for integer lowering (gemmlowp-style multiplier + right shift).

A real multiplier `m > 0` becomes `M / 2^s` with `M` in `[2^30, 2^31)` and `s` in `[1, 62]`, so
that `fixmul(v, M, s) = (v M + 2^(s-1)) >> s` (docs/integer_semantics.md) approximates `v m` with
round half up. Normalising `M` to at least 2^30 bounds the relative error of `M / 2^s` by 2^-31.
"""

from __future__ import annotations

import math

import numpy as np

from qcompile.errors import ConfigError

__all__ = ["MAX_SHIFT", "MIN_SHIFT", "fixmul_reference", "quantize_multiplier"]

MIN_SHIFT, MAX_SHIFT = 1, 62
_M_LO, _M_HI = 2**30, 2**31
#: Representable multipliers: M / 2^s with the bounds above.
_M_MIN = _M_LO / 2.0**MAX_SHIFT  # 2^-32
_M_MAX = (_M_HI - 0.5) / 2.0**MIN_SHIFT  # just below 2^30: M would round to 2^31 above it


def _quantize_one(m: float) -> tuple[int, int]:
    if not math.isfinite(m) or not _M_MIN <= m < _M_MAX:
        raise ConfigError(
            "multiplier",
            m,
            f"[2^-32, 2^30) (M in [2^30, 2^31), shift in [{MIN_SHIFT}, {MAX_SHIFT}])",
            "a non-positive or out-of-range scale ratio cannot be a fixed-point multiplier; "
            "check the quantizer scales of this layer",
        )
    frac, exp = math.frexp(m)  # m = frac * 2^exp, frac in [0.5, 1)
    mult = round(frac * _M_HI)  # exact: frac * 2^31 is a float with at most 53 significant bits
    shift = 31 - exp
    if mult == _M_HI:  # frac rounded up to 1.0: renormalise
        mult, shift = _M_LO, shift - 1
    if not (_M_LO <= mult < _M_HI and MIN_SHIFT <= shift <= MAX_SHIFT):
        raise ConfigError("multiplier", m, "[2^-32, 2^30)", f"gives M={mult}, shift={shift}")
    return mult, shift


def quantize_multiplier(m: float | np.ndarray) -> tuple[int, int] | tuple[np.ndarray, np.ndarray]:
    """`m ~= M / 2^s` with integer `M` in `[2^30, 2^31)`, `s` in `[1, 62]`, relative error <= 2^-31.

    A scalar gives `(int, int)`; an array gives two int64 arrays of its shape. Raises
    `ConfigError` if some `m` is not in `[2^-32, 2^30)` (including `m <= 0`, nan, inf).
    """
    if np.ndim(m) == 0:
        return _quantize_one(float(m))
    arr = np.asarray(m, dtype=np.float64)
    pairs = [_quantize_one(float(v)) for v in arr.reshape(-1)]
    mult = np.array([p[0] for p in pairs], dtype=np.int64).reshape(arr.shape)
    shift = np.array([p[1] for p in pairs], dtype=np.int64).reshape(arr.shape)
    return mult, shift


def fixmul_reference(v: int | np.ndarray, multiplier: int | np.ndarray, shift: int | np.ndarray):
    """`(v M + 2^(s-1)) >> s` in arbitrary-precision Python ints (floor shift = round half up).

    Independent of `qcompile.ops.fixmul`, for tests. Broadcasts like NumPy; scalars give an int,
    arrays an int64 array (every result of the contract fits: |v| < 2^31, M < 2^31, s >= 1).
    """
    if np.ndim(v) == 0 and np.ndim(multiplier) == 0 and np.ndim(shift) == 0:
        s = int(shift)
        return (int(v) * int(multiplier) + (1 << (s - 1))) >> s
    vb, mb, sb = np.broadcast_arrays(np.asarray(v), np.asarray(multiplier), np.asarray(shift))
    out = [
        (int(a) * int(b) + (1 << (int(c) - 1))) >> int(c)
        for a, b, c in zip(vb.reshape(-1).tolist(), mb.reshape(-1).tolist(), sb.reshape(-1).tolist())
    ]
    return np.array(out, dtype=np.int64).reshape(vb.shape)
