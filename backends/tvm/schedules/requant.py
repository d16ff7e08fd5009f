"""The fused requantize epilogue as TE expressions (integer_semantics.md, "Fixed-point rule").

`requantize(acc + bias)`: `clamp(((acc + bias) * M + 2^(s-1)) >> s, lo, hi)` in int64 with an arithmetic
shift, per output channel `M`, `s` (gemmlowp-style fixed point, round half up).

Two exact rewrites make it cheap on AVX2, which has no 64-bit multiply or arithmetic shift:

1. `(acc + bias) * M + 2^(s-1) = acc * M + bterm` with the per-channel int64 `bterm = bias*M + 2^(s-1)`
   computed once per call (`bias_term`); int64 arithmetic is a ring mod 2^64, so the identity holds bit for
   bit. What remains per element is `sext(acc) * sext(M)`: one `vpmuldq` per 4 lanes.
2. With every shift >= 32, `v >> s = (v >> 32) >> (s - 32)`: nested floor divisions by powers of two.
   `v >> 32` truncated to int32 is a lane shuffle; the rest is an int32 `vpsravd`.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx

__all__ = ["bias_term", "requant_expr"]


def bias_term(bias: np.ndarray, mult: np.ndarray, shift: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """Per-channel int64 `bias*M + offset` (bias and rounding offset folded), computed at emit time.

    `offset` is requantize's per-channel offset (default `2^(s-1)`). Kernels take the result as an int64
    parameter in place of the bias (bias, M, s, offset are Relax constants). Wrapping int64 arithmetic,
    like the kernel's.
    """
    b, m, s = (np.asarray(a).astype(np.int64) for a in (bias, mult, shift))
    off = (np.int64(1) << (s - 1)) if offset is None else np.asarray(offset).astype(np.int64)
    with np.errstate(over="ignore"):
        return b * m + off


def requant_expr(
    acc: tirx.PrimExpr,
    bterm: tirx.PrimExpr,
    mult: tirx.PrimExpr,
    shift: tirx.PrimExpr,
    lo: int,
    hi: int,
    shift_min: int = 1,
) -> tirx.PrimExpr:
    """uint8 code of one int32 accumulator (without bias); scalar TE expressions of one channel.

    `shift_min` is the smallest shift of the layer (known at emit time); `>= 32` selects rewrite 2.
    The `& 31` / `& 63` masks are no-ops for valid shifts (1..62) but give TVM's bound analysis a
    non-negative shift amount (with a possibly negative one it "proves" the clamp away).
    """
    v = acc.astype("int64") * mult.astype("int64") + bterm
    if shift_min >= 32:
        hi32 = (v >> tirx.const(32, "int64")).astype("int32")
        r = hi32 >> ((shift - tirx.const(32, "int32")) & tirx.const(31, "int32"))
        return tirx.Max(tirx.Min(r, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype("uint8")
    r = v >> (shift.astype("int64") & tirx.const(63, "int64"))
    return tirx.Max(tirx.Min(r, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype("uint8")
