"""The fused requantize epilogue as TE expressions (integer_semantics.md, "Fixed-point rule").

`requantize(acc + bias)`: `clamp(((acc + bias) * M + 2^(s-1)) >> s, lo, hi)` in int64 with an arithmetic
shift, per output channel `M`, `s` (gemmlowp-style fixed point, round half up).

Two exact rewrites make it cheap on AVX2, which has no 64-bit multiply or arithmetic shift:

1. `(acc + bias) * M + 2^(s-1) = acc * M + bterm` with the per-channel int64 `bterm = bias*M + 2^(s-1)`
   computed once per call (`bias_term`); int64 arithmetic is a ring mod 2^64, so the identity holds bit for
   bit. What remains per element is `sext(acc) * sext(M)`: one `vpmuldq` per 4 lanes.
2. With every shift >= 32, `v >> s = (v >> 32) >> (s - 32)`: nested floor divisions by powers of two.
   `v >> 32` truncated to int32 is a lane shuffle; the rest is an int32 `vpsravd`.

A third form (`requant_expr(..., pairs=True)`, the x86 GEMM's epilogue) changes where each lane's int64 lives,
not what it is: the per-lane int64 `acc*M + bterm` is computed by two TIR ops (`MADD_HI32`, `MADD_SHR_CLAMP`)
whose vector lowering multiplies the even and the odd int32 lanes of the accumulator in place
(`vpmuldq`), instead of sign-extending the vector to two int64 halves and narrowing the result back
(`pair_lowering` has the proof). Its int32 tail can shift lane by lane (`MADD_SHR32`, `tail32="shr"`): the
shift by a broadcast count is the one instruction of the epilogue that LLVM emits in a form (`vpsrad zmm, xmm`)
which competes with `vpdpbusd` for its pipe on Zen 4.

Integer elementwise ops that follow the requantize (a 256-entry lookup-table activation, a rescale to
another quantizer, the requantized residual add reading the skip tensor) run on the code inside the same
epilogue (`EpilogueStep`, `apply_post`): the code is still in a register, so the separate kernel, its output
tensor and its call disappear. Each step is the reference op's formula (`qcompile.ops.reference.lut`,
`rescale`, `add`) on the code, so the fused result is the same integer, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import te, tirx

__all__ = [
    "EPILOGUE_OPS",
    "MADD_HI32",
    "MADD_SHR32",
    "MADD_SHR_CLAMP",
    "TAIL32_FORMS",
    "EpilogueStep",
    "ADD32_MAX_SHIFT",
    "ADD32_SPLIT",
    "add_int32",
    "add_int32_applies",
    "preshift_applies",
    "preshift_operands",
    "u8s8_acc_bound",
    "apply_post",
    "bias_term",
    "pair_lowering",
    "post_placeholders",
    "register_pair_ops",
    "shr32_amounts",
    "sra_lanes",
    "requant_expr",
]

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


#: `add_int32`'s split of the multipliers and the offset: `M = Mh 2^16 + Ml`, `off = oh 2^16 + ol`
ADD32_SPLIT = 16
#: `add_int32` holds for shifts in [ADD32_SPLIT, ADD32_MAX_SHIFT]: `2^24 + 2^9 + 2^(s - 8) < 2^31`
ADD32_MAX_SHIFT = 38


def add_int32_applies(m_self: int, m_other: int, shift: int, lo: int, hi: int) -> bool:
    """Whether `add_int32` computes the residual add of these constants exactly: both multipliers in [0, 2^31),
    the shift in [`ADD32_SPLIT`, `ADD32_MAX_SHIFT`], the clamp inside [0, 255] (every add of uint8 codes built by
    `passes.to_integer` whose shift is at most 38)."""
    return (0 <= m_self < 1 << 31 and 0 <= m_other < 1 << 31 and ADD32_SPLIT <= shift <= ADD32_MAX_SHIFT
            and 0 <= lo <= hi <= 255)


def add_int32(a: tirx.PrimExpr, b: tirx.PrimExpr, m_a: int, m_b: int, off: int, shift: int, lo: int,
              hi: int) -> tirx.PrimExpr:
    """The reference residual add `clamp((a Ma + b Mb + off) >> s, lo, hi)` of two uint8 codes `a`, `b` in int32
    arithmetic only (`add_int32_applies`' constants), the same integer: with `M = Mh 2^16 + Ml` (`Ml < 2^16`) and
    `off = oh 2^16 + ol` (`0 <= ol < 2^16`, floor division),

    - `L = a Ml + b Ml' + ol < 2^25` and `H = a Mh + b Mh' < 2^24` are exact int32 values and the sum is
      `(H + oh) 2^16 + L`, so `sum >> s = (H + (L >> 16) + oh) >> (s - 16)` (nested floor divisions by powers of
      two, arithmetic shifts);
    - `oh` (up to 2^46) is clamped to `[-2^26, 2^(s - 8)]`: below, `X = H + (L >> 16) + oh < 0` whichever it is, so
      the shift is negative and clamps to `lo >= 0`; above, `X >= 256 2^(s - 16)`, the shift is at least 256 and
      clamps to `hi <= 255`; between, `|X| < 2^31` for `s <= 38`.

    Four `vpmulld` and int32 adds and shifts per 16 lanes instead of int64 lanes (two zmm per operand, their
    widening and narrowing): docs/peers.md, session 15."""
    k = ADD32_SPLIT
    i32 = "int32"

    def c(v: int) -> tirx.PrimExpr:
        return tirx.const(int(v), i32)

    mask = (1 << k) - 1
    oh = min(max(off >> k, -(1 << 26)), 1 << (shift - 8))
    a32, b32 = a.astype(i32), b.astype(i32)
    low = a32 * c(m_a & mask) + b32 * c(m_b & mask) + c(off & mask)
    x = a32 * c(m_a >> k) + b32 * c(m_b >> k) + (low >> c(k)) + c(oh)
    r = x >> c(shift - k)
    return tirx.Max(tirx.Min(r, c(hi)), c(lo)).astype("uint8")


def u8s8_acc_bound(terms: int) -> int:
    """Largest `|acc|` of an int32 sum of `terms` products of a uint8 code and an int8 weight: `terms*255*128`
    (a depthwise KHxKW layer: `KH*KW` terms; a GEMM: K, its zero-padded reduction rows adding nothing)."""
    return terms * 255 * 128


def preshift_applies(shift_min: int, acc_bound: int) -> bool:
    """Whether `preshift_operands` is exact for every channel of a layer whose shifts are at least `shift_min` and
    whose int32 accumulators satisfy `|acc| <= acc_bound` (a depthwise KHxKW layer on uint8 codes and int8
    weights: `KH*KW*255*128`), for every multiplier `|M| <= 2^31` and every bias term. For each shift `s < 32`
    (`k = 32 - s`): `acc_bound 2^k < 2^31` (the shifted accumulator is an int32), and
    `2^(62-k) - acc_bound 2^31 > 2^(s+8)` (a bias term clamped to `+-2^(62-k)` leaves every code saturated where
    it was). 3x3: shifts >= 20; 5x5: >= 21; 7x7: >= 22."""
    for s in range(max(shift_min, 1), 32):
        k = 32 - s
        if acc_bound << k >= 1 << 31 or (1 << (62 - k)) - (acc_bound << 31) <= 1 << (s + 8):
            return False
    return True


def preshift_operands(acc: tirx.PrimExpr, bterm: tirx.PrimExpr,
                      shift: tirx.PrimExpr) -> tuple[tirx.PrimExpr, tirx.PrimExpr, tirx.PrimExpr]:
    """`(acc', bterm', shift')` with `(acc' M + bterm') >> shift' = (acc M + bterm) >> shift` up to saturation and
    `shift' >= 32`, so that `requant_expr(acc', bterm', M, shift', ..., shift_min=32)` (the int32 tail: the high
    halves of the int64 sums, then an int32 shift) gives every channel's code, also those with shifts below 32
    (`preshift_applies`' layers), without a branch between the int32 and int64 tails per channel. With
    `k = max(0, 32 - s)`: `acc' = acc 2^k`, `bterm' = clamp(bterm, +-2^(62-k)) 2^k` (no clamp where `k = 0`),
    `shift' = s + k`, so `acc' M + bterm' = 2^k (acc M + bterm_c)` and the floor divisions by `2^(s+k)` and `2^s`
    agree; where `k > 0`, `|acc' M| < 2^62` and `|bterm'| <= 2^62`, so no int64 sum overflows (where `k = 0` the
    operands are the int32 tail's own, whose sums `to_integer` proved). Where the clamp moved `bterm`
    (`|bterm| > 2^(62-k)`), `|acc M| <= acc_bound 2^31` leaves both sums beyond `+-2^(s+8)` with the sign of `bterm`:
    the same saturated code. Per vector one shift (`vpsllvd`) more than the int32 tail; `k`, `bterm'` and `shift'`
    are the channel's scalars (LLVM hoists them out of the unrolled rows of the 28-112 px depthwise layers, not out of
    the 7-14 px ones' rolled epilogue loop: `x86.depthwise.DW_PRESHIFT_MIN_WO`)."""
    k = _preshift_k(shift)
    return tirx.shift_left(acc, k), _preshift_bterm(bterm, shift), shift + k


def _preshift_k(shift: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.max(tirx.const(32, "int32") - shift, tirx.const(0, "int32"))


def _preshift_bterm(bterm: tirx.PrimExpr, shift: tirx.PrimExpr) -> tirx.PrimExpr:
    """`preshift_operands`' bias term (a channel's scalar)."""
    i64 = "int64"
    k = _preshift_k(shift)
    lim = tirx.shift_left(tirx.const(1, i64), (tirx.const(62, "int32") - k).astype(i64))
    clamped = tirx.if_then_else(k > 0, tirx.max(tirx.min(bterm, lim), tirx.const(0, i64) - lim), bterm)
    return tirx.shift_left(clamped, k.astype(i64))


def apply_post(code: tirx.PrimExpr, post: Sequence[EpilogueStep], operands: Sequence[te.Tensor],
               at: tuple[Any, ...] | Callable[[te.Tensor], tirx.PrimExpr], *, add32: bool = False) -> tirx.PrimExpr:
    """`code` (a uint8 expression) through the epilogue steps `post`; `operands` are `post_placeholders`'
    tensors and `at` the index of the output element (the skip tensor is read there), or a function that reads
    the output element's value from a skip tensor (`conv.gemm_requant_stages`: contiguous reads where pixels are
    padded). The formulas are the reference's: `table[v]`, `clamp((v*M + off) >> s)`,
    `clamp((v*Ma + skip*Mb + off) >> s)`, in int64; with `add32` the add in int32 (`add_int32`) where its
    constants allow (`add_int32_applies`), the same integer."""
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
            other = at(skip) if callable(at) else skip[tuple(at)]
            if add32 and add_int32_applies(m_self, m_other, sh, lo, hi):
                v = add_int32(v, other, m_self, m_other, off, sh, lo, hi)
                continue
            v = _clamp((v.astype("int64") * tirx.const(m_self, "int64")
                        + other.astype("int64") * tirx.const(m_other, "int64")
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


#: `madd_hi32(acc: int32, M: int32, bterm: int64) -> int32`: `(sext(acc)*sext(M) + bterm) >> 32` (arithmetic)
MADD_HI32 = "qcompile.madd_hi32"
#: `madd_shr_clamp(acc: int32, M: int32, bterm: int64, s: int32, lo: int32, hi: int32) -> int32`:
#: `clamp((sext(acc)*sext(M) + bterm) >> s, lo, hi)` in int64 (arithmetic shift, `s` in [0, 63])
MADD_SHR_CLAMP = "qcompile.madd_shr_clamp"
#: `madd_shr32(acc: int32, M: int32, bterm: int64, s: int32) -> int32`: `(sext(acc)*sext(M) + bterm) >> s`
#: (arithmetic) for `s` in [32, 63]; the result always fits int32 (`|v| < 2^63`). Lowered as `MADD_HI32` then
#: `(v >> 32) >> (s - 32)` lane by lane (`sra_lanes`): the int32 tail of `requant_expr(..., tail32="shr")`
MADD_SHR32 = "qcompile.madd_shr32"
#: the forms of `requant_expr(..., pairs=True)`'s int32 tail (every shift >= 32): "hi32" (`MADD_HI32`, then an int32
#: shift by the channel's broadcast `s - 32`) and "shr" (`MADD_SHR32`: the same high halves, shifted lane by lane by
#: `vpsravd` on AVX-512, `sra_lanes`)
TAIL32_FORMS = ("hi32", "shr")

_pair_ops_registered = False


def _i64(v: int) -> tirx.PrimExpr:
    return tirx.const(v, "int64")


def _scalar_form(op: str, args: Sequence[tirx.PrimExpr], n: int = 1) -> tirx.PrimExpr:
    """The ops' definitions as plain int64 TIR (lane by lane for an `n`-lane call): the lowering of a scalar or
    odd-lane call."""
    i64, i32 = ("int64", "int32") if n == 1 else (f"int64x{n}", f"int32x{n}")
    v = args[0].astype(i64) * args[1].astype(i64) + args[2].astype(i64)
    if op == MADD_HI32:
        return (v >> tirx.Broadcast(_i64(32), n) if n > 1 else v >> _i64(32)).astype(i32)
    r = v >> args[3].astype(i64)
    return tirx.Max(tirx.Min(r, args[5].astype(i64)), args[4].astype(i64)).astype(i32)


def _halves(x: tirx.PrimExpr, n: int, dtype: str) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """Even and odd lanes of the `n`-lane vector `x` as two `n/2`-lane vectors of `dtype` (a broadcast stays
    a broadcast; otherwise a shuffle, which LLVM folds into the consumer where it can)."""
    if isinstance(x, tirx.Broadcast):
        v = x.value.astype(dtype)
        return tirx.Broadcast(v, n // 2), tirx.Broadcast(v, n // 2)
    idx = [[tirx.const(2 * i + h, "int32") for i in range(n // 2)] for h in (0, 1)]
    return tirx.Shuffle([x], idx[0]).astype(f"{dtype}x{n // 2}"), tirx.Shuffle([x], idx[1]).astype(f"{dtype}x{n // 2}")


#: the mask lanes of `shr32_amounts`: for `s` in [32, 63], `s & 31` and `s & ~0xE0` are both `s - 32`
_SHR32_MASKS = (31, ~0xE0)


def shr32_amounts(shift: tirx.PrimExpr, n: int) -> tirx.PrimExpr:
    """The `n`-lane int32 vector of `s - 32` for a shift `s` in [32, 63] (a scalar, one channel's, or an `n`-lane
    vector), as `s & 31` and `s & ~0xE0` in alternate lanes: the same value in every lane of a channel, but LLVM
    cannot prove the vector a splat, so `sra_lanes` keeps its per-lane shift (a splat amount it turns back into the
    shift by an xmm count), and a channel's amounts are a broadcast load and one `vpandd` (no scalar subtract, no
    move from a general register)."""
    masks = tirx.Shuffle([tirx.Broadcast(tirx.const(_SHR32_MASKS[0], "int32"), n),
                          tirx.Broadcast(tirx.const(_SHR32_MASKS[1], "int32"), n)],
                         [tirx.const(i if i % 2 == 0 else n + i, "int32") for i in range(n)])
    if isinstance(shift, tirx.Broadcast):
        shift = shift.value
    vec = shift if shift.ty.dtype.lanes == n else tirx.Broadcast(shift, n)
    return vec & masks


#: AVX-512 per-lane variable arithmetic shifts (`vpsravd` zmm) on int32 lanes
_PSRAV_D512 = "llvm.x86.avx512.psrav.d.512"


def sra_lanes(x: tirx.PrimExpr, amount: tirx.PrimExpr) -> tirx.PrimExpr:
    """`x >> amount` (int32 lanes, arithmetic, `amount` a vector of counts in [0, 31]) as AVX-512 per-lane variable
    shifts (`vpsravd` on each zmm of `x`). With a broadcast count LLVM selects the shift by an xmm count (`vpsrad
    zmm, xmm`), which on Zen 4 takes a cycle from the pipe `vpdpbusd` and `vpmuldq` run on; `vpsravd` does not
    (docs/peers.md, session 14). `amount` must not be provably a splat (`shr32_amounts`), or LLVM turns the
    intrinsic back into the xmm-count form. The same integers as `x >> amount`. Lane counts not a multiple of 16:
    plain `>>`."""
    n = x.ty.dtype.lanes
    if n % 16:
        return x >> amount
    if n == 16:
        return tirx.call_llvm_pure_intrin("int32x16", _PSRAV_D512, x, amount)

    def part(v: tirx.PrimExpr, c: int) -> tirx.PrimExpr:
        return tirx.Shuffle([v], [tirx.const(16 * c + i, "int32") for i in range(16)])

    parts = [tirx.call_llvm_pure_intrin("int32x16", _PSRAV_D512, part(x, c), part(amount, c)) for c in range(n // 16)]
    return tirx.Shuffle(parts, [tirx.const(i, "int32") for i in range(n)])


def pair_lowering(e: tirx.PrimExpr) -> tirx.PrimExpr:
    """Lower a (vectorised) `MADD_HI32` / `MADD_SHR_CLAMP` call without widening the accumulator.

    For an `n`-lane call (n even) the int32 vectors `acc` and `M` are reinterpreted as `n/2` int64 lanes
    (x86 is little-endian: int64 lane `i` holds int32 lane `2i` in its low half, `2i+1` in its high half):

    - even lanes: `(q << 32) >> 32` sign-extends the low half in place, odd lanes: `q >> 32` (arithmetic)
      brings the high half down sign-extended; LLVM selects one `vpmuldq` per product (it reads only the low
      halves, which have 33 sign bits), so `pe[i] = acc[2i]*M[2i] + bterm[2i]`, `po[i] = acc[2i+1]*M[2i+1] +
      bterm[2i+1]` are the int64 values `v` of the reference formula, bit for bit: `|acc*M| <= 2^62` is exact
      in int64 and `+ bterm` wraps exactly as the reference's int64 addition does;
    - `MADD_HI32`: the high half of `pe[i]` (int32 lane `2i+1` of its int32 view) is `v >> 32` (arithmetic) of
      lane `2i`, truncated to int32 exactly as the reference's `(v >> 32).astype(int32)`; that of `po[i]` is
      lane `2i+1`'s. One two-source shuffle (`vpermt2d`) puts them in lanes `2i`, `2i+1`: no `vpmovsxdq` /
      `vpmovqd` / `vinserti64x4`;
    - `MADD_SHR_CLAMP`: `clamp(pe >> s, lo, hi)` and `clamp(po >> s, lo, hi)` in int64 (the reference's own
      operations per lane); a value in `[lo, hi]` (int32 bounds) equals the low half of its int64, which the
      shuffle places in lanes `2i`, `2i+1`;
    - `MADD_SHR32`: `MADD_HI32`'s vector (`v >> 32` per lane, exact: `|v| < 2^63`), then `>> (s - 32)` per lane
      (`sra_lanes`, counts from `shr32_amounts`): `(v >> 32) >> (s - 32) = v >> s` for `s` in [32, 63] (rewrite 2).

    Only the placement of lanes differs from the widening form, never an operation on a value, so the result
    equals `_scalar_form` for every int32 `acc`, `M`, int64 `bterm` and `s` in [0, 63] (tested against
    `qcompile.ops.reference.requantize` on adversarial accumulators). Calls of 1, 2 or an odd number of lanes
    lower to `_scalar_form`, lane by lane."""
    op = e.op.name
    args = list(e.args)
    n = e.ty.dtype.lanes
    if n < 4 or n % 2:  # (two lanes would make one-lane "vectors")
        if op == MADD_SHR32:
            c32, c31 = (tirx.const(c, "int32") if n == 1 else tirx.Broadcast(tirx.const(c, "int32"), n)
                        for c in (32, 31))
            return _scalar_form(MADD_HI32, args[:3], n) >> ((args[3] - c32) & c31)
        return _scalar_form(op, args, n)
    h = n // 2
    q64, q32 = f"int64x{h}", f"int32x{n}"
    sh32 = tirx.Broadcast(_i64(32), h)

    def evens_odds(x: tirx.PrimExpr) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
        q = tirx.reinterpret(q64, x)
        even = (q << sh32) >> sh32
        # one channel's multiplier (a broadcast) has M in both halves: the even form serves the odd lanes too,
        # and LLVM feeds the int32 broadcast straight to `vpmuldq` (no sign extension, no shift)
        return even, (even if isinstance(x, tirx.Broadcast) else q >> sh32)

    ae, ao = evens_odds(args[0])
    me, mo = evens_odds(args[1])
    be, bo = _halves(args[2], n, "int64")
    pe, po = ae * me + be, ao * mo + bo
    if op in (MADD_HI32, MADD_SHR32):
        hi_idx = [tirx.const(j, "int32") for i in range(h) for j in (2 * i + 1, n + 2 * i + 1)]
        hi = tirx.Shuffle([tirx.reinterpret(q32, pe), tirx.reinterpret(q32, po)], hi_idx)
        # `MADD_SHR32`: then `>> (s - 32)` lane by lane, `(v >> 32) >> (s - 32) = v >> s`
        return hi if op == MADD_HI32 else sra_lanes(hi, shr32_amounts(args[3], n))
    se, so = _halves(args[3], n, "int64")
    lo_e, lo_o = _halves(args[4], n, "int64")
    hi_e, hi_o = _halves(args[5], n, "int64")
    re = tirx.Max(tirx.Min(pe >> se, hi_e), lo_e)
    ro = tirx.Max(tirx.Min(po >> so, hi_o), lo_o)
    lo_idx = [tirx.const(j, "int32") for i in range(h) for j in (2 * i, n + 2 * i)]
    return tirx.Shuffle([tirx.reinterpret(q32, re), tirx.reinterpret(q32, ro)], lo_idx)


def register_pair_ops() -> None:
    """Register `MADD_HI32` and `MADD_SHR_CLAMP` with TVM once: pure, vectorisable (the vectoriser widens the
    call lane by lane) and lowered by `pair_lowering` (TVM's `LowerIntrin`, after vectorisation)."""
    global _pair_ops_registered
    if _pair_ops_registered:
        return
    for op in (MADD_HI32, MADD_SHR_CLAMP, MADD_SHR32):
        tvm.ir.register_op_attr(op, "TCallEffectKind", tirx.CallEffectKind.Pure.value)
        tvm.ir.register_op_attr(op, "TVectorizable", True)
        tvm.ir.register_op_attr(op, "TScriptPrinterName", op.replace(".", "_"))  # printed as `T.qcompile_...`
        tirx.op.register_intrin_lowering(op, "default", f=pair_lowering, level=10)
    _pair_ops_registered = True


def requant_expr(
    acc: tirx.PrimExpr,
    bterm: tirx.PrimExpr,
    mult: tirx.PrimExpr,
    shift: tirx.PrimExpr,
    lo: int,
    hi: int,
    shift_min: int = 1,
    *,
    pairs: bool = False,
    narrow: Any = None,
    tail32: str = "hi32",
) -> tirx.PrimExpr:
    """uint8 code of one int32 accumulator (without bias); scalar TE expressions of one channel.

    `shift_min` is the smallest shift of the layer (known at emit time); `>= 32` selects rewrite 2.
    The `& 31` / `& 63` masks are no-ops for valid shifts (1..62) but give TVM's bound analysis a
    non-negative shift amount (with a possibly negative one it "proves" the clamp away).
    `pairs=True` computes the int64 `acc*M + bterm` through `MADD_HI32` / `MADD_SHR_CLAMP` (same integers,
    even/odd-lane vector lowering, `pair_lowering`); the default is the widening form.
    `narrow(r, lo, hi)` (with `pairs`): the last step, int32 `r` to the uint8 code `clamp(r, lo, hi)` (x86:
    `intrin.x86.narrow_u8_x86`, 64 lanes per pack); None is `max(min(r, hi), lo)` cast to uint8.
    `tail32` (with `pairs`, `shift_min >= 32`): one of `TAIL32_FORMS`. "hi32" (default): `MADD_HI32`, then the
    int32 shift by `s - 32`, which LLVM emits as a shift by an xmm count (`vpsrad zmm, xmm`); "shr": `MADD_SHR32`,
    whose lowering shifts the same high halves lane by lane (`vpsravd`, `sra_lanes`): on Zen 4 the xmm-count shift
    takes a cycle per zmm from the pipe `vpdpbusd` and `vpmuldq` run on, `vpsravd` none (docs/peers.md, session 14).
    "shr" emits AVX-512 intrinsics for vectors of a multiple of 16 lanes: AVX-512 targets only. The same integers.
    """
    if tail32 not in TAIL32_FORMS:
        raise ValueError(f"requant_expr: tail32={tail32!r} is not one of {TAIL32_FORMS}")
    if pairs:
        register_pair_ops()
        if shift_min >= 32:
            if tail32 == "shr":
                r = tirx.call_intrin("int32", MADD_SHR32, acc, mult, bterm, shift)
            else:
                r = tirx.call_intrin("int32", MADD_HI32, acc, mult, bterm) >> (
                    (shift - tirx.const(32, "int32")) & tirx.const(31, "int32"))
            if narrow is not None:
                return narrow(r, lo, hi)
            return tirx.Max(tirx.Min(r, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype("uint8")
        r = tirx.call_intrin("int32", MADD_SHR_CLAMP, acc, mult, bterm, shift & tirx.const(63, "int32"),
                             tirx.const(lo, "int32"), tirx.const(hi, "int32"))
        return r.astype("uint8") if narrow is None else narrow(r, lo, hi)  # r is in [lo, hi] already
    v = acc.astype("int64") * mult.astype("int64") + bterm
    if shift_min >= 32:
        hi32 = (v >> tirx.const(32, "int64")).astype("int32")
        r = hi32 >> ((shift - tirx.const(32, "int32")) & tirx.const(31, "int32"))
        return tirx.Max(tirx.Min(r, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype("uint8")
    r = v >> (shift.astype("int64") & tirx.const(63, "int64"))
    return tirx.Max(tirx.Min(r, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype("uint8")
