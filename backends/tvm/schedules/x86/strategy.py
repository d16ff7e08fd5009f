"""Kernel strategies for x86 (AVX2 / AVX-VNNI): conv2d(+requantize) as tensorized GEMM or depthwise, linear,
add, rescale, mean.

Registered with `qcompile.backends.tvm.strategy.register_strategy`; the emitter imports this package
lazily. Each `emit` builds its own scheduled PrimFunc, packs the weights (Relax constants) in numpy at
emit time, and returns the `call_tir` (convs through the shared `conv.ConvStrategy.emit`). Layout between
kernels stays NCHW (the contract of integer_semantics.md); the Relax reshapes around the kernels are views,
not copies.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tvm
from tvm import relax

from qcompile.backends.tvm.schedules.conv import (
    ConvCall,
    ConvKernel,
    ConvStrategy,
    const_value,
    conv_kind,
    register_requant_pair,
)
from qcompile.backends.tvm.schedules.parallel import parallel_if_worth
from qcompile.backends.tvm.schedules.requant import bias_term, requant_expr
from qcompile.backends.tvm.schedules.x86.amx import amx_kernel_applies, amx_plan, conv_amx, pack_amx_weights
from qcompile.backends.tvm.schedules.x86.depthwise import (
    cvec_dw_operands,
    depthwise_cvec_x86,
    depthwise_kernel,
    depthwise_small_x86,
    dw_weights,
    small_dw_applies,
    small_dw_weights,
    target_dw_knobs,
)
from qcompile.backends.tvm.schedules.x86.dw_choice import cvec_lanes
from qcompile.backends.tvm.schedules.x86.gemm import MODES, choose_mode, default_knobs, pack_weights, pointwise_conv_x86
from qcompile.backends.tvm.schedules.x86.gemv import (
    gemv_applies,
    gemv_lanes,
    gemv_mode,
    pack_gemv_packed_weights,
    pack_gemv_weights,
    pointwise_gemv_packed_x86,
    pointwise_gemv_x86,
)
from qcompile.backends.tvm.schedules.x86.packed_gemv import (
    choose_weight_bits,
    current_packed_weights,
    pack_packed_weights,
    packed_linear_acc,
    schedule_packed_linear,
)
from qcompile.backends.tvm.schedules.x86.tune import lookup_dw_knobs, lookup_knobs
from qcompile.backends.tvm.schedules.x86.workloads import depthwise_workload, gemm_workload, is_x86
from qcompile.backends.tvm.strategy import OpCall, register_strategy
from qcompile.backends.tvm.threads import target_threads
from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "X86ConvRequant",
    "X86Conv",
    "X86Add",
    "X86Mean",
    "X86LinearRequant",
    "X86Linear",
    "X86Rescale",
]


def _bias_arg(args: list[relax.Expr], requant: bool, node: str) -> relax.Expr:
    """The kernel's bias operand: int64 `bias*M + 2^(s-1)` when requantizing, else the int32 bias."""
    if not requant:
        return args[2]
    vals = [const_value(a, what, node) for a, what in zip(args[2:6], ("bias", "multiplier", "shift", "offset"))]
    return relax.const(bias_term(*vals), "int64")  # relax.const alone would narrow int64 to int32


def _gemm_okp(params: dict) -> tuple[int, int, int]:
    """(O, K, P) of a groups=1 conv's GEMM from its OpCall params."""
    _, c, _, _ = (int(v) for v in params["x_shape"])
    o, _, kh, kw = (int(v) for v in params["w_shape"])
    _, _, ho, wo = (int(v) for v in params["out_shape"])
    return o, c * kh * kw, ho * wo


def _num_cores(target: Any) -> int:
    return int(target.attrs.get("num-cores", 0) or 0) or 2


def _gemv_weight_bits(call: OpCall, weight: np.ndarray | None) -> int:
    """Weight width of a pointwise GEMV (`packed_gemv.choose_weight_bits`; `OpCall.params["weight_bits"]` forces
    one): the packed kernels need the 16 lanes of AVX512-VNNI; unknown weights (`describe(call, None)`) count as 8."""
    force = call.params.get("weight_bits")
    if gemv_lanes(call.target) != 16:
        if force not in (None, 8):
            raise ConfigError("weight_bits", force, "8 on a target without AVX512-VNNI (the packed GEMV's lanes)")
        return 8
    if weight is None:  # a dry plan: what a forced width will be, else the int8 kernel
        return int(force or current_packed_weights().force or 8)
    _, k, p = _gemm_okp(call.params)
    return choose_weight_bits(weight, force, rows=p)


