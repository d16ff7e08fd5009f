"""Depthwise conv (groups == C) with fused bias + requantize, NCHW, vectorised along output rows.

`acc[c, y, x] = sum_{kh, kw} w[c, kh, kw] * x_pad[c, y*s + kh*d, x*s + kw*d]` (integer_semantics.md
`conv2d` with groups = C; the 3x3/5x5/7x7 depthwise layers of MobileNetV2/V3). The network keeps NCHW
between kernels, so the vector axis is the output row (8..112 pixels wide) instead of channels: one
channel's padded plane (at most 230x230 bytes) is built in cache right before its rows are computed
(padding with the code `pad_value`), the kh/kw taps are unrolled around 8-lane int32 vectors, and the
requantize epilogue runs on each finished row. Channels are spread over the cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from qcompile.backends.tvm.schedules.requant import requant_expr
from qcompile.errors import ConfigError

__all__ = ["DwKnobs", "default_dw_knobs", "depthwise_conv_x86", "depthwise_conv_pairs_x86", "depthwise_kernel",
           "pack_pair_weights"]


def _epilogue(acc: te.Tensor, bias: te.Tensor, shape: tuple[int, int, int, int], lo: int | None, hi: int | None,
              shift_min: int) -> list[te.Tensor]:
    """Placeholders and stages after the accumulator `acc[C, Ho, Wov]`: requantize (or add the int32 bias) on
    whole vectors of each row, then, when rows were padded to whole vectors (`wo < wov`), copy the `wo`
    valid outputs. A ragged vectorised requantize would run scalar int64 code per element (measured: the
    whole 56-wide 7x7 layer 1.6x slower)."""
    c, ho, wo, wov = shape
    ins: list[te.Tensor] = []
    if lo is not None:
        mult = te.placeholder((c,), "int32", name="mult")
        shift = te.placeholder((c,), "int32", name="shift")
        ins = [mult, shift]
        res = te.compute((c, ho, wov), lambda ch, y, xo: requant_expr(acc[ch, y, xo], bias[ch], mult[ch], shift[ch],
                                                                        lo, hi, shift_min), name="epilogue")
    else:
        res = te.compute((c, ho, wov), lambda ch, y, xo: acc[ch, y, xo] + bias[ch], name="epilogue")
    if wo == wov:
        return [*ins, res]
    return [*ins, te.compute((c, ho, wo), lambda ch, y, xo: res[ch, y, xo], name="crop")]


def _schedule_epilogue(sch: s_tir.Schedule, row: s_tir.LoopRV, vec: int, ragged: bool) -> None:
    """Epilogue of each finished output row while it is hot: whole vectors, then the crop copy."""
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, row)
    _, e_i = sch.split(sch.get_loops(ep)[-1], [None, vec])
    sch.vectorize(e_i)
    if ragged:
        sch.reverse_compute_at(sch.get_sblock("crop"), row)


def depthwise_conv_x86(
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    pad_value: int = 0,
    lo: int | None = 0,
    hi: int | None = 255,
    shift_min: int = 1,
    vec: int = 8,
) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x[C,H,W] u8, w[C,KH,KW] i8, bterm i64, mult, shift) -> out[C,Ho,Wo]`.

    `out` is uint8 codes (`bterm = requant.bias_term(bias, mult, shift)`), or int32 `acc + bias` when
    `lo is None` (then the int32 bias replaces `bterm` and there are no `mult`/`shift` parameters).
    """
    if vec not in (4, 8, 16):
        raise ConfigError("vec", vec, (4, 8, 16))
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if ho <= 0 or wo <= 0:
        raise ConfigError("depthwise geometry", (c, h, w, kh, kw, stride, padding), "a non-empty output")
    wov = -(-wo // vec) * vec  # rows padded to whole vectors; the epilogue writes only wo of them
    hp = h + 2 * padding[0]
    wp_ = max(w + 2 * padding[1], (wov - 1) * stride[1] + (kw - 1) * dilation[1] + 1)
    # padded rows are stored de-interleaved by the column stride, [C, Hp, S, Wq]: column q*S + ph lives at
    # (ph, q), so for every tap the 8 output pixels read 8 *adjacent* values (no strided gathers)
    sw = stride[1]
    wq = -(-wp_ // sw)

    x = te.placeholder((c, h, w), "uint8", name="x")
    wt = te.placeholder((c, kh, kw), "int8", name="w")
    bias = te.placeholder((c,), "int64" if lo is not None else "int32", name="bterm" if lo is not None else "bias")
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
    args = [x, wt, bias, *_epilogue(acc, bias, (c, ho, wo, wov), lo, hi, shift_min)]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    dw = sch.get_sblock("dw")
    ch, y, xo, rh_, rw_ = sch.get_loops(dw)
    xoo, xoi = sch.split(xo, [None, vec])
    sch.reorder(ch, y, xoo, rh_, rw_, xoi)
    sch.parallel(ch)
    _schedule_epilogue(sch, y, vec, wo != wov)
    sch.compute_at(sch.get_sblock("xpad"), ch)
    sch.compute_at(sch.get_sblock("w16"), ch)
    # vectorise before decompose_reduction: afterwards the update block under the row loop is no
    # longer a "local reduction block" and TVM refuses to vectorise it
    sch.vectorize(xoi)
    sch.unroll(rh_)
    sch.unroll(rw_)
    init = sch.decompose_reduction(dw, rh_)
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


def depthwise_conv_pairs_x86(
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    pad_value: int = 0,
    lo: int | None = 0,
    hi: int | None = 255,
    shift_min: int = 1,
    vec: int = 16,
    vnni: bool = False,
) -> tvm.tirx.PrimFunc:
    """Depthwise conv with two taps per int32 lane: `vpmaddwd` / `vpdpwssd` on int16 tap pairs.

    Same contract as `depthwise_conv_x86`. Horizontal taps `2j` and `2j+1` of output pixel `x` read the
    padded row at columns `x*S + 2j*D` and `x*S + (2j+1)*D`; the kernel stores each padded row once as
    *pairs* `xpair[ph, q, i] = row[q*S + ph + i*D]` (int16, i in {0, 1}, de-interleaved by the stride
    phase `ph`), so for every tap pair the `vec` output pixels read `2*vec` adjacent int16 values and one
    `vpmaddwd` (or `vpdpwssd`) does `2*vec` multiply-adds: ceil(KW/2) instructions per kernel row instead of
    KW multiplies and KW adds. An odd KW gets a zero weight in its last pair. Exact: every product is at
    most 255*128 in magnitude and the int32 sums are those of the reference.
    """
    if vec not in (8, 16):
        raise ConfigError("vec", vec, (8, 16))
    from qcompile.backends.tvm.intrin.x86 import register_x86_intrinsics

    register_x86_intrinsics()
    sh_, sw = stride
    dh, dw_ = dilation
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // sh_ + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ConfigError("depthwise geometry", (c, h, w, kh, kw, stride, padding), "a non-empty output")
    wov = -(-wo // vec) * vec
    kp = -(-kw // 2)
    hp = h + 2 * padding[0]
    wq = wov + (2 * (kp - 1) * dw_) // sw  # pair columns per phase that the taps can reach

    x = te.placeholder((c, h, w), "uint8", name="x")
    w2 = te.placeholder((c, kh, kp, 2), "int16", name="w2")  # taps in pairs, odd KW padded with a zero tap
    bias = te.placeholder((c,), "int64" if lo is not None else "int32", name="bterm" if lo is not None else "bias")

    wpad = wq * sw + dw_  # padded row length the pairs read

    def padded(ch, yy, col):
        inside = tirx.all(yy >= padding[0], yy < h + padding[0], col >= padding[1], col < w + padding[1])
        return tirx.if_then_else(inside, x[ch, yy - padding[0], col - padding[1]].astype("int16"),
                                 tirx.const(pad_value, "int16"))

    # two steps, both vectorisable: the padded plane (a constant fill plus an interior copy), then the
    # pairs, a branch-free gather at affine offsets (one per-element bounds test made this kernel scalar)
    xpad = te.compute((c, hp, wpad), padded, name="xpad")
    xpair = te.compute((c, hp, sw, wq, 2), lambda ch, yy, ph, q, i: xpad[ch, yy, q * sw + ph + i * dw_],
                       name="xpair")
    rh = te.reduce_axis((0, kh), name="rh")
    rj = te.reduce_axis((0, kp), name="rj")
    ri = te.reduce_axis((0, 2), name="ri")
    acc = te.compute(
        (c, ho, wov),
        lambda ch, y, xo: te.sum(
            xpair[ch, y * sh_ + rh * dh, (2 * rj * dw_) % sw, xo + (2 * rj * dw_) // sw, ri].astype("int32")
            * w2[ch, rh, rj, ri].astype("int32"),
            axis=[rh, rj, ri],
        ),
        name="dw",
    )
    args = [x, w2, bias, *_epilogue(acc, bias, (c, ho, wo, wov), lo, hi, shift_min)]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    dw = sch.get_sblock("dw")
    ch, y, xo, rh_, rj_, ri_ = sch.get_loops(dw)
    xoo, xoi = sch.split(xo, [None, vec])
    # taps outside the row vectors: independent accumulators hide the dot-product latency (a chain of
    # KH*ceil(KW/2) dependent vpdpwssd per vector was latency bound)
    sch.reorder(ch, y, rh_, rj_, xoo, xoi, ri_)
    sch.parallel(ch)
    _schedule_epilogue(sch, y, vec, wo != wov)
    sch.compute_at(sch.get_sblock("xpair"), ch)
    sch.compute_at(sch.get_sblock("xpad"), ch)
    pad_blk = sch.get_sblock("xpad")
    sch.decompose_padding(pad_blk, sch.get_loops(pad_blk)[1])
    sch.vectorize(sch.get_loops(pad_blk)[-1])
    pair_loops = sch.get_loops(sch.get_sblock("xpair"))
    sch.unroll(pair_loops[-1])
    # the row's accumulators stay in registers: a "local" buffer with constant indices after unrolling
    sch.set_scope(dw, 0, "local")
    init = sch.decompose_reduction(dw, rh_)
    sch.tensorize(xoi, _pair_intrinsic(vec, vnni) + "_local")
    sch.unroll(rj_)
    sch.unroll(xoo)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def pack_pair_weights(w: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """[C, (1,) KH, KW] int8 depthwise weights -> [C, KH, ceil(KW/2), 2] int16 tap pairs (zero-padded)."""
    wc = np.asarray(w).reshape(-1, kh, kw).astype(np.int16)
    kp = -(-kw // 2)
    out = np.zeros((wc.shape[0], kh, 2 * kp), np.int16)
    out[:, :, :kw] = wc
    return out.reshape(wc.shape[0], kh, kp, 2)


@dataclass(frozen=True)
class DwKnobs:
    """Depthwise schedule: `vec` int32 lanes per output-row vector; `pairs` selects the tap-pair kernel."""

    vec: int = 8
    pairs: bool = False

    def __post_init__(self) -> None:
        if self.vec not in (4, 8, 16) or (self.pairs and self.vec == 4):
            raise ConfigError("DwKnobs.vec", self.vec, "8 or 16 (4 also for the row kernel)")


def default_dw_knobs(wo: int, avx512: bool) -> DwKnobs:
    """Untuned choice, from single-thread timings of MobileNet depthwise layers here (3x3..7x7, stride 1/2):
    rows of >= 28 outputs: the tap-pair kernel (1.3-3x faster on 7x7); 14-27: the row kernel at 16 lanes;
    shorter rows: 8 lanes (16 would be mostly padding)."""
    if wo >= 28:
        return DwKnobs(16 if avx512 else 8, True)
    return DwKnobs(16 if avx512 and wo >= 14 else 8, False)


def depthwise_kernel(c: int, h: int, w: int, kh: int, kw: int, knobs: DwKnobs, **kw_args) -> tvm.tirx.PrimFunc:
    """The depthwise PrimFunc `knobs` selects; its weight operand is `[C,KH,KW]` int8 for the row kernel and
    `pack_pair_weights(...)` for the pair kernel."""
    if knobs.pairs:
        return depthwise_conv_pairs_x86(c, h, w, kh, kw, vec=knobs.vec, **kw_args)
    return depthwise_conv_x86(c, h, w, kh, kw, vec=knobs.vec, **kw_args)
