"""Depthwise conv (groups == C) with fused bias + requantize, NCHW, vectorised along output rows.

`acc[c, y, x] = sum_{kh, kw} w[c, kh, kw] * x_pad[c, y*s + kh*d, x*s + kw*d]` (integer_semantics.md
`conv2d` with groups = C; the 3x3/5x5/7x7 depthwise layers of MobileNetV2/V3). The network keeps NCHW
between kernels, so the vector axis is the output row (8..112 pixels wide) instead of channels: one
channel's padded plane (at most 230x230 bytes) is built in cache right before its rows are computed
(padding with the code `pad_value`), the kh/kw taps are unrolled around 8-lane int32 vectors, and the
requantize epilogue runs on each finished row. Channels are spread over the cores.

The accumulator tiles keep TVM's default "global" scope: LowerTVMBuiltin stack-allocates a small constant-size
buffer (which LLVM then keeps in registers) only in that scope, and turned a "local" tile into a
`TVMBackendAllocWorkspace` + `TVMBackendFreeWorkspace` call pair in every channel's iteration (10-23 % of the
7-28 px MobileNetV2 layers' time; docs/peers.md, "session 11").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from qcompile.backends.tvm.schedules.conv import DwConv, dw_epilogue, dw_preshift_applies
from qcompile.backends.tvm.schedules.parallel import parallel_if_worth
from qcompile.errors import ConfigError

__all__ = ["DwKnobs", "default_dw_knobs", "depthwise_conv_x86", "depthwise_conv_pairs_x86", "depthwise_kernel",
           "dw_candidates", "dw_weights", "pack_pair_weights", "target_dw_knobs", "small_dw_applies",
           "small_dw_weights", "depthwise_small_x86", "CVEC_DW_PIXELS", "CVEC_DW_IN_PIXELS", "cvec_dw_lanes",
           "cvec_dw_operands", "depthwise_cvec_x86", "tap_matrix", "depthwise_conv_vquads_x86", "pack_vquad_weights",
           "vquad_geometry", "depthwise_conv_slide_x86", "slide_row_bytes", "slide_applies", "SLIDE_MAX_KW",
           "SLIDE_PLANES", "slide_plane_group", "ENV_DW_PLANE", "default_slide_plane"]


#: the row, tap-pair/quad and vertical-quad kernels requantize with `requant_expr`'s even/odd-lane form
#: (`pairs=True`): bit-exact, and measured faster on every depthwise layer of MobileNetV2 (docs/peers.md, session 11)
DW_PAIRS = True
#: the row, tap-pair/quad, vertical-quad and sliding-quad kernels of a layer with shifts below 32 branch per channel
#: between the int32 requantize tail (channels with shift >= 32) and the int64 one (`conv.dw_epilogue(...,
#: shift_branch=True)`): bit-exact; MobileNetV2's synthetic program has depthwise shifts 23-39, and one channel
#: below 32 used to put every channel on the int64 tail (32x112x112 92.5 -> 73.0 us, docs/peers.md, session 13)
DW_SHIFT_BRANCH = True
#: ... and before that branch, where `requant.preshift_applies` (3x3 layers with shifts >= 20, 7x7 >= 22): every
#: channel on the int32 tail with pre-shifted operands (`conv.dw_epilogue(..., preshift=True)`), no branch
DW_PRESHIFT = True
#: narrowest output row that takes it: on 7-14 px rows (8-lane vectors) LLVM left the longer epilogue a loop
#: (accumulators spilled to the stack; 384x14x14 1.36x slower at 1 thread), on 28-112 px rows 0.93-0.96x
#: (docs/peers.md, session 16)
DW_PRESHIFT_MIN_WO = 15


def _preshift(dw: DwConv) -> bool:
    """Whether the row, tap-group, vertical-quad and sliding-quad kernels take the pre-shifted int32 tail
    (`DW_PRESHIFT`, `conv.dw_preshift_applies`): on rows of more than `DW_PRESHIFT_MIN_WO - 1` outputs."""
    return DW_PRESHIFT and DW_PAIRS and dw.wo >= DW_PRESHIFT_MIN_WO and dw_preshift_applies(dw)


def _schedule_epilogue(sch: s_tir.Schedule, row: s_tir.LoopRV, vec: int, ragged: bool) -> None:
    """Epilogue of each finished output row while it is hot: whole vectors, then the crop copy."""
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, row)
    _, e_i = sch.split(sch.get_loops(ep)[-1], [None, vec])
    sch.vectorize(e_i)
    if ragged:
        sch.reverse_compute_at(sch.get_sblock("crop"), row)


def depthwise_conv_x86(dw: DwConv, *, vec: int = 8, rows: int = 1) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x[C,H,W] u8, w[C,KH,KW] i8, bterm i64, mult, shift) -> out[C,Ho,Wo]`.

    `rows` output rows (at most; the largest divisor of Ho not above it) are computed together, taps
    outside them, so that `rows * ceil(Wo/vec)` independent accumulators hide the multiply-add latency.

    `out` is uint8 codes (`bterm = requant.bias_term(bias, mult, shift)`), or int32 `acc + bias` when
    `dw.lo is None` (then the int32 bias replaces `bterm` and there are no `mult`/`shift` parameters).
    """
    if vec not in (4, 8, 16):
        raise ConfigError("vec", vec, (4, 8, 16))
    c, h, w, kh, kw = dw.c, dw.h, dw.w, dw.kh, dw.kw
    stride, padding, dilation, pad_value = dw.stride, dw.padding, dw.dilation, dw.pad_value
    ho, wo = dw.ho, dw.wo
    wov = -(-wo // vec) * vec  # rows padded to whole vectors; the epilogue writes only wo of them
    hp = h + 2 * padding[0]
    wp_ = max(w + 2 * padding[1], (wov - 1) * stride[1] + (kw - 1) * dilation[1] + 1)
    # padded rows are stored de-interleaved by the column stride, [C, Hp, S, Wq]: column q*S + ph lives at
    # (ph, q), so for every tap the 8 output pixels read 8 *adjacent* values (no strided gathers)
    sw = stride[1]
    wq = -(-wp_ // sw)

    x = te.placeholder((c, h, w), "uint8", name="x")
    wt = te.placeholder((c, kh, kw), "int8", name="w")
    bias = dw.bias()
    xpad = te.compute(
        (c, hp, sw, wq),
        lambda ch, yy, ph, q: tirx.if_then_else(
            tirx.all(yy >= padding[0], yy < h + padding[0], q * sw + ph >= padding[1], q * sw + ph < w + padding[1]),
            x[ch, yy - padding[0], q * sw + ph - padding[1]].astype("int16"),
            tirx.const(pad_value, "int16"),
        ),
        name="xpad",
    )
    wt16 = te.compute((c, kh, kw), lambda ch, i, j: wt[ch, i, j].astype("int16"), name="w16")
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    acc = te.compute(
        (c, ho, wov),
        lambda ch, y, xo: te.sum(
            xpad[ch, y * stride[0] + rh * dilation[0], (rw * dilation[1]) % sw, xo + (rw * dilation[1]) // sw].astype(
                "int32"
            )
            * wt16[ch, rh, rw].astype("int32"),
            axis=[rh, rw],
        ),
        name="dw",
    )
    args = [x, wt, bias, *dw_epilogue(dw, lambda ch, y, xo: acc[ch, y, xo], bias, wov, pairs=DW_PAIRS,
                                 shift_branch=DW_SHIFT_BRANCH, preshift=_preshift(dw))]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    dw_blk = sch.get_sblock("dw")
    ch, y, xo, rh_, rw_ = sch.get_loops(dw_blk)
    xoo, xoi = sch.split(xo, [None, vec])
    yo, yi = sch.split(y, [None, _fit_rows(ho, rows)])
    # taps outside the block of rows x row vectors: independent accumulators (a 49-deep multiply-add chain
    # per vector was latency bound on 7x7 kernels)
    sch.reorder(ch, yo, rh_, rw_, yi, xoo, xoi)
    parallel_if_worth(sch, ch, c * ho * wov * kh * kw, "depthwise")
    _schedule_epilogue(sch, yo, vec, wo != wov)
    sch.compute_at(sch.get_sblock("xpad"), ch)
    sch.compute_at(sch.get_sblock("w16"), ch)
    # the block's accumulators stay in registers: a stack tile with constant indices after unrolling (no
    # "local" scope: TVM stack-allocates only "global" buffers and serves any other scope with a
    # TVMBackendAllocWorkspace/FreeWorkspace call pair per channel: 13 ns per channel on 960x7x7)
    # vectorise before decompose_reduction: afterwards the update block under the row loop is no
    # longer a "local reduction block" and TVM refuses to vectorise it
    sch.vectorize(xoi)
    sch.unroll(rw_)
    sch.unroll(yi)
    sch.unroll(xoo)
    init = sch.decompose_reduction(dw_blk, rh_)
    sch.vectorize(sch.get_loops(init)[-1])
    pad_blk = sch.get_sblock("xpad")
    pad_loops = sch.get_loops(pad_blk)
    if sw == 1:
        # padding: one constant fill plus a branch-free interior copy instead of a test per element
        sch.decompose_padding(pad_blk, pad_loops[1])
        sch.vectorize(sch.get_loops(pad_blk)[-1])
    else:
        sch.unroll(pad_loops[2])  # phases; TVM's padding decomposition does not match strided layouts
    return sch.mod["main"]


#: int16-pair intrinsic per vector width: vec -> (intrinsic for plain AVX2/AVX-512, for AVX512-VNNI)
def _pair_intrinsic(vec: int, vnni: bool) -> str:
    from qcompile.backends.tvm.intrin.x86 import I16_8x2_AVX2, I16_16x2_AVX512, I16_16x2_VNNI512

    if vec == 8:
        return I16_8x2_AVX2
    return I16_16x2_VNNI512 if vnni else I16_16x2_AVX512


def _quad_intrinsic(vec: int) -> str:
    from qcompile.backends.tvm.intrin.x86 import U8S8_8x4_VNNI, U8S8_16x4_VNNI512

    return U8S8_16x4_VNNI512 if vec == 16 else U8S8_8x4_VNNI


def depthwise_conv_pairs_x86(dw: DwConv, *, vec: int = 16, vnni: bool = False, rows: int = 1,
                             taps: int = 2) -> tvm.tirx.PrimFunc:
    """Depthwise conv with two (or four) taps per int32 lane: `vpmaddwd` / `vpdpwssd` on int16 tap pairs,
    or `vpdpbusd` on u8 tap quads (`taps=4`, AVX512-VNNI for 16 lanes, AVX-VNNI for 8).

    Same contract as `depthwise_conv_x86`. Horizontal taps `2j` and `2j+1` of output pixel `x` read the
    padded row at columns `x*S + 2j*D` and `x*S + (2j+1)*D`; the kernel stores each padded row once as
    *pairs* `xpair[ph, q, i] = row[q*S + ph + i*D]` (int16, i in {0, 1}, de-interleaved by the stride
    phase `ph`), so for every tap pair the `vec` output pixels read `2*vec` adjacent int16 values and one
    `vpmaddwd` (or `vpdpwssd`) does `2*vec` multiply-adds: ceil(KW/2) instructions per kernel row instead of
    KW multiplies and KW adds. An odd KW gets a zero weight in its last pair. Exact: every product is at
    most 255*128 in magnitude and the int32 sums are those of the reference.

    With `taps=4` the same layout holds four u8 taps per lane (`xpair[ph, q, i]`, i < 4) against four int8
    weights, and `vpdpbusd` does `4*vec` multiply-adds per instruction: half the instructions of pairs
    (7 taps: 2 quads instead of 4 pairs per kernel row). Exact too: `vpdpbusd` adds the four u8 x s8
    products in int32 without an int16 intermediate (no saturation) and |sum| <= KH*KW*255*128 < 2^31.
    """
    if vec not in (8, 16):
        raise ConfigError("vec", vec, (8, 16))
    if taps not in (2, 4):
        raise ConfigError("taps", taps, (2, 4))
    from qcompile.backends.tvm.intrin.x86 import register_x86_intrinsics

    register_x86_intrinsics()
    c, h, w, kh, kw = dw.c, dw.h, dw.w, dw.kh, dw.kw
    padding, pad_value = dw.padding, dw.pad_value
    (sh_, sw), (dh, dw_) = dw.stride, dw.dilation
    ho, wo = dw.ho, dw.wo
    wov = -(-wo // vec) * vec
    g = taps
    xdt, wdt = ("int16", "int16") if g == 2 else ("uint8", "int8")
    kp = -(-kw // g)
    hp = h + 2 * padding[0]
    wq = wov + (g * (kp - 1) * dw_) // sw  # tap-group columns per phase that the taps can reach

    x = te.placeholder((c, h, w), "uint8", name="x")
    w2 = te.placeholder((c, kh, kp, g), wdt, name="w2")  # taps in groups, the last one zero-padded
    bias = dw.bias()

    wpad = wq * sw + (g - 1) * dw_  # padded row length the groups read

    def padded(ch, yy, col):
        inside = tirx.all(yy >= padding[0], yy < h + padding[0], col >= padding[1], col < w + padding[1])
        return tirx.if_then_else(inside, x[ch, yy - padding[0], col - padding[1]].astype(xdt),
                                 tirx.const(pad_value, xdt))

    # two steps, both vectorisable: the padded plane (a constant fill plus an interior copy), then the
    # pairs, a branch-free gather at affine offsets (one per-element bounds test made this kernel scalar)
    xpad = te.compute((c, hp, wpad), padded, name="xpad")
    xpair = te.compute((c, hp, sw, wq, g), lambda ch, yy, ph, q, i: xpad[ch, yy, q * sw + ph + i * dw_],
                       name="xpair")
    rh = te.reduce_axis((0, kh), name="rh")
    rj = te.reduce_axis((0, kp), name="rj")
    ri = te.reduce_axis((0, g), name="ri")
    acc = te.compute(
        (c, ho, wov),
        lambda ch, y, xo: te.sum(
            xpair[ch, y * sh_ + rh * dh, (g * rj * dw_) % sw, xo + (g * rj * dw_) // sw, ri].astype("int32")
            * w2[ch, rh, rj, ri].astype("int32"),
            axis=[rh, rj, ri],
        ),
        name="dw",
    )
    args = [x, w2, bias, *dw_epilogue(dw, lambda ch, y, xo: acc[ch, y, xo], bias, wov, pairs=DW_PAIRS,
                                 shift_branch=DW_SHIFT_BRANCH, preshift=_preshift(dw))]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    dw_blk = sch.get_sblock("dw")
    ch, y, xo, rh_, rj_, ri_ = sch.get_loops(dw_blk)
    xoo, xoi = sch.split(xo, [None, vec])
    yo, yi = sch.split(y, [None, _fit_rows(ho, rows)])
    # taps outside the block of rows x row vectors: independent accumulators hide the dot-product latency
    # (a chain of KH*ceil(KW/2) dependent vpdpwssd per vector was latency bound; one 56-wide row gives 4)
    sch.reorder(ch, yo, rh_, rj_, yi, xoo, xoi, ri_)
    parallel_if_worth(sch, ch, c * ho * wov * kh * kp * g, "depthwise")
    _schedule_epilogue(sch, yo, vec, wo != wov)
    sch.compute_at(sch.get_sblock("xpair"), ch)
    sch.compute_at(sch.get_sblock("xpad"), ch)
    pad_blk = sch.get_sblock("xpad")
    sch.decompose_padding(pad_blk, sch.get_loops(pad_blk)[1])
    sch.vectorize(sch.get_loops(pad_blk)[-1])
    pair_loops = sch.get_loops(sch.get_sblock("xpair"))
    sch.unroll(pair_loops[-1])
    # the row's accumulators stay in registers: a stack tile with constant indices after unrolling ("global"
    # scope and the intrinsic's global form: see depthwise_conv_x86)
    init = sch.decompose_reduction(dw_blk, rh_)
    sch.tensorize(xoi, _pair_intrinsic(vec, vnni) if g == 2 else _quad_intrinsic(vec))
    sch.unroll(rj_)
    sch.unroll(yi)
    sch.unroll(xoo)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


#: where `depthwise_conv_slide_x86` builds its padded plane: "whole", one `(C, Hp, Wpad)` buffer filled in its own
#: parallel loop before the one that computes; "channel", each channel's `(Hp, Wpad)` plane inside the computing
#: channel loop (one parallel region, each thread pads the channels it computes)
SLIDE_PLANES = ("whole", "channel")


#: largest constant-size "global" buffer that TVM's LowerTVMBuiltin puts on the stack (`runtime::kMaxStackAlloca`)
STACK_ALLOCA_BYTES = 1024
#: bytes of the per-channel planes that `depthwise_conv_slide_x86(..., plane="channel")` pads together (a group of
#: channels, at most half of Zen 4's 32 KB L1D): each group's plane is a workspace buffer allocated once per group,
#: so small planes go in groups. 1 thread, AMD EPYC Zen 4, minima (docs/peers.md, session 14): one channel per group
#: 960x7x7 21.9 -> 28.7 us against the whole plane (its 288-byte stack plane was taken apart by LLVM into per-byte
#: inserts), groups of ~4 KB 23.8, ~16 KB 23.3, ~64 KB 23.0; 384x14x14 22.5 -> 24.7 / 23.5 / 23.6
SLIDE_GROUP_BYTES = 16384


def slide_plane_group(c: int, hp: int, wpad: int) -> int:
    """Channels whose `(hp, wpad)` planes `depthwise_conv_slide_x86(..., plane="channel")` pads together: the largest
    divisor of `c` not above `ceil(SLIDE_GROUP_BYTES / (hp * wpad))` and `c // 8` (at least 1; whole groups, at least
    8 of them where C >= 8, so that the parallel loop splits evenly enough over a few threads)."""
    want = min(-(-SLIDE_GROUP_BYTES // (hp * wpad)), max(1, c // 8))
    return _fit_rows(c, want)


def slide_row_bytes(dw: DwConv, vec: int) -> int:
    """Bytes per padded row of `depthwise_conv_slide_x86`: every tap quad of every output row vector, and the
    `4 * vec`-byte load of the last one (`intrin.x86.slide_intrinsic` reads past the bytes it uses)."""
    sw = dw.stride[1]
    wov = -(-dw.wo // vec) * vec
    kp = -(-dw.kw // 4)
    return max((wov - vec) * sw + 4 * (kp - 1) + 4 * vec, (wov - 1) * sw + 4 * kp)


def depthwise_conv_slide_x86(dw: DwConv, *, vec: int = 16, rows: int = 4, plane: str = "whole") -> tvm.tirx.PrimFunc:
    """Depthwise conv on u8 tap quads gathered in registers: for each kernel row and output row vector, one load
    of the padded row and one byte shuffle (`vpermb` with AVX512-VBMI) give every output pixel its four
    horizontally adjacent codes `row[x*S + 4j + i]` (i < 4), and one `vpdpbusd` multiplies them by four taps
    (`intrin.x86.slide_intrinsic`). Same contract as `depthwise_conv_x86`; weights `pack_pair_weights(w, KH, KW,
    4)` (taps in quads, the last one zero-padded: a zero weight adds nothing). Dilation must be 1.

    Where `depthwise_conv_pairs_x86(taps=4)` copies each padded pixel four times per channel (its quad buffer)
    and `depthwise_conv_vquads_x86` interleaves four rows byte by byte, this kernel keeps only the padded plane
    (a constant fill and a vectorised copy, rows widened to `slide_row_bytes` for the last load). 3x3 kernels:
    3 `vpdpbusd` per row vector (the vertical quads need 6 and pad Ho to whole blocks of 4). Exact: `vpdpbusd`
    adds four u8 x s8 products into int32 with no intermediate rounding and |acc| <= KH*KW*255*128 < 2^31.

    `plane` (`SLIDE_PLANES`): "whole" fills one `(C, Hp, Wpad)` plane in its own parallel loop, then computes in a
    second one (two fork/joins, and each thread reads planes the other core may have written); "channel" pads each
    group of `slide_plane_group` channels inside the parallel channel loop that computes them, so a kernel is one
    parallel region and each thread pads what it computes. Both allocate and fill every row `slide_row_bytes` wide."""
    if vec not in (8, 16):
        raise ConfigError("vec", vec, (8, 16))
    if plane not in SLIDE_PLANES:
        raise ConfigError("plane", plane, SLIDE_PLANES)
    if dw.dilation != (1, 1):
        raise ConfigError("DwConv.dilation", dw.dilation, "(1, 1) for the sliding tap-quad kernel")
    from qcompile.backends.tvm.intrin.x86 import SLIDE_STRIDES, register_x86_intrinsics, slide_intrinsic

    if dw.stride[1] not in SLIDE_STRIDES:
        raise ConfigError("DwConv.stride", dw.stride, f"a horizontal stride in {SLIDE_STRIDES} for the sliding "
                          "tap-quad kernel")
    register_x86_intrinsics()
    c, h, w, kh, kw = dw.c, dw.h, dw.w, dw.kh, dw.kw
    padding, pad_value = dw.padding, dw.pad_value
    sh, sw = dw.stride
    ho, wo = dw.ho, dw.wo
    wov = -(-wo // vec) * vec
    kp = -(-kw // 4)
    hp = h + 2 * padding[0]
    wpad = slide_row_bytes(dw, vec)

    x = te.placeholder((c, h, w), "uint8", name="x")
    w4 = te.placeholder((c, kh, kp, 4), "int8", name="w4")
    bias = dw.bias()

    def padded(ch, yy, col):
        inside = tirx.all(yy >= padding[0], yy < h + padding[0], col >= padding[1], col < w + padding[1])
        return tirx.if_then_else(inside, x[ch, yy - padding[0], col - padding[1]], tirx.const(pad_value, "uint8"))

    xpad = te.compute((c, hp, wpad), padded, name="xpad")
    rh = te.reduce_axis((0, kh), name="rh")
    rj = te.reduce_axis((0, kp), name="rj")
    ri = te.reduce_axis((0, 4), name="ri")
    acc = te.compute(
        (c, ho, wov),
        lambda ch, y, xo: te.sum(
            xpad[ch, y * sh + rh, xo * sw + 4 * rj + ri].astype("int32") * w4[ch, rh, rj, ri].astype("int32"),
            axis=[rh, rj, ri],
        ),
        name="dw",
    )
    args = [x, w4, bias, *dw_epilogue(dw, lambda ch, y, xo: acc[ch, y, xo], bias, wov, pairs=DW_PAIRS,
                                 shift_branch=DW_SHIFT_BRANCH, preshift=_preshift(dw))]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    dw_blk = sch.get_sblock("dw")
    pad_blk = sch.get_sblock("xpad")
    work = c * ho * wov * kh * kp * 4
    ch, y, xo, rh_, rj_, ri_ = sch.get_loops(dw_blk)
    xoo, xoi = sch.split(xo, [None, vec])
    yo, yi = sch.split(y, [None, _fit_rows(ho, rows)])
    # taps outside the block of rows x row vectors: independent accumulators hide the vpdpbusd latency
    sch.reorder(ch, yo, rh_, rj_, yi, xoo, xoi, ri_)
    par = ch
    group = slide_plane_group(c, hp, wpad) if plane == "channel" else 1
    if group > 1:
        par, ch = sch.split(ch, [None, group])
    parallel_if_worth(sch, par, work, "depthwise")
    _schedule_epilogue(sch, yo, vec, wo != wov)
    # accumulators: a stack tile in registers ("global" scope, see depthwise_conv_x86)
    init = sch.decompose_reduction(dw_blk, rh_)
    pad_ch = sch.get_loops(pad_blk)[0]
    if plane == "channel":
        # One parallel region: each group of channels (`slide_plane_group`) is padded inside the parallel loop that
        # computes it, so each thread pads the channels it computes. `compute_at` sizes the plane by what its
        # consumer reads, and the arithmetic reads fewer columns than the step's `4 * vec`-byte load (a plane shrunk
        # to them was read past its end on the last row: a dynamic-batch library faulted there). So while it places
        # the plane, each tap reads `4 * vec - span` more bytes (`_widen_read`): the plane's rows are filled, and so
        # allocated, up to `slide_row_bytes`, every byte the loads touch (the fill's writes keep the buffer that wide).
        extra = 4 * vec - ((vec - 1) * sw + 4)
        if extra > 0:
            _widen_read(sch, dw_blk, "xpad", extra)
        sch.compute_at(pad_blk, par)
        if extra > 0:
            _widen_read(sch, dw_blk, "xpad", -extra)  # back to the arithmetic's reads (what the intrinsic matches)
        pad_blk = sch.get_sblock("xpad")
    sch.decompose_padding(pad_blk, sch.get_loops(pad_blk)[1])
    sch.vectorize(sch.get_loops(pad_blk)[-1])
    if plane == "whole":
        # one (C, Hp, Wpad) plane filled in its own parallel loop (two fork/joins; each thread computes channels that
        # the other may have padded)
        parallel_if_worth(sch, pad_ch, c * hp * wpad, "elementwise")
    sch.tensorize(xoi, slide_intrinsic(vec, sw))
    if plane == "channel" and group * hp * wpad <= STACK_ALLOCA_BYTES:
        # a "global" plane this small would be a stack array, which LLVM takes apart into per-byte inserts feeding
        # the loads (no `vpermb` left); a "local" one is a workspace buffer it cannot see into
        sch.set_scope(pad_blk, 0, "local")
    sch.unroll(rj_)
    sch.unroll(yi)
    sch.unroll(xoo)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def _widen_read(sch: s_tir.Schedule, block: Any, buffer: str, extra: int) -> None:
    """`Schedule.annotate_buffer_access`: `block`'s read region of `buffer` with its last axis `extra` elements longer;
    a negative `extra` undoes an earlier widening and drops the annotation. Through the FFI call: the Python wrapper
    asks for one range per block iterator instead of one per buffer axis."""
    from tvm.s_tir.schedule import _ffi_api
    from tvm.tirx.function import IndexMap

    blk = sch.get(block)
    index = next(i for i, r in enumerate(blk.reads) if r.source.name == buffer)
    region = blk.reads[index].region
    bounds = []
    for i, r in enumerate(region):
        bounds += [r.min, r.min + r.extent + (extra if i == len(region) - 1 else 0)]
    index_map = IndexMap(initial_indices=[iv.var for iv in blk.iter_vars], final_indices=bounds,
                         inverse_index_map=None)
    _ffi_api.ScheduleAnnotateBufferAccess(sch, block, index, 0, index_map)
    if extra < 0:
        sch.unannotate(block, "explicit_read_region")


def vquad_geometry(kh: int, stride: int) -> tuple[int, int]:
    """`(period, quads)` of `depthwise_conv_vquads_x86`: output row `y` starts at padded row `y*S`, in phase
    `(y*S) % 4` of its first row quad; the phase repeats every `period` rows, and `quads` row quads cover the KH
    rows of every phase."""
    period = 4 // math.gcd(stride, 4)
    return period, max(((p * stride) % 4 + kh - 1) // 4 + 1 for p in range(period))


def pack_vquad_weights(w: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """[C, (1,) KH, KW] int8 depthwise weights -> the weight operand of `depthwise_conv_vquads_x86`: int8
    `[C, period, quads, KW, 4]` (`vquad_geometry`), `wq[c, p, j, kw, i] = w[c, 4j + i - (p*S) % 4, kw]` where that
    kernel row exists, else 0 (a zero weight adds nothing: the quad's rows outside the window)."""
    period, nq = vquad_geometry(kh, stride)
    wc = np.asarray(w).reshape(-1, kh, kw).astype(np.int8)
    out = np.zeros((wc.shape[0], period, nq, kw, 4), np.int8)
    for p in range(period):
        off = (p * stride) % 4
        for j in range(nq):
            for i in range(4):
                if 0 <= 4 * j + i - off < kh:
                    out[:, p, j, :, i] = wc[:, 4 * j + i - off, :]
    return out


def depthwise_conv_vquads_x86(dw: DwConv, *, vec: int = 16, rows: int = 4) -> tvm.tirx.PrimFunc:
    """Depthwise conv on *vertical* u8 tap quads: `vpdpbusd` multiplies four vertically adjacent padded rows of a
    column by four kernel rows (`pack_vquad_weights`). Same contract as `depthwise_conv_x86`, weights
    `pack_vquad_weights(w, KH, KW, S)`; AVX512-VNNI for 16 lanes, AVX-VNNI / AVX512-VL for 8.

    The padded plane is stored once as row quads `xq[q4, ph, q, i] = pad[4*q4 + i, q*S + ph]` (one byte per
    padded pixel, where the horizontal quads of `depthwise_conv_pairs_x86` copy each pixel four times: that copy
    is what made them slower than the row kernel on 7-14 px maps). Output row `y` reads the quads of its KH rows
    (one or two for 3x3) with the weights of its phase `y % period`, `KW` instructions per quad and row vector
    instead of the row kernel's KH*KW widening loads, `vpmulld` and `vpaddd`. Rows are computed in blocks of a
    multiple of the period (Ho padded to whole blocks; the epilogue writes only Ho rows). Exact: `vpdpbusd` adds
    four u8 x s8 products into int32 with no intermediate rounding and |acc| <= KH*KW*255*128 < 2^31.
    Dilation must be 1."""
    if vec not in (8, 16):
        raise ConfigError("vec", vec, (8, 16))
    if dw.dilation != (1, 1):
        raise ConfigError("DwConv.dilation", dw.dilation, "(1, 1) for the vertical-quad kernel")
    from qcompile.backends.tvm.intrin.x86 import register_x86_intrinsics

    register_x86_intrinsics()
    c, h, w, kh, kw = dw.c, dw.h, dw.w, dw.kh, dw.kw
    padding, pad_value = dw.padding, dw.pad_value
    sh, sw = dw.stride
    ho, wo = dw.ho, dw.wo
    period, nq = vquad_geometry(kh, sh)
    blk_rows = max(period, rows // period * period)  # whole periods: the phase is a constant per unrolled row
    hov = -(-ho // blk_rows) * blk_rows
    wov = -(-wo // vec) * vec
    rq = ((hov - 1) * sh) // 4 + nq  # row quads the padded row blocks reach
    wq = wov + (kw - 1) // sw

    x = te.placeholder((c, h, w), "uint8", name="x")
    wt = te.placeholder((c, period, nq, kw, 4), "int8", name="w")
    bias = dw.bias()

    def padded(ch, yy, col):
        inside = tirx.all(yy >= padding[0], yy < h + padding[0], col >= padding[1], col < w + padding[1])
        return tirx.if_then_else(inside, x[ch, yy - padding[0], col - padding[1]], tirx.const(pad_value, "uint8"))

    # the padded plane (a constant fill plus a vectorised interior copy), then the byte interleave of 4 rows
    xpad = te.compute((c, 4 * rq, wq * sw), padded, name="xpad")
    xq = te.compute((c, rq, sw, wq, 4), lambda ch, q4, ph, q, i: xpad[ch, 4 * q4 + i, q * sw + ph], name="xquad")
    rj = te.reduce_axis((0, nq), name="rj")
    rw = te.reduce_axis((0, kw), name="rw")
    ri = te.reduce_axis((0, 4), name="ri")
    acc = te.compute(
        (c, hov, wov),
        lambda ch, y, xo: te.sum(
            xq[ch, (y * sh) // 4 + rj, rw % sw, xo + rw // sw, ri].astype("int32")
            * wt[ch, y % period, rj, rw, ri].astype("int32"),
            axis=[rj, rw, ri],
        ),
        name="dw",
    )
    args = [x, wt, bias, *dw_epilogue(dw, lambda ch, y, xo: acc[ch, y, xo], bias, wov, pairs=DW_PAIRS,
                                 shift_branch=DW_SHIFT_BRANCH, preshift=_preshift(dw))]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    dw_blk = sch.get_sblock("dw")
    ch, y, xo, rj_, rw_, ri_ = sch.get_loops(dw_blk)
    xoo, xoi = sch.split(xo, [None, vec])
    yo, yi = sch.split(y, [None, blk_rows])
    sch.reorder(ch, yo, rj_, rw_, yi, xoo, xoi, ri_)
    parallel_if_worth(sch, ch, c * ho * wov * kh * kw, "depthwise")
    _schedule_epilogue(sch, yo, vec, wo != wov)
    sch.compute_at(sch.get_sblock("xquad"), ch)
    sch.compute_at(sch.get_sblock("xpad"), ch)
    pad_blk = sch.get_sblock("xpad")
    sch.decompose_padding(pad_blk, sch.get_loops(pad_blk)[1])
    sch.vectorize(sch.get_loops(pad_blk)[-1])
    sch.unroll(sch.get_loops(sch.get_sblock("xquad"))[-1])
    # accumulators: a stack tile in registers ("global" scope, see depthwise_conv_x86)
    init = sch.decompose_reduction(dw_blk, rj_)
    sch.tensorize(xoi, _quad_intrinsic(vec))
    sch.unroll(rw_)
    sch.unroll(rj_)
    sch.unroll(yi)
    sch.unroll(xoo)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def _fit_rows(ho: int, rows: int) -> int:
    """Largest divisor of `ho` not above `rows` (output rows computed together; no ragged row block)."""
    return max(r for r in range(1, min(rows, ho) + 1) if ho % r == 0)


def pack_pair_weights(w: np.ndarray, kh: int, kw: int, taps: int = 2) -> np.ndarray:
    """[C, (1,) KH, KW] int8 depthwise weights -> [C, KH, ceil(KW/taps), taps] tap groups (zero-padded):
    int16 pairs for `taps=2`, int8 quads for `taps=4`."""
    dt = np.int16 if taps == 2 else np.int8
    wc = np.asarray(w).reshape(-1, kh, kw).astype(dt)
    kp = -(-kw // taps)
    out = np.zeros((wc.shape[0], kh, taps * kp), dt)
    out[:, :, :kw] = wc
    return out.reshape(wc.shape[0], kh, kp, taps)


@dataclass(frozen=True)
class DwKnobs:
    """Depthwise schedule: `vec` int32 lanes per output-row vector; `pairs` selects the tap-pair kernel."""

    vec: int = 8
    pairs: bool = False
    rows: int = 1  # output rows per step (at most; the kernel takes the largest divisor of Ho not above it)
    taps: int = 2  # taps per int32 lane of the grouped kernel: 2 (int16 pairs) or 4 (u8 quads, VNNI)
    vquads: bool = False  # vertical u8 tap quads (`depthwise_conv_vquads_x86`, VNNI); `pairs` must be False
    slide: bool = False  # u8 tap quads shuffled in registers (`depthwise_conv_slide_x86`, VNNI); not with the others
    plane: str = "whole"  # the sliding quads' padded plane (`SLIDE_PLANES`); "channel" only with `slide`

    def __post_init__(self) -> None:
        if self.vquads and (self.pairs or self.vec == 4):
            raise ConfigError("DwKnobs.vquads", self.vquads, "only with pairs=False and vec 8 or 16")
        if self.slide and (self.pairs or self.vquads or self.vec == 4):
            raise ConfigError("DwKnobs.slide", self.slide, "only with pairs=False, vquads=False and vec 8 or 16")
        if self.plane not in SLIDE_PLANES or (self.plane != "whole" and not self.slide):
            raise ConfigError("DwKnobs.plane", self.plane, f"one of {SLIDE_PLANES}; not 'whole' only with slide=True")
        if self.vec not in (4, 8, 16) or (self.pairs and self.vec == 4):
            raise ConfigError("DwKnobs.vec", self.vec, "8 or 16 (4 also for the row kernel)")
        if self.taps not in (2, 4):
            raise ConfigError("DwKnobs.taps", self.taps, (2, 4))
        if not 1 <= self.rows <= 16:
            raise ConfigError("DwKnobs.rows", self.rows, "1..16")


#: output rows per step of the tap-pair kernel that `default_dw_knobs` gives stride-2 layers on rows of < 28 outputs
#: on AVX2 without VNNI: 2 (2-4 accumulators at 7-14 outputs); 7 rows at 7 outputs (8 row vectors in flight, the
#: pair kernel's usual rule) measured 1.25x slower there (576x14x14 s2 61.5 vs 49.2 us, Zen 3, 1 thread)
AVX2_DW_S2_ROWS = 2

#: widest output row (pixels) on which a 3x3 depthwise layer takes the row kernel even where VNNI tap quads exist
#: (`default_dw_knobs`)
ROW_KERNEL_MAX_WO_3X3 = 14


def default_dw_knobs(wo: int, avx512: bool, *, vnni: bool = False, kw: int | None = None,
                     stride: int | None = None, vbmi: bool = False, threads: int | None = None) -> DwKnobs:
    """Untuned choice, from single-thread timings of MobileNet depthwise layers here (3x3..7x7, stride 1/2).

    With a VNNI dot product (`vnni`): u8 tap quads (`vpdpbusd`), 16 lanes on AVX-512 for rows of >= 14
    outputs, else 8 (7x7 layers 1.1-2.3x faster than pairs). Without: rows of >= 28 outputs take the
    tap-pair kernel (1.3-3x faster on 7x7 than the row kernel); 14-27: the row kernel at 16 lanes; shorter
    rows: 8 lanes (16 would be mostly padding). Rows per step: about 8 row vectors in flight.

    AVX2 without VNNI (neither `avx512` nor `vnni`), stride-2 layers (`stride` 2) on rows of < 28 outputs: the
    tap-pair kernel at 8 lanes, `AVX2_DW_S2_ROWS` rows per step, instead of the row kernel (its stride-de-interleaved
    plane is padded per element, its taps widen and `vpmulld` one at a time, and with 4-7 rows per step LLVM kept
    its tap vectors on the stack). AMD EPYC Zen 3, 1 thread, thread-CPU minima (docs/peers.md, "session 17,
    engineer E"): MobileNetV2's 192x28x28 s2 71 -> 35 us, 576x14x14 s2 74 -> 49 us.

    Exception (`kw`, the kernel width, given): a 3x3 layer with rows of <= `ROW_KERNEL_MAX_WO_3X3` outputs on an
    AVX-512 VNNI target takes the row kernel (2 rows per step at 14 outputs, 1 at 7). There the quads kernel's
    per-channel tap-quad copy (4 bytes per padded pixel) costs more than its 3 `vpdpbusd` per row vector save:
    MobileNetV2's 384x14x14 layer 73 -> 54 us, 960x7x7 61 -> 56 us on AMD EPYC Zen 4, 1 thread
    (docs/peers.md, "AMD EPYC Zen 4"); at 56 outputs quads stay 1.6x faster than rows. Of those, stride-1
    layers (`stride`: the vertical stride of an undilated layer, None if unknown or dilated) take the
    vertical-quad kernel (`depthwise_conv_vquads_x86`, 4 rows per step): 384x14x14 45 -> 39 us, 960x7x7
    43 -> 39 us (docs/peers.md, "session 11"); at stride 2 it was slower than rows.

    Before all of these (`slide_applies`: AVX-512 VNNI with VBMI's `vpermb`, at most `SLIDE_MAX_KW` kernel
    columns, undilated stride 1 or 2): the sliding tap-quad kernel (`depthwise_conv_slide_x86`), 16 lanes on
    rows of more than 14 outputs, else 8, rows per step for about 16 row vectors in flight at stride 1 and 8 at
    stride 2 (`_rows_for`). On AMD EPYC Zen 4, 1 thread (docs/peers.md, "session 13"): every 3x3 depthwise
    layer of MobileNetV2 224 faster than with the kernels above (0.47-0.78x, 896 -> 613 us over the network);
    MobileNetV3's 5x5 / 7x7 layers 0.36-0.91x on 8 of 10 shapes, 0.98x and 1.03x on the other two. Their padded
    plane: `default_slide_plane(wo, kw, threads)` (`threads`: the lowering's thread count, None if unknown)."""
    if slide_applies(avx512, vnni, vbmi, kw, stride):
        vec = 16 if wo > ROW_KERNEL_MAX_WO_3X3 else 8
        return DwKnobs(vec, False, _rows_for(wo, vec, 16 if stride == 1 else 8), slide=True,
                       plane=default_slide_plane(wo, kw, threads))
    vec = 16 if avx512 and wo >= 14 else 8
    if vnni and avx512 and kw is not None and kw <= 3 and wo <= ROW_KERNEL_MAX_WO_3X3:
        if stride == 1:
            return DwKnobs(vec, False, 4, vquads=True)
        return DwKnobs(vec, False, 4 if wo >= 14 else 1)
    if vnni:
        return DwKnobs(vec, True, _rows_for(wo, vec), taps=4)
    if wo >= 28:
        return DwKnobs(vec, True, _rows_for(wo, vec))
    if not avx512 and stride == 2:
        return DwKnobs(vec, True, AVX2_DW_S2_ROWS)
    return DwKnobs(vec, False, _rows_for(wo, vec))


#: Environment variable: the padded plane of every default sliding tap-quad kernel (`DwKnobs.plane`), "whole" or
#: "channel"; unset or "": `default_slide_plane`'s rule. Read at schedule time (a quiet-window A/B without a code
#: change).
ENV_DW_PLANE = "QCOMPILE_DW_PLANE"


def default_slide_plane(wo: int | None = None, kw: int | None = None, threads: int | None = None) -> str:
    """The plane `default_dw_knobs` gives the sliding quads: `ENV_DW_PLANE` where set (`ConfigError` for other values
    than `SLIDE_PLANES`); else "channel" (each channel group padded inside the one parallel region) where the lowering
    runs on 2 or more `threads`, or for a kernel wider than 3 (`kw`) or rows of more than `ROW_KERNEL_MAX_WO_3X3`
    outputs (`wo`); "whole" for 3x3 kernels on rows of <= 14 outputs at 1 thread (or an unknown count).

    AMD EPYC Zen 4, minima of 1000-1500 interleaved rounds, load ~1.7 (`benchmarks.dw_plane`, docs/peers.md session
    14): at 2 threads "channel" is faster on all 10 MobileNetV2 3x3 shapes (0.93-0.98x, 320 -> 306 us over the
    network) and all 10 MobileNetV3 5x5/7x7 shapes (0.89-0.99x); at 1 thread on the 5x5/7x7 (0.95-1.00x) and the
    28-112 px 3x3 ones (0.96-0.99x), but 1.04-1.05x slower on the 7-14 px 3x3 ones."""
    raw = os.environ.get(ENV_DW_PLANE, "")
    if raw:
        if raw not in SLIDE_PLANES:
            raise ConfigError(ENV_DW_PLANE, raw, f"one of {SLIDE_PLANES} or unset")
        return raw
    if (threads or 1) >= 2 or (kw is not None and kw > 3) or (wo is not None and wo > ROW_KERNEL_MAX_WO_3X3):
        return "channel"
    return "whole"


#: widest kernel that takes the sliding tap-quad kernel by default (`slide_applies`; measured on 3x3, 5x5, 7x7)
SLIDE_MAX_KW = 7


def slide_applies(avx512: bool, vnni: bool, vbmi: bool, kw: int | None, stride: int | None) -> bool:
    """Whether `default_dw_knobs` picks the sliding tap-quad kernel: AVX-512 VNNI with VBMI (`vpermb`; without it
    the byte shuffle takes several instructions), a kernel of at most `SLIDE_MAX_KW` columns and an undilated
    stride of 1 or 2 (`stride`, None where dilated or unknown)."""
    return avx512 and vnni and vbmi and kw is not None and kw <= SLIDE_MAX_KW and stride in (1, 2)


def dw_candidates(wo: int, avx512: bool, *, vnni: bool = False, kw: int | None = None,
                  stride: int | None = None, ho: int | None = None, vbmi: bool = False,
                  threads: int | None = None) -> list[DwKnobs]:
    """Schedules the tuner times, in the order `trials` cuts them (`tune.tune_depthwise`):

    1. the default for kernel width `kw` and vertical `stride` (`default_dw_knobs`), so tuning never makes a layer
       slower;
    2. the kernels `default_dw_knobs` chooses between on some shape, each at the vector width and rows per step its
       rule gives at this `wo`: vertical quads (VNNI, undilated: `stride` given), tap quads (VNNI), the row kernel
       (4 rows at >= 14 outputs, else 1, as the 3x3 rule; and about 8 row vectors in flight), tap pairs; with VNNI
       and VBMI (`vbmi`, undilated stride 1 or 2) the sliding tap quads first among them, the default's own knobs
       with the plane padded per channel group (`plane="channel"`: one parallel region) before all;
    3. every kernel at 8 and (AVX-512) 16 lanes, 4 for the row kernel without AVX-512, at 1, 2, 4 and 8 rows (the
       sliding quads also at 16, each with both planes, `SLIDE_PLANES`).

    With the output height `ho`, knobs that give the same kernel (rows fitted to a divisor of Ho, or to whole
    periods of the vertical-quad kernel) are listed once."""
    vec = 16 if avx512 and wo >= 14 else 8
    vecs = (8, 16) if avx512 else (8,)
    default = default_dw_knobs(wo, avx512, vnni=vnni, kw=kw, stride=stride, vbmi=vbmi, threads=threads)
    slide = vnni and vbmi and stride in (1, 2)
    likely = []
    if slide:
        # the default's own rows with the other plane first (the one parallel region, or the whole plane)
        if default.slide:
            likely.append(replace(default, plane="whole" if default.plane == "channel" else "channel"))
        likely += [DwKnobs(vec, False, _rows_for(wo, vec, r), slide=True, plane=p) for r in (16, 8)
                   for p in SLIDE_PLANES]
    if vnni and stride is not None:
        likely.append(DwKnobs(vec, False, 4, vquads=True))
    if vnni:
        likely.append(DwKnobs(vec, True, _rows_for(wo, vec), taps=4))
    likely += [DwKnobs(vec, False, 4 if wo >= 14 else 1), DwKnobs(vec, False, _rows_for(wo, vec)),
               DwKnobs(vec, True, _rows_for(wo, vec))]
    kinds = [(v, False, 2, False) for v in ((4, 8) if not avx512 else vecs)] + [(v, True, 2, False) for v in vecs]
    if vnni:
        kinds += [(v, True, 4, False) for v in vecs]
        if stride is not None:
            kinds += [(v, False, 2, True) for v in vecs]
    grid = [DwKnobs(v, pairs, r, taps, vq) for v, pairs, taps, vq in kinds for r in (1, 2, 4, 8)]
    if slide:
        grid += [DwKnobs(v, False, r, slide=True, plane=p) for v in vecs for r in (1, 2, 4, 8, 16)
                 for p in SLIDE_PLANES]
    grid.sort(key=lambda kn: kn.vec != vec)  # the default's width first (a stable sort keeps the rest in order)

    def kernel(kn: DwKnobs) -> tuple:
        if ho is None:
            return kn.vec, kn.pairs, kn.taps, kn.vquads, kn.slide, kn.plane, kn.rows
        if kn.vquads:  # rows in whole periods of the phase (`depthwise_conv_vquads_x86`), Ho padded to them
            period, _ = vquad_geometry(1, stride or 1)
            return kn.vec, kn.pairs, kn.taps, kn.vquads, kn.slide, kn.plane, min(
                max(period, kn.rows // period * period), -(-ho // period) * period)
        return kn.vec, kn.pairs, kn.taps, kn.vquads, kn.slide, kn.plane, _fit_rows(ho, kn.rows)

    out, seen = [], set()
    for kn in (default, *likely, *grid):
        if kernel(kn) not in seen:
            seen.add(kernel(kn))
            out.append(kn)
    return out


def dw_weights(w: np.ndarray, kh: int, kw: int, knobs: DwKnobs, stride: int = 1) -> np.ndarray:
    """The weight operand of `depthwise_kernel(..., knobs)`: [C, KH, KW] int8 for the row kernel, tap groups
    (`pack_pair_weights`) for the grouped kernels and `knobs.slide`, vertical quads (`pack_vquad_weights`, which
    depend on the vertical `stride`) for `knobs.vquads`."""
    if knobs.vquads:
        return pack_vquad_weights(w, kh, kw, stride)
    if knobs.slide:
        return pack_pair_weights(w, kh, kw, 4)
    if knobs.pairs:
        return pack_pair_weights(w, kh, kw, knobs.taps)
    return np.asarray(w).reshape(-1, kh, kw).astype(np.int8)


def _rows_for(wo: int, vec: int, accumulators: int = 8) -> int:
    """Rows per step so that about `accumulators` row vectors are in flight (at least one row)."""
    return max(1, accumulators // -(-wo // vec))


def target_dw_knobs(wo: int, target: tvm.target.Target, kw: int | None = None,
                    stride: int | None = None) -> DwKnobs:
    """`default_dw_knobs` for what `target` can execute (AVX-512, a VNNI dot product, VBMI) and the thread count it
    runs at (`threads.target_threads`); `kw` the kernel width, `stride` the vertical stride (None where dilated)."""
    from qcompile.backends.tvm.intrin.x86 import has_avx512, has_vbmi, has_vnni
    from qcompile.backends.tvm.threads import target_threads

    return default_dw_knobs(wo, has_avx512(target), vnni=has_vnni(target), kw=kw, stride=stride,
                            vbmi=has_vbmi(target), threads=target_threads(target))


def depthwise_kernel(dw: DwConv, knobs: DwKnobs, *, target: tvm.target.Target | None = None) -> tvm.tirx.PrimFunc:
    """The depthwise PrimFunc `knobs` selects; its weight operand is `dw_weights(w, kh, kw, knobs)`. With a
    `target`, the tap-pair kernel accumulates with `vpdpwssd` where the target has AVX512-VNNI."""
    if knobs.pairs:
        vnni = False
        if target is not None:
            from qcompile.backends.tvm.intrin.x86 import has_avx512_vnni

            vnni = has_avx512_vnni(target)
        return depthwise_conv_pairs_x86(dw, vec=knobs.vec, vnni=vnni, rows=knobs.rows, taps=knobs.taps)
    if knobs.vquads:
        return depthwise_conv_vquads_x86(dw, vec=knobs.vec, rows=knobs.rows)
    if knobs.slide:
        return depthwise_conv_slide_x86(dw, vec=knobs.vec, rows=knobs.rows, plane=knobs.plane)
    return depthwise_conv_x86(dw, vec=knobs.vec, rows=knobs.rows)


#: most input pixels per channel for `depthwise_small_x86` (its weight operand holds Ho*Wo x (H*W + 1) int32)
SMALL_DW_PIXELS = 4


def small_dw_applies(dw: DwConv) -> bool:
    """A depthwise layer on a tiny input (at most `SMALL_DW_PIXELS` pixels, e.g. MobileNetV3's 7x7 layers at
    1x1 and 2x2 in a 32 px network) whose taps mostly read padding: `depthwise_small_x86` computes it."""
    return dw.h * dw.w <= SMALL_DW_PIXELS and dw.ho * dw.wo <= SMALL_DW_PIXELS and 2 * dw.h * dw.w < dw.kh * dw.kw


def tap_matrix(w: np.ndarray, dw: DwConv) -> tuple[np.ndarray, np.ndarray]:
    """A depthwise conv as one matrix per channel: int64 `m[C, P, Q]` (P = Ho*Wo outputs, Q = H*W inputs), the
    weight of the tap that joins output `p` to input `q` (0 if none: at most one tap does, so every entry is an
    int8 weight), and `pad[C, P]`, what the taps of `p` that fall on padding add, `pad_value * sum(w)` over them.
    `acc[c, p] = pad[c, p] + sum_q m[c, p, q] * x[c, q]` is the conv's integer sum in another order."""
    c, h, wd, kh, kw = dw.c, dw.h, dw.w, dw.kh, dw.kw
    (sh, sw), (ph, pw), (dh, dwl) = dw.stride, dw.padding, dw.dilation
    wc = np.asarray(w).reshape(c, kh, kw).astype(np.int64)
    m = np.zeros((c, dw.ho * dw.wo, h * wd), np.int64)
    pad = np.zeros((c, dw.ho * dw.wo), np.int64)
    for y in range(dw.ho):
        for x in range(dw.wo):
            p = y * dw.wo + x
            for i in range(kh):
                for j in range(kw):
                    iy, ix = y * sh + i * dh - ph, x * sw + j * dwl - pw
                    if 0 <= iy < h and 0 <= ix < wd:
                        m[:, p, iy * wd + ix] += wc[:, i, j]
                    else:
                        pad[:, p] += int(dw.pad_value) * wc[:, i, j]
    return m, pad


def small_dw_weights(w: np.ndarray, dw: DwConv) -> np.ndarray:
    """The weight operand of `depthwise_small_x86`: int32 `[C, P, Q + 1]`, `tap_matrix`'s `m` with `pad` as the
    last column. The accumulator is the same integer sum in another order (exact: `to_integer` proved that no
    partial sum overflows int32, and these are partial sums of the same terms)."""
    m, pad = tap_matrix(w, dw)
    return np.concatenate([m, pad[:, :, None]], axis=2).astype(np.int32)


def depthwise_small_x86(dw: DwConv) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x[C,H,W] u8, wp[C,P,Q+1] i32, bterm i64, mult, shift, ...) -> out[C,Ho,Wo]` for
    `small_dw_applies` layers: `acc[c, p] = wp[c, p, Q] + sum_q wp[c, p, q] * x[c, q]` (`small_dw_weights`),
    then the shared depthwise epilogue (`dw_epilogue`: requantize and fused steps). Work per channel is
    Ho*Wo*H*W multiply-adds instead of Ho*Wo*KH*KW (1 instead of 49 for a 7x7 layer on a 1x1 input); the row
    kernel's vectors would hold 1-2 useful lanes of 8 there."""
    c, h, w = dw.c, dw.h, dw.w
    p, q = dw.ho * dw.wo, h * w
    x = te.placeholder((c, h, w), "uint8", name="x")
    wp = te.placeholder((c, p, q + 1), "int32", name="w")
    bias = dw.bias()
    rq = te.reduce_axis((0, q), name="rq")
    s = te.compute((c, p), lambda ch, i: te.sum(wp[ch, i, rq] * x[ch, rq // w, rq % w].astype("int32"), axis=rq),
                   name="dw_small")
    acc = te.compute((c, p), lambda ch, i: s[ch, i] + wp[ch, i, q], name="dw_acc")
    wo = dw.wo
    args = [x, wp, bias, *dw_epilogue(dw, lambda ch, y, xo: acc[ch, y * wo + xo], bias)]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))
    sch.compute_inline(sch.get_sblock("dw_acc"))
    blk = sch.get_sblock("dw_small")
    ch_, i_, r_ = sch.get_loops(blk)
    sch.unroll(i_)
    sch.unroll(r_)
    ep = sch.get_sblock("epilogue")
    fused = sch.fuse(*sch.get_loops(ep))
    if (c * p) % 16 == 0:
        _, inner = sch.split(fused, [None, 16])
        sch.vectorize(inner)
    return sch.mod["main"]


#: most output pixels per channel of `depthwise_cvec_x86` (a 4x4 map)
CVEC_DW_PIXELS = 16
#: most input pixels per channel of `depthwise_cvec_x86` (an 8x8 map, e.g. a stride-2 layer from 8x8 to 4x4): its
#: weight operand is P x Q bytes per channel, at most 1 KB. An 8x8 -> 8x8 layer (4 KB per channel, 196 KB for 48
#: channels) measured only 1.3x faster alone (4.5 -> 3.3 us) and is left to the row kernels.
CVEC_DW_IN_PIXELS = 64


def cvec_dw_lanes(c: int, in_pixels: int, out_pixels: int, target_lanes: int) -> int:
    """Vector lanes of `depthwise_cvec_x86` for a depthwise layer of `c` channels on a small map, or 0 where it does
    not apply: at most `CVEC_DW_IN_PIXELS` input and `CVEC_DW_PIXELS` output pixels (e.g. MobileNetV3's layers at
    4x4, 2x2 and 1x1 in a 32 px network, and 8x8 -> 4x4 at stride 2) and a VNNI dot product of `target_lanes`
    int32 lanes (`gemv.gemv_lanes`; 0: none). 16 lanes (zmm) where 16 divides C, else 8 (ymm)."""
    if not target_lanes or in_pixels > CVEC_DW_IN_PIXELS or out_pixels > CVEC_DW_PIXELS:
        return 0
    return 16 if target_lanes == 16 and c % 16 == 0 else 8


def _cvec_rows(ho: int, wo: int, max_acc: int = 8) -> int:
    """Output rows per block of `depthwise_cvec_x86`: the largest divisor of Ho with rows * Wo <= max_acc
    accumulators (at least one row)."""
    return max(r for r in range(1, ho + 1) if ho % r == 0 and (r * wo <= max_acc or r == 1))


def cvec_dw_operands(w: np.ndarray, bias: np.ndarray, mult: np.ndarray | None, dw: DwConv,
                     lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias operands of `depthwise_cvec_x86`, from the layer's int8 weights and its bias operand
    (`bias` the int64 `bterm[C]` with `mult[C]` when requantizing, else the int32 bias and `mult=None`):

    - weights int8 `[C/L, Q/4, P, L, 4]`: `tap_matrix`'s `m`, channels padded to whole vectors and inputs to whole
      quads with zeros (a zero weight adds nothing);
    - the per-pixel bias `[P, C]` with the padding taps' constant `pad[c, p]` folded in: `bterm + pad*M` (int64,
      wrapping like the kernel: `(acc + pad)*M + bterm = acc*M + (bterm + pad*M)` in the ring of int64) or
      `bias + pad` (int32, wrapping: the true accumulator fits int32, so the wrapped sum is the same integer)."""
    m, pad = tap_matrix(w, dw)
    c, p, q = m.shape
    cb, qb = -(-c // lanes), -(-q // 4)
    full = np.zeros((cb * lanes, p, qb * 4), np.int8)
    full[:c, :, :q] = m
    wpk = np.ascontiguousarray(full.reshape(cb, lanes, p, qb, 4).transpose(0, 3, 2, 1, 4))
    b = np.asarray(bias).astype(np.int64)[None, :]
    with np.errstate(over="ignore"):
        if dw.requant:
            bpc = b + pad.T * np.asarray(mult).astype(np.int64)[None, :]
        else:
            bpc = (b + pad.T).astype(np.int32)
    return wpk, np.ascontiguousarray(bpc)


def depthwise_cvec_x86(dw: DwConv, lanes: int = 16) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x[C,H,W] u8, w[C/L,Q/4,P,L,4] i8, bias[P,C], mult, shift, ...) -> out[C,Ho,Wo]` for
    `cvec_dw_applies` layers: `acc[c, p] = sum_q m[c, p, q] * x[c, q]` (`tap_matrix`) with channels in the
    vector lanes, four inputs per `vpdpbusd` lane (`bcast="none"` intrinsic), then the shared depthwise epilogue
    with the per-pixel bias (`cvec_dw_operands`: the int64 `bterm` with the padding taps folded in, or the int32
    bias). A 7x7 layer on a 4x4 map does 16 multiply-adds per output and channel instead of 49 (33 of them on
    padding), 16 channels per instruction instead of a 4-wide row in a vector of 8 or 16 lanes. Exact:
    `vpdpbusd` adds four u8 x s8 products into int32, and the sum is the conv's in another order."""
    if lanes not in (8, 16):
        raise ConfigError("lanes", lanes, (8, 16))
    from qcompile.backends.tvm.intrin.x86 import (
        U8S8_8x4_VNNI_LANEWISE,
        U8S8_16x4_VNNI512_LANEWISE,
        register_x86_intrinsics,
    )
    from qcompile.backends.tvm.schedules.x86.gemv import schedule_lane_block

    register_x86_intrinsics()
    c, h, w, ho, wo = dw.c, dw.h, dw.w, dw.ho, dw.wo
    p, q = ho * wo, h * w
    cb, qb = -(-c // lanes), -(-q // 4)
    x = te.placeholder((c, h, w), "uint8", name="x")
    wt = te.placeholder((cb, qb, p, lanes, 4), "int8", name="w")
    bias = te.placeholder((p, c), "int64" if dw.requant else "int32", name="bterm" if dw.requant else "bias")

    def code(ch: Any, qq: Any) -> Any:  # x[ch, qq] for valid indices, read branch-free (the weight is 0 beyond)
        qc = tirx.min(qq, q - 1)
        return x[tirx.min(ch, c - 1), qc // w, qc % w]

    xq = te.compute((qb, cb, lanes, 4), lambda b, cc, li, i: tirx.if_then_else(
        tirx.all(b * 4 + i < q, cc * lanes + li < c), code(cc * lanes + li, b * 4 + i), tirx.const(0, "uint8")),
        name="xpack")
    rb, ri = te.reduce_axis((0, qb), name="rb"), te.reduce_axis((0, 4), name="ri")
    acc = te.compute((cb, ho, wo, lanes), lambda cc, y, xo, li: te.sum(
        xq[rb, cc, li, ri].astype("int32") * wt[cc, rb, y * wo + xo, li, ri].astype("int32"), axis=[rb, ri]),
        name="dw_cvec")
    args = [x, wt, bias, *dw_epilogue(dw, lambda ch, y, xo: acc[ch // lanes, y, xo, ch % lanes], bias,
                                      bias_at=lambda ch, y, xo: bias[y * wo + xo, ch])]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))
    blk = sch.get_sblock("dw_cvec")
    cc_, y_, xo_, li_, rb_, ri_ = sch.get_loops(blk)
    yo, yi = sch.split(y_, [None, _cvec_rows(ho, wo)])
    sch.reorder(cc_, yo, rb_, yi, xo_, li_, ri_)
    parallel_if_worth(sch, cc_, c * p * qb * 4, "depthwise")
    schedule_lane_block(sch, blk, yo, rb_, li_, U8S8_16x4_VNNI512_LANEWISE if lanes == 16 else U8S8_8x4_VNNI_LANEWISE,
                        (yi, xo_), 2, c, lanes)
    sch.unroll(sch.get_loops(sch.get_sblock("xpack"))[-1])
    return sch.mod["main"]
