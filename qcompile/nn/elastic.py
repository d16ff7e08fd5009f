"""Elastic operators of a weight-sharing supernet (OFA / QFA / OQA).

Every elastic module is a *leaf* for tracing and holds the largest weights; the subnet's weights
are nested in them: first output/input channels, centre k x k crop of the kernel (optionally
OFA's kernel transformation matrices), first d blocks of a stage. Which subnet runs is explicit
data: `apply_config(cfg)` evaluates the module's small *rules* (how its channels and kernel
follow from a `SubnetConfig`) and stores the active values; `qcompile.set_active` calls it on
every leaf, so the same works on an eager supernet and on its traced GraphModule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qcompile.config import FLOAT_BITS, SubnetConfig
from qcompile.nn.padding import pad_quantizer

# --------------------------------------------------------------------------------------------------
# Rules: how a leaf's active channels / kernel follow from a SubnetConfig (picklable, hashable)
# --------------------------------------------------------------------------------------------------


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """OFA / MobileNet channel rounding: nearest multiple of `divisor`, never below 90 % of `v`."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Rule:
    """A function of a SubnetConfig giving an integer (channels or kernel size)."""

    def __call__(self, cfg: SubnetConfig) -> int:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must implement __call__")


@dataclass(frozen=True)
class Const(Rule):
    value: int

    def __call__(self, cfg: SubnetConfig) -> int:
        return self.value


@dataclass(frozen=True)
class KernelOf(Rule):
    """Kernel size of block slot `slot`."""

    slot: int

    def __call__(self, cfg: SubnetConfig) -> int:
        return cfg.kernels[self.slot]


@dataclass(frozen=True)
class WidthOf(Rule):
    """Output width of stage `stage` (spaces that search widths), else the fixed `default`."""

    stage: int
    default: int

    def __call__(self, cfg: SubnetConfig) -> int:
        return self.default if cfg.widths is None else cfg.widths[self.stage]


@dataclass(frozen=True)
class MidOf(Rule):
    """Middle channels of block slot `slot`: `make_divisible(in * expand, 8)` (OFA), or APQ's explicit channels."""

    slot: int
    in_rule: Rule
    divisor: int = 8

    def __call__(self, cfg: SubnetConfig) -> int:
        if cfg.channels is not None:
            return cfg.channels[self.slot]
        return make_divisible(round(self.in_rule(cfg) * cfg.expands[self.slot]), self.divisor)