class _ConvBase(ConvStrategy):
    """x86 kernels of `conv2d_requant` (u8 out) and `conv2d` (i32 out): tensorized GEMM for pointwise and full
    convs (AMX-INT8 tiles where the target has them and the GEMM is large, `amx.amx_kernel_applies`; else the
    vector intrinsic per layer, `gemm.choose_mode`; a GEMV over output channels for pointwise convs on at most
    `gemv.GEMV_MAX_PIXELS` pixels), row or tap-pair depthwise; tuned knobs when stored."""

    name = "x86_conv"
    requant = True

    def applies(self, call: OpCall) -> bool:
        return is_x86(call.target) and conv_kind(call.params) is not None

    def describe(self, call: OpCall, weight: np.ndarray | None) -> dict:
        """Kernel kind and GEMM intrinsic mode, as `emit` chooses them (`weight=None`: unknown weights)."""
        kind = conv_kind(call.params)
        if kind == "depthwise":
            lanes = cvec_lanes(call)
            return {"kind": kind, "mode": "cvec_vnni512" if lanes == 16 else "cvec_vnni"} if lanes else {"kind": kind}
        o, k, p = _gemm_okp(call.params)
        if gemv_applies(call.target, kind, p, k):
            bits = _gemv_weight_bits(call, weight)
            return {"kind": "gemv", "mode": gemv_mode(call.target, o) if bits == 8 else f"vnni512_w{bits}"}
        if amx_kernel_applies(call.target, o, k, p):
            return {"kind": kind, "mode": "amx"}
        act_max = max(int(call.params.get("x_max", 255)), int(call.params.get("pad_value", 0)))
        return {"kind": kind, "mode": choose_mode(call.target, weight, act_max)}

    def kernel(self, call: OpCall, conv: ConvCall, args: list[relax.Expr]) -> ConvKernel:
        p, cv = call.params, conv
        bias = _bias_arg(args, self.requant, cv.node)
        lanes = cvec_lanes(call) if cv.kind == "depthwise" else 0
        if lanes:
            mult = const_value(args[3], "multiplier", cv.node) if self.requant else None
            wpk, bpc = cvec_dw_operands(cv.weight, const_value(bias, "bias", cv.node), mult, cv.depthwise, lanes)
            return ConvKernel(depthwise_cvec_x86(cv.depthwise, lanes), f"qc_dwv_{cv.tag}", (cv.c, cv.h, cv.w), wpk,
                              relax.const(bpc, str(bpc.dtype)), (cv.c, cv.ho, cv.wo))
        if cv.kind == "depthwise" and small_dw_applies(cv.depthwise):
            return ConvKernel(depthwise_small_x86(cv.depthwise), f"qc_dw_{cv.tag}", (cv.c, cv.h, cv.w),
                              small_dw_weights(cv.weight, cv.depthwise), bias, (cv.c, cv.ho, cv.wo))
        if cv.kind == "depthwise":
            sh = cv.depthwise.stride[0] if cv.depthwise.dilation == (1, 1) else None  # vquads: undilated only
            knobs = lookup_dw_knobs(depthwise_workload(p), call.target) or target_dw_knobs(cv.wo, call.target, cv.kw,
                                                                                         sh)
            func = depthwise_kernel(cv.depthwise, knobs, target=call.target)
            wdw = dw_weights(cv.weight, cv.kh, cv.kw, knobs, cv.depthwise.stride[0])
            return ConvKernel(func, f"qc_dw_{cv.tag}", (cv.c, cv.h, cv.w), np.ascontiguousarray(wdw), bias,
                              (cv.c, cv.ho, cv.wo))
        x_shape = (cv.c, cv.h * cv.w) if cv.kind == "pointwise" else (cv.c, cv.h, cv.w)
        gc = cv.gemm
        if gemv_applies(call.target, cv.kind, gc.p, gc.k):
            bits = _gemv_weight_bits(call, cv.weight)
            if bits != 8:
                log.debug("%s: pointwise conv on %d pixels as a GEMV, %d-bit packed weights", cv.node, gc.p, bits)
                return ConvKernel(pointwise_gemv_packed_x86(gc, bits), f"qc_gemv_w{bits}_{cv.tag}", x_shape,
                                  pack_gemv_packed_weights(cv.weight, bits, gc.p), bias, (cv.o, cv.ho * cv.wo))
            mode = gemv_mode(call.target, gc.o)
            lanes = 16 if mode == "vnni512" else 8
            log.debug("%s: pointwise conv on %d pixels as a GEMV over channels, %d lanes", cv.node, gc.p, lanes)
            return ConvKernel(pointwise_gemv_x86(gc, lanes), f"qc_gemv_{mode}_{cv.tag}", x_shape,
                              pack_gemv_weights(cv.weight, lanes), bias, (cv.o, cv.ho * cv.wo))
        if amx_kernel_applies(call.target, gc.o, gc.k, gc.p):
            plan = amx_plan(gc.o, gc.k, gc.p, _num_cores(call.target))
            log.debug("%s: %s conv as GEMM on AMX tiles, %s", cv.node, cv.kind, plan)
            return ConvKernel(conv_amx(gc, plan), f"qc_gemm_amx_{cv.tag}", x_shape, pack_amx_weights(cv.weight, plan),
                              bias, (cv.o, cv.ho * cv.wo))
        act_max = max(int(p.get("x_max", 255)), cv.pad_value)
        mode = choose_mode(call.target, cv.weight, act_max)
        _, g, _, wdt = MODES[mode]
        knobs = lookup_knobs(gemm_workload(p) | {"mode": mode}, call.target) or default_knobs(
            mode, gc.k, gc.p, gc.o, target_threads(call.target))
        func = pointwise_conv_x86(cv.gemm, mode, knobs)
        log.debug("%s: %s conv as GEMM with %s, tile %s", cv.node, cv.kind, mode, knobs)
        return ConvKernel(func, f"qc_gemm_{mode}_{cv.tag}", x_shape, pack_weights(cv.weight, g, wdt), bias,
                          (cv.o, cv.ho * cv.wo))


