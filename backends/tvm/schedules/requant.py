"""The fused requantize epilogue as TE expressions (integer_semantics.md, "Fixed-point rule").

`requantize(acc + bias)`: `clamp(((acc + bias) * M + 2^(s-1)) >> s, lo, hi)` in int64 with an arithmetic
shift, per output channel `M`, `s` (gemmlowp-style fixed point, round half up).

Two exact rewrites make it cheap on AVX2, which has no 64-bit multiply or arithmetic shift:

1. `(acc + bias) * M + 2^(s-1) = acc * M + bterm` with the per-channel int64 `bterm = bias*M + 2^(s-1)`
   computed once per call (`bias_term`); int64 arithmetic is a ring mod 2^64, so the identity holds bit for
   bit. What remains per element is `sext(acc) * sext(M)`: one `vpmuldq` per 4 lanes.
2. With every shift >= 32, `v >> s = (v >> 32) >> (s - 32)`: nested floor divisions by powers of two.
   `v >> 32` truncated to int32 is a lane shuffle; the rest is an int32 `vpsravd`.

Integer elementwise ops that follow the requantize (a 256-entry lookup-table activation, a rescale to
another quantizer, the requantized residual add reading the skip tensor) run on the code inside the same
epilogue (`EpilogueStep`, `apply_post`): the code is still in a register, so the separate kernel, its output
tensor and its call disappear. Each step is the reference op's formula (`qcompile.ops.reference.lut`,
`rescale`, `add`) on the code, so the fused result is the same integer, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import te, tirx

__all__ = ["EPILOGUE_OPS", "EpilogueStep", "apply_post", "bias_term", "post_placeholders", "requant_expr"]

#: integer ops (`qcompile.ops.reference` names) that can run inside a requantize epilogue
EPILOGUE_OPS = ("lut", "rescale", "add")


@dataclass(frozen=True)
class EpilogueStep:
    """One integer elementwise op applied to the requantized code in a kernel's epilogue.

    `op` is one of `EPILOGUE_OPS`; `consts` are its static integers:

    - `"lut"`: `(entries,)`, the table length; the table (uint8) is a kernel operand;
    - `"rescale"`: `(multiplier, offset, shift, lo, hi)`, `clamp((v*M + offset) >> s, lo, hi)`;
    - `"add"`: `(m_self, m_other, offset, shift, lo, hi)`, `clamp((v*m_self + skip*m_other + offset) >> s,
      lo, hi)`, the skip tensor (uint8, the kernel's output shape) a kernel operand. `m_self` is the add's
      multiplier of the operand the conv produces (`multiplier_a` or `multiplier_b`); int64 addition is
      commutative, so the reference's `a*Ma + b*Mb + offset` is the same integer.
    """

    op: str
    consts: tuple[int, ...] = ()

    @property
    def has_operand(self) -> bool:
        """Whether the step reads a tensor operand (the lookup table or the skip tensor)."""
        return self.op in ("lut", "add")


def post_placeholders(post: Sequence[EpilogueStep], out_shape: tuple[int, ...]) -> list[te.Tensor]:
    """The kernel parameters of the steps that read a tensor, in step order: `table<i>[entries]` for a lookup
    table, `skip<i>[out_shape]` for a residual add (read at the output's own index)."""
    ins = []
    for i, st in enumerate(post):
        if st.op == "lut":
            ins.append(te.placeholder((int(st.consts[0]),), "uint8", name=f"table{i}"))
        elif st.op == "add":
            ins.append(te.placeholder(tuple(out_shape), "uint8", name=f"skip{i}"))
    return ins


def _clamp(v: tirx.PrimExpr, lo: int, hi: int) -> tirx.PrimExpr:
    return tirx.Max(tirx.Min(v, tirx.const(int(hi), "int64")), tirx.const(int(lo), "int64")).astype("uint8")


def apply_post(code: tirx.PrimExpr, post: Sequence[EpilogueStep], operands: Sequence[te.Tensor],
               at: tuple[Any, ...]) -> tirx.PrimExpr:
    """`code` (a uint8 expression) through the epilogue steps `post`; `operands` are `post_placeholders`'
    tensors and `at` the index of the output element (the skip tensor is read there). The formulas are the
    reference's: `table[v]`, `clamp((v*M + off) >> s)`, `clamp((v*Ma + skip*Mb + off) >> s)`, in int64."""
    it = iter(operands)
    v = code
    for st in post:
        if st.op == "lut":
            v = next(it)[v.astype("int32")]
        elif st.op == "rescale":
            m, off, sh, lo, hi = (int(c) for c in st.consts)
            v = _clamp((v.astype("int64") * tirx.const(m, "int64") + tirx.const(off, "int64"))
                       >> tirx.const(sh, "int64"), lo, hi)
        elif st.op == "add":
            m_self, m_other, off, sh, lo, hi = (int(c) for c in st.consts)
            skip = next(it)
            v = _clamp((v.astype("int64") * tirx.const(m_self, "int64")
                        + skip[tuple(at)].astype("int64") * tirx.const(m_other, "int64")
                        + tirx.const(off, "int64")) >> tirx.const(sh, "int64"), lo, hi)
        else:
            raise ValueError(f"epilogue op {st.op!r} is not one of {EPILOGUE_OPS}")
    return v


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
