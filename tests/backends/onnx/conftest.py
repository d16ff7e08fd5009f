"""Hand-built IntegerGraphs covering every integer op and every float-island op.

Each quantized layer is calibrated on a sample input with the reference ops themselves: the
fixed-point factor and bias are chosen so the layer's codes spread over its range (with some
clamping), as `to_integer` would produce for a calibrated subnet.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qcompile.ops import IntegerGraphBuilder
from qcompile.ops import reference as R


def fixed_point(m: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (M, s) with M in [2^30, 2^31) and M / 2^s = m (the gemmlowp encoding)."""
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    s = np.array([30 - math.floor(math.log2(v)) for v in m], dtype=np.int64)
    mult = np.round(m * np.exp2(s)).astype(np.int64)
    return torch.tensor(mult, dtype=torch.int32), torch.tensor(s, dtype=torch.int32)


def scalar_fixed_point(m: float) -> tuple[int, int]:
    mm, s = fixed_point(np.array([m]))
    return int(mm[0]), int(s[0])


class Calibrated:
    """Builds a graph and evaluates it on a calibration input alongside, to pick scales."""

    def __init__(self, x: torch.Tensor, seed: int):
        self.b = IntegerGraphBuilder()
        self.node = self.b.input("x")
        self.val = x
        self.g = torch.Generator().manual_seed(seed)

    def weights(self, shape: tuple[int, ...], bits: int) -> torch.Tensor:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return torch.randint(lo, hi + 1, shape, generator=self.g).to(torch.int8)

    def requant_params(self, acc: torch.Tensor, lo: int, hi: int, clip: float = 0.9):
        """(M, s, bias) mapping the per-channel acc range onto ~[lo, hi], clamping ~5% each side."""
        a = acc.to(torch.float64)
        q_lo = torch.quantile(a.transpose(0, 1).reshape(a.shape[1], -1), 0.05, dim=1)
        q_hi = torch.quantile(a.transpose(0, 1).reshape(a.shape[1], -1), 0.95, dim=1)
        m = (hi - lo) * clip / torch.clamp(q_hi - q_lo, min=1.0)
        mult, shift = fixed_point(m.numpy())
        bias = torch.round(lo / m - q_lo).to(torch.int32)
        return mult, shift, bias


