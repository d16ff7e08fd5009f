"""Depthwise conv (groups == C) with fused bias + requantize, NCHW, vectorised along output rows.

`acc[c, y, x] = sum_{kh, kw} w[c, kh, kw] * x_pad[c, y*s + kh*d, x*s + kw*d]` (integer_semantics.md
`conv2d` with groups = C; the 3x3/5x5/7x7 depthwise layers of MobileNetV2/V3). The network keeps NCHW
between kernels, so the vector axis is the output row (8..112 pixels wide) instead of channels: one
channel's padded plane (at most 230x230 bytes) is built in cache right before its rows are computed
(padding with the code `pad_value`), the kh/kw taps are unrolled around 8-lane int32 vectors, and the
requantize epilogue runs on each finished row. Channels are spread over the cores.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, te, tirx

from qcompile.backends.tvm.schedules.requant import requant_expr
from qcompile.errors import ConfigError

__all__ = ["depthwise_conv_x86"]


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
    requant = lo is not None
    bias = te.placeholder((c,), "int64" if requant else "int32", name="bterm" if requant else "bias")
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
    if lo is not None:
        mult = te.placeholder((c,), "int32", name="mult")
        shift = te.placeholder((c,), "int32", name="shift")
        out = te.compute(
            (c, ho, wo),
            lambda ch, y, xo: requant_expr(acc[ch, y, xo], bias[ch], mult[ch], shift[ch], lo, hi, shift_min),
            name="epilogue",
        )
        args = [x, wt, bias, mult, shift, out]
    else:
        out = te.compute((c, ho, wo), lambda ch, y, xo: acc[ch, y, xo] + bias[ch], name="epilogue")
        args = [x, wt, bias, out]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    dw = sch.get_sblock("dw")
    ch, y, xo, rh_, rw_ = sch.get_loops(dw)
    xoo, xoi = sch.split(xo, [None, vec])
    sch.reorder(ch, y, xoo, rh_, rw_, xoi)
    sch.parallel(ch)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, y)
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
    e_loops = sch.get_loops(ep)
    if wo % vec == 0:
        _, e_i = sch.split(e_loops[-1], [None, vec])
        sch.vectorize(e_i)
    return sch.mod["main"]
