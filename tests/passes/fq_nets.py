"""Hand-written fake-quant subnets for the lowering tests (conv-BN-ReLU, MBv3-like block with h-swish, SE
and residual, a pool + linear head, a mixed policy with a 32-bit layer), traced with quantizers as leaves.

Bit policies are random per layer; the nets are briefly trained in float on scikit-learn digits (so the
logits have real margins), then quantized, calibrated and shared through session fixtures.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from qcompile.nn.static import QConv2d, QLinear, link_input_quantizers
from qcompile.quant import LSQ, ActQuantizer, BatchQuant, calibration

BITS = (2, 3, 4, 8)


class LeafTracer(fx.Tracer):
    """Quantized layers and quantizers stay `call_module` leaves, as in `slice_subnet`'s output."""

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, (QConv2d, QLinear, ActQuantizer, LSQ)) or super().is_leaf_module(m, name)


def trace_fq(module: nn.Module) -> fx.GraphModule:
    gm = fx.GraphModule(module, LeafTracer().trace(module))
    link_input_quantizers(gm)  # padded convs pad with the input quantizer's zero code, as extracted subnets do
    return gm


def bq(bits: int = 8) -> BatchQuant:
    q = BatchQuant(BITS)
    q.active_bits = bits
    return q


def qconv(cin, cout, k, *, stride=1, groups=1, wbits=4, bias=False) -> QConv2d:
    wq = None
    if wbits is not None:
        wq = LSQ(BITS, per_channel=True, num_channels=cout)
        wq.active_bits = wbits
    return QConv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias, weight_quant=wq)


def qlinear(cin, cout, wbits=8) -> QLinear:
    wq = LSQ(BITS, per_channel=True, num_channels=cout)
    wq.active_bits = wbits
    return QLinear(cin, cout, weight_quant=wq)


class ConvBNReLU(nn.Module):
    """Quantized first conv (input quantizer on the float image) -> BN -> ReLU -> conv s2 -> BN -> ReLU6 -> head."""

    def __init__(self, policy, cin=1, classes=10):
        super().__init__()
        (w1, a1), (w2, a2) = policy
        self.q_in = bq(a1)
        self.conv1 = qconv(cin, 16, 3, wbits=w1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.q2 = bq(a2)
        self.conv2 = qconv(16, 24, 3, stride=2, wbits=w2)
        self.bn2 = nn.BatchNorm2d(24)
        self.relu6 = nn.ReLU6()
        self.pool_in = bq(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc_in = bq(8)
        self.fc = qlinear(24, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(self.q_in(x))))
        x = self.relu6(self.bn2(self.conv2(self.q2(x))))
        x = self.fc_in(self.pool(self.pool_in(x)))
        return self.fc(torch.flatten(x, 1))


class MBv3Like(nn.Module):
    """Float stem -> inverted residual (1x1 h-swish, dw 3x3 h-swish, SE, 1x1 project, residual) -> head."""

    def __init__(self, policy, cin=1, classes=10, c=16, mid=32):
        super().__init__()
        (we, ae), (wd, ad), (wp, ap) = policy
        self.stem = qconv(cin, c, 3, wbits=None)
        self.stem_bn = nn.BatchNorm2d(c)
        self.stem_pre = bq(8)
        self.stem_act = nn.Hardswish()
        self.stem_out = bq(8)
        self.q_e = bq(ae)
        self.expand = qconv(c, mid, 1, wbits=we)
        self.bn_e = nn.BatchNorm2d(mid)
        self.pre_e = bq(8)
        self.act_e = nn.Hardswish()
        self.q_d = bq(ad)
        self.dw = qconv(mid, mid, 3, groups=mid, wbits=wd)
        self.bn_d = nn.BatchNorm2d(mid)
        self.pre_d = bq(8)
        self.act_d = nn.Hardswish()
        self.se_in = bq(8)
        self.se_reduce = qconv(mid, 16, 1, wbits=None, bias=True)
        self.se_relu = nn.ReLU()
        self.se_expand = qconv(16, mid, 1, wbits=None, bias=True)
        self.se_hsig = nn.Hardsigmoid()
        self.se_gate = bq(8)
        self.q_p = bq(ap)
        self.project = qconv(mid, c, 1, wbits=wp)
        self.bn_p = nn.BatchNorm2d(c)
        self.res_in = bq(8)
        self.out_q = bq(8)
        self.pool_in = bq(8)
        self.fc_in = bq(8)
        self.fc = qlinear(c, classes)

    def forward(self, x):
        x = self.stem_out(self.stem_act(self.stem_pre(self.stem_bn(self.stem(x)))))
        h = self.act_e(self.pre_e(self.bn_e(self.expand(self.q_e(x)))))
        h = self.act_d(self.pre_d(self.bn_d(self.dw(self.q_d(h)))))
        h = self.se_in(h)
        s = h.mean((2, 3), keepdim=True)
        s = self.se_gate(self.se_hsig(self.se_expand(self.se_relu(self.se_reduce(s)))))
        h = h * s
        h = self.bn_p(self.project(self.q_p(h)))
        y = self.out_q(self.res_in(h) + x)
        p = torch.mean(self.pool_in(y), (2, 3), keepdim=True)
        return self.fc(self.fc_in(p).flatten(1))


class SwishHead(nn.Module):
    """conv -> BN -> swish (LUT) -> conv -> BN -> sigmoid (LUT) -> pool (module) -> flatten -> linear."""

    def __init__(self, policy, cin=1, classes=10):
        super().__init__()
        (w1, a1), (w2, a2) = policy
        self.q_in = bq(a1)
        self.conv1 = qconv(cin, 16, 3, wbits=w1, bias=True)
        self.bn1 = nn.BatchNorm2d(16)
        self.pre1 = bq(8)
        self.act1 = nn.SiLU()
        self.q2 = bq(a2)
        self.conv2 = qconv(16, 32, 3, stride=2, wbits=w2)
        self.bn2 = nn.BatchNorm2d(32)
        self.pre2 = bq(8)
        self.act2 = nn.Sigmoid()
        self.pool_in = bq(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc_in = bq(8)
        self.flat = nn.Flatten()
        self.fc = qlinear(32, classes)

    def forward(self, x):
        x = self.act1(self.pre1(self.bn1(self.conv1(self.q_in(x)))))
        x = self.act2(self.pre2(self.bn2(self.conv2(self.q2(x)))))
        x = self.pool_in(x)
        return self.fc(self.flat(self.fc_in(self.pool(x))))


class Mixed(nn.Module):
    """A 32-bit (float) layer between quantized ones: its input quantizer and weights are at 32 bits."""

    def __init__(self, policy, cin=1, classes=10):
        super().__init__()
        (w1, a1), (w2, a2), (w3, a3) = policy
        self.q1 = bq(a1)
        self.conv1 = qconv(cin, 16, 3, wbits=w1)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU()
        self.q2 = bq(32)
        self.conv2 = qconv(16, 16, 3, wbits=32)
        self.bn2 = nn.BatchNorm2d(16)
        self.act2 = nn.ReLU6()
        self.q3 = bq(a3)
        self.conv3 = qconv(16, 24, 3, stride=2, wbits=w3)
        self.bn3 = nn.BatchNorm2d(24)
        self.act3 = nn.ReLU()
        self.pool_in = bq(8)
        self.fc_in = bq(8)
        self.fc = qlinear(24, classes)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(self.q1(x))))
        x = self.act2(self.bn2(self.conv2(self.q2(x))))
        x = self.act3(self.bn3(self.conv3(self.q3(x))))
        x = torch.mean(self.pool_in(x), dim=(2, 3))
        return self.fc(self.fc_in(x))