X86ConvRequant, X86Conv = register_requant_pair(
    _ConvBase, "conv2d", "x86_conv", ("X86ConvRequant", "X86Conv"),
    ("conv2d + requantize fused: tensorized GEMM (pointwise / im2col) or row-vectorised depthwise.",
     "conv2d to the int32 accumulator (+bias), for convs not followed by requantize."))


def _elementwise_schedule(func: tvm.tirx.PrimFunc, block: str, n: int, vec: int = 16) -> tvm.tirx.PrimFunc:
    """Flatten all loops, split into cores x vectors: memory-bound ops need only that."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blk = sch.get_sblock(block)
    fused = sch.fuse(*sch.get_loops(blk))
    if n % vec == 0:
        outer, inner = sch.split(fused, [None, vec])
        parallel_if_worth(sch, outer, n, "elementwise")
        sch.vectorize(inner)
    return sch.mod["main"]


def _emit_flat_elementwise(bb: relax.BlockBuilder, name: str, shape: tuple[int, ...], args: list[relax.Expr],
                           fn: Any) -> relax.Expr:
    """Emit `out[i] = fn(*(x[i] for x in args))` on uint8 tensors of `shape`, as a flat 1-D kernel.

    Flat operands matter: with 4-D indices recovered from a fused loop by div/mod, LLVM could not see that
    lanes are contiguous and gathered byte by byte (measured 20x slower on a 24x56x56 residual add).
    """
    from tvm import te

    n = int(np.prod(shape))
    ins = [te.placeholder((n,), "uint8", name=f"x{k}") for k in range(len(args))]
    out = te.compute((n,), lambda i: fn(*(x[i] for x in ins)), name="ew")
    func = _elementwise_schedule(te.create_prim_func([*ins, out]), "ew", n)
    gname = f"qc_{name}_" + "x".join(map(str, shape))
    gv = bb.add_func(func.with_attr("global_symbol", gname), gname)
    flat = [bb.emit(relax.op.reshape(x, (n,))) for x in args]
    y = bb.emit(relax.call_tir(gv, flat, relax.TensorType((n,), "uint8")))
    return bb.emit(relax.op.reshape(y, shape))


def _clamp_u8(v: Any, p: dict) -> Any:
    from tvm import tirx

    lo, hi = tirx.const(int(p["lo"]), "int64"), tirx.const(int(p["hi"]), "int64")
    return tirx.Max(tirx.Min(v, hi), lo).astype("uint8")


@register_strategy("add", priority=10)
class X86Add:
    """Requantized residual add `clamp((a*Ma + b*Mb + offset) >> s, lo, hi)` (int64), vectorised."""

    name = "x86_add"

    def applies(self, call: OpCall) -> bool:
        shapes = call.params.get("shapes")
        return is_x86(call.target) and shapes is not None and tuple(shapes[0]) == tuple(shapes[1])

    def emit(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr]) -> relax.Expr:
        from tvm import tirx

        p = call.params
        ma, mb, off, sh = (tirx.const(int(p[k]), "int64") for k in ("multiplier_a", "multiplier_b", "offset", "shift"))

        def f(a: Any, b: Any) -> Any:
            return _clamp_u8((a.astype("int64") * ma + b.astype("int64") * mb + off) >> sh, p)

        return _emit_flat_elementwise(bb, "add", tuple(int(d) for d in p["shapes"][0]), args[:2], f)


@register_strategy("rescale", priority=10)
class X86Rescale:
    """Codes of one quantizer to another's, `clamp((x*M + offset) >> s, lo, hi)` (int64), vectorised."""

    name = "x86_rescale"

    def applies(self, call: OpCall) -> bool:
        return is_x86(call.target) and call.params.get("shapes") is not None

    def emit(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr]) -> relax.Expr:
        from tvm import tirx

        p = call.params
        m, off, sh = (tirx.const(int(p[k]), "int64") for k in ("multiplier", "offset", "shift"))
        return _emit_flat_elementwise(bb, "rescale", tuple(int(d) for d in p["shapes"][0]), args[:1],
                                      lambda x: _clamp_u8((x.astype("int64") * m + off) >> sh, p))


