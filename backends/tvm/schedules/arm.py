"""Kernel strategies for aarch64 (NEON, Armv8.2 dotprod): conv2d(+requantize) as a tensorized GEMM or a
channel-vectorised depthwise kernel.

Registered with `qcompile.backends.tvm.strategy.register_strategy` (priority 10, like x86); they apply
only to LLVM targets whose triple is aarch64 (`is_arm`). Layout between kernels stays NCHW
(integer_semantics.md); reshapes around the kernels are views.

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

Depthwise (groups == C): the padded input is transposed per call to `[Hp, Wp, Cv]` int16 (`Cv` = C
rounded up to the vector width), so each tap of an output pixel is one contiguous vector of channels;
int16 x int16 products accumulate in int32 (exact). Output rows are spread over the cores, and each
finished row is requantized into the NCHW output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx

from qcompile.backends.tvm.intrin.arm import (
    S8S8_4x4_NEON,
    S8S8_4x4_SDOT,
    has_dotprod,
    register_arm_intrinsics,
)
from qcompile.backends.tvm.schedules.gemm_x86 import ConvGeometry, _fit_to, gemm_requant_stages, pack_weights
from qcompile.backends.tvm.schedules.requant import bias_term, requant_expr
from qcompile.backends.tvm.schedules.x86 import const_value, conv_kind
from qcompile.backends.tvm.strategy import OpCall, register_strategy
from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "ArmConvRequant",
    "ArmConv",
    "ArmGemmKnobs",
    "is_arm",
    "arm_mode",
    "fold_code_offset",
    "gemm_conv_arm",
    "depthwise_conv_arm",
    "ARM_MODES",
    "CODE_OFFSET",
]

#: subtracted from u8 codes so they fit s8 (`sum(x*w) = sum((x-128)*w) + 128*sum(w)`)
CODE_OFFSET = 128
#: mode -> intrinsic; both take int8 x int8, 4 pixels x 4 reduction values per call
ARM_MODES = {"sdot": S8S8_4x4_SDOT, "neon": S8S8_4x4_NEON}
_LANES = 4
# largest K for which the shifted int32 accumulator cannot overflow: K * 128 * 128 < 2^31
_K_MAX = (2**31 - 1) // (CODE_OFFSET * CODE_OFFSET)


def is_arm(target: tvm.target.Target) -> bool:
    """An LLVM target for aarch64 (our intrinsics need NEON, which every aarch64 core has)."""
    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    return triple.startswith(("aarch64", "arm64"))


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


def gemm_conv_arm(
    k: int,
    p: int,
    o: int,
    mode: str,
    *,
    lo: int | None = 0,
    hi: int | None = 255,
    shift_min: int = 1,
    knobs: ArmGemmKnobs = ArmGemmKnobs(),
    conv: ConvGeometry | None = None,
) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x, wp[O, K/4, 4] i8, bterm[O] i64, mult[O] i32, shift[O] i32) -> out[O, P]`.

    `x` is `[K, P]` uint8 (pointwise) or `[C, H, W]` when `conv` describes a groups=1 conv (im2col with
    `pad_value` fused into the packing; `K = C*KH*KW` in `(c, kh, kw)` order). `bterm` must be
    `requant.bias_term(fold_code_offset(bias, w), M, s)`; without requantize (`lo is None`) the bias operand
    is the int32 `fold_code_offset(bias, w)` and `out` is the int32 accumulator plus bias.
    """
    if mode not in ARM_MODES:
        raise ConfigError("mode", mode, sorted(ARM_MODES))
    register_arm_intrinsics()
    intrin = ARM_MODES[mode]
    requant = lo is not None
    to = _fit_to(o, knobs.to)
    tp = -(-min(knobs.tp, -(-p // _LANES) * _LANES) // _LANES) * _LANES
    pp = -(-p // tp) * tp
    kb = -(-k // 4)
    off = tirx.const(CODE_OFFSET, "int16")

    wp = te.placeholder((o, kb, 4), "int8", name="wp")
    bias = te.placeholder((o,), "int64" if requant else "int32", name="bterm" if requant else "bias")
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

    stages = gemm_requant_stages(gather, (kb, 4), wp, bias, o, p, pp, lo, hi, shift_min)
    sch = s_tir.Schedule(te.create_prim_func([x, wp, bias, *stages]).with_attr("global_symbol", "main"))

    pk = sch.get_sblock("xpack")
    b, j, i = sch.get_loops(pk)
    sch.parallel(b)
    sch.unroll(i)
    if conv is not None and pp == p:
        sch.split(j, [None, conv.wo])  # output row / column loops: no div/mod by Wo per element

    gm = sch.get_sblock("gemm")
    c, j, rb_, ri_ = sch.get_loops(gm)
    co, ci = sch.split(c, [None, to])
    jo, jm, ji = sch.split(j, [None, tp // _LANES, _LANES])
    sch.reorder(jo, co, rb_, ci, jm, ji, ri_)
    outer = sch.fuse(jo, co)
    sch.parallel(outer)  # before decompose_reduction / tensorize (as on x86)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, outer)
    init = sch.decompose_reduction(gm, rb_)
    sch.tensorize(ji, intrin)
    sch.unroll(ci)
    sch.unroll(jm)
    sch.vectorize(sch.get_loops(init)[-1])
    _, e_ji = sch.split(sch.get_loops(ep)[-1], [None, _LANES])
    sch.vectorize(e_ji)
    if pp != p:
        sch.reverse_compute_at(sch.get_sblock("crop"), outer)
    return sch.mod["main"]


def depthwise_conv_arm(
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
    """Scheduled PrimFunc `(x[C,H,W] u8, w[KH,KW,Cv] i16, bterm[C] i64, mult, shift) -> out[C,Ho,Wo]`.

    `Cv` is C rounded up to `vec` (pre-packed weights zero-padded; `pack_depthwise_weights`). `out` is
    uint8 codes (`bterm = requant.bias_term(bias, mult, shift)`), or int32 `acc + bias` when `lo is None`.
    """
    if vec not in (4, 8, 16):
        raise ConfigError("vec", vec, (4, 8, 16))
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if ho <= 0 or wo <= 0:
        raise ConfigError("depthwise geometry", (c, h, w, kh, kw, stride, padding), "a non-empty output")
    cv = -(-c // vec) * vec
    hp, wp_ = h + 2 * padding[0], w + 2 * padding[1]
    x = te.placeholder((c, h, w), "uint8", name="x")
    wt = te.placeholder((kh, kw, cv), "int16", name="w")
    requant = lo is not None
    bias = te.placeholder((c,), "int64" if requant else "int32", name="bterm" if requant else "bias")
    xpad = te.compute(
        (hp, wp_, cv),
        lambda yy, xx, ch: tirx.if_then_else(
            tirx.all(yy >= padding[0], yy < h + padding[0], xx >= padding[1], xx < w + padding[1], ch < c),
            x[ch, yy - padding[0], xx - padding[1]].astype("int16"),
            tirx.const(pad_value, "int16"),
        ),
        name="xpad",
    )
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    acc = te.compute(
        (ho, wo, cv),
        lambda y, xo, ch: te.sum(
            xpad[y * stride[0] + rh * dilation[0], xo * stride[1] + rw * dilation[1], ch].astype("int32")
            * wt[rh, rw, ch].astype("int32"),
            axis=[rh, rw],
        ),
        name="dw",
    )
    if requant:
        mult = te.placeholder((c,), "int32", name="mult")
        shift = te.placeholder((c,), "int32", name="shift")
        out = te.compute(
            (c, ho, wo),
            lambda ch, y, xo: requant_expr(acc[y, xo, ch], bias[ch], mult[ch], shift[ch], lo, hi, shift_min),
            name="epilogue",
        )
        args = [x, wt, bias, mult, shift, out]
    else:
        out = te.compute((c, ho, wo), lambda ch, y, xo: acc[y, xo, ch] + bias[ch], name="epilogue")
        args = [x, wt, bias, out]
    sch = s_tir.Schedule(te.create_prim_func(args).with_attr("global_symbol", "main"))

    # transpose + pad: one pass over the input, rows over the cores
    pad_loops = sch.get_loops(sch.get_sblock("xpad"))
    sch.parallel(pad_loops[0])
    dw = sch.get_sblock("dw")
    y, xo, ch, rh_, rw_ = sch.get_loops(dw)
    cb, ci = sch.split(ch, [None, vec])
    sch.reorder(y, xo, cb, rh_, rw_, ci)
    sch.parallel(y)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, y)
    # vectorise before decompose_reduction (afterwards TVM no longer sees a local reduction block)
    sch.vectorize(ci)
    sch.unroll(rh_)
    sch.unroll(rw_)
    init = sch.decompose_reduction(dw, rh_)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def pack_depthwise_weights(w: np.ndarray, vec: int = 8) -> np.ndarray:
    """[C, 1, KH, KW] int8 -> [KH, KW, Cv] int16, channels last and zero-padded to a multiple of `vec`."""
    c, _, kh, kw = w.shape
    cv = -(-c // vec) * vec
    out = np.zeros((kh, kw, cv), np.int16)
    out[:, :, :c] = np.asarray(w).reshape(c, kh, kw).transpose(1, 2, 0)
    return out


def _pair(v: object) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))  # type: ignore[index]


class _ArmConvBase:
    """Shared emit for `conv2d_requant` (u8 out) and `conv2d` (i32 out) on aarch64."""

    name = "arm_conv"
    requant = True

    def applies(self, call: OpCall) -> bool:
        if not is_arm(call.target):
            return False
        kind = conv_kind(call.params)
        if kind is None:
            return False
        _, cg, kh, kw = call.params["w_shape"]
        return kind == "depthwise" or int(cg) * int(kh) * int(kw) <= _K_MAX

    def _bias(self, args: list[relax.Expr], node: str, folded: np.ndarray) -> relax.Expr:
        """int64 `bterm` (requantize) or int32 bias (accumulator) from the folded per-channel bias."""
        if self.requant:
            mult, shift = (const_value(a, what, node) for a, what in zip(args[3:5], ("multiplier", "shift")))
            offset = const_value(args[5], "offset", node) if len(args) > 5 else None
            return relax.const(bias_term(folded, mult, shift, offset), "int64")
        # the accumulator op returns int32 acc + bias: the folded bias wraps exactly like the kernel's adds
        return relax.const(folded.astype(np.int64).astype(np.uint32).view(np.int32), "int32")

    def emit(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr]) -> relax.Expr:
        p = call.params
        node = str(p.get("node", call.op))
        kind = conv_kind(p)
        _, c, h, w = (int(v) for v in p["x_shape"])
        o, _, kh, kw = (int(v) for v in p["w_shape"])
        _, _, ho, wo = (int(v) for v in p["out_shape"])
        wnp = const_value(args[1], "weight", node)
        bnp = const_value(args[2], "bias", node).astype(np.int64)
        if self.requant:
            lo, hi = int(p["lo"]), int(p["hi"])
            shift_min = int(const_value(args[4], "shift", node).min()) if o else 1
            extra, out_dtype = [args[3], args[4]], "uint8"
        else:
            lo = hi = None
            shift_min, extra, out_dtype = 1, [], "int32"
        stride, padding = _pair(p.get("stride", 1)), _pair(p.get("padding", 0))
        dilation = _pair(p.get("dilation", 1))
        pad_value = int(p.get("pad_value", 0))
        tag = f"{'rq' if self.requant else 'acc'}_{c}x{h}x{w}_{o}x{kh}x{kw}_s{stride[0]}"

        if kind == "depthwise":
            vec = 8
            func = depthwise_conv_arm(
                c, h, w, kh, kw, stride=stride, padding=padding, dilation=dilation, pad_value=pad_value,
                lo=lo, hi=hi, shift_min=shift_min, vec=vec,
            )  # fmt: skip
            xr = bb.emit(relax.op.reshape(args[0], (c, h, w)))
            wc = relax.const(pack_depthwise_weights(wnp, vec))
            bias = self._bias(args, node, bnp)
            gname = f"qc_arm_dw_{tag}"
            out_shape2: tuple[int, ...] = (c, ho, wo)
        else:
            mode = arm_mode(call.target)
            if kind == "pointwise":
                geom = None
                xr = bb.emit(relax.op.reshape(args[0], (c, h * w)))
            else:
                geom = ConvGeometry(c, h, w, kh, kw, ho, wo, stride, padding, dilation, pad_value)
                xr = bb.emit(relax.op.reshape(args[0], (c, h, w)))
            func = gemm_conv_arm(c * kh * kw, ho * wo, o, mode, lo=lo, hi=hi, shift_min=shift_min, conv=geom)
            wc = relax.const(pack_weights(wnp, 4, "int8"))
            bias = self._bias(args, node, fold_code_offset(bnp, wnp))
            gname = f"qc_arm_gemm_{mode}_{tag}"
            out_shape2 = (o, ho * wo)
            log.debug("%s: %s conv as GEMM with %s", node, kind, mode)
        gv = bb.add_func(func.with_attr("global_symbol", gname), gname)
        y = bb.emit(relax.call_tir(gv, [xr, wc, bias, *extra], relax.TensorType(out_shape2, out_dtype)))
        return bb.emit(relax.op.reshape(y, (1, o, ho, wo)))


@register_strategy("conv2d_requant", priority=10)
class ArmConvRequant(_ArmConvBase):
    """conv2d + requantize fused on aarch64: sdot/NEON GEMM (pointwise, im2col) or channel-vector depthwise."""

    name = "arm_conv_requant"
    requant = True


@register_strategy("conv2d", priority=10)
class ArmConv(_ArmConvBase):
    """conv2d to the int32 accumulator (+bias) on aarch64."""

    name = "arm_conv"
    requant = False
