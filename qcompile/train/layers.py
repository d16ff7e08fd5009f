"""Views of a (quantized) supernet the trainer needs: policy-slot layers and their weight steps.

A *quant layer* is any module with an integer `slot` (its index in `QuantPolicy.bits`), a `weight`
parameter and a `weight_quant` (an elastic LSQ holding one step per bit-width in `steps[str(b)]`,
`qcompile.quant.LSQ`) or None before quantization. `ElasticConv2d` / `ElasticLinear`
follow this, eagerly and inside the traced GraphModule (they are leaves), so nothing here depends
on a particular space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class QuantLayer:
    """One policy-slot layer: module name, slot, the shared weight and its weight quantizer."""

    name: str
    slot: int
    module: nn.Module

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def weight_quant(self) -> nn.Module | None:
        return getattr(self.module, "weight_quant", None)

    def step(self, bits: int) -> torch.Tensor | None:
        """The weight step `|s_b|` (0-d or per-channel), or None if absent / not initialised yet."""
        q = self.weight_quant
        steps = getattr(q, "steps", None)
        if steps is None or str(bits) not in steps:
            return None
        is_init = getattr(q, "is_initialized", None)
        if is_init is not None and not is_init(bits):
            return None
        return steps[str(bits)].detach().abs()


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    """All policy-slot layers of `model`, in module order (several modules may share a slot)."""
    out = []
    for name, m in model.named_modules():
        slot = getattr(m, "slot", None)
        if (
            isinstance(slot, int)
            and not isinstance(slot, bool)
            and isinstance(getattr(m, "weight", None), nn.Parameter)
        ):
            out.append(QuantLayer(name, slot, m))
    return out


def step_tables(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module holding a per-bit step table `steps` (LSQ weight quantizers, LSQ-style activations)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "steps", None), nn.ParameterDict)
    ]
