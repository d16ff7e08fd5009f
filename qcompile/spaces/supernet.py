"""The weight-sharing supernet of a staged space: stem, elastic stages of gated blocks, head (OFA, QFA).

Every layer is allocated at its largest size; the active subnet is module state that
`qcompile.set_active(net, cfg)` sets from a `SubnetConfig` (ARCHITECTURE.md, `qcompile/nn/`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qcompile.nn.blocks import ConvUnit, ElasticBlock
from qcompile.nn.elastic import Const, DepthGate, ElasticConv2d, ElasticLinear, QuantPoint, WidthOf

__all__ = ["Stage", "Supernet"]


def _is_fx_tracing() -> bool:
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


class Stage(nn.Module):
    """Blocks of one stage; blocks beyond the minimum depth are behind a `DepthGate`."""

    def __init__(self, blocks: list[ElasticBlock], gates: list[DepthGate | None]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.gates = nn.ModuleList([g if g is not None else nn.Identity() for g in gates])
        self._gated = [g is not None for g in gates]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk, gate, gated in zip(self.blocks, self.gates, self._gated):
            if not gated:
                x = blk(x)
            elif _is_fx_tracing():
                x = gate(x, blk(x))
            elif gate.active:  # eager: skip inactive blocks instead of computing and discarding
                x = blk(x)
        return x


class Supernet(nn.Module):
    """The weight-sharing supernet of a `StagedSpace`. `qcompile.set_active(net, cfg)` selects the subnet.

    `space` is the `qcompile.spaces.StagedSpace` that builds it (`space.build_supernet()`); it is not imported
    here, so that the space module can build supernets without a cycle.
    """

    def __init__(self, space: Any) -> None:
        super().__init__()
        self.space_info = space.to_dict()
        sw = max(space.stem_widths)
        stem_rule = WidthOf(0, sw) if space.search_widths else Const(sw)
        self.stem = ConvUnit(
            ElasticConv2d(space.in_channels, sw, 3, stride=2, out_rule=stem_rule, role="stem"), space.stem_act
        )
        self.stem_out = QuantPoint("block_out")
        stages = []
        c_max, c_rule = sw, stem_rule
        for si, st in enumerate(space.stages):
            wmax = max(st.widths)
            if si in space.config_stages and space.search_widths:
                w_rule = WidthOf(space.config_stages.index(si) + 1, wmax)
            else:
                w_rule = Const(wmax)
            blocks, gates = [], []
            for b in range(st.max_depth):
                bs = space.block_slot(si, b)
                blocks.append(
                    ElasticBlock(
                        st.block,
                        max_in=c_max if b == 0 else wmax,
                        max_out=wmax,
                        in_rule=c_rule if b == 0 else w_rule,
                        out_rule=w_rule,
                        stride=st.stride if b == 0 else 1,
                        kernels=st.kernels,
                        expands=st.expands if st.channel_ratio_range is None else (st.channel_ratio_range[1],),
                        act=st.act,
                        se=st.se,
                        block_slot=bs,
                        policy_slots=space._slot_of.get((si, b)),
                        kernel_transform=space.kernel_transform,
                    )
                )
                k = space.config_stages.index(si) if si in space.config_stages else None
                gates.append(DepthGate(k, b) if k is not None and b >= min(st.depths) else None)
            stages.append(Stage(blocks, gates))
            c_max, c_rule = wmax, w_rule
        self.stages = nn.ModuleList(stages)
        h = space.head
        self.head_expand = None
        if h.expand is not None:
            self.head_expand = ConvUnit(ElasticConv2d(c_max, h.expand, 1, role="head"), h.act)
            c_max = h.expand
        self.pool_in = QuantPoint("pool_in")
        self.head_mix = None
        if h.mix is not None:
            conv = ElasticConv2d(c_max, h.mix, 1, role="head")
            self.head_mix = ConvUnit(conv, h.act)
            if not h.mix_bn:
                self.head_mix.bn = None
            c_max = h.mix
        self.dropout = nn.Dropout(h.dropout)
        self.classifier = ElasticLinear(c_max, space.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_out(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        if self.head_expand is not None:
            x = self.head_expand(x)
        x = self.pool_in(x).mean((2, 3), keepdim=True)
        if self.head_mix is not None:
            x = self.head_mix(x)
        x = torch.flatten(x, 1)
        return self.classifier(self.dropout(x))
