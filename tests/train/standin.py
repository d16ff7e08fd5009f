"""A tiny elastic, quantized supernet and its space: the stand-in the trainer tests run on.

It follows the contract of `qcompile.spaces` / `qcompile.nn` (SubnetConfig, per-slot QuantPolicy,
layers with `slot`, `weight`, `weight_quant` = LSQ, BatchQuant on conv inputs), at a size that
trains in milliseconds: stem (float) -> up to 2 residual blocks (elastic depth, kernel 1/3,
expand 0.5/1, 2 quantized convs each = 4 policy slots) -> pool -> classifier (float).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from qcompile.config import QuantPolicy, SubnetConfig
from qcompile.quant import LSQ, BatchQuant

NUM_SLOTS = 4


class TinySpace:
    name = "tiny"

    def __init__(self, width: int = 8, num_classes: int = 10, resolutions: tuple[int, ...] = (12, 16)):
        self.width, self.num_classes, self.resolutions = width, num_classes, tuple(resolutions)
        self.args = {"width": width, "num_classes": num_classes, "resolutions": list(self.resolutions)}

    def _policy(self, bits, rng=None):
        if bits is None:
            return None
        if isinstance(bits, int):
            return QuantPolicy.uniform(NUM_SLOTS, bits)
        return QuantPolicy(tuple((rng.choice(bits), rng.choice(bits)) for _ in range(NUM_SLOTS)))

    def sample(self, seed: int = 0, bits=None) -> SubnetConfig:
        rng = random.Random(seed)
        return SubnetConfig(
            resolution=rng.choice(self.resolutions),
            depths=(rng.choice((1, 2)),),
            kernels=tuple(rng.choice((1, 3)) for _ in range(2)),
            expands=tuple(rng.choice((0.5, 1.0)) for _ in range(2)),
            policy=self._policy(tuple(bits) if bits is not None else None, rng),
        )

    def largest(self, bits=None) -> SubnetConfig:
        return SubnetConfig(max(self.resolutions), (2,), (3, 3), (1.0, 1.0), policy=self._policy(bits))

    def smallest(self, bits=None) -> SubnetConfig:
        return SubnetConfig(min(self.resolutions), (1,), (1, 1), (0.5, 0.5), policy=self._policy(bits))

    def build_supernet(self, bits=(2, 3, 4), in_channels: int = 3, norm: bool = True) -> TinyNet:
        net = TinyNet(self.width, self.num_classes, bits, in_channels)
        if not norm:  # BN-free variant: data-parallel results then equal single-process ones exactly
            for m in list(net.modules()):
                for name, child in list(m.named_children()):
                    if isinstance(child, TBN):
                        setattr(m, name, nn.Identity())
        return net


class TConv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, slot=None, bits=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.stride, self.max_kernel, self.slot = stride, k, slot
        self.active_out, self.active_kernel = cout, k
        self.weight_quant = LSQ(bits) if (slot is not None and bits) else None
        self.act_quant = BatchQuant(bits) if (slot is not None and bits) else None

    def forward(self, x):
        if self.act_quant is not None:
            x = self.act_quant(x)
        w = self.weight
        if self.weight_quant is not None:
            w = self.weight_quant(w)
        w = w[: self.active_out, : x.shape[1]]
        s = (self.max_kernel - self.active_kernel) // 2
        w = w[:, :, s : s + self.active_kernel, s : s + self.active_kernel]
        return F.conv2d(x, w, None, self.stride, self.active_kernel // 2)


class TBN(nn.Module):
    def __init__(self, c, momentum=0.1):
        super().__init__()
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        c = x.shape[1]
        if self.training:
            self.num_batches_tracked.add_(1)
            f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            f = 0.0
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c], self.training, f
        )


class Block(nn.Module):
    def __init__(self, width, slot0, bits):
        super().__init__()
        self.conv1 = TConv(width, 2 * width, 3, slot=slot0, bits=bits)
        self.bn1 = TBN(2 * width)
        self.conv2 = TConv(2 * width, width, 1, slot=slot0 + 1, bits=bits)
        self.bn2 = TBN(width)

    def forward(self, x):
        return x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class TinyNet(nn.Module):
    def __init__(self, width=8, num_classes=10, bits=(2, 3, 4), in_channels=3):
        super().__init__()
        self.width = width
        self.stem = TConv(in_channels, width, 3, stride=2)
        self.stem_bn = TBN(width)
        self.blocks = nn.ModuleList([Block(width, 0, bits), Block(width, 2, bits)])
        self.fc = nn.Linear(width, num_classes)
        self.depth = 2

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        for b in self.blocks[: self.depth]:
            x = b(x)
        return self.fc(x.mean((2, 3)))


def tiny_set_active(model: TinyNet, cfg: SubnetConfig) -> None:
    """The stand-in's `qcompile.set_active`."""
    model.depth = cfg.depths[0]
    for i, b in enumerate(model.blocks):
        b.conv1.active_out = int(2 * model.width * cfg.expands[i])
        b.conv1.active_kernel = cfg.kernels[i]
    for m in model.modules():
        if isinstance(m, TConv) and m.slot is not None:
            w, a = (32, 32) if cfg.policy is None else cfg.policy[m.slot]
            if m.weight_quant is not None:
                m.weight_quant.active_bits = w
                m.act_quant.active_bits = a
