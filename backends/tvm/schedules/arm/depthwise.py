"""aarch64 depthwise conv kernel (groups == C), vectorised over channels.

Depthwise (groups == C): the padded input is transposed per call to `[Hp, Wp, Cv]` int16 (`Cv` = C
rounded up to the vector width), so each tap of an output pixel is one contiguous vector of channels;
int16 x int16 products accumulate in int32 (exact). Output rows are spread over the cores, and each
finished row is requantized into the NCHW output.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from qcompile.backends.tvm.schedules.conv import DwConv, dw_epilogue
from qcompile.backends.tvm.schedules.parallel import parallel_if_worth
from qcompile.errors import ConfigError

__all__ = ["depthwise_conv_arm", "pack_depthwise_weights"]


def depthwise_conv_arm(dw: DwConv, *, vec: int = 8) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x[C,H,W] u8, w[KH,KW,Cv] i16, bterm[C] i64, mult, shift) -> out[C,Ho,Wo]`.

    `Cv` is C rounded up to `vec` (pre-packed weights zero-padded; `pack_depthwise_weights`). `out` is
    uint8 codes (`bterm = requant.bias_term(bias, mult, shift)`), or int32 `acc + bias` when `dw.lo is None`.
    """
    if vec not in (4, 8, 16):
        raise ConfigError("vec", vec, (4, 8, 16))
    c, h, w, kh, kw = dw.c, dw.h, dw.w, dw.kh, dw.kw
    stride, padding, dilation = dw.stride, dw.padding, dw.dilation
    cv = -(-c // vec) * vec
    hp, wp_ = h + 2 * padding[0], w + 2 * padding[1]
    x = te.placeholder((c, h, w), "uint8", name="x")
    wt = te.placeholder((kh, kw, cv), "int16", name="w")
    bias = dw.bias()
    xpad = te.compute(
        (hp, wp_, cv),
        lambda yy, xx, ch: tirx.if_then_else(
            tirx.all(yy >= padding[0], yy < h + padding[0], xx >= padding[1], xx < w + padding[1], ch < c),
            x[ch, yy - padding[0], xx - padding[1]].astype("int16"),
            tirx.const(dw.pad_value, "int16"),
        ),
        name="xpad",
    )
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    acc = te.compute(
        (dw.ho, dw.wo, cv),
        lambda y, xo, ch: te.sum(
            xpad[y * stride[0] + rh * dilation[0], xo * stride[1] + rw * dilation[1], ch].astype("int32")
            * wt[rh, rw, ch].astype("int32"),
            axis=[rh, rw],
        ),
        name="dw",
    )
    args = [x, wt, bias, *dw_epilogue(dw, lambda ch, y, xo: acc[y, xo, ch], bias)]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    # transpose + pad: one pass over the input, rows over the cores
    pad_loops = sch.get_loops(sch.get_sblock("xpad"))
    work = dw.ho * dw.wo * cv * kh * kw
    parallel_if_worth(sch, pad_loops[0], work, "depthwise")
    dw_blk = sch.get_sblock("dw")
    y, xo, ch, rh_, rw_ = sch.get_loops(dw_blk)
    cb, ci = sch.split(ch, [None, vec])
    sch.reorder(y, xo, cb, rh_, rw_, ci)
    parallel_if_worth(sch, y, work, "depthwise")
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, y)
    # vectorise before decompose_reduction (afterwards TVM no longer sees a local reduction block)
    sch.vectorize(ci)
    sch.unroll(rh_)
    sch.unroll(rw_)
    init = sch.decompose_reduction(dw_blk, rh_)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def pack_depthwise_weights(w: np.ndarray, vec: int = 8) -> np.ndarray:
    """[C, 1, KH, KW] int8 -> [KH, KW, Cv] int16, channels last and zero-padded to a multiple of `vec`."""
    c, _, kh, kw = w.shape
    cv = -(-c // vec) * vec
    out = np.zeros((kh, kw, cv), np.int16)
    out[:, :, :c] = np.asarray(w).reshape(c, kh, kw).transpose(1, 2, 0)
    return out