@dataclass(frozen=True)
class SEMidOf(Rule):
    """Squeeze-excite reduction channels: `make_divisible(C // 4, 8)` (OFA DynamicSE)."""

    channels: Rule
    reduction: int = 4

    def __call__(self, cfg: SubnetConfig) -> int:
        return make_divisible(self.channels(cfg) // self.reduction, 8)


# --------------------------------------------------------------------------------------------------
# Leaves
# --------------------------------------------------------------------------------------------------


class ElasticModule(nn.Module):
    """Marker base: a leaf whose active state comes from `apply_config(cfg)`."""

    def apply_config(self, cfg: SubnetConfig) -> None:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must implement apply_config")


class ElasticConv2d(ElasticModule):
    """Conv (full or depthwise) with elastic output channels and kernel size; input channels follow x.

    Attributes set by the quantization pass: `weight_quant` (elastic LSQ) quantizes the weight
    (the whole tensor before slicing, QFA 3.3, unless kernel transformation is on, whose
    transformed weights must be quantized after the transform). `slot` indexes the policy (None
    for layers with fixed bits) and `role` says which layer group it belongs to.
    """

    def __init__(
        self,
        max_in: int,
        max_out: int,
        max_kernel: int,
        *,
        stride: int = 1,
        depthwise: bool = False,
        bias: bool = False,
        out_rule: Rule | None = None,
        kernel_rule: Rule | None = None,
        kernel_choices: tuple[int, ...] | None = None,
        kernel_transform: bool = False,
        slot: int | None = None,
        role: str = "block",
    ) -> None:
        super().__init__()
        self.max_in, self.max_out, self.max_kernel = max_in, max_out, max_kernel
        self.stride, self.depthwise = stride, depthwise
        in_per_group = 1 if depthwise else max_in
        self.weight = nn.Parameter(torch.empty(max_out, in_per_group, max_kernel, max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        self.out_rule = out_rule or Const(max_out)
        self.kernel_rule = kernel_rule or Const(max_kernel)
        self.slot, self.role = slot, role
        self.active_out = max_out
        self.active_kernel = max_kernel
        self.weight_quant: nn.Module | None = None
        self.kernel_transform = kernel_transform
        ks = sorted(kernel_choices or (max_kernel,), reverse=True)
        self._kernel_chain = ks
        if kernel_transform and len(ks) > 1:
            # OFA: one (k_small^2 x k_small^2) matrix per step k_large -> k_small, identity at init.
            self.kernel_matrices = nn.ParameterDict(
                {f"{a}to{b}": nn.Parameter(torch.eye(b * b)) for a, b in zip(ks[:-1], ks[1:])}
            )

    def apply_config(self, cfg: SubnetConfig) -> None:
        self.active_out = self.out_rule(cfg)
        self.active_kernel = self.kernel_rule(cfg)

    def _kernel(self, w: torch.Tensor, k: int) -> torch.Tensor:
        """Centre k x k crop, through OFA's transformation matrices when enabled."""
        if k == self.max_kernel:
            return w
        if not self.kernel_transform or not hasattr(self, "kernel_matrices"):
            s = (self.max_kernel - k) // 2
            return w[:, :, s : s + k, s : s + k]
        cur = w
        for a, b in zip(self._kernel_chain[:-1], self._kernel_chain[1:]):
            if a <= k:
                break
            s = (a - b) // 2
            crop = cur[:, :, s : s + b, s : s + b]
            o, i = crop.shape[:2]
            cur = (crop.reshape(o * i, b * b) @ self.kernel_matrices[f"{a}to{b}"]).reshape(o, i, b, b)
            if b == k:
                break
        return cur

    def active_weight(self, in_ch: int) -> torch.Tensor:
        """The float (not quantized) weight of the active subnet for an input of `in_ch` channels."""
        out = in_ch if self.depthwise else self.active_out
        w = self.weight[:out] if self.depthwise else self.weight[:out, :in_ch]
        return self._kernel(w, self.active_kernel)

    def quantized_active_weight(self, in_ch: int) -> torch.Tensor:
        q = self.weight_quant
        if q is None or getattr(q, "active_bits", FLOAT_BITS) == FLOAT_BITS:
            return self.active_weight(in_ch)
        if self.kernel_transform and self.active_kernel != self.max_kernel:
            return q(self.active_weight(in_ch))
        full = q(self.weight)
        out = in_ch if self.depthwise else self.active_out
        w = full[:out] if self.depthwise else full[:out, :in_ch]
        return self._kernel(w, self.active_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_ch = x.shape[1]
        w = self.quantized_active_weight(in_ch)
        b = None if self.bias is None else self.bias[: w.shape[0]]
        groups = in_ch if self.depthwise else 1
        return padded_conv2d(self, x, w, b, self.stride, self.active_kernel // 2, groups)

    def extra_repr(self) -> str:
        kind = "dw" if self.depthwise else "conv"
        return f"{kind} {self.max_in}->{self.max_out} k<={self.max_kernel} s={self.stride} slot={self.slot}"


def padded_conv2d(conv: nn.Module, x, w, b, stride, padding: int, groups: int) -> torch.Tensor:
    """conv2d whose zero padding is the input quantizer's zero code when there is one.

    A BatchQuant zero point `z + beta` is fractional, so float 0 has no code; padding with the value
    of the nearest code (`quantizer.pad_value`, at most half a step from 0) keeps the fake-quant model
    exactly what the integer conv computes with `pad_value = floor(z + beta + 1/2)`. The quantizer is
    the one `qcompile.nn.padding.link_pad_quantizer` linked (`insert_quantizers`, `slice_subnet`).
    """
    q = pad_quantizer(conv)
    fill = q.pad_value if q is not None and q.active_bits != FLOAT_BITS else 0.0
    if padding and fill != 0.0:
        x = F.pad(x, (padding, padding, padding, padding), value=fill)
        padding = 0
    return F.conv2d(x, w, b, stride, padding, 1, groups)


class ElasticBatchNorm2d(ElasticModule):
    """BatchNorm over the first C channels of its largest parameters (C from the input).

    `momentum=None` gives the cumulative average BN recalibration uses (OFA set_running_statistics).
    """

    def __init__(self, max_ch: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.max_ch, self.eps, self.momentum = max_ch, eps, momentum
        self.weight = nn.Parameter(torch.ones(max_ch))
        self.bias = nn.Parameter(torch.zeros(max_ch))
        self.register_buffer("running_mean", torch.zeros(max_ch))
        self.register_buffer("running_var", torch.ones(max_ch))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def apply_config(self, cfg: SubnetConfig) -> None:
        """Channels follow the input; nothing to store."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            factor = 0.0
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            factor,
            self.eps,
        )


class ElasticLinear(ElasticModule):
    """Linear layer with elastic input features (from x) and fixed outputs (the classifier)."""

    def __init__(self, max_in: int, out: int, *, bias: bool = True, slot: int | None = None, role: str = "classifier"):
        super().__init__()
        self.max_in, self.out = max_in, out
        self.weight = nn.Parameter(torch.empty(out, max_in))
        nn.init.normal_(self.weight, 0, 0.01)
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None
        self.slot, self.role = slot, role
        self.weight_quant: nn.Module | None = None

    def apply_config(self, cfg: SubnetConfig) -> None:
        """Inputs follow x; outputs fixed."""

    def quantized_active_weight(self, in_features: int) -> torch.Tensor:
        q = self.weight_quant
        if q is None or getattr(q, "active_bits", FLOAT_BITS) == FLOAT_BITS:
            return self.weight[:, :in_features]
        return q(self.weight)[:, :in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_active_weight(x.shape[1]), self.bias)


class DepthGate(ElasticModule):
    """Elastic depth: returns the block's output if block `index` of `stage` is active, else its input."""

    def __init__(self, stage: int, index: int) -> None:
        super().__init__()
        self.stage, self.index = stage, index
        self.active = True

    def apply_config(self, cfg: SubnetConfig) -> None:
        self.active = self.index < cfg.depths[self.stage]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y if self.active else x

    def extra_repr(self) -> str:
        return f"stage={self.stage}, index={self.index}"


class QuantPoint(nn.Module):
    """Identity marking a tensor the integer program materialises as codes.

    `insert_quantizers` replaces it with an 8-bit BatchQuant where the integer semantics need one
    (residual adds, LUT activation inputs, SE input and gate, pool input, block outputs); in a
    float subnet `slice_subnet` removes it.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return self.kind


LUT_ACTIVATIONS = (nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU)


def make_activation(name: str) -> nn.Module:
    """Activation by name: relu, relu6, hswish, swish, hsigmoid, sigmoid."""
    table = {
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "hswish": nn.Hardswish,
        "swish": nn.SiLU,
        "hsigmoid": nn.Hardsigmoid,
        "sigmoid": nn.Sigmoid,
    }
    if name not in table:
        from qcompile.errors import ConfigError

        raise ConfigError("activation", name, sorted(table))
    return table[name]()


def conv_macs(out_hw: int, out_ch: int, in_per_group: int, k: int) -> int:
    """MACs of one conv output map (batch 1)."""
    return out_hw * out_hw * out_ch * in_per_group * k * k


def out_size(h: int, k: int, stride: int) -> int:
    return math.floor((h + 2 * (k // 2) - k) / stride) + 1
