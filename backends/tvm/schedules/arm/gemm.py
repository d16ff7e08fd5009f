"""aarch64 GEMM conv kernel (pointwise and full convs, groups == 1), tensorized with `smmla` (i8mm), `sdot` or NEON.

GEMM (pointwise and full convs, `acc[o, p] = sum_k w[o, k] * x[k, p]`): activations are packed per call
to `xs[K/4, P, 4]` int8 with `xs = x - 128` (im2col with `pad_value` fused for full convs), weights are
packed once at emit time to `[O, K/4, 4]`, and a `To x Tp` tile of 4-lane rows is accumulated with `sdot`
(+dotprod) or the NEON smull/saddlp fallback (`intrin.arm`), or with `smmla` (+i8mm: groups of 8 reduction values,
`[K/8, P, 8]` / `[O, K/8, 8]`, 2x2 channel x pixel blocks), then requantized while hot
(`requant.requant_expr`). Both instructions are s8 x s8; activation codes are u8, so the kernel uses the
exact identity

    sum_k x*w = sum_k (x - 128)*w + 128 * sum_k w

with `128 * sum_k w[o, :]` folded into the per-channel bias at emit time (`fold_code_offset`). In int32:
each shifted product lies in [-16384, 16384], so the shifted accumulator cannot overflow for K < 2^17
(checked in `applies`), and the true accumulator is what the reference computes (`to_integer` proves it
fits). It holds for every weight bit-width 2..8, every code 0..255 and any `pad_value`, because no
step saturates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from qcompile.backends.tvm.intrin.arm import (
    S8S8_2x2x8_MMLA,
    S8S8_4x4_NEON,
    S8S8_4x4_SDOT,
    has_dotprod,
    has_i8mm,
    register_arm_intrinsics,
)
from qcompile.backends.tvm.schedules.conv import (
    GemmConv,
    GemmTile,
    gemm_requant_stages,
    gemm_tile,
    schedule_gemm_pack,
    schedule_gemm_tiles,
)
from qcompile.backends.tvm.schedules.parallel import parallel_if_worth
from qcompile.errors import ConfigError

__all__ = ["ARM_GROUP", "ARM_MODES", "CODE_OFFSET", "K_MAX", "ArmGemmKnobs", "arm_mode", "fold_code_offset",
           "gemm_conv_arm", "is_arm"]

#: subtracted from u8 codes so they fit s8 (`sum(x*w) = sum((x-128)*w) + 128*sum(w)`)
CODE_OFFSET = 128
#: mode -> intrinsic; all take int8 x int8: `sdot`/`neon` 4 pixels x 4 reduction values of one channel per call,
#: `i8mm` (`smmla`) 2 channels x 2 pixels x 8 reduction values
ARM_MODES = {"sdot": S8S8_4x4_SDOT, "neon": S8S8_4x4_NEON, "i8mm": S8S8_2x2x8_MMLA}
#: mode -> reduction values per packed group (the `g` of `xs[K/g, P, g]` and of the weights `[O, K/g, g]`)
ARM_GROUP = {"sdot": 4, "neon": 4, "i8mm": 8}
_LANES = 4
# largest K for which the shifted int32 accumulator cannot overflow: K * 128 * 128 < 2^31
K_MAX = (2**31 - 1) // (CODE_OFFSET * CODE_OFFSET)


def is_arm(target: tvm.target.Target) -> bool:
    """An LLVM target for aarch64 (our intrinsics need NEON, which every aarch64 core has)."""
    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    return triple.startswith(("aarch64", "arm64"))


def arm_mode(target: tvm.target.Target, o: int | None = None) -> str:
    """'i8mm' when the target has the int8 matrix multiply extension (and the conv's `o` output channels, if
    given, are even: `smmla` fills 2 channels at a time), else 'sdot' with the dotprod extension, else 'neon'."""
    if has_i8mm(target) and (o is None or o % 2 == 0):
        return "i8mm"
    return "sdot" if has_dotprod(target) else "neon"


@dataclass(frozen=True)
class ArmGemmKnobs:
    """Tile of one micro-kernel step: `to` output channels x `tp` pixels (tp a multiple of 4)."""

    to: int = 4
    tp: int = 16

    def __post_init__(self) -> None:
        if self.tp % _LANES or self.tp <= 0:
            raise ConfigError("ArmGemmKnobs.tp", self.tp, "positive multiples of 4")
        if self.to <= 0:
            raise ConfigError("ArmGemmKnobs.to", self.to, "positive integers")


def fold_code_offset(bias: np.ndarray, w: np.ndarray) -> np.ndarray:
    """int64 per-channel `bias + 128 * sum_k w[o, k]`: the bias that makes the shifted GEMM exact."""
    w2 = np.asarray(w).reshape(w.shape[0], -1).astype(np.int64)
    return np.asarray(bias).astype(np.int64) + CODE_OFFSET * w2.sum(axis=1)


def gemm_conv_arm(gc: GemmConv, mode: str, knobs: ArmGemmKnobs = ArmGemmKnobs()) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x, wp[O, K/g, g] i8, bterm[O] i64, mult[O] i32, shift[O] i32) -> out[O, P]`.

    `g = ARM_GROUP[mode]` (4, or 8 for 'i8mm', which needs an even O and rounds the knobs' `to` down to an even
    divisor of O). `x` is `[K, P]` uint8 (pointwise) or `[C, H, W]` when `gc.conv` describes a groups=1 conv
    (im2col with `pad_value` fused into the packing; `K = C*KH*KW` in `(c, kh, kw)` order). `bterm` must be
    `requant.bias_term(fold_code_offset(bias, w), M, s)`; without requantize (`gc.lo is None`) the bias operand
    is the int32 `fold_code_offset(bias, w)` and `out` is the int32 accumulator plus bias.
    """
    if mode not in ARM_MODES:
        raise ConfigError("mode", mode, sorted(ARM_MODES))
    register_arm_intrinsics()
    intrin = ARM_MODES[mode]
    k, p, o, conv, requant = gc.k, gc.p, gc.o, gc.conv, gc.requant
    g = ARM_GROUP[mode]
    if mode == "i8mm":
        if o % 2:
            raise ConfigError("GemmConv.o", o, "an even channel count for mode 'i8mm' (smmla fills 2 channels)")
        to2 = max(t for t in range(2, max(knobs.to, 2) + 1, 2) if o % t == 0)  # 2 divides O
        tile = gemm_tile(k, p, o, g, to2, knobs.tp, _LANES, 2)
    else:
        tile = gemm_tile(k, p, o, g, knobs.to, knobs.tp, _LANES, _LANES)
    pp, kb = tile.pp, tile.kb
    off = tirx.const(CODE_OFFSET, "int16")
    wp, bias = tile.operands("int8", requant)
    if conv is None:
        x = te.placeholder((k, p), "uint8", name="x")

        def gather(kk, j):
            val = (x[kk, j].astype("int16") - off).astype("int8")
            return tirx.if_then_else(tirx.all(kk < k, j < p), val, tirx.const(0, "int8"))

    else:
        cg = conv
        x = te.placeholder((cg.c, cg.h, cg.w), "uint8", name="x")

        def gather(kk, j):
            c_, kh, kw = kk // (cg.kh * cg.kw), (kk // cg.kw) % cg.kh, kk % cg.kw
            yy = (j // cg.wo) * cg.stride[0] + kh * cg.dilation[0] - cg.padding[0]
            xx = (j % cg.wo) * cg.stride[1] + kw * cg.dilation[1] - cg.padding[1]
            inside = tirx.all(yy >= 0, yy < cg.h, xx >= 0, xx < cg.w)
            code = tirx.if_then_else(inside, x[c_, yy, xx], tirx.const(cg.pad_value, "uint8"))
            val = (code.astype("int16") - off).astype("int8")
            return tirx.if_then_else(tirx.all(kk < k, j < p), val, tirx.const(0, "int8"))

    stages = gemm_requant_stages(gather, (kb, g), wp, bias, o, p, pp, gc.lo, gc.hi, gc.shift_min, gc.post)
    sch = s_tir.Schedule(te.create_prim_func([x, wp, bias, *stages]).with_attr("global_symbol", "main"))

    kind = "gemm_int16" if mode == "neon" else "gemm_dot"  # parallel.UNIT_COST_NS: the x86 instruction class
    schedule_gemm_pack(sch, tile, conv, kind)
    if mode == "i8mm":
        _schedule_mmla_tiles(sch, tile, intrin, kind)
    else:
        schedule_gemm_tiles(sch, tile, intrin, kind=kind)
    return sch.mod["main"]


def _schedule_mmla_tiles(sch: s_tir.Schedule, tile: GemmTile, intrin: str, kind: str) -> None:
    """`conv.schedule_gemm_tiles` for `smmla`: `to x tp` tiles (pixels outside), inside them 2-channel x 2-pixel
    blocks over the 8 reduction values of a group, the intrinsic on the 2x2x8 block; parallel over tiles before
    decompose_reduction / tensorize, the epilogue (and `crop`) on each hot tile."""
    gm = sch.get_sblock("gemm")
    c, j, rb_, ri_ = sch.get_loops(gm)
    co, ci = sch.split(c, [None, tile.to])
    ci_o, ci_i = sch.split(ci, [None, 2])
    jo, jm, ji = sch.split(j, [None, tile.tp // tile.lanes, tile.lanes])
    sch.reorder(jo, co, rb_, ci_o, jm, ci_i, ji, ri_)
    outer = sch.fuse(jo, co)
    parallel_if_worth(sch, outer, tile.o * tile.pp * tile.kb * tile.g, kind)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, outer)
    init = sch.decompose_reduction(gm, rb_)
    sch.tensorize(ci_i, intrin)
    sch.unroll(ci_o)
    sch.unroll(jm)
    sch.vectorize(sch.get_loops(init)[-1])
    _, e_ji = sch.split(sch.get_loops(ep)[-1], [None, _LANES])
    sch.vectorize(e_ji)
    if tile.pp != tile.p:
        sch.reverse_compute_at(sch.get_sblock("crop"), outer)
