"""Shared pieces of the fake quantizers: bit-width checks, code ranges and the two autograd tricks.

Rounding is fixed for the whole project: round half up, `floor(t + 0.5)`, the same rule as the
integer `fixmul` (docs/integer_semantics.md). Both autograd helpers are custom Functions whose
forward is *exactly* the plain computation, so a fake-quant forward and the codes handed to
integer lowering can never differ by a rounding ulp.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from qcompile.errors import ConfigError

__all__ = [
    "FLOAT_BITS",
    "SUPPORTED_BITS",
    "affine_codes",
    "check_bits",
    "check_choice",
    "fake_quant_affine",
    "grad_scale",
    "range_qparams",
    "round_half_up",
    "round_ste",
    "signed_range",
    "unsigned_range",
]

#: A bit-width of 32 means "float passthrough" (QFA Sec. 4 mixes 32-bit layers into stage 1).
FLOAT_BITS = 32
#: Codes are stored in int8 / uint8 (integer_semantics.md), so 2..8 bits are representable.
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)


def check_bits(field: str, bits: Iterable[int] | int) -> tuple[int, ...]:
    """Validate a set of bit-width choices; returns them sorted and de-duplicated."""
    if isinstance(bits, int):
        bits = (bits,)
    try:
        values = tuple(bits)
    except TypeError:
        raise ConfigError(field, bits, SUPPORTED_BITS, "give a tuple of bit-widths") from None
    if not values:
        raise ConfigError(field, values, SUPPORTED_BITS, "at least one bit-width is needed")
    for b in values:
        if isinstance(b, bool) or not isinstance(b, int) or b not in SUPPORTED_BITS:
            raise ConfigError(field, b, SUPPORTED_BITS, "32 (float) is selected through active_bits")
    return tuple(sorted(set(values)))


def check_choice(field: str, bits: object, choices: tuple[int, ...], allow_float: bool = False) -> int:
    """Check that `bits` is one of this quantizer's choices (or 32 where `allow_float`)."""
    allowed = choices + ((FLOAT_BITS,) if allow_float else ())
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise ConfigError(field, bits, allowed)
    return bits


def signed_range(bits: int) -> tuple[int, int]:
    """Weight code range `[-2^(b-1), 2^(b-1) - 1]` (QFA Eq. 2, OQA Eq. 1)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    """Activation code range `[n, p] = [0, 2^b - 1]` (QFA Sec. 3.1)."""
    return 0, 2**bits - 1


def round_half_up(t: torch.Tensor) -> torch.Tensor:
    """The project-wide rounding rule `floor(t + 0.5)`."""
    return torch.floor(t + 0.5)


class _RoundSTE(torch.autograd.Function):
    """Round half up in the forward, identity gradient in the backward (STE, Bengio et al. 2013)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return torch.floor(t + 0.5)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _GradScale(torch.autograd.Function):
    """Identity in the forward, gradient multiplied by `g` in the backward (LSQ, Esser et al. 2020)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, g: float) -> torch.Tensor:
        ctx.g = g
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.g, None


def round_ste(t: torch.Tensor) -> torch.Tensor:
    """`floor(t + 0.5)` with a straight-through gradient."""
    return _RoundSTE.apply(t)


def grad_scale(t: torch.Tensor, g: float) -> torch.Tensor:
    """Return `t` unchanged whose gradient is scaled by `g` (LSQ's g = 1/sqrt(N * Qp))."""
    return _GradScale.apply(t, g)


#: how `range_qparams` makes the zero point an integer: QFA's bracket (round half up) or the older floor
ZERO_ROUNDING = ("round", "floor")


def range_qparams(
    x_min: torch.Tensor, x_max: torch.Tensor, n: int, p: int, eps: float, zero_rounding: str = "floor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of an estimated range (QFA Eq. 1 / Eq. 5, first line).

    `delta = max((x_max - x_min) / (p - n), eps)` (eps guards constant inputs) and
    `z = clamp([-x_min / delta], n, p)`, where QFA says right after Eq. 1 that the bracket "indicates the
    round function": `zero_rounding="round"` is `floor(-x_min / delta + 1/2)` (half up, as every rounding of
    docs/integer_semantics.md); `"floor"` is `-floor(x_min / delta)`, what quantizers trained before used.
    """
    delta = torch.clamp((x_max - x_min) / (p - n), min=eps)
    if zero_rounding == "round":
        z = torch.floor(-x_min / delta + 0.5)
    elif zero_rounding == "floor":
        z = -torch.floor(x_min / delta)
    else:
        raise ConfigError("zero_rounding", zero_rounding, list(ZERO_ROUNDING))
    return delta, torch.clamp(z, n, p)


def zero_code_value(scale: torch.Tensor, zero_point: torch.Tensor, n: int, p: int) -> float:
    """The representable value nearest 0: `(clamp(floor(zp + 1/2), n, p) - zp) * scale`.

    With a fractional zero point (BatchQuant's `z + beta`, Eq. 5) float 0 has no code; a padded conv
    after the quantizer pads with this value instead, i.e. with the integer code `floor(zp + 1/2)`, so
    the integer program's padding is exact (docs/integer_semantics.md, conv2d `pad_value`).
    """
    zp = zero_point.detach()
    return float((torch.clamp(torch.floor(zp + 0.5), n, p) - zp) * scale.detach())


def fake_quant_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, n: int, p: int):
    """Asymmetric fake quantization `(clamp(round(x/scale + zp), n, p) - zp) * scale` (QFA Eq. 5).

    Clamp before round, so the STE passes gradient exactly where `n <= x/scale + zp <= p`; forward
    values equal `clamp(floor(x/scale + zp + 0.5), n, p)` because n and p are integers.
    """
    q = round_ste(torch.clamp(x / scale + zero_point, n, p))
    return (q - zero_point) * scale


def affine_codes(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, n: int, p: int):
    """The integer codes that `fake_quant_affine` uses (float tensor of integers), no gradient."""
    return torch.floor(torch.clamp(x / scale + zero_point, n, p) + 0.5)
