"""The conv / linear layers of a subnet, computed from its config alone (no model built).

`layers(space, cfg)` walks the space's stem, stages and head with the config's resolution, widths, depths,
kernels, expands and channels, and lists each layer with its shapes and policy slot; `count_params` and
`count_macs` sum them. The BitOPs and model-size costs (`qcompile.search.cost.bitops`, QFA section 5) and the
MAC latency models read the same list.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompile.config import SubnetConfig
from qcompile.nn.elastic import make_divisible, out_size

__all__ = ["LayerDesc", "count_macs", "count_params", "layers"]


@dataclass(frozen=True)
class LayerDesc:
    """One conv / linear layer of a concrete subnet (computed from the config alone)."""

    name: str
    kind: str  # "conv" | "linear"
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    groups: int
    in_hw: int
    out_hw: int
    bias: bool
    bn: bool
    slot: int | None
    role: str

    @property
    def params(self) -> int:
        w = self.out_ch * (self.in_ch // self.groups) * self.kernel * self.kernel
        return w + (self.out_ch if self.bias else 0) + (2 * self.out_ch if self.bn else 0)

    @property
    def macs(self) -> int:
        return self.out_hw * self.out_hw * self.out_ch * (self.in_ch // self.groups) * self.kernel * self.kernel


def layers(space, cfg: SubnetConfig) -> list[LayerDesc]:
    """The conv/linear layers of subnet `cfg`, computed from the config alone (not from modules)."""
    space.validate(cfg)
    L: list[LayerDesc] = []
    hw = cfg.resolution
    c = space.stem_width(cfg)
    o = out_size(hw, 3, 2)
    L.append(LayerDesc("stem", "conv", space.in_channels, c, 3, 2, 1, hw, o, False, True, None, "stem"))
    hw = o
    for si, st in enumerate(space.stages):
        width = space.stage_width(cfg, si)
        for b in range(space.stage_depth(cfg, si)):
            stride = st.stride if b == 0 else 1
            bs = space.block_slot(si, b)
            k = cfg.kernels[bs] if bs is not None else st.kernels[0]
            e = cfg.expands[bs] if bs is not None else st.expands[0]
            if bs is not None and cfg.channels is not None and st.channel_ratio_range is not None:
                mid = cfg.channels[bs]
            else:
                mid = make_divisible(round(c * e), 8)
            slots = space._slot_of.get((si, b), (None, None, None))
            name = f"stages.{si}.blocks.{b}"
            o = out_size(hw, k, stride)
            se = st.se or st.block.endswith("_se")

            def add(n, cin, cout, kk, s, g, ih, oh, slot, role="block", bias=False, bn=True, name=name):
                L.append(LayerDesc(f"{name}.{n}", "conv", cin, cout, kk, s, g, ih, oh, bias, bn, slot, role))

            def add_se(ch, at_hw):
                mid_se = make_divisible(ch // 4, 8)
                add("se.reduce", ch, mid_se, 1, 1, 1, 1, 1, None, "se", True, False)
                add("se.expand", mid_se, ch, 1, 1, 1, 1, 1, None, "se", True, False)

            if st.block in ("mbv2", "mbv3"):
                if max(st.expands) == 1 and min(st.expands) == 1:
                    add("conv0", c, c, k, stride, c, hw, o, slots[0])
                    mid = c
                    proj = slots[1]
                else:
                    add("conv0", c, mid, 1, 1, 1, hw, hw, slots[0])
                    add("conv1", mid, mid, k, stride, mid, hw, o, slots[1])
                    proj = slots[2]
                if se:
                    add_se(mid, o)
                add("project", mid, width, 1, 1, 1, o, o, proj)
            elif st.block == "mbv1":
                add("conv0", c, c, k, stride, c, hw, o, slots[0])
                add("conv1", c, width, 1, 1, 1, o, o, slots[1])
            elif st.block.startswith("bottleneck"):
                add("conv0", c, mid, 1, 1, 1, hw, hw, slots[0])
                add("conv1", mid, mid, k, stride, 1, hw, o, slots[1])
                if se:
                    add_se(mid, o)
                add("project", mid, width, 1, 1, 1, o, o, slots[2])
            else:  # fused
                add("conv0", c, mid, k, stride, 1, hw, o, slots[0])
                if se:
                    add_se(mid, o)
                add("project", mid, width, 1, 1, 1, o, o, slots[1])
            c, hw = width, o
    h = space.head
    if h.expand is not None:
        L.append(LayerDesc("head.expand", "conv", c, h.expand, 1, 1, 1, hw, hw, False, True, None, "head"))
        c = h.expand
    if h.mix is not None:
        L.append(LayerDesc("head.mix", "conv", c, h.mix, 1, 1, 1, 1, 1, False, h.mix_bn, None, "head"))
        c = h.mix
    L.append(LayerDesc("classifier", "linear", c, space.num_classes, 1, 1, 1, 1, 1, True, False, None, "classifier"))
    return L


def count_params(space, cfg: SubnetConfig) -> int:
    """Parameters of subnet `cfg` (weights, biases, BatchNorm scale and shift)."""
    return sum(layer.params for layer in layers(space, cfg))


def count_macs(space, cfg: SubnetConfig) -> int:
    """Multiply-accumulates of one inference of subnet `cfg` (conv and linear layers)."""
    return sum(layer.macs for layer in layers(space, cfg))
