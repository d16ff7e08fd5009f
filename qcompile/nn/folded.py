"""Intermediate modules of the lowering pipeline: each is still a float `nn.Module` the fx graph can run.

- `FoldedQConv2d` (made by `fold_bn`): a quantized conv whose following BatchNorm became a per-output-
  channel scale and a bias, `y = conv(x, Q(w)) * channel_scale + bias`. The weight codes stay those
  LSQ chose for the unfolded weight, so the fake-quant function is unchanged.
- `AccConv2d` / `AccLinear` (made by `fold_batchquant_bias`): the accumulator form of BatchQuant Eq. 6,
  `y = acc_scale * (sum(w_q x_q) + bias_int)`, computed from the input quantizer's codes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from qcompile.nn.static import QConv2d, zero_code_conv2d

__all__ = ["AccConv2d", "AccLinear", "FoldedQConv2d", "weight_bits_of"]


def weight_bits_of(module: nn.Module) -> int:
    """Bit-width of a layer's weights: 32 (float) without a quantizer or at `active_bits == 32`."""
    wq = getattr(module, "weight_quant", None)
    if wq is None:
        return 32
    bits = getattr(wq, "active_bits", None)
    return 32 if bits is None else int(bits)


def _view(p: torch.Tensor, ndim: int) -> torch.Tensor:
    return p.reshape((1, -1) + (1,) * (ndim - 2))


