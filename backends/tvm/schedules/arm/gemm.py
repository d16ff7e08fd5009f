"""aarch64 GEMM conv kernel (pointwise and full convs, groups == 1), tensorized with `sdot` or NEON.

GEMM (pointwise and full convs, `acc[o, p] = sum_k w[o, k] * x[k, p]`): activations are packed per call
to `xs[K/4, P, 4]` int8 with `xs = x - 128` (im2col with `pad_value` fused for full convs), weights are
packed once at emit time to `[O, K/4, 4]`, and a `To x Tp` tile of 4-lane rows is accumulated with `sdot`
(+dotprod) or the NEON smull/saddlp fallback (`intrin.arm`), then requantized while hot
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
    S8S8_4x4_NEON,
    S8S8_4x4_SDOT,
    has_dotprod,
    register_arm_intrinsics,
)
from qcompile.backends.tvm.schedules.conv import (
    GemmConv,
    gemm_requant_stages,
    gemm_tile,
    schedule_gemm_pack,
    schedule_gemm_tiles,
)
from qcompile.errors import ConfigError

__all__ = ["ARM_MODES", "CODE_OFFSET", "K_MAX", "ArmGemmKnobs", "arm_mode", "fold_code_offset", "gemm_conv_arm"]

#: subtracted from u8 codes so they fit s8 (`sum(x*w) = sum((x-128)*w) + 128*sum(w)`)
CODE_OFFSET = 128
#: mode -> intrinsic; both take int8 x int8, 4 pixels x 4 reduction values per call
ARM_MODES = {"sdot": S8S8_4x4_SDOT, "neon": S8S8_4x4_NEON}
_LANES = 4
# largest K for which the shifted int32 accumulator cannot overflow: K * 128 * 128 < 2^31
K_MAX = (2**31 - 1) // (CODE_OFFSET * CODE_OFFSET)


def arm_mode(target: tvm.target.Target) -> str:
    """'sdot' when the target has the dotprod extension, else 'neon'."""
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
    """Scheduled PrimFunc `(x, wp[O, K/4, 4] i8, bterm[O] i64, mult[O] i32, shift[O] i32) -> out[O, P]`.

    `x` is `[K, P]` uint8 (pointwise) or `[C, H, W]` when `gc.conv` describes a groups=1 conv (im2col with
    `pad_value` fused into the packing; `K = C*KH*KW` in `(c, kh, kw)` order). `bterm` must be
    `requant.bias_term(fold_code_offset(bias, w), M, s)`; without requantize (`gc.lo is None`) the bias operand
    is the int32 `fold_code_offset(bias, w)` and `out` is the int32 accumulator plus bias.
    """
    if mode not in ARM_MODES:
        raise ConfigError("mode", mode, sorted(ARM_MODES))
    register_arm_intrinsics()
    intrin = ARM_MODES[mode]
    k, p, o, conv, requant = gc.k, gc.p, gc.o, gc.conv, gc.requant
    tile = gemm_tile(k, p, o, 4, knobs.to, knobs.tp, _LANES, _LANES)
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

    stages = gemm_requant_stages(gather, (kb, 4), wp, bias, o, p, pp, gc.lo, gc.hi, gc.shift_min, gc.post)
    sch = s_tir.Schedule(te.create_prim_func([x, wp, bias, *stages]).with_attr("global_symbol", "main"))

    kind = "gemm_dot" if mode == "sdot" else "gemm_int16"  # parallel.UNIT_COST_NS: the x86 instruction class
    schedule_gemm_pack(sch, tile, conv, kind)
    schedule_gemm_tiles(sch, tile, intrin, kind=kind)
    return sch.mod["main"]
