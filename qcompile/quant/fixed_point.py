"""Fixed-point multipliers and shifts (gemmlowp style) for the integer epilogues (docs/integer_semantics.md).

Every requantization in an `IntegerGraph` uses one rule, `fixmul(v, M, s) = (v*M + 2^(s-1)) >> s`
(gemmlowp's round-half-up), with `M` in `[0, 2^31)` and `s` in `[1, 62]`. This module turns the real
rescaling factors of the fake-quant model into such `(M, s)` pairs:

- `quantize_multiplier(r)`: the most precise `(M, s)` for one real `r >= 0` (or an array of them):
  `M = floor(r 2^s + 1/2)` with `M` in `[2^30, 2^31)` whenever `r` allows, so the relative error is
  below `2^-31`; `r = 0` gives `(0, 62)`.
- `affine_fixed_point(reals, const, input_max)`: one shared shift for an epilogue of the form
  `floor(sum_i x_i r_i + const)` (rescale, residual add, average pool, SE multiply); the shift is the
  largest that keeps every `M_i < 2^31` and every int64 intermediate `sum_i |x_i| M_i + |offset|`
  below `2^62` (a factor 2 of margin under int64).
- `fixmul_reference(v, M, s)`: the rule in arbitrary-precision Python ints, for tests.

Rounding of the real values to integers is round half up, the project rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcompile.errors import LoweringError

__all__ = [
    "MAX_MULTIPLIER",
    "MAX_SHIFT",
    "MIN_SHIFT",
    "INT64_SAFE",
    "FixedPointAffine",
    "affine_fixed_point",
    "fixmul_reference",
    "quantize_multiplier",
    "quantize_multipliers",
    "round_half_up",
]

#: shifts are in [MIN_SHIFT, MAX_SHIFT] (the contract's fixmul range)
MIN_SHIFT = 1
#: multipliers are int32 and non-negative: M < 2^31
MAX_MULTIPLIER = 2**31
MAX_SHIFT = 62
#: bound kept on every int64 intermediate (2^62 leaves a factor 2 under int64's 2^63)
INT64_SAFE = 2**62


def round_half_up(v: float) -> int:
    """`floor(v + 1/2)` as a Python int (exact for the magnitudes used here)."""
    return int(math.floor(v + 0.5))


def _shift_for(r: float) -> int:
    """Largest shift with `floor(r 2^s + 1/2) < 2^31` (unbounded above for r == 0)."""
    if r == 0.0:
        return MAX_SHIFT
    # r = m 2^e with m in [0.5, 1): r 2^s < 2^31 needs s <= 31 - e; rounding may reach 2^31, back off.
    _, e = math.frexp(r)
    s = 31 - e
    while s > -64 and round_half_up(math.ldexp(r, s)) >= MAX_MULTIPLIER:
        s -= 1
    return s


def quantize_multiplier(
    r: float | np.ndarray, where: str = "requantize"
) -> tuple[int, int] | tuple[np.ndarray, np.ndarray]:
    """The `(M, s)` pair closest to `r` with `M < 2^31`, `1 <= s <= 62`: `r ~= M / 2^s`.

    `M` is in `[2^30, 2^31)` and the relative error below `2^-31` when `2^-32 <= r < 2^30`; smaller
    `r` lose precision at `s = 62`, and `r = 0` is exactly `(0, 62)`. A scalar gives `(int, int)`,
    an array two int64 arrays of its shape. Raises `LoweringError` (naming `where`) when some `r` is
    negative, not finite, or `>= 2^30`.
    """
    if np.ndim(r) > 0:
        arr = np.asarray(r, dtype=np.float64)
        m, s = quantize_multipliers(arr, where)
        return m.reshape(arr.shape), s.reshape(arr.shape)
    r = float(r)
    if not math.isfinite(r) or r < 0:
        raise LoweringError(where, f"rescaling factor {r!r} is not a finite non-negative number",
                            "check the quantizer scales (a NaN or negative scale means a broken calibration)")
    s = min(_shift_for(r), MAX_SHIFT)
    if s < 1:
        raise LoweringError(where, f"rescaling factor {r:.6g} needs a left shift (>= 2^30)",
                            "the output quantizer's scale is far smaller than the input's; recalibrate")
    return round_half_up(math.ldexp(r, s)), s


def quantize_multipliers(r: np.ndarray, where: str = "requantize") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel `quantize_multiplier`: int64 arrays `(M[C], s[C])`."""
    pairs = [quantize_multiplier(float(v), f"{where}[channel {i}]") for i, v in enumerate(np.asarray(r).ravel())]
    m = np.array([p[0] for p in pairs], dtype=np.int64)
    s = np.array([p[1] for p in pairs], dtype=np.int64)
    return m, s


@dataclass(frozen=True)
class FixedPointAffine:
    """`floor(sum_i x_i M_i / 2^s + offset / 2^s)`: integer form of `floor(sum_i x_i r_i + const)`."""

    multipliers: tuple[int, ...]
    offset: int
    shift: int

    def max_intermediate(self, input_max: Sequence[int]) -> int:
        """Largest `|sum_i x_i M_i + offset|` for `0 <= x_i <= input_max[i]` (an int64 bound)."""
        return sum(abs(m) * int(x) for m, x in zip(self.multipliers, input_max)) + abs(self.offset)


def affine_fixed_point(
    reals: Sequence[float], const: float, input_max: Sequence[int], where: str = "epilogue"
) -> FixedPointAffine:
    """One shift for several multipliers and an offset (rescale, add, mean, mul epilogues).

    `reals[i]` (either sign; the caller checks signs its op requires) multiply inputs bounded by
    `0 <= x_i <= input_max[i]`; `const` holds every zero point and the `1/2` of round-half-up. The
    shift is the largest `s <= 62` such that each `|M_i| = |floor(r_i 2^s + 1/2)| < 2^31` and
    `sum_i input_max[i] |M_i| + |floor(const 2^s + 1/2)| < 2^62`,
    so no int64 intermediate can overflow. The error against the real affine map is at most
    `(sum_i input_max[i] + 1) / 2^(s+1)` before the floor.
    """
    if len(reals) != len(input_max):
        raise ValueError("reals and input_max must have the same length")
    for r in reals:
        if not math.isfinite(r):
            raise LoweringError(where, f"rescaling factor {r!r} is not finite", "check the quantizer scales")
    if not math.isfinite(const):
        raise LoweringError(where, f"offset {const!r} is not finite", "check the quantizer zero points")
    s = min([MAX_SHIFT] + [_shift_for(abs(float(r))) for r in reals])
    while s >= 1:
        ms = tuple(round_half_up(math.ldexp(float(r), s)) for r in reals)
        off = round_half_up(math.ldexp(float(const), s))
        fp = FixedPointAffine(ms, off, s)
        if fp.max_intermediate(input_max) < INT64_SAFE:
            return fp
        s -= 1
    raise LoweringError(where, f"no shift in [1, {MAX_SHIFT}] represents factors {list(reals)} and offset {const:.6g}",
                        "a factor >= 2^30 or an offset near 2^61 means broken quantizer scales; recalibrate")


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