class FoldedQConv2d(QConv2d):
    """`QConv2d` with a BatchNorm folded after the weight quantizer (per-channel output scale).

    BN(conv(x, s_w w_q)) = (gamma / sigma) s_w conv(x, w_q) + (beta - gamma mu / sigma): the BN scale
    multiplies the accumulator instead of the weights, so LSQ's codes are unchanged (folding into
    the weights before LSQ would change the quantized weights).
    """

    def __init__(self, conv: QConv2d, channel_scale: torch.Tensor, bias: torch.Tensor):
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
            weight_quant=conv.weight_quant,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            self.bias.copy_(bias)
        self.register_buffer("channel_scale", channel_scale.detach().clone().to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        y = zero_code_conv2d(self, x, w, None)
        return y * _view(self.channel_scale, y.ndim) + _view(self.bias, y.ndim)


class _AccBase(nn.Module):
    """Shared state of the accumulator-form layers (BatchQuant Eq. 6 folded)."""

    weight_codes: torch.Tensor  # int8, sign of a negative output scale folded in
    acc_scale: torch.Tensor  # float64 [O] > = 0: real value of one accumulator unit
    bias_acc: torch.Tensor  # float64 [O]: exact bias in accumulator units (float bias, BN, -(z+beta) sum w_q)
    bias_int: torch.Tensor  # int32 [O]: floor(bias_acc + 1/2)

    def _init_common(
        self,
        weight_codes: torch.Tensor,
        acc_scale: torch.Tensor,
        bias_acc: torch.Tensor,
        *,
        in_scale: float,
        in_zero_point: float,
        in_bits: int,
        weight_bits: int,
    ) -> None:
        self.register_buffer("weight_codes", weight_codes.to(torch.int8))
        self.register_buffer("acc_scale", acc_scale.to(torch.float64))
        self.register_buffer("bias_acc", bias_acc.to(torch.float64))
        self.register_buffer("bias_int", torch.floor(bias_acc.to(torch.float64) + 0.5).to(torch.int32))
        self.in_scale, self.in_zero_point = float(in_scale), float(in_zero_point)
        self.in_bits, self.weight_bits = int(in_bits), int(weight_bits)

    def widened(self, k: int) -> _AccBase:
        """Copy with weight codes multiplied by `2^k` (accumulator unit `2^k` times finer).

        Same real function: `acc_scale / 2^k`, `bias_acc * 2^k`. The int32 bias then rounds
        `2^k` times more finely; `weight_bits` becomes the bits the codes now span.
        """
        new = copy.deepcopy(self)
        f = 2**k
        new.weight_codes = (self.weight_codes.to(torch.int16) * f).to(torch.int8)
        new.acc_scale = self.acc_scale / f
        new.bias_acc = self.bias_acc * f
        new.bias_int = torch.floor(new.bias_acc + 0.5).to(torch.int32)
        new.weight_bits = min(8, self.weight_bits + k)
        new.code_shift = getattr(self, "code_shift", 0) + k
        return new

    def max_widening(self, limit: int = 8) -> int:
        """Largest `k <= limit - weight_bits` with `codes * 2^k` still in int8 `[-128, 127]`."""
        w = self.weight_codes.to(torch.int64)
        k = max(0, limit - self.weight_bits)
        while k > 0 and (int(w.max()) * 2**k > 127 or int(w.min()) * 2**k < -128):
            k -= 1
        return k

    def input_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Recover the input quantizer's codes from its dequantized output `(q - zp) s` (exact)."""
        q = torch.floor(x.to(torch.float64) / self.in_scale + self.in_zero_point + 0.5)
        return q.clamp(0, 2**self.in_bits - 1)

    def extra_repr(self) -> str:
        return (f"w{self.weight_bits}a{self.in_bits}, in_scale={self.in_scale:.6g}, "
                f"in_zero_point={self.in_zero_point:.6g}")


class AccConv2d(_AccBase):
    """Conv in accumulator form: `acc_scale[c] * (conv(x_q, w_q, pad=pad_value) + bias_int[c])`.

    `pad_value = floor(z + beta + 1/2)` is the code closest to the input zero point. Convs of qcompile
    supernets pad with that code's value too (`qcompile.nn.elastic.padded_conv2d`), so padding is exact;
    a hand-built conv that pads with 0 sees `pad_value - (z + beta)` (at most 1/2 code) on border taps.
    """

    #: whether the fake-quant conv padded with the input quantizer's zero code (then no border correction
    #: is needed); set per layer by fold-batchquant-bias from the conv's padding link (qcompile.nn.padding)
    pads_with_zero_code = False

    def __init__(
        self,
        weight_codes: torch.Tensor,
        acc_scale: torch.Tensor,
        bias_acc: torch.Tensor,
        *,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        in_scale: float,
        in_zero_point: float,
        in_bits: int,
        weight_bits: int,
    ):
        super().__init__()
        self._init_common(weight_codes, acc_scale, bias_acc, in_scale=in_scale, in_zero_point=in_zero_point,
                          in_bits=in_bits, weight_bits=weight_bits)
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        self.pad_value = int(min(max(torch.floor(torch.tensor(in_zero_point + 0.5)).item(), 0), 2**in_bits - 1))

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """int32-valued float64 accumulator `sum(w_q x_q) + bias_int` (exact: |acc| < 2^53)."""
        q = self.input_codes(x)
        ph, pw = self.padding
        if ph or pw:
            q = F.pad(q, (pw, pw, ph, ph), value=float(self.pad_value))
        acc = F.conv2d(q, self.weight_codes.to(torch.float64), None, self.stride, 0, self.dilation, self.groups)
        return acc + _view(self.bias_int.to(torch.float64), acc.ndim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = self.accumulate(x)
        return (acc * _view(self.acc_scale, acc.ndim)).to(x.dtype)


class AccLinear(_AccBase):
    """Linear in accumulator form: `acc_scale[o] * (x_q @ w_q.T + bias_int[o])`."""

    def __init__(
        self,
        weight_codes: torch.Tensor,
        acc_scale: torch.Tensor,
        bias_acc: torch.Tensor,
        *,
        in_scale: float,
        in_zero_point: float,
        in_bits: int,
        weight_bits: int,
    ):
        super().__init__()
        self._init_common(weight_codes, acc_scale, bias_acc, in_scale=in_scale, in_zero_point=in_zero_point,
                          in_bits=in_bits, weight_bits=weight_bits)

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        q = self.input_codes(x)
        return q @ self.weight_codes.to(torch.float64).T + self.bias_int.to(torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.accumulate(x) * self.acc_scale).to(x.dtype)
