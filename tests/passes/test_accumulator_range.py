"""accumulator-range: bounds against NumPy worst cases, measured accumulators inside them, refusal naming the node."""

import numpy as np
import pytest
import torch

from qcompile import ops as Q
from qcompile.errors import LoweringError
from qcompile.ops import IntegerGraphBuilder
from qcompile.passes import PassManager
from qcompile.passes.accumulator_range import accumulator_range


def _conv_graph(cin, cout, k, wbits, abits, seed=0, pad=1):
    g = torch.Generator().manual_seed(seed)
    b = IntegerGraphBuilder()
    x = b.input()
    q = b.call(Q.quantize, x, 10.0, 7.5, 2**abits - 1)
    w = torch.randint(-(2 ** (wbits - 1)), 2 ** (wbits - 1), (cout, cin, k, k), generator=g, dtype=torch.int8)
    bias = torch.randint(-1000, 1000, (cout,), generator=g, dtype=torch.int32)
    acc = b.call(Q.conv2d, q, b.const(w, "w"), b.const(bias, "bias"), stride=1, padding=pad, dilation=1, groups=1,
                 pad_value=3)
    acc.meta["qcompile"] = {"weight_bits": wbits, "src": "layer7"}
    m = b.const(torch.full((cout,), 2**30, dtype=torch.int32), "m")
    s = b.const(torch.full((cout,), 40, dtype=torch.int32), "s")
    out = b.call(Q.requantize, acc, m, s, lo=0, hi=255)
    return b.build(out), w, bias


@pytest.mark.parametrize("wbits,abits", [(2, 2), (4, 3), (8, 8)])
def test_bounds_match_numpy_and_contain_real_accumulators(wbits, abits):
    ig, w, bias = _conv_graph(16, 8, 3, wbits, abits)
    rng = accumulator_range(ig, bound="bits")
    conv = next(n for n in ig.graph.nodes if n.target is Q.conv2d)
    k = 16 * 9
    qmax = 2**abits - 1
    half = 2 ** (wbits - 1)
    assert rng[conv.name] == (int(bias.min()) - k * half * qmax, int(bias.max()) + k * half * qmax)
    wn = w.numpy().reshape(8, -1).astype(np.int64)
    exact_hi = (np.clip(wn, 0, None).sum(1) * qmax + bias.numpy()).max()
    exact_lo = (np.clip(wn, None, 0).sum(1) * qmax + bias.numpy()).min()
    assert conv.meta["qcompile"]["acc_bound_weights"] == [exact_lo, exact_hi]
    # adversarial and random inputs stay inside the weights bound
    x = torch.rand(4, 16, 6, 6) * 40 - 20
    acc = Q.conv2d(Q.quantize(x, 10.0, 7.5, qmax), w, bias, padding=1, pad_value=3)
    assert exact_lo <= int(acc.min()) and int(acc.max()) <= exact_hi
    assert conv.meta["qcompile"]["range"] == list(rng[conv.name])


def test_overflow_is_refused_naming_the_node():
    ig, w, bias = _conv_graph(8192, 2, 3, 8, 8, pad=0)  # 73728 taps * 128 * 255 > 2^31
    with pytest.raises(LoweringError, match=r"conv2d.*lowered from layer7.*int32 accumulator can reach"):
        accumulator_range(ig, bound="bits")
    # these random weights reach about a quarter of the worst case: the exact bound proves them safe
    wn = w.numpy().reshape(2, -1).astype(np.int64)
    assert (np.clip(wn, 0, None).sum(1) * 255 + bias.numpy()).max() < 2**31
    assert not PassManager("accumulator-range{bound=weights}").run(ig).modified


def test_small_layer_passes_and_analysis_does_not_modify():
    ig, _, _ = _conv_graph(8, 4, 3, 4, 4)
    res = PassManager("accumulator-range").run(ig)
    assert not res.modified
    rq = next(n for n in ig.graph.nodes if n.target is Q.requantize)
    assert rq.meta["qcompile"]["range"] == [0, 255]


def _mul_graph(offset_x: int):
    """SE gate `mul` on two 8-bit code tensors whose only large term is the gate's zero-point product."""
    b = IntegerGraphBuilder()
    x = b.input()
    q = b.call(Q.quantize, x, 10.0, 7.5, 255)
    gq = b.call(Q.quantize, x, 5.0, 2.5, 255)
    out = b.call(Q.mul, q, gq, multiplier=3, offset_g=-7, offset=11, shift=20, lo=0, hi=255, offset_x=offset_x)
    return b.build(out)


def test_mul_bound_counts_the_gate_zero_point_term():
    # |x||g| M + |g||offset_g| + |x||offset_x| + |offset| with x, g in [0, 255]: by hand,
    # 255*255*3 + 255*7 + 255*offset_x + 11 = 196,871 + 255 offset_x. offset_x = 2^56 puts the bound at
    # 255 * 2^56 + 196,871 > 2^63 - 1, while the other terms alone are six digits.
    off = 2**56
    expected = 255 * 255 * 3 + 255 * 7 + 255 * off + 11
    assert expected > 2**63 - 1 > 255 * 255 * 3 + 255 * 7 + 11
    with pytest.raises(LoweringError, match=rf"offset_x.* can reach {expected} > 2\^63 - 1"):
        accumulator_range(_mul_graph(off))
    # 2^55: 255 * 2^55 + 196,871 = 2^63 - 2^55 + 196,871 < 2^63 - 1 is accepted, and the result is the clamp
    rng = accumulator_range(_mul_graph(2**55))
    assert 255 * 2**55 + 196_871 < 2**63 - 1
    assert list(rng.values())[-1] == (0, 255)
