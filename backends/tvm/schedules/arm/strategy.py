"""Kernel strategies for aarch64 (NEON, Armv8.2 dotprod, Armv8.6 i8mm): conv2d(+requantize) as a tensorized GEMM
(`gemm`, its tile from the tuning database when `arm.tune` tuned it on a device) or a channel-vectorised
depthwise kernel (`depthwise`).

Registered with `qcompile.backends.tvm.strategy.register_strategy` (priority 10, like x86); they apply
only to LLVM targets whose triple is aarch64 (`is_arm`). Layout between kernels stays NCHW
(integer_semantics.md); reshapes around the kernels are views (the shared `conv.ConvStrategy.emit`).
"""

from __future__ import annotations

import logging

import numpy as np
from tvm import relax

from qcompile.backends.tvm.schedules.arm.depthwise import depthwise_conv_arm, pack_depthwise_weights
from qcompile.backends.tvm.schedules.arm.gemm import (
    ARM_GROUP,
    K_MAX,
    ArmGemmKnobs,
    arm_mode,
    fold_code_offset,
    gemm_conv_arm,
    is_arm,
)
from qcompile.backends.tvm.schedules.arm.tune import gemm_workload, lookup_knobs
from qcompile.backends.tvm.schedules.conv import (
    ConvCall,
    ConvKernel,
    ConvStrategy,
    const_value,
    conv_kind,
    pack_weights,
    register_requant_pair,
)
from qcompile.backends.tvm.schedules.requant import bias_term
from qcompile.backends.tvm.strategy import OpCall

log = logging.getLogger(__name__)

__all__ = ["ArmConvRequant", "ArmConv", "is_arm"]


class _ArmConvBase(ConvStrategy):
    """aarch64 kernels of `conv2d_requant` (u8 out) and `conv2d` (i32 out): smmla/sdot/NEON GEMM for pointwise and
    full convs (K below `K_MAX`), channel-vector depthwise."""

    name = "arm_conv"
    requant = True

    def applies(self, call: OpCall) -> bool:
        if not is_arm(call.target):
            return False
        kind = conv_kind(call.params)
        if kind is None:
            return False
        _, cg, kh, kw = call.params["w_shape"]
        return kind == "depthwise" or int(cg) * int(kh) * int(kw) <= K_MAX

    def _bias(self, args: list[relax.Expr], node: str, folded: np.ndarray) -> relax.Expr:
        """int64 `bterm` (requantize) or int32 bias (accumulator) from the folded per-channel bias."""
        if self.requant:
            mult, shift = (const_value(a, what, node) for a, what in zip(args[3:5], ("multiplier", "shift")))
            offset = const_value(args[5], "offset", node) if len(args) > 5 else None
            return relax.const(bias_term(folded, mult, shift, offset), "int64")
        # the accumulator op returns int32 acc + bias: the folded bias wraps exactly like the kernel's adds
        return relax.const(folded.astype(np.int64).astype(np.uint32).view(np.int32), "int32")

    def kernel(self, call: OpCall, conv: ConvCall, args: list[relax.Expr]) -> ConvKernel:
        cv = conv
        bnp = const_value(args[2], "bias", cv.node).astype(np.int64)
        if cv.kind == "depthwise":
            vec = 8
            func = depthwise_conv_arm(cv.depthwise, vec=vec)
            return ConvKernel(func, f"qc_arm_dw_{cv.tag}", (cv.c, cv.h, cv.w),
                              pack_depthwise_weights(cv.weight, vec), self._bias(args, cv.node, bnp),
                              (cv.c, cv.ho, cv.wo))
        mode = arm_mode(call.target, cv.o)
        # a tile tuned on the device (`arm.tune`, through RPC) if the tuning database has one
        knobs = lookup_knobs(gemm_workload(call.params, mode), call.target) or ArmGemmKnobs()
        func = gemm_conv_arm(cv.gemm, mode, knobs)
        log.debug("%s: %s conv as GEMM with %s, tile %s", cv.node, cv.kind, mode, knobs)
        x_shape = (cv.c, cv.h * cv.w) if cv.kind == "pointwise" else (cv.c, cv.h, cv.w)
        return ConvKernel(func, f"qc_arm_gemm_{mode}_{cv.tag}", x_shape,
                          pack_weights(cv.weight, ARM_GROUP[mode], "int8"),
                          self._bias(args, cv.node, fold_code_offset(bnp, cv.weight)), (cv.o, cv.ho * cv.wo))


ArmConvRequant, ArmConv = register_requant_pair(
    _ArmConvBase, "conv2d", "arm_conv", ("ArmConvRequant", "ArmConv"),
    ("conv2d + requantize fused on aarch64: sdot/NEON GEMM (pointwise, im2col) or channel-vector depthwise.",
     "conv2d to the int32 accumulator (+bias) on aarch64."))
