"""Quantization flavours: which arithmetic the fake-quant model, the integer program and the exports share.

Two flavours exist:

- ``"fixed-point"`` (default): BatchQuant exactly as QFA Eq. 5 writes it, with a fractional zero point
  `z + beta`, round half up everywhere and gemmlowp fixed-point requantization
  (docs/integer_semantics.md). The QOperator export and TVM reproduce it bit for bit; a standard QDQ
  graph cannot (integer zero points, round half to even, float scales), so its QDQ export is approximate.
- ``"qdq"``: the arithmetic of a standard ONNX QDQ graph as onnxruntime runs it, so the QDQ export computes
  what was evaluated:

  * the activation zero point is an integer: BatchQuant's `z + beta` (Eq. 5) made an integer by the
    quantizer's zero-point rule (`zero_rounding`, QFA Eq. 1's bracket), as a straight-through round so
    beta keeps its gradient; the scale `delta gamma` is a float32 number;
  * quantization is ONNX QuantizeLinear: `y = saturate(round(x / y_scale) + y_zero_point)`, "rounding to
    nearest ties to even" (ONNX Operators.md, QuantizeLinear), in float32; sub-8-bit codes are further
    clamped to `[0, 2^b - 1]` (a Clip on the uint8 codes in the export);
  * requantization of an int32 accumulator is onnxruntime's QLinearConv: the output scale is
    `X_scale * W_scale[c] / Y_scale` evaluated in float32 left to right (qlinearconv.cc,
    `ComputeOutputScale`), and MlasRequantizeOutput computes `float32(acc + bias) * scale`, clamps to
    `[0 - zp, 255 - zp]`, rounds to nearest even (`cvtps2dq`) and adds the zero point.

`set_flavour` / `flavour_of` change and read the flavour of every activation quantizer of a model; the
flavour is a buffer of each quantizer, so it travels with the state dict and checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from qcompile.errors import ConfigError

__all__ = [
    "DEFAULT_FLAVOUR",
    "FLAVOURS",
    "check_flavour",
    "fake_quant_qdq",
    "flavour_of",
    "round_half_even_ste",
    "set_flavour",
]

#: the flavours, default first
FLAVOURS = ("fixed-point", "qdq")
DEFAULT_FLAVOUR = "fixed-point"


def check_flavour(flavour: object, field: str = "flavour") -> str:
    """`flavour` if it names a flavour, else `ConfigError` naming `field`, the value and the choices."""
    if not isinstance(flavour, str) or flavour not in FLAVOURS:
        raise ConfigError(field, flavour, FLAVOURS,
                          "'qdq' computes what a standard ONNX QDQ graph computes; 'fixed-point' is QFA Eq. 5")
    return flavour


class _RoundEvenSTE(torch.autograd.Function):
    """Round half to even (torch.round, IEEE roundTiesToEven) forward, identity gradient (STE)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return torch.round(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_half_even_ste(t: torch.Tensor) -> torch.Tensor:
    """`round(t)` with ties to even (ONNX QuantizeLinear's rounding) and a straight-through gradient."""
    return _RoundEvenSTE.apply(t)


def fake_quant_qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, n: int, p: int) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear in float32 with an integer `zero_point`:
    `(clamp(round_even(x / scale) + zp, n, p) - zp) * scale`.

    Clamped before rounding (`n - zp`, `p - zp` are integers, so the forward is unchanged) so that the STE
    passes gradient exactly inside the range, as `fake_quant_affine` does for the fixed-point flavour.
    """
    xs = x.float() / scale.float()
    q = round_half_even_ste(torch.clamp(xs, n - zero_point, p - zero_point)) + zero_point
    return ((q - zero_point) * scale.float()).to(x.dtype)


def _act_quantizers(model: nn.Module) -> list[nn.Module]:
    from qcompile.quant.base import ActQuantizer

    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


def set_flavour(model: nn.Module, flavour: str) -> nn.Module:
    """Put every activation quantizer of `model` in `flavour` (returns `model`); ConfigError for a quantizer
    that has no such flavour (only BatchQuant implements ``"qdq"``)."""
    check_flavour(flavour)
    for q in _act_quantizers(model):
        if not hasattr(q, "flavour"):
            if flavour != DEFAULT_FLAVOUR:
                raise ConfigError(f"flavour of {type(q).__name__}", flavour, (DEFAULT_FLAVOUR,),
                                  "the 'qdq' flavour is implemented by BatchQuant (act_quant='batchquant')")
            continue
        q.flavour = flavour
    return model


def flavour_of(model: nn.Module) -> str:
    """The flavour shared by all activation quantizers of `model` (the default when it has none);
    ConfigError when they disagree."""
    found = {getattr(q, "flavour", DEFAULT_FLAVOUR) for q in _act_quantizers(model)}
    if len(found) > 1:
        raise ConfigError("flavour", sorted(found), "one flavour for the whole model",
                          "set it with qcompile.quant.set_flavour(model, flavour)")
    return found.pop() if found else DEFAULT_FLAVOUR
