"""Static layers of an extracted subnet: plain `nn.Conv2d` / `nn.Linear` plus an optional weight quantizer.

`slice_subnet` produces these; `to_integer` reads `weight_quant` to get weight codes and scales.
A `weight_quant` of None (or at 32 bits) means the layer is float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QConv2d(nn.Conv2d):
    """`nn.Conv2d` whose weight passes through `weight_quant` (LSQ, fixed bits) before the conv."""

    weight_quant: nn.Module | None

    def __init__(self, *args, weight_quant: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quant = weight_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class QLinear(nn.Linear):
    """`nn.Linear` whose weight passes through `weight_quant` before the matmul."""

    weight_quant: nn.Module | None

    def __init__(self, *args, weight_quant: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quant = weight_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        return F.linear(x, w, self.bias)
