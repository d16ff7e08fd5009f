"""Elementwise activations the lowering knows, their float forms and their integer forms.

An activation between two quantizers becomes either a clamp (ReLU, ReLU6: the quantizer is monotone,
so `q(clamp(v, a, b)) = clamp(q(v), q(a), q(b))` exactly) or a 256-entry lookup table on the codes
(h-swish, swish, sigmoid, h-sigmoid; docs/integer_semantics.md "How the fake-quant model maps").
Tables and clamp codes are computed with the fake-quant model's own float32 arithmetic
(`qcompile.quant.functional.fake_quant_affine`: `(q - zp) * scale`, the activation, `x / scale + zp`,
clamp, `floor(. + 1/2)`), so every table entry equals the code the fake-quant model produces.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ELEMENTWISE",
    "Elementwise",
    "build_lut",
    "clamp_interval",
    "classify_elementwise",
    "quantize_f32",
]


@dataclass(frozen=True)
class Elementwise:
    """One activation: its name, the float-island op, and its clamp interval if it is a clamp."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    clamp: tuple[float, float] | None = None  # (lo, hi) in real units for ReLU / ReLU6


ELEMENTWISE: dict[str, Elementwise] = {
    "relu": Elementwise("relu", F.relu, (0.0, math.inf)),
    "relu6": Elementwise("relu6", F.relu6, (0.0, 6.0)),
    "hardswish": Elementwise("hardswish", F.hardswish),
    "hardsigmoid": Elementwise("hardsigmoid", F.hardsigmoid),
    "sigmoid": Elementwise("sigmoid", torch.sigmoid),
    "silu": Elementwise("silu", F.silu),
}

_MODULES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
}

_FUNCTIONS: dict[object, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.silu: "silu",
}

_METHODS = {"relu": "relu", "sigmoid": "sigmoid"}


def classify_elementwise(op: str, target: object, module: nn.Module | None = None) -> str | None:
    """Name of the activation an fx node computes (`call_module`, `call_function`, `call_method`), or None."""
    if op == "call_module" and module is not None:
        return _MODULES.get(type(module))
    if op == "call_function":
        try:
            return _FUNCTIONS.get(target)  # type: ignore[arg-type]
        except TypeError:  # unhashable target
            return None
    if op == "call_method":
        return _METHODS.get(str(target))
    return None


def clamp_interval(chain: Sequence[str]) -> tuple[float, float] | None:
    """The real interval `[a, b]` a chain of clamp activations maps to, or None if one is not a clamp."""
    lo, hi = -math.inf, math.inf
    for name in chain:
        c = ELEMENTWISE[name].clamp
        if c is None:
            return None
        # clamp(clamp(v, lo, hi), a, b) = clamp(v, max(lo, a), min(max(hi, a), b)) for a <= b
        lo, hi = max(lo, c[0]), min(max(hi, c[0]), c[1])
        lo = min(lo, hi)
    return lo, hi


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def quantize_f32(x: torch.Tensor, scale: float, zero_point: float, qmax: int) -> torch.Tensor:
    """The fake-quant codes of `x` (float32 arithmetic, round half up): `floor(clamp(x/s + zp) + 1/2)`."""
    v = torch.clamp(x.to(torch.float32) / _f32(scale) + _f32(zero_point), 0, qmax)
    return torch.floor(v + 0.5)


def code_of(value: float, scale: float, zero_point: float, qmax: int) -> int:
    """Fake-quant code of one real value (infinities clamp to 0 or qmax)."""
    if value == math.inf:
        return qmax
    if value == -math.inf:
        return 0
    return int(quantize_f32(torch.tensor([value], dtype=torch.float32), scale, zero_point, qmax)[0])


def build_lut(
    chain: Sequence[str],
    in_scale: float,
    in_zero_point: float,
    out_scale: float,
    out_zero_point: float,
    out_bits: int,
) -> torch.Tensor:
    """uint8[256] table: `table[q] = Q_out(f(dequantize_in(q)))` for the activations `chain`.

    Dequantization is `(q - zp_in) * s_in` and `Q_out` is BatchQuant Eq. 5 with round half up,
    both in float32 like the fake-quant forward, so the table reproduces it code for code.
    Entries above the input quantizer's `qmax` are computed the same way and never read.
    """
    codes = torch.arange(256, dtype=torch.float32)
    x = (codes - _f32(in_zero_point)) * _f32(in_scale)
    for name in chain:
        x = ELEMENTWISE[name].fn(x)
    return quantize_f32(x, out_scale, out_zero_point, 2**out_bits - 1).to(torch.uint8)


#: multiplications the lowering recognises (call_function targets)
MUL_TARGETS = (operator.mul, torch.mul)