@register_strategy("mean", priority=10)
class X86Mean:
    """Global average pool on codes `clamp((sum_hw(x)*M + offset) >> s, lo, hi)`, channels over cores."""

    name = "x86_mean"

    def applies(self, call: OpCall) -> bool:
        shapes = call.params.get("shapes")
        return is_x86(call.target) and shapes is not None and len(shapes[0]) == 4

    def emit(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr]) -> relax.Expr:
        from tvm import s_tir, te, tirx

        p = call.params
        n, c, h, w = (int(d) for d in p["shapes"][0])
        x = te.placeholder((n, c, h, w), "uint8", name="x")
        r1, r2 = te.reduce_axis((0, h), "r1"), te.reduce_axis((0, w), "r2")
        tot = te.compute((n, c), lambda i, j: te.sum(x[i, j, r1, r2].astype("int64"), axis=[r1, r2]), name="sum")
        m, off, sh = (tirx.const(int(p[k]), "int64") for k in ("multiplier", "offset", "shift"))
        lo, hi = tirx.const(int(p["lo"]), "int64"), tirx.const(int(p["hi"]), "int64")
        out = te.compute(
            (n, c, 1, 1),
            lambda i, j, _a, _b: tirx.Max(tirx.Min((tot[i, j] * m + off) >> sh, hi), lo).astype("uint8"),
            name="mean",
        )
        sch = s_tir.Schedule(te.create_prim_func([x, out]))
        loops = sch.get_loops(sch.get_sblock("mean"))
        sch.compute_at(sch.get_sblock("sum"), loops[1])
        parallel_if_worth(sch, sch.fuse(loops[0], loops[1]), n * c * h * w, "reduce")
        gname = f"qc_mean_{n}x{c}x{h}x{w}"
        gv = bb.add_func(sch.mod["main"].with_attr("global_symbol", gname), gname)
        return bb.emit(relax.call_tir(gv, [args[0]], relax.TensorType((n, c, 1, 1), "uint8")))


