"""BitOPs and model size computed from a config alone (no model needed).

QFA section 5: a layer with FLOPs (MACs) `a` at m-bit weights and n-bit activations has `m*n*a`
BitOPs; total "FLOPs" = FLOPs of float layers + BitOPs of quantized layers / 64.
Layers outside the policy use the bits `quantize()` gave them (first layer float, last linear 8,
head 8, SE float by default).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from qcompile.config import FLOAT_BITS, SubnetConfig
from qcompile.search.cost.layers import layers

DEFAULT_FIXED = {"stem": FLOAT_BITS, "classifier": 8, "head": 8, "se": FLOAT_BITS}


def _layer_bits(layer, cfg: SubnetConfig, fixed: dict[str, int]) -> tuple[int, int]:
    if cfg.policy is None:
        return FLOAT_BITS, FLOAT_BITS
    if layer.slot is not None:
        return cfg.policy[layer.slot]
    role = "head" if layer.role == "block" else layer.role
    b = fixed.get(role, FLOAT_BITS)
    return b, b


@dataclass(frozen=True)
class CostReport:
    macs: int
    float_macs: int
    bitops: int
    params: int
    model_bits: int

    @property
    def qfa_flops(self) -> float:
        """QFA's combined complexity: float MACs + BitOPs / 64."""
        return self.float_macs + self.bitops / 64


def cost_report(space, cfg: SubnetConfig, fixed: dict[str, int] | None = None) -> CostReport:
    """MACs, float MACs, BitOPs, parameters and weight bits of subnet `cfg` of `space` (QFA section 5).

    `fixed` overrides the bits of the layers outside the policy (`DEFAULT_FIXED`: stem, classifier, head, SE).
    """
    return layer_costs(layers(space, cfg), cfg, fixed)


def layer_costs(layer_list: Iterable, cfg: SubnetConfig, fixed: dict[str, int] | None = None) -> CostReport:
    """`cost_report` of a given layer list (each with `macs`, `params`, `slot`, `role`, as `LayerDesc`)."""
    fixed = {**DEFAULT_FIXED, **(fixed or {})}
    macs = float_macs = bops = params = mbits = 0
    for layer in layer_list:
        w, a = _layer_bits(layer, cfg, fixed)
        macs += layer.macs
        params += layer.params
        mbits += layer.params * w
        if w == FLOAT_BITS or a == FLOAT_BITS:
            float_macs += layer.macs
        else:
            bops += layer.macs * w * a
    return CostReport(macs, float_macs, bops, params, mbits)


def bitops(space, cfg: SubnetConfig, fixed: dict[str, int] | None = None) -> int:
    """BitOPs of the quantized layers of `cfg` (QFA section 5)."""
    return cost_report(space, cfg, fixed).bitops


def model_bits(space, cfg: SubnetConfig, fixed: dict[str, int] | None = None) -> int:
    """Weight storage in bits (float layers at 32)."""
    return cost_report(space, cfg, fixed).model_bits