def build_all_ops_graph(seed: int = 0, hw: int = 12, batch: int = 2):
    """quantize -> conv/dwconv/1x1 (8, 4, 2-bit weights) -> requantize (ReLU, 4-bit) -> rescale -> lut
    -> add -> max pool -> SE (float island: mean, 1x1 conv, relu, 1x1 conv, hardsigmoid) -> mul -> mean -> flatten
    -> linear -> dequantize_acc (logits)."""
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(batch, 3, hw, hw, generator=g, dtype=torch.float32)
    c = Calibrated(x, seed)
    b = c.b
    xin = c.node

    inv_scale, offset = 40.0, 127.3 + 0.5  # fractional zero point 127.3 (BatchQuant Eq. 5)
    q0 = b.call(R.quantize, xin, inv_scale, offset, 255)
    v0 = R.quantize(x, inv_scale, offset, 255)

    def conv_layer(node, val, cout, k, stride, groups, wbits, lo, hi, pad_value):
        cin = val.shape[1]
        w = c.weights((cout, cin // groups, k, k), wbits)
        kw = dict(stride=stride, padding=k // 2, dilation=1, groups=groups, pad_value=pad_value)
        acc0 = R.conv2d(val, w, torch.zeros(cout, dtype=torch.int32), **kw)
        mult, shift, bias = c.requant_params(acc0, lo, hi)
        acc_n = b.call(R.conv2d, node, b.const(w), b.const(bias), **kw)
        acc = R.conv2d(val, w, bias, **kw)
        out_n = b.call(R.requantize, acc_n, b.const(mult), b.const(shift), lo=lo, hi=hi)
        return out_n, R.requantize(acc, mult, shift, lo=lo, hi=hi)

    n1, v1 = conv_layer(q0, v0, 8, 3, 1, 1, 8, 17, 255, pad_value=127)  # ReLU: lo = zero-point code
    n2, v2 = conv_layer(n1, v1, 8, 3, 2, 8, 4, 3, 15, pad_value=17)  # depthwise, 4-bit codes, ReLU6-like hi
    mr, sr = scalar_fixed_point(255 / 15 * 0.97)
    rs_kw = dict(multiplier=mr, offset=(1 << (sr - 1)) - 3 * mr, shift=sr, lo=0, hi=255)
    n3 = b.call(R.rescale, n2, **rs_kw)
    v3 = R.rescale(v2, **rs_kw)
    # h-swish table on 8-bit codes (zero point 128, scale 6/128) into 8-bit codes (zp 20, scale 6/235)
    xs = (torch.arange(256, dtype=torch.float64) - 128) * 6 / 128
    table = torch.clamp(torch.floor(F.hardswish(xs) / (6 / 235) + 20 + 0.5), 0, 255).to(torch.uint8)
    n4 = b.call(R.lut, n3, b.const(table))
    v4 = R.lut(v3, table)
    n5, v5 = conv_layer(n4, v4, 8, 1, 1, 1, 2, 0, 255, pad_value=0)  # 2-bit weights
    ma, sa = scalar_fixed_point(0.6)
    mb = int(round(0.45 * 2**sa))
    add_kw = dict(multiplier_a=ma, multiplier_b=mb, offset=(1 << (sa - 1)) + 10 * (1 << sa), shift=sa, lo=0, hi=255)
    n6 = b.call(R.add, n5, n4, **add_kw)
    v6 = R.add(v5, v4, **add_kw)
    mp_kw = dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    n6 = b.call(R.max_pool2d, n6, **mp_kw)  # max pool on codes (ResNet stem), padded
    v6 = R.max_pool2d(v6, **mp_kw)
    # SE branch as a float island (the default for SE convs), back to 8-bit gate codes
    d_kw = dict(scale=0.05, zero_point=10.0)
    f0 = b.call(R.dequantize, n6, **d_kw)
    fv = R.dequantize(v6, **d_kw)
    f1 = b.call(torch.mean, f0, dim=(2, 3), keepdim=True)
    w_se1 = torch.randn(4, 8, 1, 1, generator=g, dtype=torch.float64) * 0.15
    b_se1 = torch.randn(4, generator=g, dtype=torch.float64) * 0.1
    w_se2 = torch.randn(8, 4, 1, 1, generator=g, dtype=torch.float64) * 0.3
    b_se2 = torch.randn(8, generator=g, dtype=torch.float64) * 0.1
    f2 = b.call(F.conv2d, f1, b.const(w_se1), b.const(b_se1))
    f3 = b.call(F.relu, f2)
    f4 = b.call(F.conv2d, f3, b.const(w_se2), b.const(b_se2))
    f5 = b.call(F.hardsigmoid, f4)
    q_g = b.call(R.quantize, f5, 255.0, 0.5, 255)
    gv = R.quantize(F.hardsigmoid(F.conv2d(F.relu(F.conv2d(fv.mean(dim=(2, 3), keepdim=True), w_se1, b_se1)),
                                           w_se2, b_se2)), 255.0, 0.5, 255)
    mm, sm = scalar_fixed_point(1 / 255 * 0.98)
    mul_kw = dict(multiplier=mm, offset_g=-3 * mm, offset=(1 << (sm - 1)) + 3 * (1 << sm), shift=sm, lo=0, hi=255,
                  offset_x=-2 * mm)
    n7 = b.call(R.mul, n6, q_g, **mul_kw)
    v7 = R.mul(v6, gv, **mul_kw)
    hw2 = v7.shape[2] * v7.shape[3]
    mp, sp = scalar_fixed_point(1 / hw2)
    mean_kw = dict(multiplier=mp, offset=1 << (sp - 1), shift=sp, lo=0, hi=255)
    n8 = b.call(R.mean, n7, **mean_kw)
    n9 = b.call(R.flatten, n8)
    w_fc = c.weights((10, 8), 8)
    b_fc = torch.randint(-2000, 2000, (10,), generator=g).to(torch.int32)
    n10 = b.call(R.linear, n9, b.const(w_fc), b.const(b_fc))
    scale_fc = torch.rand(10, generator=g, dtype=torch.float64) * 1e-3 + 1e-4
    n11 = b.call(R.dequantize_acc, n10, b.const(scale_fc))
    cfg = {"resolution": hw, "depths": [1], "kernels": [3], "expands": [1],
           "policy": [[8, 8], [4, 4], [2, 8], [8, 8]]}  # a SubnetConfig dict (qcompile.ops.meta.ProgramMeta)
    ig = b.build(n11, meta={"input_shape": [batch, 3, hw, hw], "config": cfg})
    return ig, x


def build_float_island_graph(seed: int = 1, hw: int = 9, batch: int = 2):
    """A float island with every float op: kxk conv (float32 fallback), hardswish, silu, sigmoid, relu6,
    add/mul with tensors and scalars, mean, torch.flatten, linear; framed by quantize/dequantize."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, hw, hw, generator=g)
    b = IntegerGraphBuilder()
    xin = b.input("x")
    q = b.call(R.quantize, xin, 50.0, 128.5, 255)
    d = b.call(R.dequantize, q, 0.02, 128.0)
    w1 = torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64) * 0.3
    c1 = b.call(F.conv2d, d, b.const(w1), b.const(torch.zeros(6, dtype=torch.float64)), 1, 1)
    h = b.call(F.hardswish, c1)
    s = b.call(F.silu, h)
    sg = b.call(torch.sigmoid, c1)
    m = b.call(operator.mul, s, sg)
    a = b.call(operator.add, m, 0.25)
    r6 = b.call(F.relu6, a)
    pw = b.call(F.conv2d, r6, b.const(torch.randn(6, 6, 1, 1, generator=g, dtype=torch.float64)))
    a2 = b.call(operator.add, pw, r6)
    mean = b.call(torch.mean, a2, dim=(2, 3), keepdim=True)
    fl = b.call(torch.flatten, mean, 1)
    lin = b.call(F.linear, fl, b.const(torch.randn(5, 6, generator=g, dtype=torch.float64)),
                 b.const(torch.randn(5, generator=g, dtype=torch.float64)))
    rl = b.call(F.relu, lin)
    hs = b.call(F.hardsigmoid, rl)
    qo = b.call(R.quantize, hs, 200.0, 0.5, 255)
    out = b.call(R.dequantize, qo, 1 / 200.0, 0.0)
    return b.build(out, meta={"input_shape": [batch, 3, hw, hw]}), x


@pytest.fixture(scope="session")
def all_ops_graph():
    return build_all_ops_graph()


@pytest.fixture(scope="session")
def float_island_graph():
    return build_float_island_graph()
