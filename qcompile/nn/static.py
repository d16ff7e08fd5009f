"""Static layers of an extracted subnet: plain `nn.Conv2d` / `nn.Linear` plus an optional weight quantizer.

`slice_subnet` produces these; `to_integer` reads `weight_quant` to get weight codes and scales.
A `weight_quant` of None (or at 32 bits) means the layer is float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qcompile.nn.padding import link_pad_quantizer, pad_quantizer


class QConv2d(nn.Conv2d):
    """`nn.Conv2d` whose weight passes through `weight_quant` (LSQ, fixed bits) before the conv."""

    weight_quant: nn.Module | None

    def __init__(self, *args, weight_quant: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quant = weight_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        return zero_code_conv2d(self, x, w, self.bias)


def zero_code_conv2d(conv: nn.Conv2d, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.conv2d` with `conv`'s geometry, padding with its input quantizer's zero code when linked.

    See `qcompile.nn.padding`: the link `insert_quantizers` / `slice_subnet` set makes the padding
    exactly the integer conv's `pad_value`.
    """
    q = pad_quantizer(conv)
    if q is not None and q.active_bits != 32 and q.pad_value != 0.0 and any(conv.padding):
        ph, pw = conv.padding
        x = F.pad(x, (pw, pw, ph, ph), value=q.pad_value)
        return F.conv2d(x, w, bias, conv.stride, 0, conv.dilation, conv.groups)
    return F.conv2d(x, w, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class QLinear(nn.Linear):
    """`nn.Linear` whose weight passes through `weight_quant` before the matmul."""

    weight_quant: nn.Module | None

    def __init__(self, *args, weight_quant: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quant = weight_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        return F.linear(x, w, self.bias)


def link_input_quantizers(gm) -> int:
    """Link every conv of a static graph to the activation quantizer feeding it (zero-code padding).

    `slice_subnet` does this for extracted subnets; call it on hand-built fake-quant graphs so their
    padded convs compute exactly what the integer conv does. Returns the number of convs linked.
    """
    from qcompile.quant import ActQuantizer

    n = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.Conv2d):
            continue
        src = node.args[0] if node.args else None
        if getattr(src, "op", None) == "call_module" and isinstance(gm.get_submodule(src.target), ActQuantizer):
            link_pad_quantizer(gm.get_submodule(node.target), gm.get_submodule(src.target))
            n += 1
    return n
