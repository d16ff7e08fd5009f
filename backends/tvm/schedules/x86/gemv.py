"""x86 pointwise conv on a few pixels (1x1 convs at 1x1 .. 2x2 spatial size) as a GEMV over output channels.

The packed GEMM of `gemm.py` puts pixels in the vector lanes (`acc[o, p]`, 16 pixels per `vpdpbusd`). On the
last stages of a small network (MobileNetV3 at 32 px: 1x1 and 2x2 feature maps, 1 or 4 pixels) that leaves 15
or 12 of 16 lanes empty, and the kernel costs 2-11 us where its MACs need well under one. Here the lanes are
*output channels* instead, as in the `linear` GEMV (`x86.strategy._LinearBase._emit_vnni`):

- weights are packed once at compile time to `[O/L, K/4, L, 4]` (L = 16 lanes with AVX512-VNNI, 8 with the
  256-bit AVX-VNNI / AVX512-VL form; O padded with zero rows to whole vectors), so one `vpdpbusd` multiplies the
  4 reduction values of `L` channels;
- the 4 activation codes of one pixel are one int32, broadcast to every lane (`bcast="a"` intrinsics);
- the `P x To` accumulators of a channel block stay in registers over the whole reduction (the weight vector of
  a reduction step is reused by the P pixels), and the requantize epilogue (with its fused steps) runs on the
  block while it is hot.

Exact: `vpdpbusd` adds four u8 x s8 products into int32 without an int16 intermediate; the accumulator is the
reference's integer sum in another order (integer_semantics.md `conv2d`; `to_integer` proved it fits int32).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from qcompile.backends.tvm.intrin.x86 import (
    S8U8_8x4_VNNI_BCAST,
    S8U8_16x4_VNNI512_BCAST,
    has_avx512_vnni,
    has_vnni,
    register_x86_intrinsics,
)
from qcompile.backends.tvm.schedules.conv import GemmConv
from qcompile.backends.tvm.schedules.parallel import parallel_if_worth
from qcompile.backends.tvm.schedules.requant import apply_post, post_placeholders, requant_expr
from qcompile.backends.tvm.schedules.x86.packed_gemv import (
    pack_packed_weights,
    packed_at,
    packed_sums,
    schedule_packed,
)
from qcompile.errors import ConfigError

__all__ = ["GEMV_MAX_PIXELS", "GEMV_MAX_ACC", "gemv_applies", "gemv_lanes", "gemv_mode", "pack_gemv_weights",
           "pointwise_gemv_x86", "schedule_lane_block", "pointwise_gemv_packed_x86", "pack_gemv_packed_weights"]

#: most output pixels of a pointwise conv that `pointwise_gemv_x86` computes (more: the pixel-vector GEMM)
GEMV_MAX_PIXELS = 4
#: most vector accumulators of one channel block (`P x To`): LLVM keeps them and the broadcasts in the 32 zmm
#: registers, and the block's int32 tile (at most 16 x 16 x 4 bytes) stays a stack array, not a workspace
GEMV_MAX_ACC = 12


def gemv_lanes(target: tvm.target.Target) -> int:
    """Output channels per `vpdpbusd` on `target`: 16 (AVX512-VNNI), 8 (AVX-VNNI / AVX512-VL VNNI), 0 (none)."""
    if has_avx512_vnni(target):
        return 16
    return 8 if has_vnni(target) else 0


def gemv_applies(target: tvm.target.Target, kind: str | None, p: int, k: int) -> bool:
    """Whether a groups=1 conv of `kind` with `p` output pixels and reduction length `k` takes the GEMV kernel:
    a pointwise conv on at most `GEMV_MAX_PIXELS` pixels, on a target with a VNNI dot product."""
    return kind == "pointwise" and 1 <= p <= GEMV_MAX_PIXELS and k >= 4 and gemv_lanes(target) > 0


def gemv_mode(target: tvm.target.Target, o: int) -> str:
    """The GEMV kernel's intrinsic for `o` output channels: "vnni512" (zmm, 16 channels) where the target has
    AVX512-VNNI and 16 divides O, else "vnni" (ymm, 8 channels: no zero rows for O = 8 (mod 16), which measured
    as fast per channel here)."""
    return "vnni512" if gemv_lanes(target) == 16 and o % 16 == 0 else "vnni"


def pack_gemv_weights(w: np.ndarray, lanes: int) -> np.ndarray:
    """[O, K(,1,1)] int8 weights -> `[ceil(O/L), ceil(K/4), L, 4]` int8, zero rows and columns as padding (a zero
    weight adds nothing; the padded channels are never stored)."""
    w2 = np.asarray(w).reshape(w.shape[0], -1).astype(np.int8)
    o, k = w2.shape
    ob, kb = -(-o // lanes), -(-k // 4)
    out = np.zeros((ob * lanes, kb * 4), np.int8)
    out[:o, :k] = w2
    return np.ascontiguousarray(out.reshape(ob, lanes, kb, 4).transpose(0, 2, 1, 3))


def _channel_block(ob: int, p: int, max_acc: int = GEMV_MAX_ACC) -> int:
    """Channel vectors per block: the largest divisor of `ob` with `p * To <= max_acc` (no ragged block)."""
    return max(t for t in range(1, ob + 1) if ob % t == 0 and p * t <= max(max_acc, p))


def schedule_lane_block(sch: s_tir.Schedule, blk: Any, at: Any, rb: Any, lanes_loop: Any, intrin: str,
                        unroll: tuple, n_outer: int, channels: int, lanes: int) -> None:
    """What the kernels with channels in the vector lanes (`pointwise_gemv_x86`, `depthwise.depthwise_cvec_x86`)
    schedule alike once their block loops are ordered: the block's accumulators in registers (a stack tile with
    constant indices after unrolling `unroll`; "global" scope, as in `depthwise.py`: a "local" one cost a
    TVMBackendAllocWorkspace/FreeWorkspace pair per block), the `epilogue` stage of the block at loop `at` while
    it is hot, the zero-init vectorised, `intrin` (its global-scope form) on `lanes_loop`, and the epilogue with
    channels in the lanes and output pixels outside (strided stores to `[C, pixels]` when there are several).
    `n_outer`: the epilogue's loops down to `at`; its loops of extent 1 are gone (one pixel)."""
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, at)
    init = sch.decompose_reduction(blk, rb)
    sch.tensorize(lanes_loop, intrin)
    for lp in unroll:
        sch.unroll(lp)
    sch.vectorize(sch.get_loops(init)[-1])
    e_ch, *e_pix = sch.get_loops(ep)[n_outer:]
    if e_pix:
        sch.reorder(*e_pix, e_ch)
    for lp in e_pix:
        sch.unroll(lp)
    if channels % lanes == 0:
        _, e_ci = sch.split(e_ch, [None, lanes])
        sch.vectorize(e_ci)


