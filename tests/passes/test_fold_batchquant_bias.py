"""fold-batchquant-bias: BatchQuant Eq. 6 term by term against NumPy, sign folding, border bound, refusals."""

import numpy as np
import pytest
import torch
from torch import nn

from qcompile.errors import LoweringError
from qcompile.nn.folded import AccConv2d, AccLinear
from qcompile.passes import PassManager
from qcompile.passes.fold_batchquant_bias import fold_batchquant_bias
from qcompile.quant import calibration
from tests.passes.fq_nets import bq, qconv, qlinear, trace_fq


class _Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = bq(4)
        self.fc = qlinear(20, 6, wbits=3)

    def forward(self, x):
        return self.fc(self.q(x))


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = bq(3)
        self.conv = qconv(4, 8, 3, wbits=4, bias=True)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(self.q(x)))


def _calibrated(net, shape, beta):
    torch.manual_seed(0)
    with torch.no_grad():
        net.q.beta[str(net.q.active_bits)].fill_(beta)
    gm = trace_fq(net).eval()
    with torch.no_grad(), calibration(gm):
        for _ in range(3):
            gm(torch.randn(*shape))
    return gm


@pytest.mark.parametrize("beta", [0.0, 0.3, -0.45])
def test_eq6_term_by_term_linear(beta):
    gm = _calibrated(_Lin(), (32, 20), beta)
    torch.manual_seed(1)
    x = torch.randn(64, 20)
    with torch.no_grad():
        xhat = gm.q(x).double().numpy()
        y_fq = gm(x).double().numpy()
    s_x, zp = gm.q.qparams()
    wq, sw = gm.fc.weight_quant.codes(gm.fc.weight)
    wq, sw = wq.double().numpy(), sw.double().numpy()
    b = gm.fc.bias.detach().double().numpy()
    xq = np.floor(xhat / s_x + zp + 0.5)  # the BatchQuant codes (Eq. 5)
    # Eq. 6: w_hat x_hat = w_q x_q Dw Dx gamma - w_q Dw (z + beta) Dx gamma
    term_acc = (xq @ wq.T) * sw * s_x
    term_bias = (wq.sum(axis=1) * sw * zp * s_x)[None, :]
    np.testing.assert_allclose(term_acc - term_bias + b, y_fq, rtol=1e-5, atol=1e-5)

    fold_batchquant_bias(gm)
    fc = gm.fc
    assert isinstance(fc, AccLinear)
    np.testing.assert_array_equal(fc.weight_codes.numpy(), wq)
    np.testing.assert_allclose(fc.acc_scale.numpy(), sw * s_x, rtol=1e-12)
    want_bias = b / (sw * s_x) - zp * wq.sum(axis=1)
    np.testing.assert_allclose(fc.bias_acc.numpy(), want_bias, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(fc.bias_int.numpy(), np.floor(want_bias + 0.5))
    with torch.no_grad():
        acc = fc.accumulate(torch.from_numpy(xhat)).numpy()
    np.testing.assert_array_equal(acc, xq @ wq.T + np.floor(want_bias + 0.5))
    # the integer form errs by the bias rounding only: <= 1/2 accumulator unit
    err = np.abs(acc * fc.acc_scale.numpy() - y_fq)
    assert np.all(err <= 0.5 * fc.acc_scale.numpy() + 1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.35])
def test_conv_with_negative_bn_gamma_and_border_bound(beta):
    net = _Conv()
    with torch.no_grad():
        net.bn.weight.copy_(torch.tensor([1.2, -0.7, 0.9, -1.5, 0.6, 1.1, -0.4, 0.8]))
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.bias.uniform_(-0.3, 0.3)
    gm = _calibrated(net, (8, 4, 10, 10), beta).eval()
    x = torch.randn(4, 4, 10, 10)
    with torch.no_grad():
        y_fq = gm(x).double()
        wq, sw = gm.conv.weight_quant.codes(gm.conv.weight)
    s_x, zp = gm.q.qparams()
    a = (gm.bn.weight / torch.sqrt(gm.bn.running_var + gm.bn.eps)).detach().double()
    res = PassManager("fold-bn,fold-batchquant-bias").run(gm)
    conv = res.graph_module.conv
    assert isinstance(conv, AccConv2d)
    sign = torch.sign(a)
    torch.testing.assert_close(conv.acc_scale, (sw.double() * s_x * a).abs(), rtol=1e-6, atol=0)
    assert torch.equal(conv.weight_codes.long(), wq.long() * sign.long().reshape(-1, 1, 1, 1))
    assert conv.pad_value == int(np.floor(zp + 0.5))
    with torch.no_grad():
        y_int = res.graph_module(x).double()
    err = (y_int - y_fq).abs()
    scale = conv.acc_scale.reshape(1, -1, 1, 1)
    interior = err[:, :, 1:-1, 1:-1]
    assert torch.all(interior <= 0.5 * scale + 1e-5)
    # border: + |pad_value - (z + beta)| * sum |w_q| over the padded taps (<= the whole kernel)
    dz = abs(conv.pad_value - zp)
    sum_abs = conv.weight_codes.abs().double().sum(dim=(1, 2, 3)).reshape(1, -1, 1, 1)
    assert torch.all(err <= (0.5 + dz * sum_abs) * scale + 1e-5)
    if beta == 0.0:
        assert torch.all(err <= 0.5 * scale + 1e-5)


def test_uncalibrated_quantizer_is_refused_with_its_name():
    gm = trace_fq(_Lin().eval())
    with torch.no_grad():
        gm(torch.randn(4, 20))  # LSQ initialised, BatchQuant not calibrated
    with pytest.raises(LoweringError, match=r"node q .*not calibrated.*calibrat"):
        fold_batchquant_bias(gm)


def test_layer_without_input_quantizer_is_left_float():
    class N(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = qlinear(5, 3)

        def forward(self, x):
            return self.fc(x)

    gm = trace_fq(N().eval())
    with torch.no_grad():
        gm(torch.randn(2, 5))
    assert not PassManager("fold-batchquant-bias").run(gm).modified