class _LinearBase:
    """`x[N,K] @ w[O,K].T + bias` (+ requantize): weights pre-packed to int16 `[O/8, K, 8]`, 8 output
    channels per int32 vector, activations broadcast. A GEMV at batch 1 is bound by reading the weights
    once, which this does; int16 products cannot overflow int32, so any bit-width is exact."""

    name = "x86_linear"
    requant = True

    def applies(self, call: OpCall) -> bool:
        return is_x86(call.target) and int(call.params["w_shape"][0]) % 8 == 0

    def describe(self, call: OpCall, weight: np.ndarray | None) -> dict:
        """GEMV mode as `emit` chooses it: AVX512-VNNI int8 when K % 4 == 0, else the int16 path."""
        from qcompile.backends.tvm.intrin.x86 import has_avx512_vnni

        k = int(call.params["x_shape"][1])
        if not (has_avx512_vnni(call.target) and k % 4 == 0):
            return {"kind": "gemv", "mode": "i16"}
        n = int(call.params["x_shape"][0])
        bits = 8 if weight is None else choose_weight_bits(weight, call.params.get("weight_bits"), k=k, rows=n)
        return {"kind": "gemv", "mode": "vnni512" if bits == 8 else f"vnni512_w{bits}"}

    def emit(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr]) -> relax.Expr:
        from tvm import s_tir, te


        p = call.params
        node = str(p.get("node", call.op))
        n, k = (int(d) for d in p["x_shape"])
        o = int(p["w_shape"][0])
        from qcompile.backends.tvm.intrin.x86 import has_avx512_vnni

        if has_avx512_vnni(call.target) and k % 4 == 0:
            w8 = const_value(args[1], "weight", node)
            bits = choose_weight_bits(w8, p.get("weight_bits"), k=k, rows=n)
            if bits != 8:
                return self._emit_packed(bb, call, args, n, k, o, node, w8, bits)
            return self._emit_vnni(bb, call, args, n, k, o, node)
        wnp = const_value(args[1], "weight", node).astype(np.int16)
        wpk = np.ascontiguousarray(wnp.reshape(o // 8, 8, k).transpose(0, 2, 1))
        x = te.placeholder((n, k), "uint8", name="x")
        wp = te.placeholder((o // 8, k, 8), "int16", name="wp")
        bias = te.placeholder((o,), "int64" if self.requant else "int32", name="bias")
        r = te.reduce_axis((0, k), "r")
        acc = te.compute(
            (n, o // 8, 8),
            lambda i, ob, oi: te.sum(x[i, r].astype("int32") * wp[ob, r, oi].astype("int32"), axis=r),
            name="acc",
        )
        outs, dt, extra = self._output_stage(args, p, node, n, o, bias, lambda i, j: acc[i, j // 8, j % 8])
        sch = s_tir.Schedule(te.create_prim_func([x, wp, bias, *outs]))
        blk = sch.get_sblock("acc")
        i, ob, oi, rr = sch.get_loops(blk)
        sch.reorder(i, ob, rr, oi)
        parallel_if_worth(sch, ob, n * k * o, "gemv")
        sch.reverse_compute_at(sch.get_sblock("out"), ob)
        sch.vectorize(oi)
        init = sch.decompose_reduction(blk, rr)
        sch.vectorize(sch.get_loops(init)[-1])
        gname = f"qc_linear_{'rq' if self.requant else 'acc'}_{n}x{k}_{o}"
        gv = bb.add_func(sch.mod["main"].with_attr("global_symbol", gname), gname)
        call_args = [args[0], relax.const(wpk), _bias_arg(args, self.requant, node), *extra]
        return bb.emit(relax.call_tir(gv, call_args, relax.TensorType((n, o), dt)))


    def _output_stage(self, args: list[relax.Expr], p: dict, node: str, n: int, o: int, bias: Any,
                      acc_at: Any) -> tuple[list, str, list]:
        """(kernel tensors after the bias, output dtype, extra call args): requantize `acc_at(i, j)` with the
        layer's multipliers, or add the int32 bias for the accumulator op."""
        from tvm import te

        if not self.requant:
            return [te.compute((n, o), lambda i, j: acc_at(i, j) + bias[j], name="out")], "int32", []
        mult = te.placeholder((o,), "int32", name="mult")
        shift = te.placeholder((o,), "int32", name="shift")
        smin = int(const_value(args[4], "shift", node).min())
        lo, hi = int(p["lo"]), int(p["hi"])
        out = te.compute((n, o), lambda i, j: requant_expr(acc_at(i, j), bias[j], mult[j], shift[j], lo, hi, smin),
                         name="out")
        return [mult, shift, out], "uint8", [args[3], args[4]]

    def _emit_vnni(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr], n: int, k: int, o: int,
                   node: str) -> relax.Expr:
        """AVX512-VNNI GEMV: int8 weights packed `[O/16, K/4, 16, 4]` (half the bytes of the int16 path), 4
        activations broadcast per `vpdpbusd`, up to 4 channel blocks in flight (independent accumulators); O is
        padded to 16 with zero weights, the padded outputs are never stored. Exact: u8 x s8 into int32."""
        from tvm import s_tir, te

        from qcompile.backends.tvm.intrin.x86 import S8U8_16x4_VNNI512_BCAST, register_x86_intrinsics

        register_x86_intrinsics()
        p = call.params
        ob_n = -(-o // 16)
        wnp = np.zeros((ob_n * 16, k), np.int8)
        wnp[:o] = const_value(args[1], "weight", node).astype(np.int8)
        wpk = np.ascontiguousarray(wnp.reshape(ob_n, 16, k // 4, 4).transpose(0, 2, 1, 3))
        x = te.placeholder((n, k), "uint8", name="x")
        wp = te.placeholder((ob_n, k // 4, 16, 4), "int8", name="wp")
        bias = te.placeholder((o,), "int64" if self.requant else "int32", name="bias")
        rb, ri = te.reduce_axis((0, k // 4), "rb"), te.reduce_axis((0, 4), "ri")
        acc = te.compute(
            (n, ob_n, 16),
            lambda i, ob, oi: te.sum(x[i, rb * 4 + ri].astype("int32") * wp[ob, rb, oi, ri].astype("int32"),
                                     axis=[rb, ri]),
            name="acc",
        )
        outs, dt, extra = self._output_stage(args, p, node, n, o, bias, lambda i, j: acc[i, j // 16, j % 16])
        sch = s_tir.Schedule(te.create_prim_func([x, wp, bias, *outs]))
        blk = sch.get_sblock("acc")
        i, ob, oi, rb_, ri_ = sch.get_loops(blk)
        # up to 4 channel blocks in flight, a divisor of the block count: MobileNetV2's 1000 classes are 63 blocks,
        # which the old "4, else 2, else 1" ran one accumulator at a time (latency-bound: 18.9 us against 14.6 with
        # 3 at 1 thread on Zen 4, docs/peers.md session 14)
        inner = max(t for t in range(1, 5) if ob_n % t == 0)
        obo, obi = sch.split(ob, [None, inner])
        sch.reorder(i, obo, rb_, obi, oi, ri_)
        parallel_if_worth(sch, obo, n * k * ob_n * 16, "gemv")
        init = sch.decompose_reduction(blk, rb_)
        sch.tensorize(oi, S8U8_16x4_VNNI512_BCAST)
        sch.unroll(obi)
        sch.vectorize(sch.get_loops(init)[-1])
        gname = f"qc_linear_vnni_{'rq' if self.requant else 'acc'}_{n}x{k}_{o}"
        gv = bb.add_func(sch.mod["main"].with_attr("global_symbol", gname), gname)
        call_args = [args[0], relax.const(wpk), _bias_arg(args, self.requant, node), *extra]
        return bb.emit(relax.call_tir(gv, call_args, relax.TensorType((n, o), dt)))


    def _emit_packed(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr], n: int, k: int, o: int,
                     node: str, w8: np.ndarray, bits: int) -> relax.Expr:
        """The GEMV of `_emit_vnni` with `bits`-bit weights packed 8 // bits to a byte (`packed_gemv`): a half or a
        quarter of the weight bytes, unpacked in registers; exact (its module docstring)."""
        from tvm import s_tir, te

        x = te.placeholder((n, k), "uint8", name="x")
        wp, acc_at = packed_linear_acc(x, n, k, o, bits)
        bias = te.placeholder((o,), "int64" if self.requant else "int32", name="bias")
        outs, dt, extra = self._output_stage(args, call.params, node, n, o, bias, acc_at)
        sch = s_tir.Schedule(te.create_prim_func([x, wp, bias, *outs]))
        schedule_packed_linear(sch, n, k, o, bits)
        log.debug("%s: linear GEMV with %d-bit packed weights", node, bits)
        gname = f"qc_linear_w{bits}_{'rq' if self.requant else 'acc'}_{n}x{k}_{o}"
        gv = bb.add_func(sch.mod["main"].with_attr("global_symbol", gname), gname)
        call_args = [args[0], relax.const(pack_packed_weights(w8, bits)), _bias_arg(args, self.requant, node), *extra]
        return bb.emit(relax.call_tir(gv, call_args, relax.TensorType((n, o), dt)))


X86LinearRequant, X86Linear = register_requant_pair(
    _LinearBase, "linear", "x86_linear", ("X86LinearRequant", "X86Linear"),
    ("linear + requantize fused (the classifier of MobileNets when its policy is integer).",
     "linear to the int32 accumulator (+bias), e.g. logits dequantized by `dequantize_acc`."))