def _gemv_signature(gc: GemmConv, x: te.Tensor, wp: te.Tensor, bias: te.Tensor, acc_at: Any) -> list[te.Tensor]:
    """The GEMV kernels' parameters `(x, wp, bias[, mult, shift, *post operands], out)` with the `epilogue` stage
    over `acc_at(c, j)`, the int32 accumulator of channel `c` and pixel `j`: the requantize with its fused steps, or
    the int32 bias add when the conv has no requantize."""
    o, p = gc.o, gc.p
    if not gc.requant:
        return [x, wp, bias, te.compute((o, p), lambda c, j: acc_at(c, j) + bias[c], name="epilogue")]
    mult = te.placeholder((o,), "int32", name="mult")
    shift = te.placeholder((o,), "int32", name="shift")
    post_ins = post_placeholders(gc.post, (o, p))
    out = te.compute((o, p), lambda c, j: apply_post(
        requant_expr(acc_at(c, j), bias[c], mult[c], shift[c], gc.lo, gc.hi, gc.shift_min), gc.post, post_ins,
        (c, j)), name="epilogue")
    return [x, wp, bias, mult, shift, *post_ins, out]


def pointwise_gemv_x86(gc: GemmConv, lanes: int = 16) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x[K, P] u8, wp[O/L, K/4, L, 4] i8, bterm[O] i64, mult[O] i32, shift[O] i32, ...)
    -> out[O, P]` for a pointwise conv on `P <= GEMV_MAX_PIXELS` pixels (`GemmConv` with `conv=None`): uint8
    codes requantized and passed through `gc.post`, or the int32 accumulator `acc + bias` when `gc.lo is None`
    (then `bias[O]` i32 replaces `bterm` and there are no `mult`/`shift`). Weights: `pack_gemv_weights`."""
    if gc.conv is not None:
        raise ConfigError("GemmConv.conv", gc.conv, "None (the GEMV kernel computes pointwise convs)")
    if lanes not in (8, 16):
        raise ConfigError("lanes", lanes, (8, 16))
    register_x86_intrinsics()
    k, p, o = gc.k, gc.p, gc.o
    kb, ob = -(-k // 4), -(-o // lanes)
    x = te.placeholder((k, p), "uint8", name="x")
    wp = te.placeholder((ob, kb, lanes, 4), "int8", name="wp")
    bias = te.placeholder((o,), "int64" if gc.requant else "int32", name="bterm" if gc.requant else "bias")
    # the activations as `[P, K/4, 4]`: each pixel's 4 reduction values one int32 (zero beyond K); one O(K*P)
    # pass, read by every channel block
    xq = te.compute((p, kb, 4), lambda j, b, i: tirx.if_then_else(
        b * 4 + i < k, x[tirx.min(b * 4 + i, k - 1), j], tirx.const(0, "uint8")), name="xpack")
    rb, ri = te.reduce_axis((0, kb), name="rb"), te.reduce_axis((0, 4), name="ri")
    acc = te.compute((ob, p, lanes), lambda c, j, li: te.sum(
        xq[j, rb, ri].astype("int32") * wp[c, rb, li, ri].astype("int32"), axis=[rb, ri]), name="gemv")

    def acc_at(c: Any, j: Any) -> Any:
        return acc[c // lanes, j, c % lanes]

    args = _gemv_signature(gc, x, wp, bias, acc_at)
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    blk = sch.get_sblock("gemv")
    c_, j_, li_, rb_, ri_ = sch.get_loops(blk)
    co, ci = sch.split(c_, [None, _channel_block(ob, p)])
    sch.reorder(co, rb_, j_, ci, li_, ri_)
    parallel_if_worth(sch, co, o * k * p, "gemv")
    schedule_lane_block(sch, blk, co, rb_, li_, S8U8_16x4_VNNI512_BCAST if lanes == 16 else S8U8_8x4_VNNI_BCAST,
                        (j_, ci), 1, o, lanes)
    xp_loops = sch.get_loops(sch.get_sblock("xpack"))
    sch.unroll(xp_loops[-1])
    return sch.mod["main"]


def pack_gemv_packed_weights(w: np.ndarray, bits: int, pixels: int) -> np.ndarray:
    """[O, K(,1,1)] codes of `bits` bits -> the packed `[G, ceil(K/4), 16, 4]` uint8 of
    `packed_gemv.pack_packed_weights` for a GEMV on `pixels` pixels, K padded with zero weights to whole reduction
    steps."""
    w2 = np.asarray(w).reshape(w.shape[0], -1)
    k = w2.shape[1]
    wk = np.zeros((w2.shape[0], -(-k // 4) * 4), np.int8)
    wk[:, :k] = w2
    return pack_packed_weights(wk, bits, block_rows=pixels)


def pointwise_gemv_packed_x86(gc: GemmConv, bits: int) -> tvm.tirx.PrimFunc:
    """`pointwise_gemv_x86` (AVX512-VNNI, 16 lanes) with `bits`-bit weights packed `8 // bits` to a byte
    (`packed_gemv`; weights: `pack_gemv_packed_weights`): the same operands but `wp[O/(16g), K/4, 16, 4]` uint8. A
    channel block is `inner` groups of `g` channel vectors, each 64-byte weight load feeding the block's P pixels
    and `g` slots; the requantize epilogue runs on the block while it is hot. Exact (`packed_gemv`)."""
    if gc.conv is not None:
        raise ConfigError("GemmConv.conv", gc.conv, "None (the GEMV kernel computes pointwise convs)")
    register_x86_intrinsics()
    k, p, o = gc.k, gc.p, gc.o
    kb = -(-k // 4)
    x = te.placeholder((k, p), "uint8", name="x")
    bias = te.placeholder((o,), "int64" if gc.requant else "int32", name="bterm" if gc.requant else "bias")
    xq = te.compute((p, kb, 4), lambda j, b, i: tirx.if_then_else(
        b * 4 + i < k, x[tirx.min(b * 4 + i, k - 1), j], tirx.const(0, "uint8")), name="xpack")
    rk = te.reduce_axis((0, k), "rk")
    sx = te.compute((p,), lambda j: te.sum(x[rk, j].astype("int32"), axis=rk), name="sx")
    wp, un = packed_sums(p, kb, o, bits, lambda j, rb, ri: xq[j, rb, ri], sx, block_rows=p)
    at = packed_at(un, bits)

    def acc_at(c: Any, j: Any) -> Any:
        return at(j, c)

    args = _gemv_signature(gc, x, wp, bias, acc_at)
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))
    bo = schedule_packed(sch, kb, bits, rows_inside=True, epilogue="epilogue")
    ep = sch.get_sblock("epilogue")
    loops = sch.get_loops(ep)
    at_bo = next(j for j, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(bo)))
    e_ch, *e_pix = loops[at_bo + 1:]
    if e_pix:
        sch.reorder(*e_pix, e_ch)
    for lp in e_pix:
        sch.unroll(lp)
    if o % 16 == 0:
        _, e_ci = sch.split(e_ch, [None, 16])
        sch.vectorize(e_ci)
    sch.unroll(sch.get_loops(sch.get_sblock("xpack"))[-1])
    return sch.mod["main"]
