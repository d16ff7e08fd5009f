"""IntegerGraphs built by hand for the TVM backend tests: every op, odd shapes, all bit-widths.

Parameters are drawn so that accumulators stay inside int32 (as `to_integer` guarantees) and the
requantization scales map typical accumulators onto the output code range, with some clamping.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F

from qcompile import ops
from qcompile.ops import IntegerGraph, IntegerGraphBuilder


def conv_call_params(x_shape, w_shape, *, s: int, p: int, groups: int, pad_value: int,
                     lo: int | None = None, hi: int | None = None, node: str = "t") -> dict:
    """The OpCall params of one batch-1 `conv2d_requant` (with `lo`/`hi`) or `conv2d` (without) node `node`:
    input `x_shape`, weights `w_shape` `[O, C/groups, K, K]`, square stride `s` and padding `p`, no dilation."""
    o, _, k, _ = w_shape
    ho = (x_shape[2] + 2 * p - k) // s + 1
    wo = (x_shape[3] + 2 * p - k) // s + 1
    params = {
        "x_shape": tuple(x_shape),
        "w_shape": tuple(w_shape),
        "out_shape": (1, o, ho, wo),
        "stride": (s, s),
        "padding": (p, p),
        "dilation": (1, 1),
        "groups": groups,
        "pad_value": pad_value,
        "node": node,
    }
    if lo is not None:
        params.update(lo=lo, hi=hi)
    return params


def fixed_point(scale: float) -> tuple[int, int]:
    """(M, s) with M in [2^30, 2^31) and M / 2^s ~= scale (gemmlowp's normalised multiplier)."""
    e = math.floor(math.log2(scale))
    s = 30 - e
    m = round(scale * 2.0**s)
    if m >= 2**31:
        m, s = m // 2, s - 1
    assert 1 <= s <= 62, (scale, s)
    return int(m), int(s)


class Gen:
    """Random parameters for one graph."""

    def __init__(self, b: IntegerGraphBuilder, seed: int) -> None:
        self.b = b
        self.rng = np.random.default_rng(seed)

    def weights(self, shape: tuple[int, ...], bits: int) -> object:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return self.b.const(torch.from_numpy(self.rng.integers(lo, hi + 1, size=shape).astype(np.int8)))

    def bias(self, n: int, mag: int = 2000) -> object:
        return self.b.const(torch.from_numpy(self.rng.integers(-mag, mag + 1, size=n).astype(np.int32)))

    def requant_params(self, n: int, fan_in: int, wbits: int, abits_in: int, abits_out: int) -> tuple:
        # typical |acc| ~ sqrt(fan_in) * E|w| * E|x|; map +-3 sigma onto the output range
        sigma = math.sqrt(fan_in) * (2 ** (wbits - 1)) * (2**abits_in) / 4
        target = (2**abits_out - 1) / (3 * max(sigma, 1.0))
        mults, shifts = [], []
        for _ in range(n):
            m, s = fixed_point(target * float(self.rng.uniform(0.5, 2.0)))
            mults.append(m)
            shifts.append(s)
        m = self.b.const(torch.tensor(mults, dtype=torch.int32))
        return m, self.b.const(torch.tensor(shifts, dtype=torch.int32))

    def table(self, bits_out: int) -> object:
        return self.b.const(torch.from_numpy(self.rng.integers(0, 2**bits_out, size=256).astype(np.uint8)))


def conv_block(g: Gen, x, c_in: int, c_out: int, k: int, *, stride=1, padding=0, dilation=1, groups=1,
               wbits=8, abits_in=8, abits_out=8, relu6=False, pad_value=None):
    b = g.b
    w = g.weights((c_out, c_in // groups, k, k), wbits)
    pv = int(g.rng.integers(0, 2**abits_in)) if pad_value is None else pad_value
    acc = b.call(ops.conv2d, x, w, g.bias(c_out), stride=stride, padding=padding, dilation=dilation,
                 groups=groups, pad_value=pv)
    m, s = g.requant_params(c_out, (c_in // groups) * k * k, wbits, abits_in, abits_out)
    hi = min(2**abits_out - 1, 200) if relu6 else 2**abits_out - 1
    return b.call(ops.requantize, acc, m, s, lo=int(g.rng.integers(0, 3)), hi=hi)


def mbv2_like(seed: int = 0, bits: int = 8, shape=(1, 3, 17, 15)) -> IntegerGraph:
    """quantize -> conv 3x3/s2 -> pointwise -> depthwise (pad, stride) -> lut -> SE (mean, mul) -> residual
    add -> rescale -> mean -> flatten -> linear -> requantize -> dequantize: every integer op once."""
    b = IntegerGraphBuilder()
    g = Gen(b, seed)
    x = b.input("x")
    q = b.call(ops.quantize, x, 1 / 0.02, 128.3 + 0.5, 255)
    c1 = conv_block(g, q, 3, 16, 3, stride=2, padding=1, wbits=bits, abits_in=8, abits_out=bits)
    c2 = conv_block(g, c1, 16, 24, 1, wbits=bits, abits_in=bits, abits_out=8)
    d = conv_block(g, c2, 24, 24, 3, stride=1, padding=1, groups=24, wbits=bits, abits_in=8, abits_out=8)
    h = b.call(ops.lut, d, g.table(bits))
    pooled = b.call(ops.mean, h, multiplier=1 << 20, offset=(1 << 24) + 12345, shift=25 - 2, lo=0, hi=255)
    gate = b.call(ops.lut, pooled, g.table(8))
    se = b.call(ops.mul, h, gate, multiplier=3 << 12, offset_g=-37 * (3 << 12), offset=1 << 19, shift=20, lo=0, hi=255,
                offset_x=-5 * (3 << 12))
    p = conv_block(g, se, 24, 24, 1, wbits=bits, abits_in=8, abits_out=8)
    r = b.call(ops.rescale, c2, multiplier=1 << 16 | 777, offset=(1 << 15) - 9 * (1 << 16), shift=16, lo=0, hi=255)
    a = b.call(ops.add, p, r, multiplier_a=1 << 14, multiplier_b=3 << 13, offset=(1 << 14) - 128 * (1 << 15),
               shift=15, lo=0, hi=255)
    gp = b.call(ops.mean, a, multiplier=(1 << 24) // (a_hw := 8 * 9), offset=1 << 23, shift=24, lo=0, hi=255)
    del a_hw
    f = b.call(ops.flatten, gp)
    w = g.weights((10, 24), bits)
    lin = b.call(ops.linear, f, w, g.bias(10))
    m, s = g.requant_params(10, 24, bits, 8, 8)
    o = b.call(ops.requantize, lin, m, s, lo=0, hi=255)
    y = b.call(ops.dequantize, o, 0.05, 131.25)
    return b.build(y, {"input_shape": list(shape)})


def unfused_acc(seed: int = 0, shape=(2, 5, 9, 7)) -> IntegerGraph:
    """conv2d and linear NOT followed by requantize: conv2d -> dequantize_acc (float64) and an
    accumulator used twice (requantize and dequantize_acc), so no fusion applies."""
    b = IntegerGraphBuilder()
    g = Gen(b, seed)
    x = b.input("x")
    q = b.call(ops.quantize, x, 1 / 0.03, 0.5, 15)
    w = g.weights((6, 5, 3, 3), 4)
    acc = b.call(ops.conv2d, q, w, g.bias(6), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=1, pad_value=0)
    m, s = g.requant_params(6, 45, 4, 4, 4)
    r = b.call(ops.requantize, acc, m, s, lo=0, hi=15)
    sc = b.const(torch.from_numpy(g.rng.uniform(1e-4, 1e-2, 6)))
    fa = b.call(ops.dequantize_acc, acc, sc)
    fr = b.call(ops.dequantize, r, 0.1, 0.0)
    return b.build(b.call(operator.add, fa, fr), {"input_shape": list(shape)})


def float_island(seed: int = 0, shape=(1, 4, 6, 6)) -> IntegerGraph:
    """A float64 island with every allowed float op, between quantize/dequantize at both ends."""
    b = IntegerGraphBuilder()
    g = Gen(b, seed)
    x = b.input("x")
    q = b.call(ops.quantize, x, 1 / 0.05, 100.5, 255)
    d = b.call(ops.dequantize, q, 0.05, 100.0)
    w1 = b.const(torch.from_numpy(g.rng.standard_normal((8, 2, 3, 3)) * 0.3))
    b1 = b.const(torch.from_numpy(g.rng.standard_normal(8) * 0.1))
    c = b.call(F.conv2d, d, w1, b1, 1, 1, 1, 2)
    c = b.call(F.relu6, c)
    h = b.call(F.hardswish, c)
    w2 = b.const(torch.from_numpy(g.rng.standard_normal((8, 1, 3, 3)) * 0.3))
    c2 = b.call(F.conv2d, h, w2, None, stride=2, padding=0, groups=8)
    s = b.call(torch.sigmoid, c2)
    sl = b.call(F.silu, c2)
    hs = b.call(F.hardsigmoid, c2)
    r = b.call(F.relu, b.call(operator.add, b.call(operator.mul, s, sl), hs))
    m = b.call(torch.mean, r, dim=(2, 3), keepdim=True)
    m = b.call(operator.mul, b.call(operator.add, m, 0.25), 2.0)
    f = b.call(torch.flatten, m, 1)
    wl = b.const(torch.from_numpy(g.rng.standard_normal((5, 8))))
    bl = b.const(torch.from_numpy(g.rng.standard_normal(5)))
    lin = b.call(F.linear, f, wl, bl)
    out = b.call(ops.quantize, lin, 1 / 0.01, 128.5, 255)
    return b.build(out, {"input_shape": list(shape)})


def reference(ig: IntegerGraph, x: np.ndarray) -> np.ndarray:
    """The reference executor's output as numpy."""
    with torch.no_grad():
        return ig(torch.from_numpy(x)).numpy()


def epilogue_chains(seed: int = 0, shape=(1, 3, 9, 11)) -> IntegerGraph:
    """Convs followed by the integer elementwise ops the emitter fuses into their epilogue: full conv -> lut
    (its codes read twice), depthwise -> residual add (the conv's codes as the add's *second* operand, so the
    multipliers swap) -> rescale, pointwise (to 12 channels, 99 pixels: ragged GEMM tiles) -> lut ->
    dequantize. Odd widths leave padded columns in every kernel's epilogue."""
    b = IntegerGraphBuilder()
    g = Gen(b, seed)
    q = b.call(ops.quantize, b.input("x"), 1 / 0.03, 127.6, 255)
    h = b.call(ops.lut, conv_block(g, q, 3, 8, 3, padding=1), g.table(8))
    d = conv_block(g, h, 8, 8, 3, padding=1, groups=8)
    a = b.call(ops.add, h, d, multiplier_a=3 << 13, multiplier_b=1 << 14, offset=(1 << 14) - 100 * (1 << 15),
               shift=15, lo=0, hi=255)
    r = b.call(ops.rescale, a, multiplier=(1 << 16) | 4321, offset=(1 << 15) - 7 * (1 << 16), shift=16, lo=2,
               hi=250)
    p = b.call(ops.lut, conv_block(g, r, 8, 12, 1), g.table(8))
    y = b.call(ops.dequantize, p, 0.04, 101.5)
    return b.build(y, {"input_shape": list(shape)})


def amx_residual(seed: int = 3, shape=(1, 128, 15, 13)) -> IntegerGraph:
    """Two large 1x1 convs (K = 128 and 160, past the AMX rule) with a fused LUT and a residual add of the first
    conv's codes: both convs go to AMX-INT8 tiles on a host that has them, and the padded tiles of the ragged
    15 x 13 pixels read a valid skip element."""
    b = IntegerGraphBuilder()
    g = Gen(b, seed)
    q = b.call(ops.quantize, b.input("x"), 1 / 0.03, 127.6, 255)
    h = b.call(ops.lut, conv_block(g, q, shape[1], 160, 1), g.table(8))
    d = conv_block(g, h, 160, 160, 1)
    a = b.call(ops.add, h, d, multiplier_a=3 << 13, multiplier_b=1 << 14, offset=(1 << 14) - 100 * (1 << 15),
               shift=15, lo=0, hi=255)
    return b.build(b.call(ops.dequantize, a, 0.04, 101.5), {"input_shape": list(shape)})


def se_island(seed: int = 0, shape=(1, 3, 7, 9), channels: int = 8, hidden: int = 4,
              float32_weights: bool = False) -> IntegerGraph:
    """Squeeze-excite with a float island (MobileNetV3's): conv codes -> dequantize -> global mean -> 1x1 conv
    -> relu -> 1x1 conv -> hardsigmoid -> quantize -> gate multiply of the same codes -> dequantize.
    `float32_weights`: the float weights and biases are float32 values (as a trained float layer's are)."""
    b = IntegerGraphBuilder()
    g = Gen(b, seed)

    def f(a: np.ndarray) -> object:
        return b.const(torch.from_numpy(a.astype(np.float32).astype(np.float64) if float32_weights else a))

    q = b.call(ops.quantize, b.input("x"), 1 / 0.03, 127.6, 255)
    c = conv_block(g, q, 3, channels, 3, padding=1)
    d = b.call(ops.dequantize, c, 0.04, 120.5)
    m = b.call(torch.mean, d, dim=(2, 3), keepdim=True)
    w1 = f(g.rng.standard_normal((hidden, channels, 1, 1)) * 0.5)
    b1 = f(g.rng.standard_normal(hidden) * 0.1)
    r = b.call(F.relu, b.call(F.conv2d, m, w1, b1))
    w2 = f(g.rng.standard_normal((channels, hidden, 1, 1)) * 0.8)
    b2 = f(g.rng.standard_normal(channels) * 0.5)
    hs = b.call(F.hardsigmoid, b.call(F.conv2d, r, w2, b2))
    gate = b.call(ops.quantize, hs, 255.0, 0.5, 255)
    se = b.call(ops.mul, c, gate, multiplier=3 << 12, offset_g=-37 * (3 << 12), offset=1 << 19, shift=20, lo=0,
                hi=255, offset_x=-5 * (3 << 12))
    y = b.call(ops.dequantize, se, 0.05, 99.0)
    return b.build(y, {"input_shape": list(shape)})
