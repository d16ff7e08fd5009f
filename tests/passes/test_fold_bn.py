"""fold-bn: BN folded into float conv weights (NumPy formula) and onto quantized convs' accumulators."""

import numpy as np
import pytest
import torch
from torch import nn

from qcompile.nn.folded import FoldedQConv2d
from qcompile.passes import PassManager
from qcompile.passes.fold_bn import fold_bn
from tests.passes.fq_nets import bq, qconv, trace_fq


class _Net(nn.Module):
    def __init__(self, wbits):
        super().__init__()
        self.conv = qconv(3, 8, 3, wbits=wbits, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.q = bq(8)

    def forward(self, x):
        return self.bn(self.conv(x))


def _randomise_bn(bn: nn.BatchNorm2d, seed: int, negative: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(8, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(8, generator=g) + 0.5)
        if negative:
            bn.weight[::2] *= -1
        bn.bias.copy_(torch.rand(8, generator=g) - 0.5)


@pytest.mark.parametrize("wbits", [None, 32])
def test_float_conv_weights_follow_numpy_fold(wbits):
    net = _Net(wbits).eval()
    _randomise_bn(net.bn, 0)
    gm = trace_fq(net).eval()
    bn = net.bn
    w, b = net.conv.weight.detach().numpy().astype(np.float64), net.conv.bias.detach().numpy().astype(np.float64)
    a = bn.weight.detach().numpy() / np.sqrt(bn.running_var.numpy() + bn.eps)
    want_w = w * a[:, None, None, None]
    want_b = a * (b - bn.running_mean.numpy()) + bn.bias.detach().numpy()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = gm(x)
    fold_bn(gm)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    np.testing.assert_allclose(gm.conv.weight.detach().numpy(), want_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gm.conv.bias.detach().numpy(), want_b, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("negative", [False, True])
def test_quantized_conv_keeps_codes_and_function(negative):
    net = _Net(4).eval()
    _randomise_bn(net.bn, 1, negative)
    gm = trace_fq(net).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = gm(x)
        codes_before = net.conv.weight_quant.codes(net.conv.weight)[0].clone()
    result = PassManager("fold-bn").run(gm)
    assert result.modified
    conv = result.graph_module.conv
    assert isinstance(conv, FoldedQConv2d)
    assert torch.equal(conv.weight_quant.codes(conv.weight)[0], codes_before)  # codes untouched
    a = net.bn.weight.detach() / torch.sqrt(net.bn.running_var + net.bn.eps)
    torch.testing.assert_close(conv.channel_scale, a)
    with torch.no_grad():
        torch.testing.assert_close(result.graph_module(x), ref, rtol=1e-5, atol=1e-5)


def test_bn_without_conv_is_left_alone():
    class N(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x)

    gm = trace_fq(N().eval())
    assert not PassManager("fold-bn").run(gm).modified