NETS = {"convbnrelu": (ConvBNReLU, 2), "mbv3": (MBv3Like, 3), "swish": (SwishHead, 2), "mixed": (Mixed, 3)}


def random_policy(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.choice(BITS), rng.choice(BITS)) for _ in range(n)]


def set_bits(model: nn.Module, on: bool, saved: dict) -> None:
    """Switch every quantizer to 32 bits (float training) or back to the bits saved before."""
    for name, m in model.named_modules():
        if isinstance(m, (LSQ, ActQuantizer)):
            if not on:
                saved[name] = m.active_bits
                m.active_bits = 32
            else:
                m.active_bits = saved[name]


def load_digits16() -> dict[str, torch.Tensor]:
    """scikit-learn digits, 16x16, standardised; a fixed 1437/360 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1437], perm[1437:]
    return {"xtr": x[tr], "ytr": y[tr], "xte": x[te], "yte": y[te]}


_DIGITS: dict = {}


def digits16() -> dict[str, torch.Tensor]:
    """`load_digits16()` once per process."""
    if not _DIGITS:
        _DIGITS.update(load_digits16())
    return _DIGITS


def build_trained(kind: str, seed: int, digits: dict, epochs: int = 3) -> fx.GraphModule:
    """Float-train `kind` with a random bit policy set aside, then quantize, calibrate and trace it."""
    cls, n = NETS[kind]
    torch.manual_seed(seed)
    policy = random_policy(n, seed)
    model = cls(policy)
    saved: dict = {}
    set_bits(model, False, saved)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xtr, ytr = digits["xtr"], digits["ytr"]
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    set_bits(model, True, saved)
    model.eval()
    # learned BatchQuant residuals are nonzero after training: give every beta a random value so that
    # fractional zero points (padding, bias folding) are exercised; SE gates keep beta = 0 (see mul)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, BatchQuant) and "gate" not in name:
                for p in m.beta.values():
                    p.fill_(float(rng.uniform(-0.15, 0.15)))
                for p in m.gamma.values():
                    p.fill_(float(rng.uniform(0.9, 1.1)))
    gm = trace_fq(model).eval()
    with torch.no_grad():
        gm(xtr[:64])  # LSQ steps initialise at their bits (OQA Sec. 3.2 rule)
        with calibration(gm):
            for i in range(0, 512, 128):
                gm(xtr[i : i + 128])
    gm.policy = policy
    return gm


_CACHE: dict = {}


def trained(kind: str, seed: int = 0) -> fx.GraphModule:
    """Calibrated fake-quant GraphModule of net `kind` with the random policy of `seed` (cached per process)."""
    key = (kind, seed)
    if key not in _CACHE:
        _CACHE[key] = build_trained(kind, seed, digits16())
    return _CACHE[key]
