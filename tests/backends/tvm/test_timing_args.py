"""`lowered.kernel_timing_args` with the program's own requantize operands (`program_requant_operands`): the
per-kernel timings run the network's shifts (e.g. the depthwise channels below 32), not only `TIMING_SHIFT`."""

from __future__ import annotations

import numpy as np
import torch

from qcompile import ops as Q
from qcompile.backends.tvm.lowered import TIMING_SHIFT, kernel_timing_args, program_requant_operands
from qcompile.ops import IntegerGraphBuilder

BIAS = [[-700, 5, 1200], [3, -4]]
MULT = [[2**31 - 1, 1 << 30, 1234567], [1 << 29, 2**31 - 1]]
SHIFT = [[23, 40, 31], [36, 20]]
OFFSET = [17, -(1 << 35)]  # the second layer's explicit int64 offsets (to_integer's folded bias fraction)


def _program():
    """quantize -> conv 3x3 (3 channels) -> requantize -> conv 1x1 (2 channels) -> requantize(offset) -> conv 1x1
    (2 channels, the first layer's workload again: shares its PrimFunc in the metadata below)."""
    b = IntegerGraphBuilder()
    x = b.call(Q.quantize, b.input(), 10.0, 7.5, 255)
    c = lambda v, dt, name: b.const(torch.tensor(v, dtype=dt), name)  # noqa: E731
    a0 = b.call(Q.conv2d, x, c(np.ones((3, 3, 3, 3)), torch.int8, "w0"), c(BIAS[0], torch.int32, "b0"),
                stride=1, padding=1, dilation=1, groups=1, pad_value=3)
    r0 = b.call(Q.requantize, a0, c(MULT[0], torch.int32, "m0"), c(SHIFT[0], torch.int32, "s0"), lo=0, hi=255)
    a1 = b.call(Q.conv2d, r0, c(np.ones((2, 3, 1, 1)), torch.int8, "w1"), c(BIAS[1], torch.int32, "b1"),
                stride=1, padding=0, dilation=1, groups=1, pad_value=0)
    r1 = b.call(Q.requantize, a1, c(MULT[1], torch.int32, "m1"), c(SHIFT[1], torch.int32, "s1"), lo=0, hi=255,
                offset=c(OFFSET, torch.int64, "off1"))
    return b.build(r1), [a0.name, r0.name], [a1.name, r1.name]


def _sig(n: int) -> list:
    return [[[1, n, 4, 4], "uint8"], [[n, 3, 3], "int8"], [[n], "int64"], [[n], "int32"], [[n], "int32"],
            [[1, n, 4, 4], "uint8"]]


def test_program_requant_operands_are_the_programs_bias_terms_multipliers_and_shifts():
    ig, nodes0, nodes1 = _program()
    meta = {"kernels": [{"op": "quantize", "nodes": ["quantize"], "primfuncs": ["q"]},
                        {"op": "conv2d_requant", "nodes": nodes0, "primfuncs": ["f0"]},
                        {"op": "conv2d_requant", "nodes": nodes1, "primfuncs": ["f1"]},
                        {"op": "conv2d_requant", "nodes": nodes0, "primfuncs": ["f0"]}]}  # a repeated layer
    ops = program_requant_operands(meta, ig)
    assert sorted(ops) == ["f0", "f1"]  # the quantize kernel has no requantize
    b0, m0, s0 = ops["f0"]
    # bias*M + 2^(s-1) (the default rounding offset), and bias*M + offset where the program gives one
    assert b0.dtype == np.int64 and b0.tolist() == [b * m + (1 << (s - 1)) for b, m, s in zip(BIAS[0], MULT[0],
                                                                                                 SHIFT[0])]
    assert m0.dtype == np.int32 and m0.tolist() == MULT[0] and s0.dtype == np.int32 and s0.tolist() == SHIFT[0]
    b1, m1, s1 = ops["f1"]
    assert b1.tolist() == [b * m + o for b, m, o in zip(BIAS[1], MULT[1], OFFSET)]
    assert m1.tolist() == MULT[1] and s1.tolist() == SHIFT[1]
    assert program_requant_operands(meta, None) == {}  # a library without its program: the defaults


def test_kernel_timing_args_take_the_programs_operands_for_the_kernels_own_triple():
    ig, nodes0, _ = _program()
    ops = program_requant_operands({"kernels": [{"nodes": nodes0, "primfuncs": ["f0"]}]}, ig)["f0"]
    sig = _sig(3) + [[[3], "int64"], [[3], "int32"], [[3], "int32"]]  # a second triple (a fused step's)
    args = kernel_timing_args(sig, np.random.default_rng(0), requant=ops)
    assert [a.shape for a in args] == [tuple(s) for s, _ in sig]
    for a, want, dt in zip(args[2:5], ops, ("int64", "int32", "int32"), strict=True):
        assert a.dtype == dt and a.tolist() == want.tolist()
    assert (args[7] == 1 << 30).all() and (args[8] == TIMING_SHIFT).all()  # only the first triple is the program's
    # operands of another length (not this kernel's channels) leave the defaults
    other = kernel_timing_args(_sig(2), np.random.default_rng(0), requant=ops)
    assert (other[3] == 1 << 30).all() and (other[4] == TIMING_SHIFT).all()
    plain = kernel_timing_args(_sig(3), np.random.default_rng(0))
    assert (plain[3] == 1 << 30).all() and (plain[4] == TIMING_SHIFT).all()
