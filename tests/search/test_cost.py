"""BitOPs and QFA FLOPs (QFA section 5) against hand counts.

Three independent references: (1) a hand-written layer list whose totals are worked out below by hand;
(2) a one-block space whose layer walk, MACs, parameters and BitOPs are worked out by hand; (3) the real
extracted, quantized subnet: MACs from its convs' and linears' actual output shapes (ShapeProp), bits from
the weight quantizer of each layer and the activation quantizer feeding it, with QFA's rule `m * n * MACs`
per quantized layer and `float MACs + BitOPs / 64` for the FLOPs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

import qcompile as qc
from qcompile.config import QuantPolicy, SubnetConfig
from qcompile.nn.folded import weight_bits_of
from qcompile.passes.patterns import get_module, is_act_quantizer, source_through_shape_ops
from qcompile.search.cost import (
    bitops,
    cost_report,
    count_macs,
    count_params,
    layer_costs,
    layers,
    model_bits,
)


def _layer(macs: int, params: int, slot: int | None, role: str) -> SimpleNamespace:
    return SimpleNamespace(macs=macs, params=params, slot=slot, role=role)


#: four layers: float stem, two policy slots, 8-bit classifier
HAND_LAYERS = [_layer(1000, 100, None, "stem"), _layer(2000, 300, 0, "block"), _layer(500, 40, 1, "block"),
               _layer(50, 20, None, "classifier")]


def test_hand_counted_layer_list():
    cfg = SubnetConfig(resolution=32, depths=(1,), kernels=(3,), expands=(1,), policy=QuantPolicy(((2, 3), (4, 32))))
    r = layer_costs(HAND_LAYERS, cfg)
    # slot 0: 2*3*2000 = 12000; slot 1 has float activations: float MACs; classifier 8*8*50 = 3200
    assert r.bitops == 12000 + 3200
    assert r.float_macs == 1000 + 500 and r.macs == 3550
    assert r.qfa_flops == 1500 + 15200 / 64 == 1737.5
    # weights: stem float 100*32, slot 0 2-bit 300*2, slot 1 4-bit 40*4, classifier 20*8
    assert r.model_bits == 3200 + 600 + 160 + 160
    assert r.params == 460
    # float config: no BitOPs, every MAC float; `fixed` overrides the fixed layers' bits
    f = layer_costs(HAND_LAYERS, SubnetConfig(32, (1,), (3,), (1,)))
    assert (f.bitops, f.float_macs, f.qfa_flops, f.model_bits) == (0, 3550, 3550, 460 * 32)
    assert layer_costs(HAND_LAYERS, cfg, fixed={"classifier": 4}).bitops == 12000 + 4 * 4 * 50


def _count_from_subnet(sub: nn.Module, cfg: SubnetConfig, in_channels: int) -> tuple[int, int, int]:
    """(MACs, float MACs, BitOPs) of an extracted subnet, from its own modules and shapes."""
    ShapeProp(sub).propagate(torch.zeros(1, in_channels, cfg.resolution, cfg.resolution))
    macs = float_macs = bops = 0
    for n in sub.graph.nodes:
        if n.op != "call_module":
            continue
        mod = get_module(sub, n.target)
        if isinstance(mod, nn.Conv2d):
            out = n.meta["tensor_meta"].shape
            m = out[1] * out[2] * out[3] * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            m = mod.in_features * mod.out_features
        else:
            continue
        src = source_through_shape_ops(n.args[0], sub)
        a = int(get_module(sub, src.target).active_bits) if src.op == "call_module" and is_act_quantizer(
            get_module(sub, src.target)) else 32
        w = weight_bits_of(mod)
        macs += m
        if w == 32 or a == 32:
            float_macs += m
        else:
            bops += w * a * m
    return macs, float_macs, bops


@pytest.mark.parametrize("name", ["mobilenet_v3", "mobilenet_v2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bitops_of_a_config_match_the_extracted_subnet(tiny_quantized, name, seed):
    space, qnet = tiny_quantized[name]
    cfg = space.sample(seed=seed, bits=(2, 3, 4))
    sub = qc.extract(qnet, cfg).eval()
    macs, float_macs, bops = _count_from_subnet(sub, cfg, space.in_channels)
    r = cost_report(space, cfg)
    assert bops > 0 and float_macs > 0
    assert (r.macs, r.float_macs, r.bitops) == (macs, float_macs, bops)
    assert r.qfa_flops == pytest.approx(float_macs + bops / 64, rel=0, abs=1e-9)
    assert r.macs == count_macs(space, cfg)


def _one_block_space():
    """Stem 3->8 (3x3, stride 2), one MobileNetV2 block 8->16->16 (3x3 depthwise; expand 1 or 2, so the stage
    is searchable and has policy slots), linear 16->10."""
    from qcompile.spaces.base import HeadSpec, StagedSpace, StageSpec

    return StagedSpace("hand", stem_widths=(8,), stem_act="relu",
                       stages=[StageSpec("mbv2", widths=(16,), depths=(1,), stride=1, kernels=(3,), expands=(1, 2))],
                       head=HeadSpec(expand=None, mix=None, act="relu"), num_classes=10, resolutions=(8,))


def test_layer_walk_of_a_one_block_subnet_by_hand():
    space = _one_block_space()
    cfg = space.largest().with_policy(QuantPolicy(((2, 3), (4, 4), (3, 8))))
    got = {d.name: (d.in_ch, d.out_ch, d.kernel, d.groups, d.in_hw, d.out_hw, d.macs, d.params)
           for d in layers(space, cfg)}
    # 8x8 input; MACs = out_hw^2 * out_ch * in_ch/groups * k^2; params = weights (+ bias) + BN scale and shift
    assert got == {
        "stem": (3, 8, 3, 1, 8, 4, 4 * 4 * 8 * 3 * 9, 8 * 3 * 9 + 16),
        "stages.0.blocks.0.conv0": (8, 16, 1, 1, 4, 4, 4 * 4 * 16 * 8, 16 * 8 + 32),
        "stages.0.blocks.0.conv1": (16, 16, 3, 16, 4, 4, 4 * 4 * 16 * 9, 16 * 9 + 32),
        "stages.0.blocks.0.project": (16, 16, 1, 1, 4, 4, 4 * 4 * 16 * 16, 16 * 16 + 32),
        "classifier": (16, 10, 1, 1, 1, 1, 160, 160 + 10),
    }
    assert count_macs(space, cfg) == 3456 + 2048 + 2304 + 4096 + 160 == 12064
    assert count_params(space, cfg) == 232 + 160 + 176 + 288 + 170 == 1026
    # QFA section 5: m * n * MACs per quantized layer; the stem stays float, the classifier 8-bit
    r = cost_report(space, cfg)
    assert r.float_macs == 3456
    assert r.bitops == bitops(space, cfg) == 2 * 3 * 2048 + 4 * 4 * 2304 + 3 * 8 * 4096 + 8 * 8 * 160 == 157696
    assert r.qfa_flops == 3456 + 157696 / 64
    assert r.model_bits == model_bits(space, cfg) == 232 * 32 + 160 * 2 + 176 * 4 + 288 * 3 + 170 * 8 == 10672
