"""Elastic blocks built from elastic leaves: MBConv (MobileNetV2/V3), MBv1, residual bottleneck, FusedMB.

A block runs the convs of one block slot. Each conv knows its policy slot; `QuantPoint`s mark the
tensors the integer program materialises (LUT activation inputs, SE input and gate, the residual
add's input, the block output), see `qcompile.nn.elastic.QuantPoint`.
"""

from __future__ import annotations

import torch
from torch import nn

from qcompile.nn.elastic import (
    LUT_ACTIVATIONS,
    Const,
    ElasticBatchNorm2d,
    ElasticConv2d,
    KernelOf,
    MidOf,
    QuantPoint,
    Rule,
    SEMidOf,
    make_activation,
    make_divisible,
)

BLOCK_TYPES = ("mbv1", "mbv2", "mbv3", "bottleneck", "bottleneck_se", "fused", "fused_se")
#: number of conv layers (policy slots) per block type
BLOCK_CONVS = {"mbv1": 2, "mbv2": 3, "mbv3": 3, "bottleneck": 3, "bottleneck_se": 3, "fused": 2, "fused_se": 2}


class SqueezeExcite(nn.Module):
    """SE of MobileNetV3 / OFA DynamicSE.

    mean -> 1x1 reduce (bias) -> ReLU -> 1x1 expand (bias) -> h-sigmoid -> x * s.
    """

    def __init__(self, max_ch: int, ch_rule: Rule, slot_base: int | None = None) -> None:
        super().__init__()
        mid = make_divisible(max_ch // 4, 8)
        self.reduce = ElasticConv2d(max_ch, mid, 1, bias=True, out_rule=SEMidOf(ch_rule), role="se")
        self.relu = nn.ReLU()
        self.expand = ElasticConv2d(mid, max_ch, 1, bias=True, out_rule=ch_rule, role="se")
        self.hsigmoid = nn.Hardsigmoid()
        self.gate_q = QuantPoint("se_gate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.gate_q(self.hsigmoid(self.expand(self.relu(self.reduce(s)))))
        return x * s


class ConvUnit(nn.Module):
    """conv -> BN -> [QuantPoint for LUT activations] -> activation (activation optional)."""

    def __init__(self, conv: ElasticConv2d, act: str | None) -> None:
        super().__init__()
        self.conv = conv
        self.bn: ElasticBatchNorm2d | None = ElasticBatchNorm2d(conv.max_out)
        self.pre_act = None
        self.act = None
        if act is not None:
            self.act = make_activation(act)
            if isinstance(self.act, LUT_ACTIVATIONS):
                self.pre_act = QuantPoint("pre_act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.pre_act is not None:
            x = self.pre_act(x)
        if self.act is not None:
            x = self.act(x)
        return x


class ElasticBlock(nn.Module):
    """One block slot of a stage, of any type in `BLOCK_TYPES`.

    - mbv2 / mbv3: 1x1 expand -> kxk depthwise -> [SE] -> 1x1 project (OFA MBConv); expand ratio 1 drops the 1x1 expand.
    - mbv1: kxk depthwise -> 1x1 pointwise, both activated.
    - bottleneck(_se): 1x1 reduce/expand -> kxk full conv -> [SE] -> 1x1 project (ResNet bottleneck,
      ratio on the input).
    - fused(_se): kxk full conv expand -> [SE] -> 1x1 project (FusedMB).
    A residual identity joins when stride is 1 and the input and output widths are always equal: the
    same maximum and the same width rule (a searched input width of another stage can differ from the
    block's active output width, e.g. SpaceEvo's residual-stem stage after an elastic stem).
    """

    def __init__(
        self,
        block_type: str,
        *,
        max_in: int,
        max_out: int,
        in_rule: Rule,
        out_rule: Rule,
        stride: int,
        kernels: tuple[int, ...],
        expands: tuple[float, ...],
        act: str,
        se: bool,
        block_slot: int | None,
        policy_slots: tuple[int, ...] | None,
        kernel_transform: bool = False,
    ) -> None:
        super().__init__()
        self.block_type = block_type
        self.residual = stride == 1 and max_in == max_out and in_rule == out_rule
        kmax = max(kernels)
        kernel_rule: Rule = KernelOf(block_slot) if block_slot is not None and len(kernels) > 1 else Const(kernels[0])
        if block_slot is not None:
            mid_rule: Rule = MidOf(block_slot, in_rule)
        else:
            mid_rule = _FixedMid(in_rule, expands[0])
        max_mid = make_divisible(round(max_in * max(expands)), 8)
        slots = list(policy_slots) if policy_slots is not None else [None] * BLOCK_CONVS[block_type]

        def conv(cin, cout, k, s, *, dw=False, out_rule=None, kr=None, slot=None):
            return ElasticConv2d(
                cin,
                cout,
                k,
                stride=s,
                depthwise=dw,
                out_rule=out_rule,
                kernel_rule=kr,
                kernel_choices=kernels if k == kmax else None,
                kernel_transform=kernel_transform and dw,
                slot=slot,
                role="block",
            )

        self.units = nn.ModuleList()
        self.se_in = None
        self.se = None
        has_se = se or block_type.endswith("_se")
        if block_type in ("mbv2", "mbv3"):
            if max(expands) == 1 and min(expands) == 1:
                # expand ratio 1: no inverted bottleneck (OFA first block)
                self.units.append(
                    ConvUnit(conv(max_in, max_in, kmax, stride, dw=True, kr=kernel_rule, slot=slots[0]), act)
                )
                mid_rule, max_mid = in_rule, max_in
                proj_slot = slots[1]
            else:
                self.units.append(ConvUnit(conv(max_in, max_mid, 1, 1, out_rule=mid_rule, slot=slots[0]), act))
                self.units.append(
                    ConvUnit(conv(max_mid, max_mid, kmax, stride, dw=True, kr=kernel_rule, slot=slots[1]), act)
                )
                proj_slot = slots[2]
            if has_se:
                self._add_se(max_mid, mid_rule)
            self.units.append(ConvUnit(conv(max_mid, max_out, 1, 1, out_rule=out_rule, slot=proj_slot), None))
        elif block_type == "mbv1":
            self.units.append(ConvUnit(conv(max_in, max_in, kmax, stride, dw=True, kr=kernel_rule, slot=slots[0]), act))
            self.units.append(ConvUnit(conv(max_in, max_out, 1, 1, out_rule=out_rule, slot=slots[1]), act))
        elif block_type in ("bottleneck", "bottleneck_se"):
            self.units.append(ConvUnit(conv(max_in, max_mid, 1, 1, out_rule=mid_rule, slot=slots[0]), act))
            self.units.append(
                ConvUnit(conv(max_mid, max_mid, kmax, stride, out_rule=mid_rule, kr=kernel_rule, slot=slots[1]), act)
            )
            if has_se:
                self._add_se(max_mid, mid_rule)
            self.units.append(ConvUnit(conv(max_mid, max_out, 1, 1, out_rule=out_rule, slot=slots[2]), None))
        elif block_type in ("fused", "fused_se"):
            self.units.append(
                ConvUnit(conv(max_in, max_mid, kmax, stride, out_rule=mid_rule, kr=kernel_rule, slot=slots[0]), act)
            )
            if has_se:
                self._add_se(max_mid, mid_rule)
            self.units.append(ConvUnit(conv(max_mid, max_out, 1, 1, out_rule=out_rule, slot=slots[1]), None))
        else:
            from qcompile.errors import ConfigError

            raise ConfigError("block_type", block_type, BLOCK_TYPES)
        self.res_in = QuantPoint("residual_in") if self.residual else None
        self.out_q = QuantPoint("block_out")

    def _add_se(self, max_mid: int, mid_rule: Rule) -> None:
        self.se_in = QuantPoint("se_in")
        self.se = SqueezeExcite(max_mid, mid_rule)
        self.se_after = len(self.units)  # SE runs after this many units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, unit in enumerate(self.units):
            if self.se is not None and i == self.se_after:
                h = self.se(self.se_in(h))
            h = unit(h)
        if self.res_in is not None:
            h = self.res_in(h) + x
        return self.out_q(h)


class _FixedMid(Rule):
    """Middle channels of a block outside the config (fixed expand ratio)."""

    def __init__(self, in_rule: Rule, expand: float) -> None:
        self.in_rule, self.expand = in_rule, expand

    def __call__(self, cfg) -> int:
        return make_divisible(round(self.in_rule(cfg) * self.expand), 8)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FixedMid) and (self.in_rule, self.expand) == (other.in_rule, other.expand)

    def __hash__(self) -> int:
        return hash((_FixedMid, self.in_rule, self.expand))
